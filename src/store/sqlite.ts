/**
 * The single-gateway store: today's SQLite LeaseStore (src/gateway/leases.ts) behind the async LeaseBackend
 * interface, with its behaviour unchanged (same database, same addresses, same audit rows). What LeaseStore does
 * not keep is added here without touching its tables:
 * - the live set per app, rebuilt at open by replaying the audit log (written in the same transactions as the
 *   leases, so grants minus releases are exactly the live leases) and kept current on every change;
 * - revocations, in their own table of the same database file.
 * There is no cool-down (0) and no fencing: one gateway holds everything it has.
 */
import Database from "better-sqlite3";
import { EventEmitter } from "node:events";
import { LeaseStore } from "../gateway/leases.js";
import { ipToInt } from "../packet/ip.js";
import type { WhoAnswer } from "../gateway/audit.js";
import {
  InjectedFault,
  type AcquireRequest,
  type AcquireResult,
  type AcquireResult6,
  type AppPool,
  type FenceState,
  type LeaseBackend,
  type LeaseRecord,
  type Revocation,
  type StoreEvent,
  type StoreFaults,
} from "./interface.js";

interface Live {
  address: string;
  app: string;
  keyFp: string;
  /** grace end, as last set through this store */
  end: number;
}

export class SqliteStore implements LeaseBackend {
  readonly kind = "sqlite";
  readonly coolDownMs = 0;
  readonly faults: StoreFaults = { ambiguousCommits: 0, lostCommits: 0 };
  /** The wrapped store, for the code that still uses it synchronously. */
  readonly leases: LeaseStore;
  private readonly live = new Map<number, Live>();
  private readonly byAddress = new Map<string, number>();
  private readonly revDb: Database.Database;
  private readonly events = new EventEmitter();
  private rev = 0;
  private closed = false;
  /** No live lease ends before this (a lower bound: extensions only raise ends); -Infinity: not known. */
  private nextLapse = -Infinity;

  /** Same arguments as LeaseStore: the database file (":memory:" for tests), the app pools, reserved addresses. */
  constructor(
    path: string,
    apps: readonly AppPool[],
    reserved: readonly number[] = [],
    reserved6: readonly string[] = [],
  ) {
    this.leases = new LeaseStore(path, apps, reserved, reserved6);
    for (const r of this.leases.audit.since(0)) {
      if (r.event === "grant") this.track(r.leaseId, { ...r, end: -Infinity });
      else if (r.event === "release") this.untrack(r.leaseId);
    }
    // A second connection for the revocations: LeaseStore keeps its own private. For ":memory:" this is a second,
    // separate in-memory database, which lives as long as the store, as the leases do.
    this.revDb = new Database(path);
    this.revDb.exec(`CREATE TABLE IF NOT EXISTS revocations (
      kind TEXT NOT NULL, value TEXT NOT NULL, reason TEXT NOT NULL, t INTEGER NOT NULL, PRIMARY KEY (kind, value))`);
  }

  private track(id: number, l: Live): void {
    this.live.set(id, { address: l.address, app: l.app, keyFp: l.keyFp, end: l.end });
    this.nextLapse = Math.min(this.nextLapse, l.end);
    this.byAddress.set(l.address, id);
  }

  private untrack(id: number): Live | undefined {
    const l = this.live.get(id);
    if (!l) return undefined;
    this.live.delete(id);
    if (this.byAddress.get(l.address) === id) this.byAddress.delete(l.address);
    return l;
  }

  private emit(e: StoreEvent): void {
    this.events.emit("e", e);
  }

  private liveOf(app: string, keyFp: string): [number, Live] | undefined {
    for (const [id, l] of this.live) if (l.app === app && l.keyFp === keyFp) return [id, l];
    return undefined;
  }

  /** IPv6 leases: straight through to LeaseStore (one transaction), tracked and announced as IPv4 ones are. */
  async acquire6(req: AcquireRequest): Promise<AcquireResult6 | null> {
    this.assertOpen();
    const r = this.leases.acquire6(
      req.app,
      req.keyFp,
      req.measurement,
      req.outer,
      req.now,
      req.until,
      req.cert,
    );
    if (r?.resumed) {
      const l = this.live.get(r.id);
      if (l) l.end = req.until;
    }
    if (r && !r.resumed) {
      this.track(r.id, { address: r.address, app: req.app, keyFp: req.keyFp, end: req.until });
      this.emit({
        type: "lease",
        rev: ++this.rev,
        address: r.address,
        app: req.app,
        keyFp: req.keyFp,
        id: r.id,
        holder: "local",
      });
    }
    return r;
  }

  async addApps(apps: readonly AppPool[]): Promise<void> {
    this.leases.addApps(apps);
  }

