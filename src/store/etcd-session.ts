/**
 * A gateway's session with etcd: the client, the gateway's one etcd lease (TTL) with its keepalives, the
 * self-fencing rule, and the plumbing every etcd operation of the store goes through (transactions with the
 * conformance suite's fault injection, reads).
 *
 * Fencing: `fence().held` is true only while the last acknowledged keepalive, counted from when it was SENT, plus
 * the TTL, minus a margin, lies in the future. etcd expires the lease no earlier than TTL after the leader received
 * that keepalive, so the gateway stops before anyone else can take its addresses (docs/CLUSTER.md).
 */
import { circuitBreaker, ConsecutiveBreaker, handleWhen, noop } from "cockatiel";
import {
  Etcd3,
  isRecoverableError,
  type IKeyValue,
  type IRangeRequest,
  type ITxnRequest,
  type ITxnResponse,
  type Lease,
} from "etcd3";
import { performance } from "node:perf_hooks";
import { encode, prefixEnd } from "./etcd-model.js";
import { InjectedFault, type FenceState, type StoreFaults } from "./interface.js";

export interface SessionOptions {
  /** etcd client URLs, e.g. ["http://127.0.0.1:2379"] */
  hosts: string[];
  gatewayId: string;
  /** the gateway's key (`gw/<id>`), attached to its lease: who is in the cluster */
  gatewayKey: string;
  ttlSeconds: number;
  fenceMarginMs: number;
  callTimeoutMs: number;
  tls?: EtcdTls;
}

/** TLS to etcd: PEM files' contents. */
export interface EtcdTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** The client's credentials option for `tls` (undefined: plain http). */
export function credentialsOf(tls: EtcdTls | undefined) {
  if (!tls?.ca && !tls?.cert) return undefined;
  return {
    rootCertificate: tls.ca ?? Buffer.alloc(0),
    ...(tls.cert && tls.key ? { certChain: tls.cert, privateKey: tls.key } : {}),
  };
}

export type OpReq = NonNullable<ITxnRequest["success"]>[number];
export type Cmp = NonNullable<ITxnRequest["compare"]>[number];

export class EtcdSession {
  readonly faults: StoreFaults = { ambiguousCommits: 0, lostCommits: 0 };
  /** The gateway's etcd lease id: every key attached to it goes when the gateway's keepalives stop for a TTL. */
  leaseId = "";
  private lease: Lease | undefined;
  /** performance.now() until which holding the etcd lease is proven. */
  private provenUntil = 0;
  /** performance.now() of keepalives sent and not yet acknowledged, oldest first. */
  private readonly fired: number[] = [];
  private lost = false;
  private closedFlag = false;

  private constructor(
    readonly client: Etcd3,
    private readonly marginMs: number,
    private readonly opts: SessionOptions,
  ) {}

  /** Each etcd member's health as seen from this gateway: reachable, leader, or the error. */
  async health(): Promise<{ endpoint: string; ok: boolean; leader: boolean; error?: string }[]> {
    let urls = this.opts.hosts;
    try {
      const m = await this.client.cluster.memberList({});
      const found = m.members.flatMap((x) => x.clientURLs).filter((u) => u);
      if (found.length) urls = found;
    } catch {
      // no quorum or unreachable: ask the configured endpoints one by one
    }
    return await Promise.all(
      urls.map(async (endpoint) => {
        const one = new Etcd3({
          hosts: [endpoint],
          credentials: credentialsOf(this.opts.tls),
          dialTimeout: 1000,
          defaultCallOptions: () => ({ deadline: Date.now() + 1000 }),
          faultHandling: { global: noop, host: () => noop },
        });
        try {
          const st = await one.maintenance.status();
          return { endpoint, ok: true, leader: st.leader === st.header.member_id };
        } catch (e) {
          return { endpoint, ok: false, leader: false, error: (e as Error).message.split("\n")[0] };
        } finally {
          one.close();
        }
      }),
    );
  }

