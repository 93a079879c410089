/**
 * The etcd store through the conformance suite (each system is a fresh key prefix on one throwaway etcd), and what
 * only etcd has: progress notifications, self-fencing when etcd stops answering, a restarted gateway adopting its
 * leases. etcd runs on 127.0.0.1 with random ports (test/helpers/etcd.ts); a missing etcd fails the tests.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { intToIp } from "../../src/packet/ip.js";
import { EtcdStore, type EtcdStoreOptions } from "../../src/store/etcd.js";
import { FencedError, type StoreEvent } from "../../src/store/interface.js";
import { startEtcd, type EtcdServer } from "../helpers/etcd.js";
import { conformance } from "./conformance.js";

let etcd: EtcdServer;
before(async () => {
  etcd = await startEtcd({ progressMs: 200 });
});
after(async () => {
  await etcd?.stop();
});

const TTL = 2;
let systems = 0;

function options(prefix: string, gw: string, extra: Partial<EtcdStoreOptions> = {}): EtcdStoreOptions {
  return {
    hosts: [etcd.url],
    gatewayId: gw,
    apps: [],
    prefix,
    ttlSeconds: TTL,
    fenceMarginMs: 500,
    coolDownMs: 1000,
    callTimeoutMs: 3000,
    ...extra,
  };
}

conformance({
  name: "etcd",
  crashBoundMs: TTL * 1000 + 1000,
  async system() {
    const prefix = `/t${process.pid}-${++systems}/`;
    const open: EtcdStore[] = [];
    return {
      async open(gw, apps) {
        const s = await EtcdStore.open({ ...options(prefix, gw), apps });
        open.push(s);
        return s;
      },
      async dispose() {
        for (const s of open) await s.revokeAll().catch(() => s.close());
      },
    };
  },
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const app = { name: "a", subnet: "100.64.1.0/29" };
const req = (keyFp: string, now = Date.now()) => ({
  app: "a",
  keyFp,
  measurement: "m",
  outer: "198.18.0.2:1",
  now,
  until: now + 60_000,
});

test("etcd store: progress notifications arrive while nothing changes and carry the current revision", async () => {
  const s = await EtcdStore.open({ ...options("/progress/", "gw1"), apps: [app] });
  try {
    const x = (await s.acquire(req("k1")))!;
    const seen: StoreEvent[] = [];
    const stop = await s.watch((e) => seen.push(e));
    await sleep(1500);
    stop();
    const progress = seen.filter((e) => e.type === "progress");
    assert.ok(progress.length >= 2, `progress notifications every 200 ms, got ${progress.length}`);
    assert.ok(
      progress.every((e) => e.rev >= x.id),
      "a progress revision covers the writes before it",
    );
  } finally {
    await s.revokeAll();
  }
});

test("etcd store: a gateway cut off from etcd fences itself before its lease can expire", async () => {
  // A dedicated etcd: this test stops it.
  const own = await startEtcd();
  const s = await EtcdStore.open({
    hosts: [own.url],
    gatewayId: "gw1",
    apps: [app],
    ttlSeconds: TTL,
    fenceMarginMs: 500,
    callTimeoutMs: 1000,
  });
  try {
    await s.acquire(req("k1"));
    // When each keepalive left (the session's etcd3 Lease; private, watched here only to check the bound).
    const sent: number[] = [];
    (s as unknown as { session: { lease: NodeJS.EventEmitter } }).session.lease.on("keepaliveFired", () =>
      sent.push(Date.now()),
    );
    // Healthy: keepalives keep the proof ahead of the clock, well past the first TTL.
    await sleep(TTL * 1000 + 500);
    assert.equal(s.fence().held, true);
    process.kill(own.pid, "SIGSTOP");
    const stoppedAt = Date.now();
    const provenAtStop = s.fence().provenUntil;
    try {
      // etcd expires the lease no earlier than TTL after the last keepalive it received, which left here at or
      // before the last send: the proof must end a margin before that.
      const lastSent = sent.at(-1)!;
      assert.ok(sent.length >= 3, "keepalives ran");
      assert.ok(
        provenAtStop <= lastSent + TTL * 1000 - 500 + 5,
        `proven until ${provenAtStop - lastSent} ms after the last keepalive was sent`,
      );
      while (s.fence().held) await sleep(20);
      const fencedAfter = Date.now() - stoppedAt;
      assert.ok(fencedAfter <= TTL * 1000 - 500 + 100, `fenced ${fencedAfter} ms after etcd stopped`);
      await assert.rejects(s.acquire(req("k2")), FencedError);
    } finally {
      process.kill(own.pid, "SIGCONT");
    }
  } finally {
    await s.close();
    await own.stop();
  }
});

test("etcd store: a restarted gateway (same id) adopts its leases before the TTL frees them", async () => {
  const a = await EtcdStore.open({ ...options("/adopt/", "gw1"), apps: [app] });
  const x = (await a.acquire(req("k1")))!;
  await a.close();
  const again = await EtcdStore.open({ ...options("/adopt/", "gw1"), apps: [app] });
  const other = await EtcdStore.open({ ...options("/adopt/", "gw2"), apps: [app] });
  try {
    await sleep(TTL * 1000 + 1500); // the old run's etcd lease has expired
    assert.deepEqual(await other.members("a"), [intToIp(x.address)]);
    assert.deepEqual(await again.acquire(req("k1")), { address: x.address, resumed: true, id: x.id });
  } finally {
    await again.revokeAll();
    await other.revokeAll();
  }
});

test("etcd store: bad options and an unreachable etcd are clear errors", async () => {
  await assert.rejects(
    EtcdStore.open({ ...options("/x/", "gw 1"), apps: [] }),
    /gateway id 'gw 1': expected/,
  );
  await assert.rejects(
    EtcdStore.open({ ...options("/x/", "gw1"), apps: [], ttlSeconds: 0.5 }),
    /TTL 0\.5: expected/,
  );
  await assert.rejects(
    EtcdStore.open({ ...options("/x/", "gw1"), apps: [], ttlSeconds: 3, fenceMarginMs: 2000 }),
    /fence margin 2000 ms: expected at least 0 and less than 2\/3 of the TTL \(3 s\)/,
  );
  await assert.rejects(
    EtcdStore.open({ ...options("/x/", "gw1"), apps: [], hosts: ["http://127.0.0.1:1"], callTimeoutMs: 500 }),
    /^Error: etcd at http:\/\/127\.0\.0\.1:1: /,
  );
});

test("etcd store: etcd killed (kill -9) and restarted during 200 parallel allocations: no address twice, none lost", async () => {
  const own = await startEtcd();
  const pool = { name: "big", subnet: "100.64.4.0/24" };
  const open = (gw: string) =>
    EtcdStore.open({ hosts: [own.url], gatewayId: gw, apps: [pool], ttlSeconds: 10, callTimeoutMs: 1000 });
  const gws = [await open("gw1"), await open("gw2")];
  try {
    const t = Date.now();
    let done = 0;
    const calls = Array.from({ length: 200 }, (_, i) =>
      gws[i % 2]!.acquire({
        app: "big",
        keyFp: `k${i}`,
        measurement: "m",
        outer: "o",
        now: t,
        until: t + 5000,
      })
        .then((r) => ({ i, r, error: undefined }))
        .catch((e: unknown) => ({ i, r: null, error: e as Error }))
        .finally(() => done++),
    );
    while (done < 20) await sleep(5);
    await own.kill(); // in-flight transactions: committed or not, nobody can tell
    await sleep(4000); // longer than the retries of a call: some give up
    await own.restart();
    const results = await Promise.all(calls);
    const granted = new Map(
      results.flatMap(({ i, r }) => (r ? [[`k${i}`, intToIp(r.address)] as [string, string]] : [])),
    );
    const failed = new Set<string>(results.filter((x) => x.error).map(({ i }) => `k${i}`));
    assert.ok(granted.size >= 20, `${granted.size} granted, ${failed.size} failed`);
    assert.equal(new Set(granted.values()).size, granted.size, "an address was given twice");
    // Every lease in etcd belongs to a caller that was told its address, or to one whose call failed (an orphan).
    const held = new Map<string, string>();
    for (const a of await gws[0]!.members("big")) {
      const w = await gws[0]!.who(a, t);
      held.set(w.holder!.keyFp, a);
    }
    for (const [k, a] of granted) assert.equal(held.get(k), a, `${k} was told ${a}: lost`);
    for (const k of held.keys())
      assert.ok(granted.has(k) || failed.has(k), `${k} holds an address it never got`);
    // Orphans lapse with their grace like any lease (the gateway's sweep releases them): once the grace of every
    // lease (t + 5000) is past, nothing is left.
    const orphans = [...held.keys()].filter((k) => !granted.has(k));
    const lapse = t + 5001;
    while (Date.now() < lapse) await sleep(100);
    for (const g of gws) await g.expire(Date.now());
    assert.deepEqual(await gws[0]!.members("big"), [], `orphans left: ${orphans.join(",")}`);
  } finally {
    for (const g of gws) await g.close();
    await own.stop();
  }
});
