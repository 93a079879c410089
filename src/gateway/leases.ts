/**
 * Address leases in an embedded SQLite database (better-sqlite3): which tunnel holds which address of its app's
 * subnet. A lease is bound to the tunnel key's fingerprint and the app, so a runtime that reconnects with the same
 * key within the grace period gets the same address back, also after a gateway restart or kill -9 (WAL mode; each
 * change is committed before the address is used).
 *
 * Invariant, enforced by the database itself: an address has at most one lease that is not released
 * (a partial unique index), so no address is ever given to two live tunnels.
 *
 * Apps with the same subnet (the shared `pool`) share one address pool. Every grant, renewal and release is also
 * written to the audit log (audit.ts) in the same transaction.
 */
import { chmodSync, closeSync, openSync, statSync } from "node:fs";
import Database from "better-sqlite3";
import { intToIp, ipToInt, parseCidr } from "../packet/ip.js";
import { AuditLog } from "./audit.js";

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

/** The database's own files: SQLite gives the WAL and shared-memory files the main file's mode when it makes them. */
const STATE_SUFFIXES = ["", "-wal", "-shm", "-journal"];

/**
 * The lease database holds the audit trail and the runtimes' certificates: only the gateway's user may read it.
 * Creates the file with mode 0600 when it does not exist (so SQLite's -wal and -shm inherit 0600), and makes any of
 * its files that others can read 0600. Returns the files whose mode was changed, with their old mode.
 */
export function secureStateFiles(path: string): { file: string; mode: string }[] {
  if (path === "" || path === ":memory:" || path.startsWith("file:")) return [];
  try {
    closeSync(openSync(path, "wx", 0o600)); // an empty file is an empty SQLite database
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "EEXIST")
      throw new Error(`database: ${path}: cannot create it (${code ?? (e as Error).message})`, {
        cause: e,
      });
  }
  const fixed: { file: string; mode: string }[] = [];
  for (const suffix of STATE_SUFFIXES) {
    const file = path + suffix;
    let mode: number;
    try {
      mode = statSync(file).mode & 0o777;
    } catch {
      continue; // not there
    }
    if (mode & 0o077) {
      try {
        chmodSync(file, 0o600);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
        throw new Error(
          `database: ${file}: open to group or others (mode ${mode.toString(8)}) and cannot be made 600 (${code})`,
          { cause: e },
        );
      }
      fixed.push({ file, mode: mode.toString(8) });
    }
  }
  return fixed;
}

export class LeaseStore {
  private readonly db: Database.Database;
  /** State files whose mode was too open at start and made 0600 (the gateway logs them). */
  readonly fixedModes: { file: string; mode: string }[];
  private readonly pools = new Map<string, Pool>();
  private readonly stmts;
  readonly audit: AuditLog;

