/**
 * Gateways on etcd in namespaces (test/helpers/etcd-gateways.ts): one address space for all gateways, a key that
 * moves to another gateway keeps its address (failover), and a gateway cut off from etcd fences itself: it closes
 * its tunnels and refuses new ones until it can prove its lease again.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { waitLine } from "../helpers/lab.js";
import { EtcdGateways } from "../helpers/etcd-gateways.js";

const A = "a1".repeat(32);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("gateways on etcd", { concurrency: false }, () => {
  let lab: EtcdGateways;
  before(async () => {
    lab = await EtcdGateways.create(
      2,
      `  - name: a\n    subnet: 100.64.1.0/29\n    identities: [{ mrenclave: "${A}" }]`,
      "  ttl: 3\n  fenceMarginMs: 1000\n  coolDown: 5",
    );
    await Promise.all([lab.startGateway(0), lab.startGateway(1)]);
  });
  after(async () => {
    await lab?.destroy();
  });

  test("one address space: two gateways never give one address twice; a key that moves keeps its address", async () => {
    const c1 = lab.client(A, 0, ["--dead-seconds", "2"]);
    const c2 = lab.client(A, 1);
    const l1 = await waitLine<{ address: string }>(c1, (o) => o.event === "lease", 30_000);
    const l2 = await waitLine<{ address: string }>(c2, (o) => o.event === "lease", 30_000);
    assert.notEqual(l1.address, l2.address, "two keys on two gateways, two addresses");
    // gw1 dies; its client address moves to gw2 (as a virtual address would); the client reconnects there.
    await lab.killGateway(0);
    await lab.moveAddress(0, 1);
    const from = c1.stdout.length;
    const again = await waitLine<{ address: string }>(c1, (o) => o.event === "lease", 30_000, from);
    assert.equal(again.address, l1.address, "the same key gets its address back on the other gateway");
    const up = await waitLine<{ resumed: boolean; address: string }>(
      lab.gateways[1]!,
      (o) => o.event === "tunnel-up" && o.address === l1.address,
    );
    assert.equal(up.resumed, true, "gw2 took the lease over (not a fresh grant)");
    await Promise.all([c1.kill(), c2.kill()]);
  });

  test("cut off from etcd, a gateway fences itself: closes its tunnels, refuses new ones, resumes after", async () => {
    const gw = lab.gateways[1]!;
    const c = lab.client(A, 1);
    await waitLine(c, (o) => o.event === "lease", 30_000);
    const from = gw.stdout.length;
    const stoppedAt = Date.now();
    process.kill(lab.etcd!.child.pid!, "SIGSTOP");
    try {
      await waitLine(gw, (o) => o.event === "cluster-fenced", 10_000, from);
      // Before etcd could expire the lease (TTL 3 s after the last keepalive it got, which was before the stop).
      assert.ok(Date.now() - stoppedAt < 3000 + 500, `fenced ${Date.now() - stoppedAt} ms after the stop`);
      await waitLine(gw, (o) => o.event === "tunnel-down" && o.reason === "shutting-down", 5000, from);
      const late = lab.client(A, 1);
      await waitLine(gw, (o) => o.event === "tunnel-refused" && String(o.code) === "fenced", 20_000, from);
      await late.kill();
    } finally {
      process.kill(lab.etcd!.child.pid!, "SIGCONT");
    }
    await waitLine(gw, (o) => o.event === "cluster-unfenced", 15_000, from);
    await c.kill();
    await sleep(100);
  });
});