  async acquire(req: AcquireRequest): Promise<AcquireResult | null> {
    this.assertOpen();
    // Lapsed leases are released first (LeaseStore would release them on the way, unseen by the live sets); only
    // when one may have lapsed, so a handshake does not pay a query over every live lease.
    if (req.now > this.nextLapse) await this.expire(req.now);
    const before = this.liveOf(req.app, req.keyFp)?.[0];
    for (let attempt = 0; ; attempt++) {
      try {
        if (attempt > 0) {
          // The read-back after an ambiguous commit: a live lease of this key that was not there before is the
          // grant of the attempt that reported an error; it is returned as granted, not granted twice.
          const mine = this.liveOf(req.app, req.keyFp);
          if (mine && mine[0] !== before)
            return { address: ipToInt(mine[1].address), resumed: false, id: mine[0] };
        }
        if (this.faults.lostCommits > 0) {
          this.faults.lostCommits--;
          throw new InjectedFault("commit lost before it reached the store");
        }
        const r = this.leases.acquire(
          req.app,
          req.keyFp,
          req.measurement,
          req.outer,
          req.now,
          req.until,
          req.cert,
        );
        if (r?.resumed) this.live.get(r.id)!.end = req.until;
        if (r && !r.resumed) {
          const rec = this.leases.get(r.id)!;
          this.track(r.id, rec);
          this.emit({
            type: "lease",
            rev: ++this.rev,
            address: rec.address,
            app: rec.app,
            keyFp: rec.keyFp,
            id: r.id,
            holder: "local",
          });
        }
        if (this.faults.ambiguousCommits > 0) {
          this.faults.ambiguousCommits--;
          throw new InjectedFault("commit succeeded but the reply was lost");
        }
        return r;
      } catch (e) {
        if (!(e instanceof InjectedFault) || attempt >= 7) throw e;
      }
    }
  }

  async extendMany(ends: Iterable<[number, number]>): Promise<void> {
    const rows = [...ends];
    this.leases.extendMany(rows);
    for (const [id, end] of rows) {
      const l = this.live.get(id);
      if (l) l.end = end; // nextLapse stays a lower bound; the next expire() makes it exact
    }
  }

  async release(id: number, now: number, reason = "released"): Promise<void> {
    this.leases.release(id, now, reason);
    const l = this.untrack(id);
    if (l) this.emit({ type: "lease-gone", rev: ++this.rev, address: l.address });
  }

  async expire(now: number): Promise<string[]> {
    const gone = this.leases.expire(now);
    for (const a of gone) {
      const id = this.byAddress.get(a);
      if (id !== undefined) this.untrack(id);
      this.emit({ type: "lease-gone", rev: ++this.rev, address: a });
    }
    this.nextLapse = Infinity;
    for (const [id, l] of this.live) {
      if (l.end === -Infinity) l.end = this.leases.get(id)?.end ?? -Infinity; // after a restart: read once
      this.nextLapse = Math.min(this.nextLapse, l.end);
    }
    return gone;
  }

  async get(id: number): Promise<LeaseRecord | undefined> {
    return this.leases.get(id);
  }

  async certOf(id: number): Promise<Buffer | undefined> {
    return this.leases.certOf(id);
  }

  async members(app: string): Promise<string[]> {
    return [...this.live.values()].filter((l) => l.app === app).map((l) => l.address);
  }

  async free(app: string): Promise<number> {
    return this.leases.free(app);
  }

  async revoke(r: Revocation): Promise<void> {
    this.revDb
      .prepare("INSERT OR REPLACE INTO revocations (kind, value, reason, t) VALUES (?, ?, ?, ?)")
      .run(r.kind, r.value, r.reason, r.t);
    this.emit({ type: "revoke", rev: ++this.rev, revocation: { ...r } });
  }

  async unrevoke(kind: Revocation["kind"], value: string): Promise<void> {
    const n = this.revDb
      .prepare("DELETE FROM revocations WHERE kind = ? AND value = ?")
      .run(kind, value).changes;
    if (n) this.emit({ type: "unrevoke", rev: ++this.rev, kind, value });
  }

  async revocations(): Promise<Revocation[]> {
    return this.revDb
      .prepare("SELECT kind, value, reason, t FROM revocations ORDER BY t, kind, value")
      .all() as Revocation[];
  }

  async who(address: string, at: number): Promise<WhoAnswer> {
    return this.leases.audit.who(address, at);
  }

  fence(): FenceState {
    return { held: !this.closed, provenUntil: this.closed ? 0 : Infinity };
  }

  async watch(onEvent: (e: StoreEvent) => void): Promise<() => void> {
    this.events.on("e", onEvent);
    return () => this.events.off("e", onEvent);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.events.removeAllListeners();
    this.leases.close();
    this.revDb.close();
  }

  private assertOpen(): void {
    if (this.closed) throw new Error("lease store is closed");
  }
}
