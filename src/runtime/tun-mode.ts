/**
 * TUN mode, for confidential VMs (TDX, SEV-SNP) where the whole guest is the TEE: the runtime attests, opens the
 * tunnel, puts a TUN device in the guest with the leased addresses (IPv4, IPv6 or both), and routes the guest's
 * traffic through it, so any program's traffic leaves only through the tunnel: route "default" takes the IPv4
 * default route and ::/0 for each family the lease has; other routes go to the family of their prefix. The route to
 * the gateway itself stays on the original path. The TUN gets no IPv6 link-local address (addrgenmode none) and
 * answers no router advertisements, and IPv6 packets from or to link-local or multicast addresses are not sent into
 * the tunnel (counted as `filtered6`): the tunnel is point-to-point. Everything changed in the kernel is undone on
 * stop.
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

/** IPv6 packets from or to a link-local or multicast address: they stay out of the tunnel. */
export function isLinkScoped6(p: Buffer): boolean {
  if (p.length < 40 || p[0]! >> 4 !== 6) return false;
  const scoped = (o: number) => p[o] === 0xff || (p[o] === 0xfe && (p[o + 1]! & 0xc0) === 0x80);
  return scoped(8) || scoped(24);
}

const run = promisify(execFile);

async function sysctl(key: string, value: string): Promise<void> {
  await run("sysctl", ["-q", "-w", `${key}=${value}`]).catch(() => {}); // best effort: no IPv6 in the guest
}

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
  private address6 = "";
  /** IPv6 packets kept out of the tunnel (link-local or multicast: router solicitations, MLD...). */
  filtered6 = 0;
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
      tun.onPackets((p) => {
        const out = p.some(isLinkScoped6) ? p.filter((x) => !isLinkScoped6(x)) : p;
        this.filtered6 += p.length - out.length;
        if (out.length) this.client.send(out);
      });
      this.client.on("packets", (p) => tun.writeMany(p));
      // No link-local address (so no router solicitations or MLD from one), no autoconfiguration from the tunnel.
      await ip("link", "set", "dev", tun.name, "addrgenmode", "none").catch((e: Error) =>
        this.opts.log({ event: "warning", message: e.message }),
      );
      await sysctl(`net.ipv6.conf.${tun.name}.accept_ra`, "0");
      await ip("link", "set", "dev", tun.name, "mtu", String(lease.mtu), "up");
    }
    const dev = this.tun.name;
    const first = !this.address && !this.address6;
    if (lease.address !== this.address) {
      if (this.address) await ip("addr", "del", `${this.address}/32`, "dev", dev).catch(() => {});
      if (lease.address) await ip("addr", "add", `${lease.address}/32`, "dev", dev);
      this.address = lease.address ?? "";
    }
    if ((lease.address6 ?? "") !== this.address6) {
      if (this.address6) await ip("-6", "addr", "del", `${this.address6}/128`, "dev", dev).catch(() => {});
      // nodad: the gateway leased it to this tunnel alone; DAD would only delay it (and send into the tunnel).
      if (lease.address6) await ip("-6", "addr", "add", `${lease.address6}/128`, "dev", dev, "nodad");
      this.address6 = lease.address6 ?? "";
    }
    if (first) {
      for (const r of this.opts.routes) {
        if (r === "default") {
          if (lease.address) await this.takeDefaultRoute(dev, lease.address, 4);
          if (lease.address6) await this.takeDefaultRoute(dev, lease.address6, 6);
          continue;
        }
        const v6 = r.includes(":");
        const src = v6 ? lease.address6 : lease.address;
        if (!src) {
          this.opts.log({
            event: "warning",
            message: `route ${r}: the lease has no IPv${v6 ? 6 : 4} address`,
          });
          continue;
        }
        const fam = v6 ? ["-6"] : [];
        await ip(...fam, "route", "replace", r, "dev", dev, "src", src);
        this.undo.push(() => ip(...fam, "route", "del", r, "dev", dev).catch(() => {}));
      }
    }
    this.opts.log({ event: "lease", ...lease });
  }

  /**
   * Keeps the gateway reachable on the original path (when it is of this family), then points this family's default
   * route (0.0.0.0/0 or ::/0) into the tunnel.
   */
  private async takeDefaultRoute(dev: string, src: string, family: 4 | 6): Promise<void> {
    const fam = family === 6 ? ["-6"] : [];
    const gwIp = this.opts.gateway.slice(0, this.opts.gateway.lastIndexOf(":")).replace(/^\[|\]$/g, "");
    if (gwIp.includes(":") === (family === 6)) {
      const via = (await ip(...fam, "route", "get", gwIp)).split("\n")[0]!;
      const m = /^(\S+)(?: from \S+)?(?: via (\S+))? dev (\S+)/.exec(via);
      if (!m) throw new Error(`cannot tell how ${gwIp} is reached: ${via}`);
      const host = `${gwIp}/${family === 6 ? 128 : 32}`;
      await ip(...fam, "route", "replace", host, ...(m[2] ? ["via", m[2]] : []), "dev", m[3]!);
      this.undo.push(() => ip(...fam, "route", "del", host).catch(() => {}));
    }
    const old = (await ip(...fam, "route", "show", "default")).split("\n")[0]!.trim();
    await ip(...fam, "route", "replace", "default", "dev", dev, "src", src);
    this.undo.push(async () => {
      await ip(...fam, "route", "del", "default", "dev", dev).catch(() => {});
      if (old) await ip(...fam, "route", "replace", ...old.split(/\s+/)).catch(() => {});
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
