/**
 * The gateway's footprint in the kernel: its TUN interface's address, MTU and state, a route per app subnet, and IPv4
 * forwarding. Everything it changes is recorded and undone by `undo()` on shutdown.
 */
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { promisify } from "node:util";

const run = promisify(execFile);

async function ip(...args: string[]): Promise<void> {
  try {
    await run("ip", args);
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(" ")}: ${(err.stderr ?? err.message).trim()}`, { cause: e });
  }
}

export class SystemSetup {
  private readonly undos: (() => Promise<void> | void)[] = [];

  /** Gives the TUN its address and MTU, brings it up, and routes each subnet to it. */
  async configure(tun: string, address: string, mtu: number, subnets: readonly string[]): Promise<void> {
    await ip("addr", "add", address, "dev", tun);
    await ip("link", "set", "dev", tun, "mtu", String(mtu), "up");
    for (const s of subnets) {
      await ip("route", "replace", s, "dev", tun);
      this.undos.push(() => ip("route", "del", s, "dev", tun).catch(() => {}));
    }
    const fwd = "/proc/sys/net/ipv4/ip_forward";
    const before = readFileSync(fwd, "utf8").trim();
    if (before !== "1") {
      writeFileSync(fwd, "1");
      this.undos.push(() => writeFileSync(fwd, before));
    }
  }

  /** Routes more subnets to the TUN (apps added by a reload); undone with the rest. */
  async addRoutes(tun: string, subnets: readonly string[]): Promise<void> {
    for (const s of subnets) {
      await ip("route", "replace", s, "dev", tun);
      this.undos.push(() => ip("route", "del", s, "dev", tun).catch(() => {}));
    }
  }

  /** Removes routes added by {@link addRoutes} (a reload whose policy was refused). */
  async removeRoutes(tun: string, subnets: readonly string[]): Promise<void> {
    for (const s of subnets) await ip("route", "del", s, "dev", tun).catch(() => {});
  }

  /** Undoes everything, newest first. The TUN itself disappears when its file descriptor is closed. */
  async undo(): Promise<void> {
    while (this.undos.length) await this.undos.pop()!();
  }
}
