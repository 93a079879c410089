/**
 * `seng demo`: SENG's main job on one machine. A LAN with two hosts, a gateway running `seng gateway`, and an
 * internet side with a web server and a database service, all in namespaces (./network.ts). Apps run in a
 * SIMULATED TEE (no hardware protection; the gateway trusts the simulated root only because the demo's config lists
 * it). The cases:
 *
 *   1. browser (unmodified Node HTTP client under `seng runtime run`) reaches the web server, seen as its app address
 *   1b. the same dual-stack app reaches an IPv6-only web server, seen as its app's IPv6 address (one rule, both
 *       families: the set holds both servers)
 *   2. db-client reaches the database service
 *   3. db-client is refused by the web server rule (its packets are dropped by the policy)
 *   4. alice without the runtime (unshielded) cannot reach the web server: dropped at the gateway
 *   5. a tampered browser build (another measurement) is refused at attestation
 *   6. an enclave server app is reached from the internet side at its app address
 *   7. db-client is revoked while it runs (config edited, SIGHUP): its flow is cut within a second
 * then a table (expected, happened, the app and address the gateway attributed), and `seng audit who`.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseCounters } from "../firewall/nft.js";
import { BROWSER, DB_CLIENT, DB_SERVER, ENCLAVE_SERVER, WEB_SERVER } from "./apps.js";
import { ADDR, DemoNet, NS, type DemoProcess, type Host } from "./network.js";

const MR = {
  browser: "b0".repeat(32),
  tampered: "b1".repeat(32),
  db: "d0".repeat(32),
  enclave: "e0".repeat(32),
};

export interface DemoCase {
  name: string;
  expected: string;
  happened: string;
  /** What the gateway attributed the traffic to: `app @ address`, or `-`. */
  attributed: string;
  ok: boolean;
}

export interface DemoOptions {
  /** Progress lines (nothing with --quiet). */
  log: (line: string) => void;
  /** Leave the network, gateway and servers running. */
  keep: boolean;
  /** Called once the network exists (the CLI removes it on Ctrl-C). */
  onNetwork?: (net: DemoNet) => void;
}

export interface DemoResult {
  cases: DemoCase[];
  audit: string;
  net: DemoNet;
}

/**
 * `node [loader flags] <our CLI entry>`: runs a `seng` subcommand the way this process was started. Bare loader
 * names (`--import tsx` in development) are resolved here, because the children run in the demo's folder.
 */
function sengCmd(): string[] {
  const args = process.execArgv.filter((a) => !a.startsWith("--inspect"));
  const out = args.map((a, i) =>
    args[i - 1] === "--import" && /^[a-z@]/.test(a) && !a.includes(":") ? import.meta.resolve(a) : a,
  );
  return [...out, process.argv[1]!];
}

function gatewayYaml(dbIdentity: string): string {
  return `# SENG demo gateway. SIMULATED TEE: the simulated root below makes this config INSECURE; demo only.
listen: ${ADDR.gwLan}:4433
certificate: gateway.pem
key: gateway.key
database: seng.db
tun: { name: seng0, address: 100.64.0.1/32, address6: "fd64::1/128", mtu: 1400 }
dns: [${ADDR.web}]
trust:
  simulatedRoots: [sim/root.pem]
  collateral: [sim/collateral.json]
apps:
  - name: browser
    subnet: 100.64.1.0/24
    subnet6: "fd64:1::/64" # dual-stack: one IPv4 and one IPv6 address per tunnel
    identities: [{ mrenclave: "${MR.browser}" }]
  - name: db-client
    subnet: 100.64.2.0/24
    identities: [{ mrenclave: "${dbIdentity}" }]
  - name: intranet-api
    subnet: 100.64.3.0/24
    identities: [{ mrenclave: "${MR.enclave}" }]
policy:
  default: deny
  sets:
    web: [${ADDR.web}, "${ADDR.web6}"]
    db: [${ADDR.db}]
  rules:
    - { from: browser, to: "set:web", proto: tcp, ports: [80, 443], action: allow }
    - { from: db-client, to: "set:db", proto: tcp, ports: [5432], action: allow }
    - { from: any, to: intranet-api, proto: tcp, ports: [8080], action: allow }
firewall:
  unshielded:
    drop: true
    interfaces: [lan0]
    allow: [{ proto: udp, ports: [53, 67] }]
`;
}

function runtimeYaml(mrenclave: string): string {
  return `gateway: ${ADDR.gwLan}:4433
pin: gateway.pem
tee: sim
sim: { dir: sim, mrenclave: "${mrenclave}" }
log: json
`;
}

