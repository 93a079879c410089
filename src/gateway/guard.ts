/**
 * Kernel-side drops of abusive outer peers. A tunnel over its abuse budget is throttled, and one that keeps at it is
 * closed (receive.ts, tunnel.ts); its datagrams still arrive by the hundred thousand a second, and each one costs a
 * socket enqueue, a recvmmsg copy and a JavaScript lookup before it can be dropped, while it crowds the other
 * tunnels' datagrams out of the socket's queue. The guard has nftables drop that peer's (ip, port) datagrams to the
 * gateway's port in the raw prerouting hook, before the socket, for the throttle period (or longer after a close).
 *
 * Its own table `inet seng_guard` (a set with timeouts and a rule per family: `peers` of ipv4_addr . port,
 * `peers6` of ipv6_addr . port), created at start and deleted at stop; never the policy table. IPv6 peers are
 * blocked by address and port as IPv4 ones are (what the rate limit keys by /64 is admission, not this). Additions are batched: at most one `nft` call per FLUSH_MS. Without nftables (or when a call
 * fails) the gateway keeps dropping those datagrams in JavaScript, before decryption, as before.
 */
import { nft } from "../firewall/nft.js";
import type { Logger } from "./log.js";

export const GUARD_TABLE = "seng_guard";
const FLUSH_MS = 100;

export class PeerGuard {
  private pending = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private active = false;
  private busy = false;
  /** Elements added, and nft calls that failed. */
  readonly stats = { blocked: 0, errors: 0 };

  constructor(
    private readonly port: number,
    private readonly log: Logger,
  ) {}

  /** Creates the table (replacing one left by a crashed gateway). Failure leaves the guard off, logged. */
  async start(): Promise<void> {
    const script = [
      `add table inet ${GUARD_TABLE}`,
      `delete table inet ${GUARD_TABLE}`,
      `table inet ${GUARD_TABLE} {`,
      `  set peers { type ipv4_addr . inet_service; flags timeout; size 65536; }`,
      `  set peers6 { type ipv6_addr . inet_service; flags timeout; size 65536; }`,
      `  chain pre { type filter hook prerouting priority raw; policy accept;`,
      `    udp dport ${this.port} ip saddr . udp sport @peers drop`,
      `    udp dport ${this.port} ip6 saddr . udp sport @peers6 drop`,
      `  }`,
      `}`,
      "",
    ].join("\n");
    try {
      await nft(["-f", "-"], script);
      this.active = true;
    } catch (e) {
      this.log.log("warn", "peer-guard-unavailable", {
        error: (e as Error).message,
        note: "abusive tunnels' datagrams are dropped in the gateway process only",
      });
    }
  }

  /**
   * Drops datagrams from `peer` ("a.b.c.d:port" or "[v6]:port") in the kernel for `ms`. A scoped (link-local)
   * peer is left to the gateway: the set cannot hold its scope.
   */
  block(peer: string, ms: number): void {
    if (!this.active || peer.includes("%")) return;
    this.pending.set(peer, Math.max(this.pending.get(peer) ?? 0, Math.ceil(ms)));
    this.timer ??= setTimeout(() => void this.flush(), FLUSH_MS);
  }

  private async flush(): Promise<void> {
    this.timer = undefined;
    if (this.busy || !this.pending.size) {
      if (this.pending.size) this.timer = setTimeout(() => void this.flush(), FLUSH_MS);
      return;
    }
    const batch = [...this.pending];
    this.pending.clear();
    const v4 = batch.filter(([peer]) => !peer.startsWith("["));
    const v6 = batch.filter(([peer]) => peer.startsWith("["));
    this.busy = true;
    try {
      // "add" leaves an element already in the set (and its timeout) as it is: add, delete, add again, so the new
      // timeout counts; one transaction for both families.
      await nft(["-f", "-"], setScript("peers", v4) + setScript("peers6", v6));
      this.stats.blocked += batch.length;
    } catch (e) {
      this.stats.errors++;
      this.log.limited("peer-guard-failed", 10_000, "warn", "peer-guard-failed", {
        error: (e as Error).message,
      });
    } finally {
      this.busy = false;
    }
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.pending.clear();
    if (!this.active) return;
    this.active = false;
    await nft(["delete", "table", "inet", GUARD_TABLE]).catch(() => {});
  }
}

/** "a.b.c.d:port" / "[v6]:port" as an nft set key "addr . port". */
function element(peer: string): string {
  const i = peer.lastIndexOf(":");
  return `${peer.slice(0, i).replace(/^\[|\]$/g, "")} . ${peer.slice(i + 1)}`;
}

/** Add, delete, add with the timeout, for one set; empty when nothing goes to it. */
function setScript(name: string, batch: [string, number][]): string {
  if (!batch.length) return "";
  const set = `inet ${GUARD_TABLE} ${name}`;
  const keys = batch.map(([peer]) => element(peer)).join(", ");
  const elements = batch.map(([peer, ms]) => `${element(peer)} timeout ${ms}ms`).join(", ");
  return `add element ${set} { ${keys} }\ndelete element ${set} { ${keys} }\nadd element ${set} { ${elements} }\n`;
}
