/**
 * The gateway's lease store: the embedded SQLite database (one gateway, the default) or etcd (several gateways as
 * one system, the `cluster:` section). Both behind src/store/'s LeaseBackend, so the lease path (admission,
 * extension, release, expiry, reload) is the same code for both.
 */
import { readFileSync } from "node:fs";
import type { GatewayConfig } from "../policy/config.js";
import type { VerifyOptions } from "../attest/verify.js";
import { revocationReason } from "./reload.js";
import { EtcdStore } from "../store/etcd.js";
import type { LeaseBackend, Revocation, StoreEvent } from "../store/interface.js";
import { ipToInt } from "../packet/ip.js";
import { performance } from "node:perf_hooks";
import { SqliteStore } from "../store/sqlite.js";
import type { Logger } from "./log.js";
import type { Gateway } from "./server.js";

/** Opens the store the configuration names. Errors name the file and key (etcd) or the database. */
export async function openStore(c: GatewayConfig, reserved: number[], log: Logger): Promise<LeaseBackend> {
  if (!c.cluster) {
    const s = new SqliteStore(c.database, c.apps, reserved);
    for (const f of s.leases.fixedModes) log.log("warn", "state-file-mode-fixed", { ...f, now: "600" });
    return s;
  }
  const k = c.cluster;
  const store = await EtcdStore.open({
    hosts: k.etcd.endpoints,
    gatewayId: k.gatewayId,
    apps: c.apps,
    reserved,
    ttlSeconds: k.ttl,
    fenceMarginMs: k.fenceMarginMs,
    coolDownMs: k.coolDown * 1000,
    prefix: k.etcd.prefix,
    tls: {
      ca: k.etcd.ca ? readFileSync(k.etcd.ca) : undefined,
      cert: k.etcd.cert ? readFileSync(k.etcd.cert) : undefined,
      key: k.etcd.key ? readFileSync(k.etcd.key) : undefined,
    },
  }).catch((e: Error) => {
    throw new Error(`${c.file}: cluster.etcd: ${e.message}`, { cause: e });
  });
  log.log("info", "cluster-joined", {
    gatewayId: k.gatewayId,
    endpoints: k.etcd.endpoints,
    ttl: k.ttl,
    prefix: k.etcd.prefix,
  });
  return store;
}

/** A gateway's cluster state (metrics, `seng status`). */
export interface ClusterStats {
  gatewayId: string;
  fenced: boolean;
  fencings: number;
  refused: { fenced: number; stale: number; revoked: number };
  /** Seconds since the watch last delivered a change or a progress notification (how stale the view may be). */
  viewAgeSeconds: number;
  /** Other gateways' leases in this gateway's sets. */
  remoteLeases: number;
  revocations: number;
}

/** Why this gateway must not admit a tunnel now, with a short stable code; undefined when it may. */
export interface Refusal {
  reason: string;
  code: string;
}

/**
 * A gateway's part in the cluster (etcd mode only): it fences itself when it can no longer prove that it holds its
 * etcd lease (src/store/etcd-session.ts: before etcd can expire the lease and another gateway take its addresses),
 * and then refuses new tunnels and closes its leased ones (they reconnect, here once it is proven again, or at
 * another gateway, which takes their leases over).
 */
export class ClusterLink {
  /** True while fenced; `fencings` counts the times it happened (metrics). */
  fenced = false;
  fencings = 0;
  /** New tunnels refused, by why: fenced, stale view, revoked (metrics). */
  readonly refused = { fenced: 0, stale: 0, revoked: 0 };
  /** performance.now() when the watch last spoke (a change or a progress notification). */
  heardAt = performance.now();
  /** Other gateways' live leases in this gateway's sets: address → app. */
  readonly remote = new Map<string, string>();
  private readonly revoked = new Map<string, Revocation>();
  private stopWatch: (() => void) | undefined;

  constructor(
    readonly store: EtcdStore,
    private readonly staleAfterMs: number,
  ) {}

  /**
   * Loads the cluster at one revision (other gateways' leases into the firewall sets, the revocations) and watches
   * from the next revision, so nothing is missed between the two.
   */
  async start(gw: Gateway): Promise<void> {
    const snap = await this.store.snapshot();
    for (const r of snap.revocations) this.revoked.set(`${r.kind}/${r.value}`, r);
    for (const l of snap.leases)
      this.onEvent(gw, {
        type: "lease",
        rev: snap.rev,
        address: l.address,
        app: l.app,
        keyFp: l.keyFp,
        id: l.id,
        holder: l.holder,
      });
    this.heardAt = performance.now();
    this.stopWatch = await this.store.watch((e) => this.onEvent(gw, e), snap.rev + 1);
  }

  stop(): void {
    this.stopWatch?.();
  }

  /** Told each lease acquisition's duration in seconds (metrics: etcd latency as the handshake sees it). */
  onAcquire: ((seconds: number) => void) | undefined;

  /** For metrics and the admin API's status. */
  stats(): ClusterStats {
    return {
      gatewayId: this.store.gatewayId,
      fenced: this.fenced,
      fencings: this.fencings,
      refused: { ...this.refused },
      viewAgeSeconds: this.viewAgeSeconds,
      remoteLeases: this.remote.size,
      revocations: this.revoked.size,
    };
  }

  /** Seconds since the watch last spoke (metrics: how stale this gateway's view may be). */
  get viewAgeSeconds(): number {
    return (performance.now() - this.heardAt) / 1000;
  }