/** The lease address (or IPv6 address) a shielded app's runtime logged (SENG_LOG json lines on stderr). */
function leaseOf(p: DemoProcess, key: "address" | "address6" = "address"): string {
  const l = p.lines("stderr").find((o) => o.event === "lease");
  const a = l?.[key];
  return typeof a === "string" ? a : "";
}

export async function runNetworkDemo(opts: DemoOptions): Promise<DemoResult> {
  const { log } = opts;
  const seng = sengCmd();
  log("SENG demo: app-grained firewall policy from attestation (SIMULATED TEE: no hardware protection)");
  log("  building the network: LAN (alice, bob) | gateway | internet (web server, database) ...");
  const net = await DemoNet.create(opts.onNetwork);
  const dir = net.dir;
  const write = (name: string, text: string) => writeFileSync(join(dir, name), text);
  const cases: DemoCase[] = [];
  let failed = true;
  try {
    const setup = async (args: string[]) => {
      const r = await net.run("gw", process.execPath, [...seng, ...args], 60_000);
      if (r.code !== 0) throw new Error(`seng ${args.join(" ")}: ${r.stderr.trim()}`);
      return r.stdout.trim();
    };
    await setup(["attest", "sim", "init", "--dir", join(dir, "sim")]);
    await setup(["gateway", "keygen", "--dir", dir]);
    write("gateway.yaml", gatewayYaml(MR.db));
    for (const [name, mr] of [
      ["browser", MR.browser],
      ["tampered", MR.tampered],
      ["db-client", MR.db],
      ["intranet-api", MR.enclave],
    ] as const)
      write(`${name}.yaml`, runtimeYaml(mr));
    for (const [f, src] of [
      ["web.cjs", WEB_SERVER],
      ["db.cjs", DB_SERVER],
      ["browser.mjs", BROWSER],
      ["db-client.mjs", DB_CLIENT],
      ["enclave-server.mjs", ENCLAVE_SERVER],
    ] as const)
      write(f, src);

    const keep = { detached: opts.keep };
    const web = net.spawn("inet", "web-server", process.execPath, [join(dir, "web.cjs"), ADDR.web], keep);
    const web6 = net.spawn("inet", "web6-server", process.execPath, [join(dir, "web.cjs"), ADDR.web6], keep);
    const db = net.spawn("inet", "db-server", process.execPath, [join(dir, "db.cjs"), ADDR.db], keep);
    await web.waitFor((o) => o.listening === true, 10_000);
    await web6.waitFor((o) => o.listening === true, 10_000);
    await db.waitFor((o) => o.listening === true, 10_000);
    log(
      `  internet: web server ${ADDR.web}:80, IPv6-only web server [${ADDR.web6}]:80, database ${ADDR.db}:5432`,
    );
    const gw = net.spawn(
      "gw",
      "gateway",
      process.execPath,
      [...seng, "gateway", "--config", join(dir, "gateway.yaml")],
      keep,
    );
    await gw.waitFor((o) => o.event === "gateway-started", 30_000);
    log(`  gateway: listening on ${ADDR.gwLan}:4433; policy table and per-app sets loaded`);

    /** The app the gateway logged for a tunnel address. */
    const attributed = (address: string): string => {
      const up = gw
        .lines()
        .filter((o) => o.event === "tunnel-up" && (o.address === address || o.address6 === address));
      const app = up[up.length - 1]?.app;
      return typeof app === "string" ? `${app} @ ${address}` : address ? `? @ ${address}` : "-";
    };
    /** Our nftables counters in the gateway namespace (per rule key path, and the named counters). */
    const counters = async (): Promise<Record<string, number>> => {
      const r = await net.run("gw", "nft", ["-j", "list", "table", "inet", "seng"]);
      return r.code === 0 ? parseCounters(r.stdout) : {};
    };
    /** `seng policy explain`'s first line for a flow. */
    const explainLine = async (from: string, to: string, svc: string): Promise<string> => {
      const cfg = join(dir, "gateway.yaml");
      const r = await net.run("gw", process.execPath, [
        ...seng,
        "policy",
        "explain",
        "--config",
        cfg,
        from,
        to,
        svc,
      ]);
      return (r.stdout || r.stderr).split("\n")[0]!.trim();
    };
    const record = (c: Omit<DemoCase, "ok">) => {
      const ok = c.happened === c.expected;
      cases.push({ ...c, ok });
      log(
        `  ${ok ? "ok  " : "FAIL"} ${c.name}: ${c.happened}${c.attributed !== "-" ? ` (${c.attributed})` : ""}`,
      );
    };
    const shielded = (host: Host, name: string, app: string, args: string[], detached = false) =>
      net.spawn(
        host,
        name,
        process.execPath,
        [...seng, "runtime", "run", "--config", join(dir, `${app}.yaml`), "--", "node", ...args],
        { detached },
      );

    // 1. browser → web server: allowed, and the server sees the browser's app address.
    log("  [1] alice runs the browser app (unmodified Node HTTP client) under the SENG runtime ...");
    {
      const from = web.lines().length;
      const p = shielded("alice", "browser", "browser", [join(dir, "browser.mjs"), `http://${ADDR.web}/`]);
      await p.exited;
      const r = p.lines().pop() ?? {};
      const addr = leaseOf(p);
      const seen = web
        .lines()
        .slice(from)
        .find((o) => o.event === "request");
      record({
        name: "browser app → web server",
        expected: "allowed (200)",
        happened:
          r.status === 200 && seen?.remote === addr ? "allowed (200)" : `failed: ${JSON.stringify(r)}`,
        attributed: attributed(addr),
      });
    }

    // 1b. the same dual-stack app → an IPv6-only web server: the server sees the app's IPv6 address.
    log("  [1b] alice runs the browser app again; it fetches from the IPv6-only web server ...");
    {
      const from = web6.lines().length;
      const p = shielded("alice", "browser6", "browser", [
        join(dir, "browser.mjs"),
        `http://[${ADDR.web6}]/`,
      ]);
      await p.exited;
      const r = p.lines().pop() ?? {};
      const addr6 = leaseOf(p, "address6");
      const seen = web6
        .lines()
        .slice(from)
        .find((o) => o.event === "request");
      log(
        `       policy explain ${addr6 || "browser"} ${ADDR.web6} tcp/80: ${await explainLine(addr6 || "browser", ADDR.web6, "tcp/80")}`,
      );
      record({
        name: "browser app → IPv6-only web server",
        expected: "allowed (200) over IPv6",
        happened:
          r.status === 200 && addr6 !== "" && seen?.remote === addr6
            ? "allowed (200) over IPv6"
            : `failed: ${JSON.stringify(r)}${seen ? ` (server saw ${String(seen.remote)})` : ""}`,
        attributed: attributed(addr6),
      });
    }

    // 2 + 3. db-client: the web server is not in its policy; the database is.
    log("  [2] bob runs the db-client app: it tries the web server, then queries the database ...");
    const deniedBefore = (await counters()).seng_policy_default ?? 0;
    const dbc = shielded(
      "bob",
      "db-client",
      "db-client",
      [join(dir, "db-client.mjs"), `http://${ADDR.web}/`, ADDR.db],
      false,
    );
    const webTry = await dbc.waitFor((o) => o.web !== undefined, 30_000);
    const firstRow = await dbc.waitFor((o) => typeof o.db === "string" && o.db.startsWith("row"), 15_000);
    const dbAddr = leaseOf(dbc);
    const dbSeen = db.lines().find((o) => o.event === "query");
    record({
      name: "db-client app → database",
      expected: "allowed",
      happened: firstRow && dbSeen?.remote === dbAddr ? "allowed" : "failed",
      attributed: attributed(dbAddr),
    });
    const denied = ((await counters()).seng_policy_default ?? 0) - deniedBefore;
    log(
      `       policy explain db-client ${ADDR.web} tcp/80: ${await explainLine("db-client", ADDR.web, "tcp/80")}`,
    );
    log(`       the policy's default-deny counter went up by ${denied} packet(s)`);
    record({
      name: "db-client app → web server",
      expected: "dropped by policy",
      happened:
        webTry.web === "failed" && denied > 0
          ? "dropped by policy"
          : webTry.web === "failed"
            ? "failed, but not counted by the policy"
            : `reached it (${String(webTry.web)})`,
      attributed: attributed(dbAddr),
    });

    // 4. alice without the runtime.
    log("  [3] alice tries the web server without the runtime (unshielded) ...");
    {
      const before = (await counters()).seng_unshielded_drops ?? 0;
      const r = await net.run("alice", "curl", ["-sS", "--max-time", "2", `http://${ADDR.web}/`], 10_000);
      const dropped = ((await counters()).seng_unshielded_drops ?? 0) - before;
      log(`       the gateway's unshielded-drop counter went up by ${dropped} packet(s)`);
      record({
        name: "alice without runtime → web server",
        expected: "dropped (unshielded)",
        happened:
          r.code === 28 && dropped > 0
            ? "dropped (unshielded)"
            : r.code === 0
              ? "reached it"
              : `curl exit ${r.code}, ${dropped} counted`,
        attributed: "-",
      });
    }

    // 5. tampered browser build.
    log("  [4] alice runs a tampered build of the browser app (another measurement) ...");
    {
      const p = shielded("alice", "tampered", "tampered", [join(dir, "browser.mjs"), `http://${ADDR.web}/`]);
      const code = await p.exited;
      const refused = /policy-rejected/.test(p.stderr) && !p.stdout.includes("status");
      record({
        name: "tampered browser build",
        expected: "refused at attestation",
        happened: refused && code !== 0 ? "refused at attestation" : `ran (exit ${code})`,
        attributed: "-",
      });
    }

    // 6. enclave server app, reached from the internet side.
    log("  [5] bob runs an enclave server app; the internet side connects to it ...");
    {
      const p = shielded("bob", "intranet-api", "intranet-api", [join(dir, "enclave-server.mjs")], opts.keep);
      await p.waitFor((o) => o.listening === true, 30_000);
      const addr = leaseOf(p);
      const r = await net.run("inet", "curl", ["-sS", "--max-time", "3", `http://${addr}:8080/`], 10_000);
      const seen = p.lines().find((o) => o.event === "request");
      record({
        name: "internet → enclave server app",
        expected: "allowed (hello from the enclave)",
        happened:
          r.stdout.trim() === "hello from the enclave" && seen?.remote === ADDR.web
            ? "allowed (hello from the enclave)"
            : `failed: ${r.stderr.trim() || r.stdout.trim()}`,
        attributed: attributed(addr),
      });
    }

    // 7. revocation while db-client runs.
    log("  [6] the administrator revokes db-client's measurement while it runs (config edit + SIGHUP) ...");
    {
      write("gateway.yaml", gatewayYaml("dd".repeat(32)));
      const t0 = Date.now();
      gw.kill("SIGHUP");
      let happened = "still running after 5 s";
      try {
        await dbc.waitFor((o) => o.event === "tunnel-closed" && o.reason === "revoked", 5000, "stderr");
        const closedMs = Date.now() - t0;
        await new Promise((r) => setTimeout(r, 500)); // rows still flowing after the cut would show up here
        const rows = dbc.lines().filter((o) => typeof o.db === "string" && o.db.startsWith("row"));
        const lastMs = ((rows[rows.length - 1]?.t as number | undefined) ?? t0) - t0;
        log(
          `       the runtime saw "revoked" ${closedMs} ms after SIGHUP; last answer ${Math.max(0, lastMs)} ms after it`,
        ); // The flow must be gone from the gateway's connection tracking too, not only from the runtime.
        const ct = await net.run("gw", "conntrack", ["-L", "-s", dbAddr]);
        const flows = ct.stdout.split("\n").filter((l) => l.includes(dbAddr)).length;
        log(`       conntrack entries of ${dbAddr} left at the gateway: ${flows}`);

        happened =
          flows === 0 && closedMs < 1000 && lastMs < 1000
            ? "cut within 1 s"
            : `cut after ${Math.max(closedMs, lastMs)} ms`;
      } catch {
        // not revoked: `happened` says so
      }
      record({
        name: "db-client revoked while running",
        expected: "cut within 1 s",
        happened,
        attributed: attributed(dbAddr),
      });
      dbc.kill("SIGTERM");
      await Promise.race([dbc.exited, new Promise((r) => setTimeout(r, 3000))]);
    }

    // Who held the browser's addresses (IPv4, and IPv6 from case 1b), from the audit log.
    const audits: string[] = [];
    for (const c of cases.slice(0, 2)) {
      const address = c.attributed.split(" @ ")[1];
      if (!address) continue;
      const r = await net.run("gw", process.execPath, [
        ...seng,
        "audit",
        "who",
        address,
        "--config",
        join(dir, "gateway.yaml"),
      ]);
      audits.push(`$ seng audit who ${address}\n${(r.stdout || r.stderr).trim()}`);
    }
    const audit = audits.join("\n\n");
    if (opts.keep) net.keep();
    failed = false;
    return { cases, audit, net };
  } finally {
    if (failed || !opts.keep) await net.destroy();
  }
}

/** What to run to look around a kept demo network. */
export function keepHelp(dir: string): string {
  return [
    "The demo network is still up (--keep). Look around:",
    `  ip netns exec ${NS.gw} nft list table inet seng        # the policy table and per-app sets`,
    `  ip netns exec ${NS.gw} nft list set inet seng seng_app6_browser   # the browser's live IPv6 addresses`,
    `  ip netns exec ${NS.gw} seng status --config ${dir}/gateway.yaml   # tunnels (if the admin API is on)`,
    `  seng audit who <address> --config ${dir}/gateway.yaml`,
    `  ip netns exec ${NS.inet} curl http://<intranet-api address>:8080/`,
    `  logs: ${dir}/*.out, *.err`,
    "Remove it: seng demo --clean",
    "(seng is `npx seng` in a folder where the package is installed, `node bin/seng.js` in a checkout)",
  ].join("\n");
}
