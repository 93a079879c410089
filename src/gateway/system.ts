/**
 * The gateway's footprint in the kernel: its TUN interface's addresses, MTU and state, a route per app subnet and
 * IPv6 prefix, and IPv4 (and, with IPv6 apps, IPv6) forwarding. Everything it changes is recorded and undone by
 * `undo()` on shutdown.
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

  /**
   * Gives the TUN its address (and IPv6 address, `address6`) and MTU, brings it up, and routes each subnet and IPv6
   * prefix to it. With IPv6 the TUN gets no link-local address and sends no router solicitations or DAD probes
   * (nothing on a TUN answers them), and the namespace forwards IPv6.
   */
  async configure(
    tun: string,
    address: string,
    mtu: number,
    subnets: readonly string[],
    address6?: string,
  ): Promise<void> {
    if (address6) {
      // Before the link comes up: no fe80:: address (addr_gen_mode none), no DAD for our own address.
      this.sysctl(`/proc/sys/net/ipv6/conf/${tun}/addr_gen_mode`, "1", false);
      this.sysctl(`/proc/sys/net/ipv6/conf/${tun}/accept_dad`, "0", false);
      this.sysctl(`/proc/sys/net/ipv6/conf/${tun}/router_solicitations`, "0", false);
    }
    await ip("addr", "add", address, "dev", tun);
    if (address6) await ip("-6", "addr", "add", address6, "dev", tun, "nodad");
    await ip("link", "set", "dev", tun, "mtu", String(mtu), "up");
    await this.addRoutes(tun, subnets);
    this.sysctl("/proc/sys/net/ipv4/ip_forward", "1");
    if (address6 || subnets.some((s) => s.includes(":")))
      this.sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1");
  }

  /** Writes a sysctl; `restore`: put the old value back on undo (the TUN's own settings go with the TUN). */
  private sysctl(path: string, value: string, restore = true): void {
    let before: string;
    try {
      before = readFileSync(path, "utf8").trim();
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      throw new Error(
        `${path}: cannot read (${why})${path.includes("/ipv6/") ? ": is IPv6 disabled in this network namespace?" : ""}`,
        { cause: e },
      );
    }
    if (before === value) return;
    writeFileSync(path, value);
    if (restore) this.undos.push(() => writeFileSync(path, before));
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
