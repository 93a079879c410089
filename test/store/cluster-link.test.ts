/**
 * The gateway's cluster admission checks (src/gateway/cluster.ts) on a stub store: fenced, stale view, revoked,
 * in that order, and nothing when the view is fresh and nothing matches.
 */
import assert from "node:assert/strict";
import { performance } from "node:perf_hooks";
import { test } from "node:test";
import { ClusterLink } from "../../src/gateway/cluster.js";
import type { EtcdStore } from "../../src/store/etcd.js";

test("cluster admission: refuses when fenced, when the view is older than its bound, and revoked identities", () => {
  let held = true;
  const store = {
    gatewayId: "gw1",
    fence: () => ({ held, provenUntil: 0 }),
    own: () => [],
  } as unknown as EtcdStore;
  const link = new ClusterLink(store, 3000);
  assert.equal(link.refusal("a", "k", "m"), undefined, "fresh view, nothing revoked");
  link.heardAt = performance.now() - 3500;
  assert.equal(link.refusal("a", "k", "m")?.code, "stale-view");
  link.heardAt = performance.now();
  // A revocation arrives through the watch (onEvent is private: the watch callback is what start() installs).
  (link as unknown as { onEvent(gw: unknown, e: unknown): void }).onEvent(
    { byAddress: new Map(), log: { log() {} } },
    { type: "revoke", rev: 5, revocation: { kind: "measurement", value: "m", reason: "cve", t: 1 } },
  );
  assert.equal(link.refusal("a", "k", "m")?.code, "revoked");
  assert.equal(link.refusal("a", "k", "other"), undefined, "another measurement is not revoked");
  held = false;
  assert.equal(link.refusal("a", "k", "other")?.code, "fenced");
  assert.deepEqual(link.stats().refused, { fenced: 1, stale: 1, revoked: 1 });
});
