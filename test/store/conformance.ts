/**
 * The conformance suite of the lease store: one set of cases that every LeaseBackend passes (sqlite.test.ts and
 * etcd.test.ts run it). A "system" is one store deployment: a database file, or a key prefix on one etcd; its
 * "gateways" are store instances on it. The SQLite store is one gateway by design, so its system hands out the
 * same instance for every gateway name (a second instance on one file is not a supported deployment), and a crash
 * is a restart on the same file.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { intToIp } from "../../src/packet/ip.js";
import type { AcquireRequest, AppPool, LeaseBackend, StoreEvent } from "../../src/store/interface.js";
import { FencedError } from "../../src/store/interface.js";

export interface StoreSystem {
  /** Opens (or returns) gateway `gw`'s store on this system. */
  open(gw: string, apps: readonly AppPool[]): Promise<LeaseBackend>;
  /** Ends everything the system created. */
  dispose(): Promise<void>;
}

export interface Harness {
  name: string;
  /** A fresh, empty system. */
  system(): Promise<StoreSystem>;
  /** Upper bound (ms) until a crashed gateway's addresses are free for others (etcd: TTL; SQLite: the grace). */
  crashBoundMs: number;
}

const A: AppPool = { name: "a", subnet: "100.64.1.0/30" };

function req(
  keyFp: string,
  now: number,
  until: number,
  app = "a",
  outer = `198.18.0.2:${now % 60000}`,
): AcquireRequest {
  return { app, keyFp, measurement: `m-${keyFp}`, outer, now, until };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** Runs `f` on a fresh system and disposes of it whatever happens. */
async function withSystem(h: Harness, f: (s: StoreSystem) => Promise<void>): Promise<void> {
  const sys = await h.system();
  try {
    await f(sys);
  } finally {
    await sys.dispose();
  }
}

export function conformance(h: Harness): void {
  const name = (s: string) => `${h.name} store: ${s}`;

  test(
    name("allocate: distinct addresses of the app's subnet, null when exhausted, unknown app refused"),
    () =>
      withSystem(h, async (sys) => {
        const s = await sys.open("gw1", [A]);
        const x = (await s.acquire(req("k1", 1000, 5000)))!;
        const y = (await s.acquire(req("k2", 1000, 5000)))!;
        assert.equal(x.resumed, false);
        assert.notEqual(x.address, y.address);
        assert.notEqual(x.id, y.id);
        for (const r of [x, y]) assert.ok(["100.64.1.1", "100.64.1.2"].includes(intToIp(r.address)));
        assert.equal(await s.acquire(req("k3", 1000, 5000)), null, "a /30 has two usable addresses");
        assert.equal(await s.free("a"), 0);
        assert.deepEqual((await s.members("a")).sort(), ["100.64.1.1", "100.64.1.2"]);
        const rec = (await s.get(x.id))!;
        assert.deepEqual(
          [rec.address, rec.app, rec.keyFp, rec.measurement, rec.start, rec.end, rec.released],
          [intToIp(x.address), "a", "k1", "m-k1", 1000, 5000, null],
        );
        await assert.rejects(s.acquire(req("k", 0, 1, "nope")), /no address pool for app nope/);
      }),
  );

  test(
    name("resume within grace keeps address and id; a lapsed lease expires and its address is reused"),
    () =>
      withSystem(h, async (sys) => {
        const s = await sys.open("gw1", [A]);
        const x = (await s.acquire(req("k1", 1000, 5000)))!;
        const y = (await s.acquire(req("k2", 1000, 5000)))!;
        const again = (await s.acquire(req("k1", 2000, 9000, "a", "198.18.0.9:7")))!;
        assert.deepEqual(again, { address: x.address, resumed: true, id: x.id });
        assert.equal((await s.get(x.id))!.outer, "198.18.0.9:7");
        assert.equal(await s.acquire(req("k3", 3000, 9000)), null);
        // k2's grace ends at 5000: the sweep at 6001 releases it, with the audit time of its lapse.
        assert.deepEqual(await s.expire(6001), [intToIp(y.address)]);
        assert.equal((await s.get(y.id))!.released, 6001);
        assert.equal((await s.who(intToIp(y.address), 5001)).holder, null);
        assert.equal((await s.who(intToIp(y.address), 4999)).holder?.keyFp, "k2");
        const t = 6001 + s.coolDownMs + 1;
        const z = (await s.acquire(req("k3", t, t + 40_000)))!;
        assert.deepEqual([z.address, z.resumed], [y.address, false]);
        // A lapsed lease of the asking key itself is released on the way and a new one granted.
        const w = (await s.acquire(req("k1", t + 9001, t + 20000)))!;
        assert.equal(w.resumed, false);
        assert.notEqual(w.id, x.id);
        assert.notEqual((await s.get(x.id))!.released, null);
        // The sets saw that release too: one entry per live lease.
        assert.deepEqual((await s.members("a")).sort(), [intToIp(z.address), intToIp(w.address)].sort());
      }),
  );

  test(
    name("extend: an extended lease resumes past its first end; the certificate is kept and replaced"),
    () =>
      withSystem(h, async (sys) => {
        const s = await sys.open("gw1", [A]);
        const cert1 = Buffer.from("3082-cert-one");
        const x = (await s.acquire({ ...req("k1", 1000, 5000), cert: cert1 }))!;
        const y = (await s.acquire(req("k2", 1000, 5000)))!;
        assert.deepEqual(await s.certOf(x.id), cert1);
        assert.equal(await s.certOf(y.id), undefined);
        await s.extendMany([
          [x.id, 20_000],
          [987_654, 30_000], // unknown ids are ignored
        ]);
        assert.equal((await s.get(x.id))!.end, 20_000);
        assert.deepEqual(
          await s.expire(6000),
          [intToIp(y.address)],
          "only the lease that was not extended lapses",
        );
        const again = (await s.acquire(req("k1", 15_000, 25_000)))!;
        assert.deepEqual(again, { address: x.address, resumed: true, id: x.id });
        assert.deepEqual(await s.certOf(x.id), cert1, "a resumption without a certificate keeps the old one");
        const cert2 = Buffer.from("3082-cert-two");
        await s.acquire({ ...req("k1", 16_000, 25_000), cert: cert2 });
        assert.deepEqual(await s.certOf(x.id), cert2);
      }),
  );

  test(
    name(
      "release frees the address; the same identity gets it back at once, another only after the cool-down",
    ),
    () =>
      withSystem(h, async (sys) => {
        const s = await sys.open("gw1", [A]);
        const x = (await s.acquire(req("k1", 1000, 50_000)))!;
        await s.acquire(req("k2", 1000, 50_000));
        await s.release(x.id, 10_000, "revoked");
        assert.equal((await s.get(x.id))!.released, 10_000);
        assert.ok(!(await s.members("a")).includes(intToIp(x.address)));
        const other = await s.acquire(req("k3", 10_001, 60_000));
        if (s.coolDownMs > 1) {
          assert.equal(other, null, "another identity must wait for the cool-down");
          const back = (await s.acquire(req("k1", 10_002, 60_000)))!;
          assert.deepEqual(
            [back.address, back.resumed],
            [x.address, false],
            "the same identity is not held back",
          );
          assert.notEqual(back.id, x.id);
          await s.release(back.id, 10_003);
          assert.equal(await s.acquire(req("k3", 10_003 + s.coolDownMs - 1, 90_000)), null);
          const later = (await s.acquire(req("k3", 10_003 + s.coolDownMs + 1, 90_000)))!;
          assert.equal(later.address, x.address);
        } else {
          assert.equal(other?.address, x.address, "no cool-down: the address is free at once");
        }
        const w = await s.who(intToIp(x.address), 10_000);
        assert.deepEqual([w.holder, w.previous?.leaseId, w.previous?.released], [null, x.id, 10_000]);
      }),
  );

  test(name("who-at: holder, outer address at the time, release and previous holder, from any gateway"), () =>
    withSystem(h, async (sys) => {
      const s = await sys.open("gw1", [A]);
      const x = (await s.acquire(req("k1", 1000, 50_000, "a", "198.18.0.2:1")))!;
      await s.acquire(req("k1", 3000, 50_000, "a", "198.18.0.3:2"));
      await s.release(x.id, 5000, "revoked");
      const b = await sys.open("gw2", [A]);
      const ip = intToIp(x.address);
      assert.deepEqual(await b.who(ip, 999), { address: ip, at: 999, holder: null, previous: null });
      const mid = await b.who(ip, 2000);
      assert.deepEqual(mid.holder, {
        app: "a",
        measurement: "m-k1",
        keyFp: "k1",
        outer: "198.18.0.2:1",
        leaseId: x.id,
        granted: 1000,
        released: 5000,
        releaseReason: "revoked",
      });
      assert.equal(
        (await b.who(ip, 4000)).holder?.outer,
        "198.18.0.3:2",
        "the outer address after the renewal",
      );
      assert.deepEqual((await b.who(ip, 5000)).previous, { app: "a", leaseId: x.id, released: 5000 });
      assert.equal((await b.who("100.64.9.9", 2000)).holder, null);
    }),
  );

  test(name("revocation records: add, replace, list, lift; seen by every gateway and through watch"), () =>
    withSystem(h, async (sys) => {
      const s = await sys.open("gw1", [A]);
      const b = await sys.open("gw2", [A]);
      const seen: StoreEvent[] = [];
      const stop = await b.watch((e) => e.type !== "progress" && seen.push(e));
      try {
        await s.revoke({ kind: "app", value: "a", reason: "removed from the configuration", t: 100 });
        await s.revoke({ kind: "key", value: "k1", reason: "stolen", t: 200 });
        await s.revoke({ kind: "key", value: "k1", reason: "stolen, confirmed", t: 300 });
        await s.revoke({ kind: "measurement", value: "ab/cd", reason: "bad build", t: 400 });
        assert.deepEqual(await b.revocations(), [
          { kind: "app", value: "a", reason: "removed from the configuration", t: 100 },
          { kind: "key", value: "k1", reason: "stolen, confirmed", t: 300 },
          { kind: "measurement", value: "ab/cd", reason: "bad build", t: 400 },
        ]);
        await s.unrevoke("app", "a");
        await s.unrevoke("app", "never-revoked");
        assert.deepEqual(
          (await b.revocations()).map((r) => r.value),
          ["k1", "ab/cd"],
        );
        await until("watch events", async () => (seen.length >= 5 ? true : undefined));
        assert.deepEqual(
          seen.map((e) =>
            e.type === "revoke"
              ? `+${e.revocation.kind}:${e.revocation.value}`
              : e.type === "unrevoke"
                ? `-${e.kind}:${e.value}`
                : e.type,
          ),
          ["+app:a", "+key:k1", "+key:k1", "+measurement:ab/cd", "-app:a"],
        );
        assert.ok(
          seen.every((e, i) => i === 0 || e.rev > seen[i - 1]!.rev),
          "revisions grow",
        );
      } finally {
        stop();
      }
    }),
  );

  test(name("watch: grants and releases of any gateway, in order"), () =>
    withSystem(h, async (sys) => {
      const s = await sys.open("gw1", [A]);
      const b = await sys.open("gw2", [A]);
      const seen: StoreEvent[] = [];
      const stop = await b.watch((e) => e.type !== "progress" && seen.push(e));
      try {
        const x = (await s.acquire(req("k1", 1000, 50_000)))!;
        await s.release(x.id, 2000);
        await until("watch events", async () => (seen.length >= 2 ? true : undefined));
        const [g, r] = seen;
        assert.ok(g?.type === "lease" && r?.type === "lease-gone", JSON.stringify(seen));
        assert.deepEqual([g.address, g.app, g.keyFp, g.id], [intToIp(x.address), "a", "k1", x.id]);
        assert.equal(r.address, intToIp(x.address));
        assert.ok(r.rev > g.rev);
      } finally {
        stop();
      }
    }),
  );

  test(
    name("uniqueness: two gateways, 300 parallel allocations for 254 addresses, with ambiguous commits"),
    () =>
      withSystem(h, async (sys) => {
        const pool: AppPool = { name: "big", subnet: "100.64.2.0/24" };
        const gws = [await sys.open("gw1", [pool]), await sys.open("gw2", [pool])];
        // Some commits report an error although they happened; some never happen.
        gws[0]!.faults.ambiguousCommits = 20;
        gws[1]!.faults.ambiguousCommits = 20;
        gws[1]!.faults.lostCommits = 5;
        const results = await Promise.all(
          Array.from({ length: 300 }, (_, i) => gws[i % 2]!.acquire(req(`k${i}`, 1000, 90_000, "big"))),
        );
        const granted = results.flatMap((r, i) => (r ? [[`k${i}`, intToIp(r.address)] as const] : []));
        const addresses = granted.map(([, a]) => a);
        assert.equal(new Set(addresses).size, addresses.length, "an address was given twice");
        assert.equal(granted.length, 254, "every address is granted exactly once (none lost)");
        assert.ok(results.every((r) => r === null || r.resumed === false));
        assert.deepEqual((await gws[1]!.members("big")).sort(), [...addresses].sort());
        // Each winner is the holder of record, under the id it was told.
        for (const [i, r] of results.entries()) {
          if (!r) continue;
          const w = await gws[0]!.who(intToIp(r.address), 1000);
          assert.deepEqual([w.holder?.keyFp, w.holder?.leaseId], [`k${i}`, r.id]);
        }
        assert.equal(await gws[0]!.free("big"), 0);
      }),
  );

  test(name("ambiguous commit: the retry finds its own commit, grants once, audits once"), () =>
    withSystem(h, async (sys) => {
      const s = await sys.open("gw1", [A]);
      s.faults.ambiguousCommits = 1;
      const x = (await s.acquire(req("k1", 1000, 50_000)))!;
      assert.equal(s.faults.ambiguousCommits, 0, "the fault fired");
      assert.equal(x.resumed, false, "our own grant, not a resumption");
      assert.deepEqual(await s.members("a"), [intToIp(x.address)]);
      assert.equal((await s.who(intToIp(x.address), 1000)).holder?.leaseId, x.id);
      s.faults.lostCommits = 1;
      const y = (await s.acquire(req("k2", 1000, 50_000)))!;
      assert.equal(s.faults.lostCommits, 0, "the fault fired");
      assert.notEqual(y.address, x.address);
      assert.equal((await s.members("a")).length, 2);
      assert.equal(await s.acquire(req("k3", 1000, 50_000)), null);
    }),
  );

  test(
    name(
      "a crashed gateway: its key resumes elsewhere with the same address; its lapsed addresses are freed",
    ),
    () =>
      withSystem(h, async (sys) => {
        const a = await sys.open("gw1", [A]);
        const t0 = Date.now();
        const x = (await a.acquire(req("k1", t0, t0 + 600_000)))!;
        const y = (await a.acquire(req("k2", t0, t0 + 3000)))!;
        assert.equal(a.fence().held, true);
        await a.close(); // kill -9: no release, no revoke
        assert.equal(a.fence().held, false);
        const b = await sys.open("gw2", [A]);
        // The runtime of k1 moves to the other gateway at once: same address, same lease.
        const moved = (await b.acquire(req("k1", Date.now(), Date.now() + 600_000)))!;
        assert.deepEqual(moved, { address: x.address, resumed: true, id: x.id });
        // Nobody else gets k2's address while its holder may still be alive.
        assert.equal(await b.acquire(req("k3", Date.now(), Date.now() + 60_000)), null);
        const freedAt = await until(
          "the crashed holder's address to be freed",
          async () => {
            await b.expire(Date.now());
            return (await b.members("a")).includes(intToIp(y.address)) ? undefined : Date.now();
          },
          h.crashBoundMs + 5000,
        );
        assert.ok(freedAt - t0 >= 900, "freed before the holder's lease or grace could have ended");
        const z = await until(
          "the freed address for another identity",
          async () => (await b.acquire(req("k3", Date.now(), Date.now() + 60_000))) ?? undefined,
          b.coolDownMs + 5000,
        );
        assert.equal(z.address, y.address);
        assert.ok(Date.now() - freedAt >= b.coolDownMs - 100, "another identity waited for the cool-down");
        assert.deepEqual((await b.members("a")).sort(), [intToIp(x.address), intToIp(y.address)].sort());
        assert.equal((await b.who(intToIp(y.address), t0)).holder?.keyFp, "k2");
        assert.equal((await b.who(intToIp(y.address), Date.now())).holder?.keyFp, "k3");
      }),
  );

  test(name("fencing: a closed store refuses to admit"), () =>
    withSystem(h, async (sys) => {
      const s = await sys.open("gw1", [A]);
      const f = s.fence();
      assert.equal(f.held, true);
      assert.ok(f.provenUntil > Date.now());
      await s.close();
      assert.deepEqual(s.fence(), { held: false, provenUntil: 0 });
      await assert.rejects(
        s.acquire(req("k1", 1, 2)),
        (e: unknown) => e instanceof FencedError || /closed/.test(String(e)),
      );
    }),
  );
}
