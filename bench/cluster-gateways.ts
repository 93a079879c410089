/**
 * Cluster figures with real gateways in namespaces on one etcd member (test/helpers/etcd-gateways.ts):
 * - `cluster_setup_ms`: the gateway's setup time (first handshake datagram → LEASE sent, its `setupMs`) of a new
 *   tunnel when the lease is an etcd transaction; median of `SETUPS` tunnels, one at a time, to gateway 1.
 * - `cluster_revoke_ms`: `seng cluster revoke app` → the last gateway's nftables set without the app's addresses
 *   (two gateways, one tunnel each, so each gateway removes one address of its own and one of the other's). From the
 *   revocation record's time (written by the CLI just before its put) to the first poll (`nft -j list set` in both
 *   namespaces, about every 30 ms) that finds both sets empty; median of `ROUNDS`.
 *
 *   node --import tsx bench/cluster-gateways.ts            # SETUPS=10 ROUNDS=3 by default
 */
import { EtcdGateways } from "../test/helpers/etcd-gateways.js";
import { CLI, waitLine } from "../test/helpers/lab.js";
import { median, round } from "./util.js";

const A = "a1".repeat(32);
const SETUPS = Number(process.env.SETUPS ?? 10);
const ROUNDS = Number(process.env.ROUNDS ?? 3);

async function main(): Promise<void> {
  const lab = await EtcdGateways.create(
    2,
    `  - name: a\n    subnet: 100.64.1.0/24\n    identities: [{ mrenclave: "${A}" }]`,
    "  coolDown: 0",
  );
  try {
    await Promise.all([lab.startGateway(0), lab.startGateway(1)]);
    const seng = (i: number, args: string[]) =>
      lab.gws[i]!.exec(process.execPath, ["--import", "tsx", CLI, ...args], {
        check: false,
        timeoutMs: 30_000,
      });
    const setOf = async (i: number): Promise<number> => {
      const r = await lab.gws[i]!.exec("nft", ["-j", "list", "set", "inet", "seng", "seng_app_a"]);
      const set = (JSON.parse(r.stdout) as { nftables: { set?: { elem?: unknown[] } }[] }).nftables.find(
        (x) => x.set,
      )?.set;
      return set?.elem?.length ?? 0;
    };
    const setups: number[] = [];
    for (let n = 0; n < SETUPS; n++) {
      const g = lab.gateways[0]!;
      const from = g.stdout.length;
      const c = lab.client(A, 0);
      const up = await waitLine<{ setupMs: number }>(g, (o) => o.event === "tunnel-up", 30_000, from);
      setups.push(up.setupMs);
      await c.kill();
    }
    const revokes: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const cs = [lab.client(A, 0), lab.client(A, 1)];
      await Promise.all(cs.map((c) => waitLine(c, (o) => o.event === "lease", 30_000)));
      while ((await setOf(0)) < 2 || (await setOf(1)) < 2) await new Promise((res) => setTimeout(res, 20));
      const cli = seng(0, [
        "cluster",
        "revoke",
        "app",
        "a",
        "--reason",
        "bench",
        "--config",
        lab.configFile(0),
      ]);
      let emptyAt = 0;
      for (const deadline = Date.now() + 20_000; Date.now() < deadline;) {
        const [x, y] = await Promise.all([setOf(0), setOf(1)]);
        if (x + y === 0) {
          emptyAt = Date.now();
          break;
        }
      }
      const done = await cli;
      if (done.code !== 0) throw new Error(`revoke failed: ${done.stderr}`);
      const st = await seng(0, ["cluster", "status", "--json", "--config", lab.configFile(0)]);
      const t = (JSON.parse(st.stdout) as { view: { revocations: { t: number }[] } }).view.revocations[0]!.t;
      revokes.push(emptyAt - t);
      await seng(0, ["cluster", "unrevoke", "app", "a", "--config", lab.configFile(0)]);
      await Promise.all(cs.map((c) => c.kill()));
    }
    console.log(
      JSON.stringify({
        cluster_setup_ms: round(median(setups), 1),
        cluster_setup_ms_all: setups,
        cluster_revoke_ms: round(median(revokes), 0),
        cluster_revoke_ms_all: revokes,
      }),
    );
  } finally {
    await lab.destroy();
  }
}

await main();
