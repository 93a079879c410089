/**
 * Cluster store benchmark: `cluster_alloc_per_s`, lease allocations per second through etcd with two gateways'
 * stores (two EtcdStore instances, each with its own etcd client and etcd lease, in this one process) allocating
 * from one shared /16 pool at once, 64 allocations in flight per store. One etcd member (Debian's etcd 3.4) on
 * 127.0.0.1, its data directory on disk (fsync as in production) or with `SENG_ETCD_DATA=/dev/shm` in memory.
 * Every allocation is the full transaction (create-if-absent, owner index, cool-down record, audit record).
 * Afterwards the bench checks that etcd holds exactly one lease per allocation.
 *
 * For scale on a loaded machine, `etcd_cas_per_s` is the same number of bare create-if-absent transactions (one
 * key, no lease, no read-back) through the same client library at the same concurrency, in the same run.
 */
import { randomBytes } from "node:crypto";
import { Etcd3 } from "etcd3";
import { EtcdStore } from "../src/store/etcd.js";
import { startEtcd } from "../test/helpers/etcd.js";
import { round } from "./util.js";

export async function benchCluster(quick: boolean): Promise<Record<string, number>> {
  const total = quick ? 2000 : 8000;
  const inFlight = 64;
  const etcd = await startEtcd({ dataRoot: process.env.SENG_ETCD_DATA });
  const apps = [{ name: "bench", subnet: "100.64.0.0/16" }];
  const stores: EtcdStore[] = [];
  try {
    for (const gw of ["gw1", "gw2"])
      stores.push(await EtcdStore.open({ hosts: [etcd.url], gatewayId: gw, apps, ttlSeconds: 10 }));
    let next = 0;
    let granted = 0;
    const worker = async (s: EtcdStore): Promise<void> => {
      while (next < total) {
        next++;
        const now = Date.now();
        const keyFp = randomBytes(32).toString("hex");
        const r = await s.acquire({
          app: "bench",
          keyFp,
          measurement: "m",
          outer: "198.18.0.2:1",
          now,
          until: now + 60_000,
        });
        if (r) granted++;
      }
    };
    const t0 = performance.now();
    await Promise.all(stores.flatMap((s) => Array.from({ length: inFlight }, () => worker(s))));
    const secs = (performance.now() - t0) / 1000;
    const held = (await stores[0]!.members("bench")).length;
    if (granted !== total || held !== total)
      throw new Error(`cluster bench: ${granted} granted, ${held} leases in etcd, expected ${total}`);
    return {
      cluster_alloc_per_s: round(total / secs, 0),
      etcd_cas_per_s: await bareCas(etcd.url, total, inFlight),
    };
  } finally {
    for (const s of stores) await s.revokeAll().catch(() => s.close());
    await etcd.stop();
  }
}

/** Bare create-if-absent transactions per second: two clients, `inFlight` each, `total` distinct keys. */
async function bareCas(url: string, total: number, inFlight: number): Promise<number> {
  const clients = [new Etcd3({ hosts: url }), new Etcd3({ hosts: url })];
  try {
    let next = 0;
    const worker = async (c: Etcd3): Promise<void> => {
      while (next < total) {
        const key = Buffer.from(`/bench-cas/${next++}`);
        await c.kv.txn({
          compare: [{ key, target: "Create", result: "Equal", create_revision: "0" }],
          success: [{ request_put: { key, value: Buffer.from("x") } }],
        });
      }
    };
    const t0 = performance.now();
    await Promise.all(clients.flatMap((c) => Array.from({ length: inFlight }, () => worker(c))));
    return round(total / ((performance.now() - t0) / 1000), 0);
  } finally {
    for (const c of clients) c.close();
  }
}

