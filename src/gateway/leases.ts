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
 *
 * IPv6: an app with an IPv6 prefix (`subnet6` or the shared `pool6`) gets one IPv6 lease beside its IPv4 one, as a
 * row of its own (`family` 6, the address in canonical text), so the unique index, resume, expiry and the audit log
 * work the same for both families. Databases from before IPv6 get the `family` column (every old row is IPv4).
 */
import { chmodSync, closeSync, openSync, statSync } from "node:fs";
import Database from "better-sqlite3";
import { intToIp, ipToInt, parseCidr } from "../packet/ip.js";
import { addOffset6, formatIp6, inPrefix6, parseCidr6, parseIp6, type Prefix6 } from "../packet/addr6.js";
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

/** An IPv6 pool: host offsets 1 .. size-1 of the prefix (the all-zero subnet-router anycast address is never leased). */
interface Pool6 {
  prefix: Prefix6;
  size: bigint;
  cursor: bigint;
  /** Leased and reserved addresses, canonical text. */
  used: Set<string>;
}

/** The address families of an app: its IPv4 subnet and IPv6 prefix (own or shared), at least one. */
export interface LeaseApp {
  name: string;
  subnet?: string | undefined;
  subnet6?: string | undefined;
}

/** An IPv6 lease: the address in canonical text. */
export interface AcquireResult6 {
  address: string;
  resumed: boolean;
  id: number;
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
   * @param apps each app's name, subnet and IPv6 prefix; the network, broadcast and `reserved` addresses are never
   *   leased, nor the IPv6 prefixes' all-zero addresses and `reserved6` (canonical text)
   */
  constructor(
    path: string,
    apps: readonly LeaseApp[],
    reserved: readonly number[] = [],
    reserved6: readonly string[] = [],
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
    // IPv6 leases are rows of family 6; every row of an older database is an IPv4 lease and keeps its place.
    if (!cols.some((c) => c.name === "family"))
      this.db.exec("ALTER TABLE leases ADD COLUMN family INTEGER NOT NULL DEFAULT 4");
    this.stmts = {
      live: this.db.prepare("SELECT id, address, app, end FROM leases WHERE released IS NULL"),
      byKey: this.db.prepare(
        "SELECT id, address, end FROM leases WHERE released IS NULL AND key_fp = ? AND app = ? AND family = ?",
      ),
      insert: this.db.prepare(
        "INSERT INTO leases (address, app, key_fp, measurement, outer, start, end, cert, family) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    this.reserved6 = reserved6;
    this.addApps(apps);
  }

  private readonly reserved: readonly number[];
  private readonly reserved6: readonly string[];
  private readonly byCidr = new Map<string, Pool>();
  private readonly pools6 = new Map<string, Pool6>();
  private readonly byCidr6 = new Map<string, Pool6>();

  /** Adds address pools for apps not seen yet (at start, and for apps a reload adds). */
  addApps(apps: readonly LeaseApp[]): void {
    this.addApps6(apps);
    const fresh: Pool[] = [];
    for (const app of apps) {
      if (!app.subnet) continue;
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
      if (row.address.includes(":")) continue;
      const a = ipToInt(row.address);
      for (const p of fresh) if (a >= p.first && a <= p.last) p.used.add(a);
    }
  }

  private addApps6(apps: readonly LeaseApp[]): void {
    const fresh: Pool6[] = [];
    for (const app of apps) {
      if (!app.subnet6) continue;
      if (this.pools6.has(app.name) && this.pools6.get(app.name) === this.byCidr6.get(app.subnet6)) continue;
      let pool = this.byCidr6.get(app.subnet6);
      if (!pool) {
        const prefix = parseCidr6(app.subnet6);
        pool = { prefix, size: 1n << BigInt(128 - prefix.prefix), cursor: 1n, used: new Set() };
        for (const r of this.reserved6) {
          const b = parseIp6(r);
          if (b && inPrefix6(prefix, b)) pool.used.add(formatIp6(b));
        }
        this.byCidr6.set(app.subnet6, pool);
        fresh.push(pool);
      }
      this.pools6.set(app.name, pool);
    }
    if (!fresh.length) return;
    for (const row of this.stmts.live.all() as { address: string }[]) {
      const b = row.address.includes(":") ? parseIp6(row.address) : undefined;
      if (b) for (const p of fresh) if (inPrefix6(p.prefix, b)) p.used.add(formatIp6(b));
    }
  }

  /** Whether `app` has an IPv6 pool. */
  has6(app: string): boolean {
    return this.pools6.has(app);
  }

  /**
   * The IPv6 counterpart of {@link acquire}: resumes this key's live IPv6 lease for `app`, or grants a free address
   * of the app's IPv6 prefix (in order from the prefix's first address). Null when the prefix is exhausted.
   */
  acquire6(
    app: string,
    keyFp: string,
    measurement: string,
    outer: string,
    now: number,
    until: number,
    cert?: Buffer,
  ): AcquireResult6 | null {
    const pool = this.pools6.get(app);
    if (!pool) throw new Error(`no IPv6 address pool for app ${app}`);
    return this.db.transaction((): AcquireResult6 | null => {
      const held = this.stmts.byKey.get(keyFp, app, 6) as
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
        return { address: held.address, resumed: true, id: held.id };
      }
      if (held) this.releaseRow(held.id, now, "expired", held.end);
      let address = this.findFree6(pool);
      if (address === undefined) {
        this.expire(now);
        address = this.findFree6(pool);
        if (address === undefined) return null;
      }
      const id = Number(
        this.stmts.insert.run(address, app, keyFp, measurement, outer, now, until, cert ?? null, 6)
          .lastInsertRowid,
      );
      pool.used.add(address);
      this.audit.record("grant", now, { id, address, app, measurement, keyFp, outer });
      return { address, resumed: false, id };
    })();
  }

  /** The next free IPv6 address from the cursor: at most used+1 probes, since at most `used` are taken. */
  private findFree6(pool: Pool6): string | undefined {
    const n = pool.size - 1n; // offsets 1 .. size-1
    const probes = BigInt(pool.used.size) + 1n;
    for (let i = 0n; i < probes && i < n; i++) {
      const off = 1n + ((pool.cursor - 1n + i) % n);
      const a = formatIp6(addOffset6(pool.prefix, off));
      if (!pool.used.has(a)) {
        pool.cursor = off === n ? 1n : off + 1n;
        return a;
      }
    }
    return undefined;
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
      const held = this.stmts.byKey.get(keyFp, app, 4) as
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
        this.stmts.insert.run(ip, app, keyFp, measurement, outer, now, until, cert ?? null, 4)
          .lastInsertRowid,
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
    if (r.address.includes(":")) this.pools6.get(r.app)?.used.delete(r.address);
    else this.pools.get(r.app)?.used.delete(ipToInt(r.address));
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
