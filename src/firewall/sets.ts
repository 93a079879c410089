/**
 * Keeps nftables set elements in sync with the live tunnels, fast: one long-lived `nft -i` child fed one line per
 * batch over stdin. nft runs each input line as one transaction, so a batch is atomic and costs one netlink
 * round trip instead of a process start (`nft` per update is ~5 ms; a line of 2,000 elements is a few ms).
 *
 * Why this and not the alternatives: spawning `nft` per update cannot reach thousands of updates per second on a
 * small machine; a libnftnl/netlink binding would be native code for what is plain policy plumbing. `nft -i`
 * reading a pipe is supported by nft and keeps the kernel-facing parser nft's own.
 *
 * Batching: changes are queued per address; when no batch is in flight the queue is written at once (setImmediate),
 * otherwise when the batch in flight finishes, so the latency under light load is one round trip and the batch
 * size grows with the load. An add and a remove of one address in the same window cancel out.
 *
 * Error reporting per batch: after each batch line we send `list table inet sengmark<N>`, a table that does not
 * exist, so nft answers on stderr with an error that echoes the line; everything on stderr before marker N belongs
 * to batch N. A failed batch (e.g. an element someone else deleted) triggers a full resync: every set flushed and
 * refilled from our desired state in one transaction. If nft dies, it is restarted and the sets resynced.
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";

export interface SetSyncStats {
  /** Element additions and removals written. */
  updates: number;
  batches: number;
  errors: number;
  resyncs: number;
  /** Median ms from an address being queued to nft confirming it, over the last 1,000 additions. */
  addLatencyMedianMs: number;
}

/** Where a set lives: `inet seng seng_app_browser`. */
export type SetRef = string;

const MAX_BATCH = 2000;

export class SetSync {
  /** address → sets it should be in */
  private readonly want = new Map<string, SetRef[]>();
  /** address → sets nft has confirmed */
  private readonly have = new Map<string, SetRef[]>();
  private readonly dirty = new Map<string, number>(); // address → when queued (ms)
  private proc: ChildProcessWithoutNullStreams | undefined;
  private seq = 0;
  private stderr = "";
  /** The batch nft is running: per address, when it was queued and the sets the batch puts it in. */
  private inflight: { seq: number; addrs: Map<string, number>; sent: Map<string, SetRef[]> } | undefined;
  private scheduled = false;
  private retryAt = 0;
  private needResync = false;
  private closed = false;
  private exclusive: Promise<void> = Promise.resolve();
  private exclusiveDepth = 0;
  private readonly latencies: number[] = [];
  private readonly waiters: (() => void)[] = [];
  readonly stats = { updates: 0, batches: 0, errors: 0, resyncs: 0 };
  /** Called with the seconds from an address being queued to nft confirming it in its sets (metrics). */
  onAdded: ((seconds: number) => void) | undefined;

  /**
   * @param onError called with nft's error text for a failed batch (the sets are resynced afterwards)
   * @param nsExec optional command prefix (tests/benchmarks: `["ip", "netns", "exec", ns]`)
   */
  constructor(
    private readonly onError: (message: string) => void = () => {},
    private readonly nsExec: string[] = [],
  ) {}

  /** Sets the sets `address` belongs to (empty: none). Applied in the next batch. */
  set(address: string, sets: readonly SetRef[]): void {
    if (sets.length) this.want.set(address, [...sets]);
    else this.want.delete(address);
    if (!this.dirty.has(address)) this.dirty.set(address, performance.now());
    this.schedule();
  }

  /** Members per set as we want them (for a policy apply that rebuilds the sets in its own transaction). */
  members(): Map<SetRef, string[]> {
    const m = new Map<SetRef, string[]>();
    for (const [a, sets] of this.want) for (const s of sets) (m.get(s) ?? m.set(s, []).get(s)!).push(a);
    return m;
  }

  /** What we want now, address → sets (arrays are never mutated, so this is a snapshot). */
  snapshot(): Map<string, SetRef[]> {
    return new Map(this.want);
  }

