/**
 * The cluster store: leases in etcd (3.4's v3 API through the `etcd3` client), so several gateways share one
 * address space. docs/CLUSTER.md has the data model, the allocation transaction and the fencing rule. This file
 * holds the lease logic; the connection, the gateway's etcd lease and fencing are in etcd-session.ts, revocations,
 * the audit answer and the watch in etcd-views.ts, keys and values in etcd-model.ts.
 *
 * - Each gateway holds one etcd lease (TTL); its address keys are attached to it, so a crashed gateway's addresses
 *   are freed after the TTL.
 * - Allocation is one transaction: create-if-absent on `lease/<ip>` (create_revision == 0), with the owner index,
 *   the cool-down record and the audit record written in the same revision (so the audit record's create_revision
 *   is the lease id).
 * - Every write carries a nonce. After an error the outcome is unknown (the commit may have happened: lost reply,
 *   leader change, etcd restarting); the next attempt reads the lease back and, finding its own nonce, takes that
 *   commit as its result instead of writing again. So a retry neither doubles an address nor loses one.
 */
import type { IKeyValue } from "etcd3";
import { randomUUID, createHash } from "node:crypto";
import { intToIp, ipToInt, parseCidr } from "../packet/ip.js";
import {
  AUDIT_FIELDS,
  Keys,
  LAST_FIELDS,
  decode,
  encode,
  prefixEnd,
  parseLease,
  type AuditValue,
  type LastValue,
  type LeaseValue,
  type RevokeValue,
} from "./etcd-model.js";
import {
  EtcdSession,
  type EtcdTls,
  createIs,
  del,
  get,
  modIs,
  put,
  versionIs,
  type OpReq,
} from "./etcd-session.js";
import { listRevocations, revocationOf, watchStore, whoAt } from "./etcd-views.js";
import {
  FencedError,
  type AcquireRequest,
  type AcquireResult,
  type AppPool,
  type FenceState,
  type LeaseBackend,
  type LeaseRecord,
  type Revocation,
  type StoreEvent,
  type StoreFaults,
  type WhoAnswer,
} from "./interface.js";

export interface EtcdStoreOptions {
  /** etcd client URLs, e.g. ["http://127.0.0.1:2379"] */
  hosts: string[];
  /** This gateway's id, unique in the cluster and stable across restarts (a restart re-adopts its leases). */
  gatewayId: string;
  apps: readonly AppPool[];
  /** Addresses never leased (the gateway's own). */
  reserved?: readonly number[];
  /** The gateway's etcd lease TTL in seconds (default 10). etcd's minimum is 1.5 × its election timeout. */
  ttlSeconds?: number;
  /** How much earlier than the TTL the gateway fences itself (default 1000 ms): clock rate drift and reaction time. */
  fenceMarginMs?: number;
  /** Cool-down before a released address goes to another identity (default 60 s). */
  coolDownMs?: number;
  /** Key prefix (default "/seng/"); one per cluster. */
  prefix?: string;
  /** Deadline of each etcd call (default 5000 ms). */
  callTimeoutMs?: number;
  /** TLS to etcd: the CA to trust, and a client certificate and key when etcd authenticates clients. */
  tls?: EtcdTls;
}

interface Pool {
  first: number;
  last: number;
  cursor: number;
  /** Addresses believed taken: a hint that saves transactions, corrected by every failed create and refreshed when the pool looks full. */
  used: Set<number>;
}

interface Mine {
  address: string;
  modRev: number;
  value: LeaseValue;
}

const MAX_ATTEMPTS = 8;

/** A compare failed: someone else changed the keys between our read and our write; read again. */
class Conflict extends Error {}

export class EtcdStore implements LeaseBackend {
  readonly kind = "etcd";
  readonly coolDownMs: number;
  readonly gatewayId: string;
  private readonly pools = new Map<string, Pool>();
  private readonly byCidr = new Map<string, Pool>();
  private readonly reserved: readonly number[];
  /** Leases this gateway holds, by id (the create_revision of their lease key). */
  private readonly mine = new Map<number, Mine>();
  /** Audit keys of leases this gateway granted or held, for get() after release. */
  private readonly auditKeys = new Map<number, string>();
  /** An acquire failed after etcd errors: a commit nobody saw may hold an address; expire() adopts such leases. */
  private orphans = false;

