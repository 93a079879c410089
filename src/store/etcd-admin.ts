/**
 * The cluster seen from outside any gateway (the CLI: `seng cluster`, `seng audit who`, `seng status`): reads
 * leases, gateways, revocations and the audit trail, and writes revocations, without an etcd lease of its own.
 */
import { Keys, encode, prefixEnd, parseLease } from "./etcd-model.js";
import { EtcdSession, type EtcdTls } from "./etcd-session.js";
import { listRevocations, whoAt } from "./etcd-views.js";
import type { Revocation, WhoAnswer } from "./interface.js";

export interface ClusterView {
  rev: number;
  gateways: string[];
  /** live leases per holder gateway id (a holder that is no longer in `gateways` died; its leases lapse at its TTL) */
  leases: Record<string, number>;
  revocations: Revocation[];
}

export class ClusterAdmin {
  private readonly session: EtcdSession;
  private readonly keys: Keys;

  constructor(o: { hosts: string[]; tls?: EtcdTls; prefix?: string; callTimeoutMs?: number }) {
    this.session = EtcdSession.connect(o);
    this.keys = new Keys(o.prefix ?? "/seng/");
  }

  /** Records a revocation: every gateway cuts the matching tunnels and refuses them until it is lifted. */
  async revoke(r: Revocation): Promise<void> {
    await this.session.client.kv.put({
      key: Buffer.from(this.keys.revoke(r.kind, r.value)),
      value: encode({ reason: r.reason, t: r.t }),
    });
  }

  /** Lifts a revocation; false when there was none. */
  async unrevoke(kind: Revocation["kind"], value: string): Promise<boolean> {
    const r = await this.session.client.kv.deleteRange({ key: Buffer.from(this.keys.revoke(kind, value)) });
    return Number(r.deleted) > 0;
  }

  async revocations(): Promise<Revocation[]> {
    return await listRevocations(this.session, this.keys);
  }

  async who(address: string, at: number): Promise<WhoAnswer> {
    return await whoAt(this.session, this.keys, address, at);
  }

  async view(): Promise<ClusterView> {
    const range = async (prefix: string, revision?: number) =>
      await this.session.client.kv.range({
        key: Buffer.from(prefix),
        range_end: prefixEnd(prefix),
        ...(revision ? { revision: String(revision) } : {}),
      });
    const l = await range(this.keys.leases);
    const rev = Number(l.header.revision);
    const g = await range(this.keys.gateways, rev);
    const leases: Record<string, number> = {};
    for (const kv of l.kvs) {
      const v = parseLease(kv);
      if (v) leases[v.holder] = (leases[v.holder] ?? 0) + 1;
    }
    return {
      rev,
      gateways: g.kvs.map((kv) => kv.key.toString().slice(this.keys.gateways.length)),
      leases,
      revocations: await this.revocations(),
    };
  }

  async health(): Promise<{ endpoint: string; ok: boolean; leader: boolean; error?: string }[]> {
    return await this.session.health();
  }

  close(): void {
    this.session.close();
  }
}
