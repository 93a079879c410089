/**
 * `seng demo cluster`: two gateways as one system (docs/CLUSTER.md), in namespaces (./cluster-net.ts). A
 * three-member etcd holds the leases; each gateway announces its apps' addresses over BGP through its BIRD child to
 * a router (BIRD, BFD) with a server behind it. An app in a SIMULATED TEE, given both gateways, talks to the server
 * (UDP and one long TCP connection) and serves a greeting the server fetches. Then its gateway is killed with
 * SIGKILL. The cases:
 *
 *   1. the app reaches the server through gw1, from its leased address; 2. the server reaches the app there;
 *   3. after kill -9 of gw1 the app is back through gw2 with the same address (identity checked again by gw2);
 *   4. BGP moved the app's route to gw2; 5. gw1's BIRD died with it; 6. the server reaches the app again;
 *   7. the app's TCP connection carried every message across the move; 8. with one etcd member killed, a new
 *      instance of the app is still admitted.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { routerBirdConfig } from "../routing/bird.js";
import { CADDR, ClusterDemoNet, type CHost } from "./cluster-net.js";
import type { DemoCase } from "./scenario.js";

const MR = "5c".repeat(32);
const ROUTER_ASN = 65000;

export interface ClusterDemoOptions {
  log: (line: string) => void;
  keep: boolean;
  onNetwork?: (net: ClusterDemoNet) => void;
  /**
   * The store section of gateway i's config (1-based), given the etcd client URLs (default: `cluster:` on the
   * demo's etcd); "" keeps each gateway's own SQLite file (independent gateways sharing only the routing).
   */
  storeYaml?: (i: number, etcd: string[]) => string;
}

export interface ClusterDemoResult {
  cases: DemoCase[];
  net: ClusterDemoNet;
  /** Milliseconds from kill -9 to the app's first datagram through gw2. */
  failoverMs?: number;
}

function sengCmd(): string[] {
  const args = process.execArgv.filter((a) => !a.startsWith("--inspect"));
  const out = args.map((a, i) =>
    args[i - 1] === "--import" && /^[a-z@]/.test(a) && !a.includes(":") ? import.meta.resolve(a) : a,
  );
  return [...out, process.argv[1]!];
}

/** The server: TCP echo on 7000, UDP sink on 7001 (one line per datagram with its arrival time and source). */
const SERVER = `
const net = require("net"), dgram = require("dgram");
net.createServer((s) => {
  console.log(JSON.stringify({ event: "conn", remote: s.remoteAddress }));
  s.on("data", (d) => s.write(d));
  s.on("error", () => {});
}).listen(7000, "${CADDR.server}");
const u = dgram.createSocket("udp4");
u.on("message", (m, r) => console.log(JSON.stringify({ event: "udp", t: Date.now(), from: r.address, n: Number(m) })));
u.bind(7001, "${CADDR.server}", () => console.log(JSON.stringify({ listening: true })));
`;

/**
 * The app (unmodified Node, under the runtime): a datagram every 20 ms, a numbered message every 100 ms on one TCP
 * connection, and a greeting on :8080. It stops when the file "stop" appears in its folder.
 */
const APP = `
const dgram = require("dgram"), net = require("net"), fs = require("fs");
const u = dgram.createSocket("udp4");
let n = 0;
const ut = setInterval(() => u.send(String(n++), 7001, "${CADDR.server}"), 20);
const s = net.connect(7000, "${CADDR.server}");
let i = 0, got = "";
s.setEncoding("utf8").on("data", (d) => (got += d));
s.on("error", (e) => { console.log(JSON.stringify({ error: e.message, code: e.code })); process.exitCode = 1; });
const t = setInterval(() => s.write("m" + i++ + ";"), 100);
const srv = net.createServer((c) => c.end("hello from the app\\n")).listen(8080);
const w = setInterval(() => {
  if (!fs.existsSync("stop")) return;
  clearInterval(w); clearInterval(t); clearInterval(ut); u.close(); srv.close();
  setTimeout(() => {
    const ok = got === Array.from({ length: i }, (_, k) => "m" + k + ";").join("");
    console.log(JSON.stringify({ sent: i, echoed: ok }));
    s.end();
  }, 6000);
}, 100);
`;