  private constructor(
    private readonly session: EtcdSession,
    opts: EtcdStoreOptions,
    private readonly keys: Keys,
  ) {
    this.gatewayId = opts.gatewayId;
    this.coolDownMs = opts.coolDownMs ?? 60_000;
    this.reserved = opts.reserved ?? [];
  }

  /** Connects, takes this gateway's etcd lease and re-adopts the leases a previous run of this gateway held. */
  static async open(opts: EtcdStoreOptions): Promise<EtcdStore> {
    const keys = new Keys(opts.prefix ?? "/seng/");
    const session = await EtcdSession.open({
      hosts: opts.hosts,
      gatewayId: opts.gatewayId,
      gatewayKey: keys.gateway(opts.gatewayId),
      ttlSeconds: opts.ttlSeconds ?? 10,
      fenceMarginMs: opts.fenceMarginMs ?? 1000,
      callTimeoutMs: opts.callTimeoutMs ?? 5000,
      tls: opts.tls,
    });
    const s = new EtcdStore(session, opts, keys);
    try {
      await s.addApps(opts.apps);
      await s.adopt();
    } catch (e) {
      session.close();
      throw new Error(`etcd at ${opts.hosts.join(",")}: ${(e as Error).message}`, { cause: e });
    }
    return s;
  }

  /** Fault injection for the conformance suite. */
  get faults(): StoreFaults {
    return this.session.faults;
  }

  /** A restarted gateway (same id) moves its previous run's leases, still alive within the TTL, to its new lease. */
  private async adopt(): Promise<void> {
    for (const kv of await this.session.rangePrefix(this.keys.leases)) {
      const v = this.leaseValue(kv);
      if (!v || v.holder !== this.gatewayId) continue;
      const ip = kv.key.toString().slice(this.keys.leases.length);
      const r = await this.session.txn({
        compare: [modIs(this.keys.lease(ip), kv.mod_revision)],
        success: [this.putLease(ip, v), this.putOwner(v.app, v.keyFp, ip)],
      });
      if (r.succeeded) this.remember(Number(kv.create_revision), ip, Number(r.header.revision), v);
    }
  }

  fence(): FenceState {
    return this.session.fence();
  }

  async addApps(apps: readonly AppPool[]): Promise<void> {
    for (const app of apps) {
      let pool = this.byCidr.get(app.subnet);
      if (!pool) {
        const { network, size } = parseCidr(app.subnet);
        const first = network + 1;
        const last = network + size - 2;
        // Gateways start at different places of a pool, so concurrent allocations rarely collide.
        const n = Math.max(1, last - first + 1);
        const offset = createHash("sha256").update(this.gatewayId).digest().readUInt32BE(0) % n;
        pool = { first, last, cursor: first + offset, used: new Set(this.reserved) };
        this.byCidr.set(app.subnet, pool);
      }
      this.pools.set(app.name, pool);
    }
  }

