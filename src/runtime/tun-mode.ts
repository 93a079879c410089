/**
 * TUN mode, for confidential VMs (TDX, SEV-SNP) where the whole guest is the TEE: the runtime attests, opens the
 * tunnel, puts a TUN device in the guest with the leased address, and routes the guest's traffic through it, so any
 * program's traffic leaves only through the tunnel. The route to the gateway itself stays on the original path.
 * Everything changed in the kernel is undone on stop.
 *
 *   guest program → kernel routing → TUN → runtime → DTLS → gateway
 *   gateway → DTLS → runtime → TUN → kernel → guest program
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { Tun } from "../native/io.js";
import { TunnelClient } from "../tunnel/client.js";
import type { Lease } from "../tunnel/protocol.js";
import type { RaTlsIdentity } from "./attesters.js";

const run = promisify(execFile);

async function ip(...args: string[]): Promise<string> {
  try {
    return (await run("ip", args)).stdout;
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(" ")}: ${(err.stderr ?? err.message).trim()}`, { cause: e });
  }
}

export interface TunModeOptions {
  gateway: string;
  pin: string;
  identity: RaTlsIdentity;
  tun: string;
  /** Destinations to route through the tunnel; "default" takes over the default route. */
  routes: string[];
  deadSeconds?: number;
  /** TUN offloads (default true; falls back to a plain TUN when the kernel refuses): see TunOpenOptions.offload. */
  offload?: boolean;
  log: (event: Record<string, unknown>) => void;
}

/** Runs TUN mode until `stop()`; `closed` resolves with the final close. */
export class TunMode {
  private readonly client: TunnelClient;
  private tun: Tun | undefined;
  private address = "";
  private readonly undo: (() => Promise<unknown>)[] = [];
  private queue: Promise<void> = Promise.resolve();
  readonly closed: Promise<{ reason: string; message: string }>;

  constructor(readonly opts: TunModeOptions) {
    this.client = new TunnelClient({
      gateway: opts.gateway,
      pin: opts.pin,
      certPem: opts.identity.certPem,
      keyPem: opts.identity.keyPem,
      deadSeconds: opts.deadSeconds,
    });
    this.client.on("lease", (lease) => {
      // Kernel changes run one after another, even when leases arrive quickly.
      this.queue = this.queue
        .then(() => this.apply(lease))
        .catch((e: Error) => opts.log({ event: "error", message: e.message }));
    });
    this.closed = new Promise((resolve) => {
      this.client.on("closed", (c) => {
        opts.log({ event: "closed", ...c });
        if (c.final) resolve(c);
      });
    });
  }

  start(): void {
    this.client.connect();
  }

  /** Applies a lease to the kernel; its `lease` event is logged once the address and routes are in place. */
  private async apply(lease: Lease): Promise<void> {
    if (!this.tun) {
      this.tun =
        this.opts.offload === false
          ? Tun.open(this.opts.tun, { napi: true })
          : Tun.openOffloaded(this.opts.tun, { napi: true }, (e) =>
              this.opts.log({ event: "tun-offload-unavailable", error: e.message }),
            );
      const tun = this.tun;
      this.opts.log({ event: "tun", name: tun.name, offload: tun.offload });
      tun.onPackets((p) => this.client.send(p));
      this.client.on("packets", (p) => tun.writeMany(p));
      await ip("link", "set", "dev", tun.name, "mtu", String(lease.mtu), "up");
    }
    if (lease.address === undefined) throw new Error("the lease has no IPv4 address, which TUN mode needs");
    if (this.address === lease.address) return this.opts.log({ event: "lease", ...lease });
    const dev = this.tun.name;
    if (this.address) await ip("addr", "del", `${this.address}/32`, "dev", dev).catch(() => {});
    await ip("addr", "add", `${lease.address}/32`, "dev", dev);
    if (!this.address) {
      for (const r of this.opts.routes) {
        if (r === "default") await this.takeDefaultRoute(dev, lease.address);
        else {
          await ip("route", "replace", r, "dev", dev, "src", lease.address);
          this.undo.push(() => ip("route", "del", r, "dev", dev).catch(() => {}));
        }
      }
    }
    this.address = lease.address;
    this.opts.log({ event: "lease", ...lease });
  }

  /** Keeps the gateway reachable on the original path, then points the default route into the tunnel. */
  private async takeDefaultRoute(dev: string, src: string): Promise<void> {
    const gwIp = this.opts.gateway.slice(0, this.opts.gateway.lastIndexOf(":")).replace(/^\[|\]$/g, "");
    const via = (await ip("route", "get", gwIp)).split("\n")[0]!;
    const m = /^(\S+)(?: via (\S+))? dev (\S+)/.exec(via);
    if (!m) throw new Error(`cannot tell how ${gwIp} is reached: ${via}`);
    await ip("route", "replace", `${gwIp}/32`, ...(m[2] ? ["via", m[2]] : []), "dev", m[3]!);
    this.undo.push(() => ip("route", "del", `${gwIp}/32`).catch(() => {}));
    const old = (await ip("route", "show", "default")).split("\n")[0]!.trim();
    await ip("route", "replace", "default", "dev", dev, "src", src);
    this.undo.push(async () => {
      await ip("route", "del", "default", "dev", dev).catch(() => {});
      if (old) await ip("route", "replace", ...old.split(/\s+/)).catch(() => {});
    });
  }

  /** Closes the tunnel and undoes every kernel change. */
  async stop(): Promise<void> {
    this.client.close();
    await this.queue;
    while (this.undo.length) await this.undo.pop()!();
    this.tun?.close();
  }
}