/** The gateways' shared store: the demo's etcd (docs/CLUSTER.md). */
function clusterStore(i: number, etcd: string[]): string {
  return `cluster:\n  gatewayId: gw${i}\n  etcd: { endpoints: [${etcd.join(", ")}] }\n  ttl: 10`;
}

function gatewayYaml(i: number, store: string): string {
  return `# SENG cluster demo, gateway ${i}. SIMULATED TEE: the simulated root below makes this config INSECURE; demo only.
listen: ${CADDR.gwLan(i)}:4433
certificate: gateway.pem
key: gateway.key
database: gw${i}/seng.db
tun: { name: seng0, address: 100.64.0.1/32, mtu: 1400 }
trust:
  simulatedRoots: [sim/root.pem]
  collateral: [sim/collateral.json]
routing:
  asn: ${65000 + i}
  routerId: ${CADDR.gwUp(i)}
  neighbors: [{ address: ${CADDR.routerTo(i)}, asn: ${ROUTER_ASN} }]
  dir: gw${i}/bird
${store}
apps:
  - name: svc
    subnet: 100.64.1.0/24
    identities: [{ mrenclave: "${MR}" }]
policy:
  default: deny
  rules:
    - { from: svc, to: ${CADDR.server}, proto: tcp, ports: [7000], action: allow }
    - { from: svc, to: ${CADDR.server}, proto: udp, ports: [7001], action: allow }
    - { from: any, to: svc, proto: tcp, ports: [8080], action: allow }
`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runClusterDemo(opts: ClusterDemoOptions): Promise<ClusterDemoResult> {
  const { log } = opts;
  const seng = sengCmd();
  log(
    "SENG cluster demo: two gateways, a three-member etcd, BGP to a router (SIMULATED TEE: no hardware protection)",
  );
  log("  building the network: app | gw1, gw2 | router (BIRD) | server; etcd on a control network ...");
  const net = await ClusterDemoNet.create(opts.onNetwork);
  const dir = net.dir;
  const write = (name: string, text: string) => writeFileSync(join(dir, name), text);
  const cases: DemoCase[] = [];
  let failoverMs: number | undefined;
  let failed = true;
  const keep = { detached: opts.keep };
  try {
    const setup = async (args: string[]) => {
      const r = await net.run("gw1", process.execPath, [...seng, ...args], 60_000);
      if (r.code !== 0) throw new Error(`seng ${args.join(" ")}: ${r.stderr.trim()}`);
      return r.stdout.trim();
    };
    await setup(["attest", "sim", "init", "--dir", join(dir, "sim")]);
    const pin = await setup(["gateway", "keygen", "--dir", dir]);
    write("server.cjs", SERVER);
    write("app.cjs", APP);

    // etcd: three members.
    const peers = [1, 2, 3].map((m) => `m${m}=http://${CADDR.etcd(m)}:2380`).join(",");
    const clientUrls = [1, 2, 3].map((m) => `http://${CADDR.etcd(m)}:2379`);
    const etcdProcs = [1, 2, 3].map((m) =>
      net.spawn(
        "etcd",
        `etcd-m${m}`,
        "etcd",
        [
          `--name=m${m}`,
          `--data-dir=${join(dir, `etcd-m${m}`)}`,
          `--listen-client-urls=http://${CADDR.etcd(m)}:2379`,
          `--advertise-client-urls=http://${CADDR.etcd(m)}:2379`,
          `--listen-peer-urls=http://${CADDR.etcd(m)}:2380`,
          `--initial-advertise-peer-urls=http://${CADDR.etcd(m)}:2380`,
          `--initial-cluster=${peers}`,
          "--initial-cluster-state=new",
          "--heartbeat-interval=100",
          "--election-timeout=500",
          "--experimental-watch-progress-notify-interval=200ms",
          "--log-level=error",
          "--logger=zap",
        ],
        keep,
      ),
    );
    const healthy = async (): Promise<number> => {
      let n = 0;
      for (const u of clientUrls) {
        const r = await net.run("etcd", "curl", ["-s", "-m", "1", `${u}/health`], 3000);
        if (/"health":\s*"true"/.test(r.stdout)) n++;
      }
      return n;
    };
    for (let k = 0; k < 100 && (await healthy()) < 3; k++) await sleep(200);
    const members = await healthy();
    log(`  etcd: ${members} of 3 members healthy (${clientUrls.join(", ")})`);

    // The router's BIRD, then the server and both gateways (each starts its own BIRD).
    write(
      "router-bird.conf",
      routerBirdConfig({
        routerId: CADDR.router,
        asn: ROUTER_ASN,
        peers: [1, 2].map((i) => ({ address: CADDR.gwUp(i), asn: 65000 + i })),
      }),
    );
    net.spawn(
      "router",
      "router-bird",
      "bird",
      ["-f", "-c", join(dir, "router-bird.conf"), "-s", join(dir, "router.ctl")],
      keep,
    );
    const server = net.spawn("server", "server", process.execPath, [join(dir, "server.cjs")], keep);
    await server.waitFor((o) => o.listening === true, 10_000);
    const gws = [1, 2].map((i) => {
      mkdirSync(join(dir, `gw${i}`));
      write(`gw${i}.yaml`, gatewayYaml(i, (opts.storeYaml ?? clusterStore)(i, clientUrls)));
      return net.spawn(
        `gw${i}` as CHost,
        `gw${i}`,
        process.execPath,
        [...seng, "gateway", "--config", join(dir, `gw${i}.yaml`)],
        keep,
      );
    });
    for (const g of gws) await g.waitFor((o) => o.event === "routing-started", 30_000);
    log(
      `  gateways: gw1 ${CADDR.gwLan(1)}:4433 (AS 65001), gw2 ${CADDR.gwLan(2)}:4433 (AS 65002), BIRD children up`,
    );

    const routeVia = async (address: string): Promise<string> => {
      const r = await net.run("router", "ip", ["-4", "route", "show", "match", address]);
      const m = /via (\S+)/.exec(r.stdout.split("\n").find((l) => l.includes("via")) ?? "");
      return m?.[1] ?? "";
    };
    const waitRoute = async (address: string, via: string, ms: number): Promise<boolean> => {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        if ((await routeVia(address)) === via) return true;
        await sleep(20);
      }
      return false;
    };
    const which = (via: string) =>
      via === CADDR.gwUp(1) ? "gw1" : via === CADDR.gwUp(2) ? "gw2" : via || "none";
    const record = (c: Omit<DemoCase, "ok">) => {
      const ok = c.happened === c.expected;
      cases.push({ ...c, ok });
      log(`  ${ok ? "ok  " : "FAIL"} ${c.name}: ${c.happened}`);
    };
    const greet = async (address: string): Promise<string> => {
      const r = await net.run(
        "server",
        process.execPath,
        [
          "-e",
          `const s=require("net").connect(8080,"${address}");let d="";s.on("data",(x)=>d+=x);` +
            `s.on("end",()=>{console.log(d.trim());});s.on("error",(e)=>{console.log(e.code);});s.setTimeout(4000,()=>{console.log("timeout");s.destroy();});`,
        ],
        10_000,
      );
      return r.stdout.trim();
    };

    log("  [1] the app (unmodified Node, under the runtime with --gateway gw1,gw2) starts ...");
    const env: NodeJS.ProcessEnv = { ...process.env, SENG_LOG: "json" };
    delete env.NODE_TEST_CONTEXT;
    const app = net.spawn(
      "app",
      "app",
      process.execPath,
      [
        ...seng,
        "runtime",
        "run",
        "--gateway",
        `${CADDR.gwLan(1)}:4433,${CADDR.gwLan(2)}:4433`,
        "--pin",
        pin,
        "--tee",
        "sim",
        "--sim-dir",
        join(dir, "sim"),
        "--mrenclave",
        MR,
        "--",
        "node",
        join(dir, "app.cjs"),
      ],
      { env, detached: opts.keep },
    );
    const lease = await app.waitFor((o) => o.event === "lease", 30_000, "stderr");
    const address = String(lease.address);
    const first = await server.waitFor((o) => o.event === "udp", 20_000);
    const routed = await waitRoute(address, CADDR.gwUp(1), 10_000);
    record({
      name: "app → server",
      expected: "reached, via gw1",
      happened:
        first.from === address && routed
          ? "reached, via gw1"
          : `from ${String(first.from)}, via ${which(await routeVia(address))}`,
      attributed: `svc @ ${address}`,
    });
    const hello1 = await greet(address);
    record({
      name: "server → app (its listener)",
      expected: "hello from the app",
      happened: hello1,
      attributed: `svc @ ${address} via ${which(await routeVia(address))}`,
    });

    await sleep(1000);
    log("  [2] kill -9 gw1 ...");
    const killedAt = Date.now();
    gws[0]!.kill("SIGKILL");
    await gws[0]!.exited;
    const exitedAt = Date.now();
    // Watch the router from now on: when does it route the app's address to gw2?
    const moving = waitRoute(address, CADDR.gwUp(2), 15_000).then((ok) => (ok ? Date.now() - killedAt : -1));
    const back = await server
      .waitFor((o) => o.event === "udp" && Number(o.t) > exitedAt, 20_000)
      .catch(() => undefined);
    failoverMs = back ? Number(back.t) - killedAt : undefined;
    const leases = app
      .lines("stderr")
      .filter((o) => o.event === "lease")
      .map((o) => String(o.address));
    record({
      name: "kill -9 gw1: the app comes back",
      expected: "same address, through gw2",
      happened:
        back && back.from === address && leases.length >= 2 && leases.every((a) => a === address)
          ? "same address, through gw2"
          : `address ${leases.join(" then ")}`,
      attributed: `svc @ ${address}${failoverMs ? `, first packet after ${failoverMs} ms` : ""}`,
    });
    const movedMs = await moving;
    record({
      name: "the router's route for the app",
      expected: "moved to gw2 (BGP)",
      happened: movedMs >= 0 ? "moved to gw2 (BGP)" : `via ${which(await routeVia(address))}`,
      attributed: `${address}/32 via ${CADDR.gwUp(2)}, ${movedMs} ms after the kill`,
    });
    record({
      name: "gw1's BIRD",
      expected: "gone with gw1",
      happened:
        net.pids("gw1").length === 0 ? "gone with gw1" : `still running: ${net.pids("gw1").join(", ")}`,
      attributed: "-",
    });
    const hello2 = await greet(address);
    record({
      name: "server → app after the move",
      expected: "hello from the app",
      happened: hello2,
      attributed: `svc @ ${address} via ${which(await routeVia(address))}`,
    });
    write("stop", "");
    const done = await app
      .waitFor((o) => o.echoed !== undefined || o.error !== undefined, 30_000)
      .catch(() => ({}));
    record({
      name: "the app's TCP connection across the move",
      expected: "every message echoed",
      happened:
        (done as { echoed?: boolean }).echoed === true
          ? "every message echoed"
          : `broken: ${JSON.stringify(done)}`,
      attributed: `${String((done as { sent?: number }).sent ?? "?")} messages on one connection`,
    });

    log("  [3] kill -9 one etcd member; a new app instance starts ...");
    etcdProcs[0]!.kill("SIGKILL");
    await etcdProcs[0]!.exited;
    const second = net.spawn(
      "app",
      "app2",
      process.execPath,
      [
        ...seng,
        "runtime",
        "run",
        "--gateway",
        `${CADDR.gwLan(1)}:4433,${CADDR.gwLan(2)}:4433`,
        "--pin",
        pin,
        "--tee",
        "sim",
        "--sim-dir",
        join(dir, "sim"),
        "--mrenclave",
        MR,
        "--",
        "node",
        "-e",
        "setTimeout(() => {}, 200)",
      ],
      { env },
    );
    await Promise.race([second.exited, sleep(40_000)]);
    const lease2 = second.lines("stderr").find((o) => o.event === "lease");
    record({
      name: "one etcd member killed: a new instance",
      expected: "admitted (2 of 3 members)",
      happened:
        lease2 && second.exitCode === 0
          ? "admitted (2 of 3 members)"
          : `not admitted (exit ${second.exitCode})`,
      attributed: lease2 ? `svc @ ${String(lease2.address)} via gw2` : "-",
    });
    failed = false;
  } finally {
    if (opts.keep && !failed) net.keep();
    else await net.destroy();
  }
  return { cases, net, failoverMs };
}

export function clusterKeepHelp(dir: string): string {
  return [
    `the cluster demo network is still up (files in ${dir}):`,
    `  birdc -s ${dir}/router.ctl show route            # the router's routes (BGP from the gateways)`,
    `  ip netns exec seng-dc-router ip route             # the same, in the router's kernel`,
    `  birdc -s ${dir}/gw2/bird/bird.ctl show protocols  # gw2's BIRD`,
    "  seng demo cluster --clean                          # remove it",
  ].join("\n");
}