/**
 * `cluster_failover_ms` (cluster-route): two gateways in namespaces announce over BGP (BIRD, BFD) to a router with a
 * server behind it; an app under the runtime, given both gateways, sends a UDP datagram every 20 ms and numbered
 * messages on one TCP connection. Its gateway is killed with SIGKILL. Figures, from the kill:
 * - `cluster_failover_ms`: the first datagram of the app that reaches the server after the gateway has exited
 *   (necessarily through the other gateway, with the same address: checked);
 * - `cluster_route_move_ms`: until the router's kernel routes the app's address to the other gateway;
 * - `cluster_tcp_resume_ms`: the first TCP echo after the kill (lwIP's retransmission backoff adds to the above).
 * The gateways share a three-member etcd (`cluster:`): the other gateway gives the app's key the same address by
 * taking its lease over from the dead gateway. `etcd: 0` runs independent SQLite gateways instead.
 */
export async function benchClusterFailover(
  quick: boolean,
  opts: {
    /** etcd members to run for the gateways (default 3; 0: none, independent SQLite gateways). */
    etcd?: number;
    /** The store section of gateway i's config given the etcd client URLs. */
    storeYaml?: (i: number, etcd: string[]) => string;
  } = {},
): Promise<Record<string, number>> {
  const { ClusterLab, FAILOVER_APP, FAILOVER_SERVER, clusterYaml } =
    await import("../test/helpers/cluster-lab.js");
  const members = opts.etcd ?? 3;
  const store = opts.storeYaml ?? (members ? clusterYaml : () => "");
  const { waitLine } = await import("../test/helpers/lab.js");
  const { writeFileSync } = await import("node:fs");
  const { join } = await import("node:path");
  const mr = "c2".repeat(32);
  const runs = quick ? 1 : 3;
  const fail: number[] = [];
  const route: number[] = [];
  const tcp: number[] = [];
  for (let run = 0; run < runs; run++) {
    const lab = await ClusterLab.create({
      gateways: 2,
      etcd: members,
      extraYaml: store,
      appsYaml: [
        "  - name: svc",
        "    subnet: 100.64.1.0/24",
        `    identities: [{ mrenclave: "${mr}" }]`,
        "policy:",
        "  rules:",
        "    - { from: svc, to: 198.18.2.2, proto: any, action: allow }",
      ].join("\n"),
    });
    try {
      writeFileSync(join(lab.dir, "server.cjs"), FAILOVER_SERVER);
      writeFileSync(join(lab.dir, "app.cjs"), FAILOVER_APP);
      const srv = lab.server(process.execPath, [join(lab.dir, "server.cjs")]);
      await waitLine(srv, (o) => o.event === "listening");
      await lab.startGateway(0);
      await lab.startGateway(1);
      const app = lab.app(join(lab.dir, "app.cjs"), { ...lab.runtimeEnv(mr), SECONDS_TO_RUN: "8" });
      const first = await waitLine(srv, (o) => o.event === "udp", 30_000);
      const address = String(first.from);
      await lab.waitRoute(address, lab.uplink(0));
      await new Promise((r) => setTimeout(r, 1000));
      const killedAt = Date.now();
      await lab.killGateway(0);
      const exitedAt = Date.now();
      const moved = lab.waitRoute(address, lab.uplink(1)).then((ms) => ms + exitedAt - killedAt);
      const after = (await waitLine(srv, (o) => o.event === "udp" && Number(o.t) > exitedAt, 30_000)) as {
        t: number;
        from: string;
      };
      if (after.from !== address)
        throw new Error(`failover bench: ${after.from} after the move, ${address} before`);
      fail.push(after.t - killedAt);
      route.push(await moved);
      const r = await app.wait(60_000);
      const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as {
        echoes?: number[];
        error?: string;
      };
      const back = out.echoes?.find((e) => e > exitedAt);
      if (back) tcp.push(back - killedAt);
    } finally {
      await lab.destroy();
    }
  }
  const { median } = await import("./util.js");
  return {
    cluster_failover_ms: round(median(fail), 0),
    cluster_route_move_ms: round(median(route), 0),
    ...(tcp.length ? { cluster_tcp_resume_ms: round(median(tcp), 0) } : {}),
  };
}
