/**
 * The gateway's lease store: the embedded SQLite database (one gateway, the default) or etcd (several gateways as
 * one system, the `cluster:` section). Both behind src/store/'s LeaseBackend, so the lease path (admission,
 * extension, release, expiry, reload) is the same code for both.
 */
import { readFileSync } from "node:fs";
import type { GatewayConfig } from "../policy/config.js";
import { EtcdStore } from "../store/etcd.js";
import type { LeaseBackend } from "../store/interface.js";
import { SqliteStore } from "../store/sqlite.js";
import type { Logger } from "./log.js";

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

/** Why this gateway must not admit a tunnel now, with a short stable code; undefined when it may. */
export interface Refusal {
  reason: string;
  code: string;
}

/**
 * A gateway's part in the cluster (etcd mode only): admission checks against fencing (and, later in this file,
 * revocations and the freshness of its view).
 */
export class ClusterLink {
  constructor(readonly store: EtcdStore) {}

  refusal(_app: string, _keyFp: string, _measurement: string): Refusal | undefined {
    if (!this.store.fence().held)
      return { reason: "this gateway cannot prove it holds its cluster lease (fenced)", code: "fenced" };
    return undefined;
  }
}