  /**
   * @param path SQLite file (":memory:" for tests)
   * @param apps each app's name and subnet; the network, broadcast and `reserved` addresses are never leased
   */
  constructor(
    path: string,
    apps: readonly { name: string; subnet: string }[],
    reserved: readonly number[] = [],
  ) {
    this.fixedModes = secureStateFiles(path);
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
    // The runtime's RA-TLS certificate, kept on disk rather than in memory (a reload re-verifies it; the admin API
    // shows its claims). Databases of older gateways get the column here.
    const cols = this.db.prepare("PRAGMA table_info(leases)").all() as { name: string }[];
    if (!cols.some((c) => c.name === "cert")) this.db.exec("ALTER TABLE leases ADD COLUMN cert BLOB");
    this.stmts = {
      live: this.db.prepare("SELECT id, address, app, end FROM leases WHERE released IS NULL"),
      byKey: this.db.prepare(
        "SELECT id, address, end FROM leases WHERE released IS NULL AND key_fp = ? AND app = ?",
      ),
      insert: this.db.prepare(
        "INSERT INTO leases (address, app, key_fp, measurement, outer, start, end, cert) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      ),
      extend: this.db.prepare("UPDATE leases SET end = ?, outer = ?, cert = coalesce(?, cert) WHERE id = ?"),
      cert: this.db.prepare("SELECT cert FROM leases WHERE id = ?"),
      extendEnd: this.db.prepare("UPDATE leases SET end = ? WHERE id = ? AND released IS NULL"),
      release: this.db.prepare(
        "UPDATE leases SET released = ?, end = MIN(end, ?) WHERE id = ? AND released IS NULL",
      ),
      expired: this.db.prepare("SELECT * FROM leases WHERE released IS NULL AND end < ?"),
      get: this.db.prepare("SELECT * FROM leases WHERE id = ?"),
    };
    this.audit = new AuditLog(this.db);
    // -wal and -shm exist now; SQLite made them with the database's mode, checked here rather than assumed.
    this.fixedModes.push(...secureStateFiles(path));
    this.reserved = reserved;
    this.addApps(apps);
  }

  private readonly reserved: readonly number[];
  private readonly byCidr = new Map<string, Pool>();

  /** Adds address pools for apps not seen yet (at start, and for apps a reload adds). */
  addApps(apps: readonly { name: string; subnet: string }[]): void {
    const fresh: Pool[] = [];
    for (const app of apps) {
      // An app re-added with another subnet (removed in one reload, back in a later one) gets the new pool.
      if (this.pools.has(app.name) && this.pools.get(app.name) === this.byCidr.get(app.subnet)) continue;
      let pool = this.byCidr.get(app.subnet);
      if (!pool) {
        const { network, size } = parseCidr(app.subnet);
        pool = {
          first: network + 1,
          last: network + size - 2,
          cursor: network + 1,
          used: new Set(this.reserved),
        };
        this.byCidr.set(app.subnet, pool);
        fresh.push(pool);
      }
      this.pools.set(app.name, pool);
    }
    // Every live lease inside a new pool's range is taken, whichever app holds it (a lease in its grace period of a
    // removed app, say): the unique index would refuse a second live lease of the address anyway.
    if (!fresh.length) return;
    for (const row of this.stmts.live.all() as { address: string }[]) {
      const a = ipToInt(row.address);
      for (const p of fresh) if (a >= p.first && a <= p.last) p.used.add(a);
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
    cert?: Buffer,
  ): AcquireResult | null {
    const pool = this.pools.get(app);
    if (!pool) throw new Error(`no address pool for app ${app}`);
    return this.db.transaction((): AcquireResult | null => {
      const held = this.stmts.byKey.get(keyFp, app) as
        { id: number; address: string; end: number } | undefined;
      if (held && held.end >= now) {
        this.stmts.extend.run(until, outer, cert ?? null, held.id);
        this.audit.record("renew", now, {
          id: held.id,
          address: held.address,
          app,
          measurement,
          keyFp,
          outer,
        });
        return { address: ipToInt(held.address), resumed: true, id: held.id };
      }
      if (held) this.releaseRow(held.id, now, "expired", held.end);
      let address = this.findFree(pool);
      if (address === undefined) {
        this.expire(now);
        address = this.findFree(pool);
        if (address === undefined) return null;
      }
      const ip = intToIp(address);
      const id = Number(
        this.stmts.insert.run(ip, app, keyFp, measurement, outer, now, until, cert ?? null).lastInsertRowid,
      );
      pool.used.add(address);
      this.audit.record("grant", now, { id, address: ip, app, measurement, keyFp, outer });
      return { address, resumed: false, id };
    })();
  }

  /** The RA-TLS certificate (DER) the lease was granted or last renewed with. */
  certOf(id: number): Buffer | undefined {
    const r = this.stmts.cert.get(id) as { cert: Buffer | null } | undefined;
    return r?.cert ?? undefined;
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
  release(id: number, now: number, reason = "released"): void {
    this.db.transaction(() => this.releaseRow(id, now, reason))();
  }

  /** Marks a lease released at min(now, end) and logs it; `at` is when it lapsed, for expiries found late. */
  private releaseRow(id: number, now: number, reason: string, at = now): void {
    const r = this.get(id);
    if (!r || r.released !== null) return;
    this.stmts.release.run(now, now, id);
    this.pools.get(r.app)?.used.delete(ipToInt(r.address));
    this.audit.record("release", Math.min(at, now), r, reason);
  }

  /** Releases every lease whose end has passed (audit time: when it lapsed). Returns their addresses. */
  expire(now: number): string[] {
    const rows = this.stmts.expired.all(now) as { id: number; end: number; address: string }[];
    if (rows.length)
      this.db.transaction(() => rows.forEach((r) => this.releaseRow(r.id, now, "expired", r.end)))();
    return rows.map((r) => r.address);
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
