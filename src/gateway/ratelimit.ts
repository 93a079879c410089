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