  /**
   * Runs `fn` (e.g. a policy apply with `nft -f`) with no batch in flight. With `written`, the transaction rebuilt
   * the sets with exactly those members (address → sets, taken when the script was made): that is what the kernel
   * holds afterwards, and any address whose wanted sets changed meanwhile (a tunnel up or down during the apply) is
   * queued again.
   */
  async withExclusive<T>(
    fn: () => Promise<T>,
    written?: () => Map<string, SetRef[]> | undefined,
  ): Promise<T> {
    const prev = this.exclusive;
    let release!: () => void;
    this.exclusive = new Promise((r) => (release = r));
    await prev;
    this.exclusiveDepth++;
    try {
      await this.idle();
      const r = await fn();
      const w = written?.();
      if (w) this.adopt(w);
      return r;
    } finally {
      this.exclusiveDepth--;
      release();
      this.schedule();
    }
  }

  private adopt(written: Map<string, SetRef[]>): void {
    const now = performance.now();
    const before = new Set([...this.have.keys(), ...this.want.keys(), ...this.dirty.keys()]);
    this.have.clear();
    for (const [a, sets] of written) if (sets.length) this.have.set(a, sets);
    for (const a of new Set([...before, ...written.keys()])) {
      const want = this.want.get(a) ?? [];
      const have = this.have.get(a) ?? [];
      if (sameSets(want, have)) {
        const t = this.dirty.get(a);
        if (t !== undefined && want.length) this.recordLatency(now - t);
        this.dirty.delete(a);
      } else if (!this.dirty.has(a)) this.dirty.set(a, now);
    }
  }

  /** Resolves when nothing is queued or in flight. */
  async flushed(): Promise<void> {
    while (this.dirty.size || this.inflight || this.needResync)
      await new Promise<void>((r) => this.waiters.push(r));
  }

  private idle(): Promise<void> {
    return this.inflight ? new Promise<void>((r) => this.waiters.push(r)) : Promise.resolve();
  }

  getStats(): SetSyncStats {
    const l = [...this.latencies].sort((a, b) => a - b);
    return { ...this.stats, addLatencyMedianMs: l.length ? Math.round(l[l.length >> 1]! * 100) / 100 : 0 };
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.idle().catch(() => {});
    this.proc?.stdin.end();
    this.proc = undefined;
  }

