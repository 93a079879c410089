import { isIPv6 } from "node:net";

/**
 * Per-source token buckets for handshakes: a source may start `rate` handshakes per second with bursts of `burst`.
 * The table is bounded: when it is full, the least recently refilled half is forgotten (an attacker spraying
 * sources then only resets its own buckets, never grows memory).
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly maxSources = 65_536,
  ) {}

  /** Takes one token for `source` at time `now` (ms); false when the source is over its rate. */
  take(source: string, now: number): boolean {
    let b = this.buckets.get(source);
    if (!b) {
      if (this.buckets.size >= this.maxSources) this.evict();
      b = { tokens: this.burst, at: now };
      this.buckets.set(source, b);
    } else {
      b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
      b.at = now;
      // Keep insertion order ≈ recency, for eviction.
      this.buckets.delete(source);
      this.buckets.set(source, b);
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  private evict(): void {
    let n = this.buckets.size >> 1;
    for (const k of this.buckets.keys()) {
      if (n-- <= 0) break;
      this.buckets.delete(k);
    }
  }

  get size(): number {
    return this.buckets.size;
  }
}

/** One token bucket: `rate` a second, bursts of `burst` (all sources together). */
export class TokenBucket {
  private tokens: number;
  private at = 0;

  constructor(
    private readonly rate: number,
    private readonly burst: number,
  ) {
    this.tokens = burst;
  }

  /** Takes one token at time `now` (ms); false when there is none. */
  take(now: number): boolean {
    this.tokens = Math.min(this.burst, this.tokens + (Math.max(0, now - this.at) / 1000) * this.rate);
    this.at = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** The source IP of a peer string "ip:port" or "[ip6]:port". */
export function sourceIp(peer: string): string {
  if (peer.startsWith("[")) return peer.slice(1, peer.indexOf("]"));
  return peer.slice(0, peer.lastIndexOf(":"));
}

/**
 * What a handshake rate limit is keyed by: the source address for IPv4, its /64 prefix for IPv6 ("2001:2:0:1::/64";
 * a scoped link-local source keeps its scope: "fe80::/64%2"). One IPv6 host usually holds a whole /64 and can pick
 * any address in it, so per-address buckets would let it multiply its budget by 2^64.
 */
export function rateKey(peer: string): string {
  const ip = sourceIp(peer);
  if (!ip.includes(":")) return ip;
  const pct = ip.indexOf("%");
  const addr = pct < 0 ? ip : ip.slice(0, pct);
  const groups = ipv6Groups(addr);
  if (!groups) return ip; // not reached for the addon's peers (inet_ntop); keyed as it is
  const head = groups.slice(0, 4).map((g) => g.toString(16));
  while (head.length > 1 && head[head.length - 1] === "0") head.pop();
  const prefix = head.length === 1 && head[0] === "0" ? "::" : `${head.join(":")}::`;
  return `${prefix}/64${pct < 0 ? "" : ip.slice(pct)}`;
}

/** The eight 16-bit groups of a textual IPv6 address (with "::" and a dotted IPv4 tail), or undefined. */
function ipv6Groups(addr: string): number[] | undefined {
  if (!isIPv6(addr)) return undefined;
  let text = addr;
  const dot = text.lastIndexOf(".");
  if (dot >= 0) {
    const colon = text.lastIndexOf(":");
    const v4 = text
      .slice(colon + 1)
      .split(".")
      .map(Number);
    text = `${text.slice(0, colon + 1)}${((v4[0]! << 8) | v4[1]!).toString(16)}:${((v4[2]! << 8) | v4[3]!).toString(16)}`;
  }
  const [left, right] = text.includes("::") ? text.split("::") : [text, undefined];
  const l = left ? left.split(":") : [];
  const r = right === undefined ? [] : right ? right.split(":") : [];
  const fill = right === undefined ? 0 : 8 - l.length - r.length;
  return [...l, ...new Array<string>(fill).fill("0"), ...r].map((g) => parseInt(g, 16));
}