  async acquire(req: AcquireRequest): Promise<AcquireResult | null> {
    if (!this.fence().held) throw new FencedError();
    const pool = this.pools.get(req.app);
    if (!pool) throw new Error(`no address pool for app ${req.app}`);
    const nonce = randomUUID();
    let lastError: unknown;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      try {
        // The first attempt goes straight to the allocation transaction, whose compare on the owner index detects
        // an existing lease of this key (one round trip for a new tunnel); later attempts read the owner first.
        return await this.acquireOnce(req, pool, nonce, attempt > 0);
      } catch (e) {
        if (e instanceof FencedError) throw e;
        // Conflict: read again. Any other error: the commit may or may not have happened; the next attempt reads
        // the owner index first and finds our nonce if it did.
        lastError = e;
        if (!(e instanceof Conflict)) {
          // Back off (50 ms doubling, at most 1 s: the attempts span a leader election), and remember that a lease
          // may have been committed that no caller knows of: expire() then looks for it.
          this.orphans = true;
          await sleep(Math.min(1000, 50 * 2 ** attempt));
        }
        if (!this.fence().held) throw new FencedError();
      }
    }
    throw new Error(
      `lease for app ${req.app} not settled after ${MAX_ATTEMPTS} attempts: ${(lastError as Error).message}`,
    );
  }

  private async acquireOnce(
    req: AcquireRequest,
    pool: Pool,
    nonce: string,
    readOwner: boolean,
  ): Promise<AcquireResult | null> {
    const ownerKey = this.keys.owner(req.app, req.keyFp);
    const owner = readOwner ? await this.session.getKv(ownerKey) : undefined;
    if (owner) {
      const ip = owner.value.toString();
      const kv = await this.session.getKv(this.keys.lease(ip));
      const v = kv && this.leaseValue(kv);
      if (kv && v && v.app === req.app && v.keyFp === req.keyFp) {
        const id = Number(kv.create_revision);
        if (v.nonce === nonce) {
          // An earlier attempt of this call committed, though it reported an error.
          this.remember(id, ip, Number(kv.mod_revision), v);
          return { address: ipToInt(ip), resumed: v.grant !== nonce, id };
        }
        if (v.end >= req.now) return await this.resume(req, ip, kv, v, nonce);
        await this.releaseKv(ip, kv, v, req.now, "expired", v.end);
        throw new Conflict("lapsed lease released");
      }
    }
    const r = await this.allocate(req, pool, nonce, owner);
    // No address was tried, so the owner index was never compared: this key may hold one. Look before saying no.
    if (r === null && !readOwner) return await this.acquireOnce(req, pool, nonce, true);
    return r;
  }

  /** The same key asks again within its grace: the lease moves to this gateway (a takeover if another held it). */
  private async resume(
    req: AcquireRequest,
    ip: string,
    kv: IKeyValue,
    v: LeaseValue,
    nonce: string,
  ): Promise<AcquireResult> {
    const audit = await this.session.getKv(v.audit);
    const next: LeaseValue = {
      ...v,
      end: req.until,
      outer: req.outer,
      holder: this.gatewayId,
      nonce,
      ...(req.cert ? { cert: req.cert.toString("base64") } : {}),
    };
    const success = [this.putLease(ip, next), this.putOwner(v.app, v.keyFp, ip)];
    const compare = [modIs(this.keys.lease(ip), kv.mod_revision)];
    if (audit) {
      const a = decode<AuditValue>(v.audit, audit.value, AUDIT_FIELDS);
      a.renews.push({ t: req.now, outer: req.outer });
      if (a.renews.length > 100) a.renews.splice(0, a.renews.length - 100);
      success.push(put(v.audit, a));
      compare.push(modIs(v.audit, audit.mod_revision));
    }
    const r = await this.session.txn({ compare, success });
    if (!r.succeeded) throw new Conflict("lease changed while resuming");
    const id = Number(kv.create_revision);
    this.remember(id, ip, Number(r.header.revision), next);
    return { address: ipToInt(ip), resumed: true, id };
  }

  private async allocate(
    req: AcquireRequest,
    pool: Pool,
    nonce: string,
    owner: IKeyValue | undefined,
  ): Promise<AcquireResult | null> {
    const ownerKey = this.keys.owner(req.app, req.keyFp);
    const ownerCmp = owner ? modIs(ownerKey, owner.mod_revision) : createIs(ownerKey, "0");
    const n = pool.last - pool.first + 1;
    const cooling = new Set<number>();
    for (let pass = 0; pass < 2; pass++) {
      for (let i = 0; i < n; i++) {
        const a = this.nextCandidate(pool, cooling);
        if (a === undefined) break;
        const ip = intToIp(a);
        let lastCmp = versionIs(this.keys.last(ip), "0");
        // At most a few rounds per candidate: the optimistic first try, then with the `last` record read.
        for (let round = 0; round < 3; round++) {
          const auditKey = this.keys.audit(ip, req.now, nonce);
          const value: LeaseValue = {
            app: req.app,
            keyFp: req.keyFp,
            measurement: req.measurement,
            outer: req.outer,
            start: req.now,
            end: req.until,
            holder: this.gatewayId,
            nonce,
            grant: nonce,
            audit: auditKey,
            ...(req.cert ? { cert: req.cert.toString("base64") } : {}),
          };
          const audit: AuditValue = {
            app: req.app,
            measurement: req.measurement,
            keyFp: req.keyFp,
            outer: req.outer,
            start: req.now,
            released: null,
            reason: null,
            renews: [],
          };
          const last: LastValue = {
            app: req.app,
            keyFp: req.keyFp,
            released: null,
            reason: null,
            audit: auditKey,
          };
          const r = await this.session.txn({
            compare: [createIs(this.keys.lease(ip), "0"), ownerCmp, lastCmp],
            success: [
              this.putLease(ip, value),
              this.putOwner(req.app, req.keyFp, ip),
              put(this.keys.last(ip), last),
              put(auditKey, audit),
            ],
            failure: [get(this.keys.lease(ip)), get(ownerKey), get(this.keys.last(ip))],
          });
          if (r.succeeded) {
            const id = Number(r.header.revision);
            pool.used.add(a);
            this.remember(id, ip, id, value);
            return { address: a, resumed: false, id };
          }
          const [leaseKv, ownerNow, lastKv] = r.responses.map((x) => x.response_range.kvs[0]);
          const held = leaseKv && this.leaseValue(leaseKv);
          if (leaseKv && held?.nonce === nonce) {
            // Our own commit, replayed by a retry below us.
            const id = Number(leaseKv.create_revision);
            this.remember(id, ip, Number(leaseKv.mod_revision), held);
            return { address: a, resumed: false, id };
          }
          if ((ownerNow?.mod_revision ?? "0") !== (owner?.mod_revision ?? "0"))
            throw new Conflict("this key has a lease (resume it) or got one meanwhile (another gateway?)");
          if (leaseKv) {
            pool.used.add(a);
            break;
          }
          if (!lastKv) break; // the `last` record vanished between compare and read: try the next address
          const lv = decode<LastValue>(lastKv.key.toString(), lastKv.value, LAST_FIELDS);
          if (lv.app !== req.app || lv.keyFp !== req.keyFp) {
            if (lv.released === null) {
              // Freed without a release: its holder's etcd lease expired. The cool-down counts from now.
              await this.markLost(ip, lastKv, lv, req.now);
              cooling.add(a);
              break;
            }
            if (req.now - lv.released < this.coolDownMs) {
              cooling.add(a);
              break;
            }
          }
          lastCmp = modIs(this.keys.last(ip), lastKv.mod_revision);
        }
      }
      if (pass === 0) await this.refreshUsed(pool);
    }
    return null;
  }

  private nextCandidate(pool: Pool, skip: Set<number>): number | undefined {
    const n = pool.last - pool.first + 1;
    for (let i = 0; i < n; i++) {
      const a = pool.first + ((pool.cursor - pool.first + i) % n);
      if (!pool.used.has(a) && !skip.has(a)) {
        pool.cursor = a === pool.last ? pool.first : a + 1;
        return a;
      }
    }
    return undefined;
  }

  /** Rebuilds a pool's hint from etcd (when it looks full: another gateway may have released addresses). */
  private async refreshUsed(pool: Pool): Promise<void> {
    pool.used = new Set(this.reserved);
    for (const kv of await this.session.rangePrefix(this.keys.leases, true)) {
      const a = ipToInt(kv.key.toString().slice(this.keys.leases.length));
      if (a >= pool.first && a <= pool.last) pool.used.add(a);
    }
  }

  /** Records that an address's holder vanished (its gateway's lease expired), in `last` and in the audit record. */
  private async markLost(ip: string, lastKv: IKeyValue, lv: LastValue, now: number): Promise<void> {
    const audit = await this.session.getKv(lv.audit);
    const success = [put(this.keys.last(ip), { ...lv, released: now, reason: "holder-lost" })];
    if (audit) {
      const a = decode<AuditValue>(lv.audit, audit.value, AUDIT_FIELDS);
      if (a.released === null)
        success.push(put(lv.audit, { ...a, released: now, freed: now, reason: "holder-lost" }));
    }
    await this.session.txn({ compare: [modIs(this.keys.last(ip), lastKv.mod_revision)], success });
  }

  async extendMany(ends: Iterable<[number, number]>): Promise<void> {
    await Promise.all(
      [...ends].map(async ([id, end]) => {
        for (let attempt = 0; attempt < 3; attempt++) {
          const m = this.mine.get(id);
          if (!m) return;
          const next = { ...m.value, end };
          const r = await this.session.txn({
            compare: [modIs(this.keys.lease(m.address), String(m.modRev))],
            success: [this.putLease(m.address, next)],
            failure: [get(this.keys.lease(m.address))],
          });
          if (r.succeeded) return this.remember(id, m.address, Number(r.header.revision), next);
          if (!this.stillMine(id, m.address, r.responses[0]!.response_range.kvs[0])) return;
        }
      }),
    );
  }

  /** After a failed compare: refreshes our copy if the lease is still ours, forgets it (returns false) if not. */
  private stillMine(id: number, ip: string, kv: IKeyValue | undefined): boolean {
    const v = kv && this.leaseValue(kv);
    if (!kv || !v || Number(kv.create_revision) !== id || v.holder !== this.gatewayId) {
      this.mine.delete(id);
      return false;
    }
    this.remember(id, ip, Number(kv.mod_revision), v);
    return true;
  }

  async release(id: number, now: number, reason = "released"): Promise<void> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const ip = this.mine.get(id)?.address ?? (await this.findLive(id))?.address;
      if (!ip) return;
      const kv = await this.session.getKv(this.keys.lease(ip));
      const v = kv && this.leaseValue(kv);
      // Gone, another lease on the address, or moved to another gateway (the key reconnected there): not ours.
      if (!kv || !v || Number(kv.create_revision) !== id || v.holder !== this.gatewayId) {
        this.mine.delete(id);
        return;
      }
      try {
        await this.releaseKv(ip, kv, v, now, reason, now);
        return;
      } catch (e) {
        if (attempt === MAX_ATTEMPTS - 1) throw e;
      }
    }
  }

  /** Deletes a lease (if unchanged since read), records the release in `last` and the audit record. */
  private async releaseKv(
    ip: string,
    kv: IKeyValue,
    v: LeaseValue,
    now: number,
    reason: string,
    at: number,
  ): Promise<void> {
    const audit = await this.session.getKv(v.audit);
    const success = [
      del(this.keys.lease(ip)),
      del(this.keys.owner(v.app, v.keyFp)),
      put(this.keys.last(ip), {
        app: v.app,
        keyFp: v.keyFp,
        released: now,
        reason,
        audit: v.audit,
      } satisfies LastValue),
    ];
    if (audit) {
      const a = decode<AuditValue>(v.audit, audit.value, AUDIT_FIELDS);
      success.push(put(v.audit, { ...a, released: Math.min(at, now), freed: now, reason }));
    }
    const r = await this.session.txn({ compare: [modIs(this.keys.lease(ip), kv.mod_revision)], success });
    if (!r.succeeded) throw new Conflict("lease changed while releasing");
    const id = Number(kv.create_revision);
    this.mine.delete(id);
    const pool = this.pools.get(v.app);
    pool?.used.delete(ipToInt(ip));
  }

  async expire(now: number): Promise<string[]> {
    if (this.orphans) {
      // Leases of this gateway that no caller was told about (its acquire gave up after an ambiguous error): take
      // them into our set, so that they lapse after their grace like any other lease instead of living forever.
      for (const kv of await this.session.rangePrefix(this.keys.leases)) {
        const v = this.leaseValue(kv);
        const id = Number(kv.create_revision);
        if (v?.holder === this.gatewayId && !this.mine.has(id))
          this.remember(id, kv.key.toString().slice(this.keys.leases.length), Number(kv.mod_revision), v);
      }
      this.orphans = false;
    }
    const gone: string[] = [];
    for (const [id, m] of [...this.mine]) {
      if (m.value.end >= now) continue;
      const kv = await this.session.getKv(this.keys.lease(m.address));
      if (!this.stillMine(id, m.address, kv)) continue;
      const v = this.mine.get(id)!.value;
      if (v.end >= now) continue;
      try {
        await this.releaseKv(m.address, kv!, v, now, "expired", v.end);
        gone.push(m.address);
      } catch (e) {
        if (!(e instanceof Conflict)) throw e; // changed meanwhile (resumed elsewhere): the next sweep sees it
      }
    }
    return gone;
  }

  async get(id: number): Promise<LeaseRecord | undefined> {
    const live = await this.findLive(id);
    if (live) return { id, address: live.address, ...pick(live.value), released: null };
    const auditKey = this.auditKeys.get(id);
    const a = auditKey && (await this.session.getKv(auditKey));
    if (!a) return undefined;
    const v = decode<AuditValue>(auditKey, a.value, AUDIT_FIELDS);
    const address = auditKey.slice(this.keys.prefix.length + "audit/".length).split("/")[0]!;
    return {
      id,
      address,
      app: v.app,
      keyFp: v.keyFp,
      measurement: v.measurement,
      outer: v.renews.at(-1)?.outer ?? v.outer,
      start: v.start,
      end: v.released ?? v.start,
      released: v.freed ?? v.released,
    };
  }

  /** The live lease with this id: ours from memory (checked in etcd), another gateway's by a scan. */
  private async findLive(id: number): Promise<{ address: string; value: LeaseValue } | undefined> {
    const m = this.mine.get(id);
    if (m) {
      const kv = await this.session.getKv(this.keys.lease(m.address));
      if (this.stillMine(id, m.address, kv)) return { address: m.address, value: this.mine.get(id)!.value };
      const v = kv && this.leaseValue(kv);
      if (kv && v && Number(kv.create_revision) === id) return { address: m.address, value: v };
      return undefined;
    }
    for (const kv of await this.session.rangePrefix(this.keys.leases)) {
      if (Number(kv.create_revision) !== id) continue;
      const v = this.leaseValue(kv);
      if (v) return { address: kv.key.toString().slice(this.keys.leases.length), value: v };
    }
    return undefined;
  }

  async certOf(id: number): Promise<Buffer | undefined> {
    const l = await this.findLive(id);
    return l?.value.cert ? Buffer.from(l.value.cert, "base64") : undefined;
  }

  async members(app: string): Promise<string[]> {
    const out: string[] = [];
    for (const kv of await this.session.rangePrefix(this.keys.leases)) {
      if (this.leaseValue(kv)?.app === app) out.push(kv.key.toString().slice(this.keys.leases.length));
    }
    return out;
  }

  async free(app: string): Promise<number> {
    const pool = this.pools.get(app);
    if (!pool) return 0;
    await this.refreshUsed(pool);
    return (
      pool.last - pool.first + 1 - [...pool.used].filter((a) => a >= pool.first && a <= pool.last).length
    );
  }

  async revoke(r: Revocation): Promise<void> {
    await this.session.txn({
      compare: [],
      success: [put(this.keys.revoke(r.kind, r.value), { reason: r.reason, t: r.t } satisfies RevokeValue)],
    });
  }

  async unrevoke(kind: Revocation["kind"], value: string): Promise<void> {
    await this.session.txn({ compare: [], success: [del(this.keys.revoke(kind, value))] });
  }

  async revocations(): Promise<Revocation[]> {
    return await listRevocations(this.session, this.keys);
  }

  async who(address: string, at: number): Promise<WhoAnswer> {
    return await whoAt(this.session, this.keys, address, at);
  }

  /**
   * Lease and revocation changes of every gateway, with progress notifications (etcd-views.ts); from `fromRev`
   * when given (after a {@link snapshot}: nothing is missed between the two), else from now.
   */
  async watch(onEvent: (e: StoreEvent) => void, fromRev?: number): Promise<() => void> {
    return await watchStore(this.session, this.keys, onEvent, fromRev);
  }

  /** Every live lease of the cluster and every revocation, at one etcd revision (a gateway's view starts here). */
  async snapshot(): Promise<ClusterSnapshot> {
    const range = async (prefix: string, revision?: number) =>
      await this.session.client.kv.range({
        key: Buffer.from(prefix),
        range_end: prefixEnd(prefix),
        ...(revision ? { revision: String(revision) } : {}),
      });
    const l = await range(this.keys.leases);
    const rev = Number(l.header.revision);
    const [g, r] = await Promise.all([range(this.keys.gateways, rev), range(this.keys.revokes, rev)]);
    const leases: ClusterSnapshot["leases"] = [];
    for (const kv of l.kvs) {
      const v = this.leaseValue(kv);
      if (v)
        leases.push({
          address: kv.key.toString().slice(this.keys.leases.length),
          app: v.app,
          keyFp: v.keyFp,
          measurement: v.measurement,
          id: Number(kv.create_revision),
          holder: v.holder,
        });
    }
    return {
      rev,
      leases,
      gateways: g.kvs.map((kv) => kv.key.toString().slice(this.keys.gateways.length)),
      revocations: r.kvs.flatMap((kv) => revocationOf(this.keys, kv) ?? []),
    };
  }

  /** The leases this gateway holds (also those in their grace period, without a tunnel). */
  own(): { id: number; address: string; app: string; keyFp: string; measurement: string }[] {
    return [...this.mine].map(([id, m]) => ({
      id,
      address: m.address,
      app: m.value.app,
      keyFp: m.value.keyFp,
      measurement: m.value.measurement,
    }));
  }

  /** The etcd mod_revision at which this gateway last wrote lease `id`, or undefined when it does not hold it. */
  heldAt(id: number): number | undefined {
    return this.mine.get(id)?.modRev;
  }

  /** etcd's view of its members and their health (for `seng status`). */
  async health(): Promise<{ endpoint: string; ok: boolean; leader: boolean; error?: string }[]> {
    return await this.session.health();
  }

  /** The RA-TLS certificates of every live lease in the cluster (a reload re-checks them against the new policy). */
  async liveCerts(): Promise<
    { address: string; app: string; keyFp: string; holder: string; cert?: Buffer }[]
  > {
    return (await this.session.rangePrefix(this.keys.leases)).flatMap((kv) => {
      const v = this.leaseValue(kv);
      if (!v) return [];
      const address = kv.key.toString().slice(this.keys.leases.length);
      const cert = v.cert ? Buffer.from(v.cert, "base64") : undefined;
      return [{ address, app: v.app, keyFp: v.keyFp, holder: v.holder, cert }];
    });
  }

  /** Stops keepalives and disconnects without revoking: the addresses stay until the TTL ends (a restart adopts them). */
  async close(): Promise<void> {
    this.session.close();
  }

  /** Ends this gateway's etcd lease now: every address it holds is freed at once (a clean decommission). */
  async revokeAll(): Promise<void> {
    await this.session.revoke();
  }

  // ---- etcd plumbing ----

  private remember(id: number, address: string, modRev: number, value: LeaseValue): void {
    this.mine.set(id, { address, modRev, value });
    this.auditKeys.set(id, value.audit);
    if (this.auditKeys.size > 100_000) this.auditKeys.delete(this.auditKeys.keys().next().value!);
  }

  private leaseValue(kv: IKeyValue): LeaseValue | undefined {
    return parseLease(kv);
  }

  private putLease(ip: string, v: LeaseValue): OpReq {
    return this.session.putLeased(this.keys.lease(ip), encode(v));
  }

  private putOwner(app: string, keyFp: string, ip: string): OpReq {
    return this.session.putLeased(this.keys.owner(app, keyFp), Buffer.from(ip));
  }
}

/** The cluster at one etcd revision: live leases of every gateway, the gateways, the revocations. */
export interface ClusterSnapshot {
  rev: number;
  leases: { address: string; app: string; keyFp: string; measurement: string; id: number; holder: string }[];
  gateways: string[];
  revocations: Revocation[];
}

function pick(v: LeaseValue): Omit<LeaseRecord, "id" | "address" | "released"> {
  return {
    app: v.app,
    keyFp: v.keyFp,
    measurement: v.measurement,
    outer: v.outer,
    start: v.start,
    end: v.end,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
