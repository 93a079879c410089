/**
 * Address leases in an embedded SQLite database (better-sqlite3): which tunnel holds which address of its app's
 * subnet. A lease is bound to the tunnel key's fingerprint and the app, so a runtime that reconnects with the same
 * key within the grace period gets the same address back, also after a gateway restart or kill -9 (WAL mode; each
 * change is committed before the address is used).
 *
 * Invariant, enforced by the database itself: an address has at most one lease that is not released
 * (a partial unique index), so no address is ever given to two live tunnels.
 */
import Database from "better-sqlite3";
import { intToIp, ipToInt, parseCidr } from "../packet/ip.js";

export interface LeaseRecord {
  id: number;
  address: string;
  app: string;
  keyFp: string;
  measurement: string;
  outer: string;
  start: number;
  end: number;
  released: number | null;
}

interface Pool {
  first: number;
  last: number;
  cursor: number;
  used: Set<number>;
}

export interface AcquireResult {
  address: number;
  /** True when an existing lease of this key was resumed. */
  resumed: boolean;
  id: number;
}

export class LeaseStore {
  private readonly db: Database.Database;
  private readonly pools = new Map<string, Pool>();
  private readonly stmts;

  /**
   * @param path SQLite file (":memory:" for tests)
   * @param apps each app's name and subnet; the network, broadcast and `reserved` addresses are never leased
   */
  constructor(
    path: string,
    apps: readonly { name: string; subnet: string }[],
    reserved: readonly number[] = [],
  ) {
    this.db = new Database(path);
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS leases (
        id INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        app TEXT NOT NULL,
        key_fp TEXT NOT NULL,
        measurement TEXT NOT NULL,
        outer TEXT NOT NULL,
        start INTEGER NOT NULL,
        end INTEGER NOT NULL,
        released INTEGER
      );
      CREATE UNIQUE INDEX IF NOT EXISTS leases_live_address ON leases(address) WHERE released IS NULL;
      CREATE INDEX IF NOT EXISTS leases_live_key ON leases(key_fp, app) WHERE released IS NULL;
      CREATE INDEX IF NOT EXISTS leases_address_time ON leases(address, start);
    `);
    this.stmts = {
      live: this.db.prepare("SELECT id, address, app, end FROM leases WHERE released IS NULL"),
      byKey: this.db.prepare(
        "SELECT id, address, end FROM leases WHERE released IS NULL AND key_fp = ? AND app = ?",
      ),
      insert: this.db.prepare(
        "INSERT INTO leases (address, app, key_fp, measurement, outer, start, end) VALUES (?, ?, ?, ?, ?, ?, ?)",
      ),
      extend: this.db.prepare("UPDATE leases SET end = ?, outer = ? WHERE id = ?"),
      extendEnd: this.db.prepare("UPDATE leases SET end = ? WHERE id = ? AND released IS NULL"),
      release: this.db.prepare(
        "UPDATE leases SET released = ?, end = MIN(end, ?) WHERE id = ? AND released IS NULL",
      ),
      expired: this.db.prepare("SELECT id, address, app FROM leases WHERE released IS NULL AND end < ?"),
      get: this.db.prepare("SELECT * FROM leases WHERE id = ?"),
    };
    for (const app of apps) {
      const { network, size } = parseCidr(app.subnet);
      const pool: Pool = {
        first: network + 1,
        last: network + size - 2,
        cursor: network + 1,
        used: new Set(reserved),
      };
      this.pools.set(app.name, pool);
    }
    for (const row of this.stmts.live.all() as { id: number; address: string; app: string; end: number }[]) {
      this.pools.get(row.app)?.used.add(ipToInt(row.address));
    }
  }

  /**
   * Resumes this key's live lease for `app`, or grants the lowest free address of the app's subnet.
   * Returns null when the pool is exhausted. `until` is when the lease lapses unless extended.
   */
  acquire(
    app: string,
    keyFp: string,
    measurement: string,
    outer: string,
    now: number,
    until: number,
  ): AcquireResult | null {
    const pool = this.pools.get(app);
    if (!pool) throw new Error(`no address pool for app ${app}`);
    const held = this.stmts.byKey.get(keyFp, app) as { id: number; address: string; end: number } | undefined;
    if (held && held.end >= now) {
      this.stmts.extend.run(until, outer, held.id);
      return { address: ipToInt(held.address), resumed: true, id: held.id };
    }
    if (held) this.releaseRow(held.id, ipToInt(held.address), app, now);
    let address = this.findFree(pool);
    if (address === undefined) {
      this.expire(now);
      address = this.findFree(pool);
      if (address === undefined) return null;
    }
    const id = Number(
      this.stmts.insert.run(intToIp(address), app, keyFp, measurement, outer, now, until).lastInsertRowid,
    );
    pool.used.add(address);
    return { address, resumed: false, id };
  }

  private findFree(pool: Pool): number | undefined {
    const n = pool.last - pool.first + 1;
    for (let i = 0; i < n; i++) {
      const a = pool.first + ((pool.cursor - pool.first + i) % n);
      if (!pool.used.has(a)) {
        pool.cursor = a === pool.last ? pool.first : a + 1;
        return a;
      }
    }
    return undefined;
  }

  /** Extends live leases (id → new end) in one transaction. */
  extendMany(ends: Iterable<[number, number]>): void {
    this.db.transaction((rows: Iterable<[number, number]>) => {
      for (const [id, end] of rows) this.stmts.extendEnd.run(end, id);
    })(ends);
  }

  /** Releases a lease now (revocation, or a grace period that ran out); its address becomes free. */
  release(id: number, now: number): void {
    const row = this.stmts.get.get(id) as
      { address: string; app: string; released: number | null } | undefined;
    if (row && row.released === null) this.releaseRow(id, ipToInt(row.address), row.app, now);
  }

  private releaseRow(id: number, address: number, app: string, now: number): void {
    this.stmts.release.run(now, now, id);
    this.pools.get(app)?.used.delete(address);
  }

  /** Releases every lease whose end has passed. Returns how many. */
  expire(now: number): number {
    const rows = this.stmts.expired.all(now) as { id: number; address: string; app: string }[];
    if (rows.length)
      this.db.transaction(() => rows.forEach((r) => this.releaseRow(r.id, ipToInt(r.address), r.app, now)))();
    return rows.length;
  }

  get(id: number): LeaseRecord | undefined {
    const r = this.stmts.get.get(id) as Record<string, unknown> | undefined;
    if (!r) return undefined;
    return {
      id: r.id as number,
      address: r.address as string,
      app: r.app as string,
      keyFp: r.key_fp as string,
      measurement: r.measurement as string,
      outer: r.outer as string,
      start: r.start as number,
      end: r.end as number,
      released: r.released as number | null,
    };
  }

  /** Free addresses left in an app's pool. */
  free(app: string): number {
    const p = this.pools.get(app);
    return p ? p.last - p.first + 1 - [...p.used].filter((a) => a >= p.first && a <= p.last).length : 0;
  }

  close(): void {
    this.db.close();
  }
}
