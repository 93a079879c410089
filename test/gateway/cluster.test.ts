/**
 * Gateways on etcd in namespaces (test/helpers/etcd-gateways.ts): one address space for all gateways, a key that
 * moves to another gateway keeps its address (failover), and a gateway cut off from etcd fences itself: it closes
 * its tunnels and refuses new ones until it can prove its lease again.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { CLI, waitLine } from "../helpers/lab.js";
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

  /** The addresses in app a's set in gateway i's policy table. */
  async function setOf(i: number): Promise<string[]> {
    const r = await lab.gws[i]!.exec("nft", ["-j", "list", "set", "inet", "seng", "seng_app_a"]);
    const set = (JSON.parse(r.stdout) as { nftables: { set?: { elem?: unknown[] } }[] }).nftables.find(
      (x) => x.set,
    )?.set;
    return (set?.elem ?? []).map(String).sort();
  }
  async function until(what: string, ok: () => Promise<boolean>, ms = 10_000): Promise<number> {
    const t0 = Date.now();
    while (!(await ok())) {
      if (Date.now() - t0 > ms) throw new Error(`${what}: not after ${ms} ms`);
      await sleep(20);
    }
    return Date.now() - t0;
  }
  function seng(i: number, args: string[]) {
    return lab.gws[i]!.exec(process.execPath, ["--import", "tsx", CLI, ...args], {
      check: false,
      timeoutMs: 30_000,
    });
  }

  test("every gateway's set holds every gateway's addresses; seng cluster revoke cuts them everywhere within 1 s", async () => {
    const c1 = lab.client(A, 0);
    const c2 = lab.client(A, 1);
    const l1 = await waitLine<{ address: string }>(c1, (o) => o.event === "lease", 30_000);
    const l2 = await waitLine<{ address: string }>(c2, (o) => o.event === "lease", 30_000);
    const both = [l1.address, l2.address].sort();
    await until("both addresses in both gateways' sets", async () => {
      const [a, b] = [await setOf(0), await setOf(1)];
      return JSON.stringify(a) === JSON.stringify(both) && JSON.stringify(b) === JSON.stringify(both);
    });
    const from = [c1.stdout.length, c2.stdout.length];
    const r = await seng(0, [
      "cluster",
      "revoke",
      "app",
      "a",
      "--reason",
      "test",
      "--config",
      lab.configFile(0),
    ]);
    assert.equal(r.code, 0, r.stderr);
    const ms = await until(
      "sets empty on both gateways",
      async () => (await setOf(0)).length + (await setOf(1)).length === 0,
      5000,
    );
    assert.ok(ms <= 1000, `revocation took ${ms} ms to empty both gateways' sets`);
    await waitLine(c1, (o) => o.event === "closed" && o.reason === "revoked", 5000, from[0]);
    await waitLine(c2, (o) => o.event === "closed" && o.reason === "revoked", 5000, from[1]);
    // Refused while revoked, on every gateway.
    const gfrom = lab.gateways[0]!.stdout.length;
    const late = lab.client(A, 0);
    await waitLine(
      lab.gateways[0]!,
      (o) => o.event === "tunnel-refused" && o.code === "revoked",
      20_000,
      gfrom,
    );
    await late.kill();
    const st = await seng(1, ["cluster", "status", "--config", lab.configFile(1)]);
    assert.match(st.stdout, /app a .*test/);
    assert.match(st.stdout, /gw1 .*\n.*gw2 /s);
    assert.equal((await seng(1, ["cluster", "unrevoke", "app", "a", "--config", lab.configFile(1)])).code, 0);
    await Promise.all([c1.kill(), c2.kill()]);
  });

  test("a reload on one gateway that removes an identity cuts its tunnels on the other gateways too", async () => {
    const c = lab.client(A, 1);
    await waitLine(c, (o) => o.event === "lease", 30_000);
    const from = c.stdout.length;
    const g = lab.gateways[0]!;
    let gfrom = g.stdout.length;
    writeFileSync(
      lab.configFile(0),
      lab.configText(0).replace(`mrenclave: "${A}"`, `mrenclave: "${"ff".repeat(32)}"`),
    );
    process.kill(g.child.pid!, "SIGHUP");
    await waitLine(g, (o) => o.event === "reloaded", 20_000, gfrom);
    await waitLine(c, (o) => o.event === "closed" && o.reason === "revoked", 10_000, from);
    gfrom = g.stdout.length;
    writeFileSync(lab.configFile(0), lab.configText(0));
    process.kill(g.child.pid!, "SIGHUP");
    await waitLine(g, (o) => o.event === "reloaded", 20_000, gfrom);
    await c.kill();
  });

  test("seng audit who answers for any gateway's lease from any gateway", async () => {
    const c = lab.client(A, 1);
    const l = await waitLine<{ address: string }>(c, (o) => o.event === "lease", 30_000);
    const r = await seng(0, ["audit", "who", l.address, "--json", "--config", lab.configFile(0)]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as { holder: { app: string } }).holder.app, "a");
    const st = await seng(1, ["status", "--config", lab.configFile(1)]);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, /CLUSTER +gateway gw2 /);
    assert.match(st.stdout, /gw2 +1 +up/);
    assert.match(st.stdout, /http:\/\/198\.18\.20\.1:2379 +healthy, leader/);
    await c.kill();
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