  private onEvent(gw: Gateway, e: StoreEvent): void {
    this.heardAt = performance.now();
    const me = this.store.gatewayId;
    if (e.type === "lease") {
      const local = gw.byAddress.get(ipToInt(e.address));
      if (e.holder === me) {
        this.remote.delete(e.address); // taken over by this gateway: its own tunnel holds the set element now
        return;
      }
      if (local && (this.store.heldAt(local.leaseId) ?? 0) < e.rev) {
        // The key reconnected at another gateway, which took the lease over: this tunnel must stop forwarding.
        gw.close(local, "shutting-down", `the lease moved to gateway ${e.holder}`, true, true);
      }
      this.remote.set(e.address, e.app);
      gw.firewall.tunnelUp(e.address, e.app);
    } else if (e.type === "lease-gone") {
      const local = gw.byAddress.get(ipToInt(e.address));
      if (local && local.leaseId < e.rev && (this.store.heldAt(local.leaseId) ?? 0) < e.rev) {
        // Our lease was deleted under us (TTL ran out in etcd, or an old leader revoked it): fail closed.
        gw.close(local, "shutting-down", "the lease is gone from the cluster store", true, false);
      }
      if (this.remote.delete(e.address) && !gw.byAddress.has(ipToInt(e.address))) {
        gw.firewall.tunnelDown(e.address);
        gw.cutFlows(e.address);
      }
    } else if (e.type === "revoke") {
      const r = e.revocation;
      this.revoked.set(`${r.kind}/${r.value}`, r);
      for (const t of [...gw.byAddress.values()]) {
        if (matches(r, t.app, t.keyFp, t.measurement))
          gw.close(t, "revoked", `revoked in the cluster (${r.kind} ${r.value}): ${r.reason}`);
      }
      // Leases in their grace period (no tunnel) go too: a revoked identity must not come back to its address,
      // and other gateways keep a lease's address in their sets until the lease is released.
      for (const l of this.store.own()) {
        if (matches(r, l.app, l.keyFp, l.measurement) && !gw.byAddress.has(ipToInt(l.address)))
          gw.storeCall("release", this.store.release(l.id, gw.now(), "revoked"));
      }
      gw.log.log("info", "cluster-revocation", { kind: r.kind, value: r.value, reason: r.reason });
    } else if (e.type === "unrevoke") {
      this.revoked.delete(`${e.kind}/${e.value}`);
    }
  }

  /**
   * After a reload on this gateway: the other gateways' tunnels whose certificate the new configuration no longer
   * admits get a `key` revocation in etcd, so every gateway cuts them within about a second (their own
   * configuration may still be the old one). Returns how many were revoked; errors are logged, never thrown.
   */
  async revokeOthers(gw: Gateway, apps: GatewayConfig["apps"], verify: VerifyOptions): Promise<number> {
    let n = 0;
    try {
      for (const l of await this.store.liveCerts()) {
        if (l.holder === this.store.gatewayId) continue; // this gateway's own tunnels were judged by the reload
        const why = revocationReason(l.cert, l.app, apps, verify);
        if (!why) continue;
        await this.store.revoke({
          kind: "key",
          value: l.keyFp,
          reason: `reload on ${this.store.gatewayId}: ${why}`,
          t: Date.now(),
        });
        n++;
      }
    } catch (e) {
      gw.log.log("error", "cluster-reload-revocations-failed", { error: (e as Error).message });
    }
    return n;
  }

  /** Why a new tunnel must be refused now (fail closed), or undefined. */
  refusal(app: string, keyFp: string, measurement: string): Refusal | undefined {
    if (this.fenced || !this.store.fence().held) {
      this.refused.fenced++;
      return { reason: "this gateway cannot prove it holds its cluster lease (fenced)", code: "fenced" };
    }
    const age = performance.now() - this.heardAt;
    if (age > this.staleAfterMs) {
      this.refused.stale++;
      return {
        reason: `this gateway's view of the cluster is ${Math.round(age)} ms old (bound ${this.staleAfterMs} ms): revocations may be missing`,
        code: "stale-view",
      };
    }
    for (const r of this.revoked.values()) {
      if (matches(r, app, keyFp, measurement)) {
        this.refused.revoked++;
        return { reason: `revoked in the cluster (${r.kind} ${r.value}): ${r.reason}`, code: "revoked" };
      }
    }
    return undefined;
  }

  /** Called by the sweep (every 200 ms; the fence margin, 1 s by default, covers the interval). */
  tick(gw: Gateway): void {
    const held = this.store.fence().held;
    if (!held && !this.fenced) {
      this.fenced = true;
      this.fencings++;
      const tunnels = [...gw.byAddress.values()];
      gw.log.log("error", "cluster-fenced", {
        tunnels: tunnels.length,
        note: "etcd unreachable for nearly the lease TTL: no new tunnels, leased tunnels closed",
      });
      // Stop forwarding before etcd can give these addresses to anyone else; the runtimes reconnect.
      for (const t of tunnels) gw.close(t, "shutting-down", "gateway lost its cluster store (fenced)");
    } else if (held && this.fenced) {
      this.fenced = false;
      gw.log.log("info", "cluster-unfenced", {});
    }
  }
}

function matches(r: Revocation, app: string, keyFp: string, measurement: string): boolean {
  return r.kind === "app" ? r.value === app : r.kind === "key" ? r.value === keyFp : r.value === measurement;
}