  /**
   * Connects without taking a lease or joining as a gateway: for the CLI (`seng cluster`, `seng audit who`,
   * `seng status`), which reads the cluster and writes revocations.
   */
  static connect(o: { hosts: string[]; tls?: EtcdTls; callTimeoutMs?: number }): EtcdSession {
    const ms = o.callTimeoutMs ?? 3000;
    const client = new Etcd3({
      hosts: o.hosts,
      credentials: credentialsOf(o.tls),
      dialTimeout: ms,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + ms }),
      faultHandling: { global: noop, host: () => noop },
    });
    const s = new EtcdSession(client, 0, {
      hosts: o.hosts,
      gatewayId: "cli",
      gatewayKey: "",
      ttlSeconds: 0,
      fenceMarginMs: 0,
      callTimeoutMs: ms,
      tls: o.tls,
    });
    s.closedFlag = false;
    return s;
  }

  /** Connects and takes the gateway's lease. Errors name the etcd endpoints. */
  static async open(o: SessionOptions): Promise<EtcdSession> {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(o.gatewayId))
      throw new Error(`gateway id '${o.gatewayId}': expected 1-64 letters, digits, '.', '_' or '-'`);
    if (!Number.isInteger(o.ttlSeconds) || o.ttlSeconds < 1)
      throw new Error(`etcd lease TTL ${o.ttlSeconds}: expected a whole number of seconds ≥ 1`);
    // Keepalives go every TTL/3: a margin past 2/3 of the TTL would fence a healthy gateway between two of them.
    if (!(o.fenceMarginMs >= 0 && o.fenceMarginMs < (o.ttlSeconds * 2000) / 3))
      throw new Error(
        `fence margin ${o.fenceMarginMs} ms: expected at least 0 and less than 2/3 of the TTL (${o.ttlSeconds} s)`,
      );
    const client = new Etcd3({
      hosts: o.hosts,
      credentials: credentialsOf(o.tls),
      dialTimeout: o.callTimeoutMs,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + o.callTimeoutMs }),
      faultHandling: {
        // No blind retries inside the client: a replayed transaction is exactly the ambiguous commit the store
        // resolves itself (nonce read-back). The per-host breaker is kept, but probes again after 1 s (default 5 s,
        // which turned a one-second etcd restart into five seconds of refused tunnels).
        global: noop,
        host: () =>
          circuitBreaker(handleWhen(isRecoverableError), {
            halfOpenAfter: 1000,
            breaker: new ConsecutiveBreaker(3),
          }),
      },
    });
    const s = new EtcdSession(client, o.fenceMarginMs, o);
    try {
      await s.takeLease(o.ttlSeconds);
      await client.kv.put({
        key: Buffer.from(o.gatewayKey),
        value: encode({ id: o.gatewayId, started: Date.now() }),
        lease: s.leaseId,
      });
    } catch (e) {
      s.lease?.release();
      client.close();
      throw new Error(`etcd at ${o.hosts.join(",")}: ${(e as Error).message}`, { cause: e });
    }
    return s;
  }

  private async takeLease(ttl: number): Promise<void> {
    const sent = performance.now();
    this.lease = this.client.lease(ttl);
    this.lease.on("keepaliveFired", () => this.fired.push(performance.now()));
    this.lease.on("keepaliveSucceeded", (res: { TTL: string }) => {
      // Replies come in order on the stream, so the oldest outstanding send is the one acknowledged.
      const at = this.fired.shift();
      if (at === undefined) return;
      this.provenUntil = Math.max(this.provenUntil, at + Number(res.TTL) * 1000 - this.marginMs);
    });
    this.lease.on("keepaliveFailed", () => (this.fired.length = 0));
    this.lease.on("lost", () => (this.lost = true));
    this.leaseId = await this.lease.grant();
    this.provenUntil = sent + ttl * 1000 - this.marginMs;
  }

  fence(): FenceState {
    const left = this.provenUntil - performance.now();
    const held = !this.lost && !this.closedFlag && left > 0;
    return { held, provenUntil: held ? Date.now() + left : 0 };
  }

  /** A put attached to the gateway's lease. */
  putLeased(key: string, value: Buffer): OpReq {
    return { request_put: { key: Buffer.from(key), value, lease: this.leaseId } };
  }

  async getKv(key: string): Promise<IKeyValue | undefined> {
    return (await this.client.kv.range({ key: Buffer.from(key) })).kvs[0];
  }

  async rangePrefix(prefix: string, keysOnly = false): Promise<IKeyValue[]> {
    return (
      await this.client.kv.range({
        key: Buffer.from(prefix),
        range_end: prefixEnd(prefix),
        keys_only: keysOnly,
      })
    ).kvs;
  }

  async range(req: IRangeRequest): Promise<IKeyValue[]> {
    return (await this.client.kv.range(req)).kvs;
  }

  /** One transaction, through the fault injection of the conformance suite. */
  async txn(req: ITxnRequest): Promise<ITxnResponse> {
    if (this.closedFlag) throw new Error("lease store is closed");
    if (this.faults.lostCommits > 0) {
      this.faults.lostCommits--;
      throw new InjectedFault("commit lost before it reached etcd");
    }
    const r = await this.client.kv.txn(req);
    if (r.succeeded && this.faults.ambiguousCommits > 0) {
      this.faults.ambiguousCommits--;
      throw new InjectedFault("commit succeeded but the reply was lost");
    }
    return r;
  }

  /** Stops keepalives and disconnects without revoking: the gateway's keys stay until the TTL ends. */
  close(): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.lease?.release();
    this.client.close();
  }

  /** Ends the gateway's etcd lease now: every key attached to it goes at once. */
  async revoke(): Promise<void> {
    await this.lease?.revoke();
    this.close();
  }
}

export function modIs(key: string, rev: string): Cmp {
  return { key: Buffer.from(key), target: "Mod", result: "Equal", mod_revision: rev };
}
export function createIs(key: string, rev: string): Cmp {
  return { key: Buffer.from(key), target: "Create", result: "Equal", create_revision: rev };
}
export function versionIs(key: string, version: string): Cmp {
  return { key: Buffer.from(key), target: "Version", result: "Equal", version };
}
export function put(key: string, v: unknown): OpReq {
  return { request_put: { key: Buffer.from(key), value: encode(v) } };
}
export function del(key: string): OpReq {
  return { request_delete_range: { key: Buffer.from(key) } };
}
export function get(key: string): OpReq {
  return { request_range: { key: Buffer.from(key) } };
}
