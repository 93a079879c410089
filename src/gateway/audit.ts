/**
 * Attribution audit log, in the same SQLite database as the leases (and written in the same transactions, so a lease
 * change and its audit row commit together and survive a restart or kill -9).
 *
 * One row per lease event: `grant` (a new lease), `renew` (a runtime resumed its lease, possibly from a new outer
 * address) and `release` (revoked, expired, or given up), with the time, address, app, measurement, the tunnel
 * key's fingerprint and the outer (underlay) address. Periodic extensions of a live lease are not logged: they do
 * not change who holds the address.
 *
 * `who(address, at)` answers which app held an address at a time — what a firewall log with addresses alone cannot.
 */
import Database from "better-sqlite3";
import { canonicalIp6 } from "../packet/addr6.js";

/** Addresses are stored as the gateway writes them: IPv6 in canonical text (RFC 5952); queries are made alike. */
const stored = (address: string): string =>
  address.includes(":") ? (canonicalIp6(address) ?? address) : address;

export type AuditEvent = "grant" | "renew" | "release";

export interface AuditRow {
  id: number;
  /** ms since the epoch */
  t: number;
  event: AuditEvent;
  leaseId: number;
  address: string;
  app: string;
  measurement: string;
  keyFp: string;
  outer: string;
  reason: string | null;
}

export interface WhoAnswer {
  address: string;
  at: number;
  /** The lease that held the address at `at`, or null. */
  holder: {
    app: string;
    measurement: string;
    keyFp: string;
    /** Outer address at `at` (a renewal may have moved it). */
    outer: string;
    leaseId: number;
    granted: number;
    released: number | null;
    releaseReason: string | null;
  } | null;
  /** When nobody held it: the last lease before `at`, if any (released before `at`). */
  previous: { app: string; leaseId: number; released: number | null } | null;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    t INTEGER NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('grant', 'renew', 'release')),
    lease_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    app TEXT NOT NULL,
    measurement TEXT NOT NULL,
    key_fp TEXT NOT NULL,
    outer TEXT NOT NULL,
    reason TEXT
  );
  CREATE INDEX IF NOT EXISTS audit_address_t ON audit(address, t);
  CREATE INDEX IF NOT EXISTS audit_lease ON audit(lease_id);
  CREATE INDEX IF NOT EXISTS audit_t ON audit(t);
`;

function toRow(r: Record<string, unknown>): AuditRow {
  return {
    id: r.id as number,
    t: r.t as number,
    event: r.event as AuditEvent,
    leaseId: r.lease_id as number,
    address: r.address as string,
    app: r.app as string,
    measurement: r.measurement as string,
    keyFp: r.key_fp as string,
    outer: r.outer as string,
    reason: (r.reason as string | null) ?? null,
  };
}

export class AuditLog {
  private readonly stmts;

  /** Creates the table if needed. `db` is the lease database (writer) or a read-only handle (CLI). */
  constructor(private readonly db: Database.Database) {
    if (!db.readonly) db.exec(SCHEMA);
    this.stmts = {
      insert: db.readonly
        ? undefined
        : db.prepare(
            "INSERT INTO audit (t, event, lease_id, address, app, measurement, key_fp, outer, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
          ),
      lastGrant: db.prepare(
        "SELECT * FROM audit WHERE address = ? AND event = 'grant' AND t <= ? ORDER BY t DESC, id DESC LIMIT 1",
      ),
      release: db.prepare("SELECT * FROM audit WHERE lease_id = ? AND event = 'release' ORDER BY id LIMIT 1"),
      lastRenew: db.prepare(
        "SELECT * FROM audit WHERE lease_id = ? AND event = 'renew' AND t <= ? ORDER BY t DESC, id DESC LIMIT 1",
      ),
      since: db.prepare("SELECT * FROM audit WHERE t >= ? ORDER BY id"),
    };
  }

  /** Opens a lease database read-only for queries (the gateway may be running: WAL allows it). */
  static openReadOnly(path: string): { audit: AuditLog; close: () => void } {
    const db = new Database(path, { readonly: true, fileMustExist: true });
    const has = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit'").get();
    if (!has) {
      db.close();
      throw new Error(`${path}: no audit log in this database (written by an older gateway?)`);
    }
    return { audit: new AuditLog(db), close: () => db.close() };
  }

  record(
    event: AuditEvent,
    t: number,
    lease: { id: number; address: string; app: string; measurement: string; keyFp: string; outer: string },
    reason: string | null = null,
  ): void {
    this.stmts.insert!.run(
      t,
      event,
      lease.id,
      lease.address,
      lease.app,
      lease.measurement,
      lease.keyFp,
      lease.outer,
      reason,
    );
  }

  /** Which lease held `address` at `at` (ms). */
  who(asked: string, at: number): WhoAnswer {
    const address = stored(asked);
    const g = this.stmts.lastGrant.get(address, at) as Record<string, unknown> | undefined;
    if (!g) return { address, at, holder: null, previous: null };
    const grant = toRow(g);
    const rel = this.stmts.release.get(grant.leaseId) as Record<string, unknown> | undefined;
    const released = rel ? toRow(rel) : undefined;
    if (released && released.t <= at)
      return {
        address,
        at,
        holder: null,
        previous: { app: grant.app, leaseId: grant.leaseId, released: released.t },
      };
    const renew = this.stmts.lastRenew.get(grant.leaseId, at) as Record<string, unknown> | undefined;
    return {
      address,
      at,
      holder: {
        app: grant.app,
        measurement: grant.measurement,
        keyFp: grant.keyFp,
        outer: renew ? toRow(renew).outer : grant.outer,
        leaseId: grant.leaseId,
        granted: grant.t,
        released: released?.t ?? null,
        releaseReason: released?.reason ?? null,
      },
      previous: null,
    };
  }

  /**
   * Rows matching every given filter, newest first, at most `limit` (1-1000, default 100): the admin API's audit
   * search. Filters are bound parameters, never pasted into the SQL.
   */
  query(q: {
    app?: string;
    event?: string;
    address?: string;
    since?: number;
    until?: number;
    limit?: number;
  }): AuditRow[] {
    const where: string[] = [];
    const args: (string | number)[] = [];
    const eq = (col: string, v: string | undefined) => {
      if (v === undefined) return;
      where.push(`${col} = ?`);
      args.push(v);
    };
    eq("app", q.app);
    eq("event", q.event);
    eq("address", q.address === undefined ? undefined : stored(q.address));
    if (q.since !== undefined) {
      where.push("t >= ?");
      args.push(q.since);
    }
    if (q.until !== undefined) {
      where.push("t <= ?");
      args.push(q.until);
    }
    const limit = Math.min(1000, Math.max(1, Math.trunc(q.limit ?? 100)));
    const sql = `SELECT * FROM audit${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY t DESC, id DESC LIMIT ${limit}`;
    return this.db
      .prepare(sql)
      .all(...args)
      .map((r) => toRow(r as Record<string, unknown>));
  }

  /** Every row since `since` (ms), oldest first. */
  *since(since: number): Generator<AuditRow> {
    for (const r of this.stmts.since.iterate(since)) yield toRow(r as Record<string, unknown>);
  }
}