  private schedule(): void {
    if (this.scheduled || this.inflight || this.closed || this.exclusiveDepth) return;
    if (!this.dirty.size && !this.needResync) {
      this.wake();
      return;
    }
    this.scheduled = true;
    const run = () => {
      this.scheduled = false;
      if (!this.inflight && !this.exclusiveDepth && !this.closed) this.send();
    };
    // After a failed batch, wait a little: a resync that keeps failing (our table deleted) must not spin.
    const wait = this.retryAt - performance.now();
    if (wait > 0) setTimeout(run, wait).unref();
    else setImmediate(run);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private start(): ChildProcessWithoutNullStreams {
    const [cmd, ...pre] = [...this.nsExec, "nft", "-i"];
    const p = spawn(cmd!, pre, { stdio: ["pipe", "pipe", "pipe"] });
    p.stdout.resume(); // nothing we send prints on stdout
    p.stderr.setEncoding("utf8").on("data", (d: string) => this.onStderr(d));
    p.stdin.on("error", () => {});
    p.on("error", (e) => this.onExit(`nft: ${e.message}`));
    p.on("close", (code) => this.onExit(`nft -i exited (${code})`));
    return p;
  }

  private onExit(why: string): void {
    if (this.closed) return;
    this.proc = undefined;
    this.stats.errors++;
    this.onError(why);
    this.needResync = true;
    const f = this.inflight;
    this.inflight = undefined;
    if (f) for (const [a, t] of f.addrs) if (!this.dirty.has(a)) this.dirty.set(a, t);
    this.wake();
    // Back off a little so a missing nft binary does not spin.
    this.retryAt = performance.now() + 500;
    this.schedule();
  }

  private send(): void {
    const lines: string[] = [];
    const addrs = new Map<string, number>();
    const sent = new Map<string, SetRef[]>();
    if (this.needResync) {
      // Flush and refill every set we manage, in one transaction.
      this.stats.resyncs++;
      this.needResync = false;
      const sets = new Set<SetRef>();
      for (const s of [...this.have.values(), ...this.want.values()]) for (const r of s) sets.add(r);
      const members = this.members();
      const parts: string[] = [];
      for (const s of sets) {
        parts.push(`flush set ${s}`);
        const m = members.get(s);
        if (m?.length) parts.push(`add element ${s} { ${m.join(", ")} }`);
      }
      for (const [a, t] of this.dirty) addrs.set(a, t);
      for (const a of this.want.keys()) if (!addrs.has(a)) addrs.set(a, -1);
      for (const a of this.have.keys()) if (!addrs.has(a)) addrs.set(a, -1);
      for (const a of addrs.keys()) sent.set(a, this.want.get(a) ?? []);
      this.dirty.clear();
      if (parts.length) lines.push(parts.join("; "));
    } else {
      const adds = new Map<SetRef, string[]>();
      const dels = new Map<SetRef, string[]>();
      for (const [a, t] of this.dirty) {
        if (addrs.size >= MAX_BATCH) break;
        addrs.set(a, t);
        const want = this.want.get(a) ?? [];
        const have = this.have.get(a) ?? [];
        sent.set(a, want);
        for (const s of want) if (!have.includes(s)) (adds.get(s) ?? adds.set(s, []).get(s)!).push(a);
        for (const s of have) if (!want.includes(s)) (dels.get(s) ?? dels.set(s, []).get(s)!).push(a);
      }
      for (const a of addrs.keys()) this.dirty.delete(a);
      const parts: string[] = [];
      for (const [s, l] of dels) parts.push(`delete element ${s} { ${l.join(", ")} }`);
      for (const [s, l] of adds) parts.push(`add element ${s} { ${l.join(", ")} }`);
      this.stats.updates += [...adds.values(), ...dels.values()].reduce((n, l) => n + l.length, 0);
      if (parts.length) lines.push(parts.join("; "));
    }
    if (!lines.length) {
      // Nothing to change (e.g. add and remove cancelled out).
      for (const a of addrs.keys()) this.have.set(a, this.want.get(a) ?? []);
      for (const a of addrs.keys()) if (!this.want.has(a)) this.have.delete(a);
      return this.schedule();
    }
    this.proc ??= this.start();
    const seq = ++this.seq;
    this.stats.batches++;
    this.inflight = { seq, addrs, sent };
    this.proc.stdin.write(`${lines.join("\n")}\nlist table inet sengmark${seq}\n`);
  }

  private onStderr(d: string): void {
    this.stderr += d;
    for (;;) {
      const f = this.inflight;
      if (!f) {
        this.stderr = "";
        return;
      }
      const marker = `list table inet sengmark${f.seq}`;
      const i = this.stderr.indexOf(marker);
      if (i < 0) return;
      // The marker's own error ("Error: No such file or directory") is the last "Error:" before it.
      const before = this.stderr.slice(0, i);
      const cut = before.lastIndexOf("Error:");
      const errors = before.slice(0, cut < 0 ? 0 : cut).trim();
      // The marker's error ends with a caret line under the table name: wait for all of it.
      const nl = this.stderr.indexOf("\n", i + marker.length);
      const caret = nl < 0 ? -1 : this.stderr.indexOf("\n", nl + 1);
      if (caret < 0) return;
      this.stderr = this.stderr.slice(caret + 1);
      this.inflight = undefined;
      this.finish(f, errors);
    }
  }

  private finish(f: { addrs: Map<string, number>; sent: Map<string, SetRef[]> }, errors: string): void {
    if (errors) {
      this.stats.errors++;
      this.onError(errors);
      this.needResync = true;
      this.retryAt = performance.now() + 500;
    } else {
      // The kernel now holds what the batch sent, not what we want now: an address changed while the batch was in
      // flight is dirty again and gets its own diff in the next batch.
      const now = performance.now();
      for (const [a, t] of f.addrs) {
        const sent = f.sent.get(a) ?? [];
        if (sent.length) this.have.set(a, sent);
        else this.have.delete(a);
        if (sent.length && t >= 0 && !this.dirty.has(a)) this.recordLatency(now - t);
      }
    }
    this.schedule();
    this.wake(); // waiters re-check; withExclusive may run between batches
  }

  private recordLatency(ms: number): void {
    this.onAdded?.(ms / 1000);
    this.latencies.push(ms);
    if (this.latencies.length > 1000) this.latencies.splice(0, this.latencies.length - 1000);
  }
}

function sameSets(a: readonly SetRef[], b: readonly SetRef[]): boolean {
  return a.length === b.length && a.every((x) => b.includes(x));
}
