/**
 * Routing to the right gateway, end to end in namespaces with real BIRD: two gateways (independent SQLite stores,
 * the same app subnet, each announcing its own half of it as a block) peer over eBGP with BFD with a router that
 * has a server behind it. An app under the runtime, given both gateways, keeps a TCP connection to the server
 * carrying numbered messages; its gateway is killed with SIGKILL. Checked: the gateway's BIRD died with it, the
 * runtime moved to the other gateway and got the same address, the router's route for that address moved to the
 * other gateway (a /32 beats the dead gateway's withdrawn block), and every message came back in order on the same
 * connection, seen by the server from the app's address. The failover time is printed as a diagnostic (figures
 * are measured in bench/cluster.ts, not asserted).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CLI, ClusterLab, SERVER_IP } from "../helpers/cluster-lab.js";
import { waitLine } from "../helpers/lab.js";
import type { NsProcess } from "../helpers/netns.js";

const MR = "c1".repeat(32);
const skip = process.getuid?.() !== 0 ? "needs root (namespaces)" : !hasBird() ? "needs bird2 (apt)" : false;

function hasBird(): boolean {
  try {
    execFileSync("bird", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** The server: echoes, and prints one line per connection with the peer's address and what it received. */
const SERVER = `
const net = require("net");
net.createServer((s) => {
  const remote = s.remoteAddress;
  console.log(JSON.stringify({ event: "conn", remote }));
  s.on("data", (d) => s.write(d));
  s.on("error", () => {});
  s.on("close", () => console.log(JSON.stringify({ event: "closed", remote })));
}).listen(7000, "${SERVER_IP}", () => console.log(JSON.stringify({ event: "listening" })));
`;

/** The app: one connection, a numbered message every 100 ms, prints when each echo came back. */
const APP = `
const s = require("net").connect(7000, "${SERVER_IP}");
let i = 0, got = "";
const echoes = [];
s.setEncoding("utf8").on("data", (d) => { got += d; echoes.push(Date.now()); });
s.on("error", (e) => { console.log(JSON.stringify({ error: e.message, code: e.code })); process.exitCode = 1; });
const n = Number(process.env.MESSAGES || 80);
const t = setInterval(() => {
  s.write("m" + i++ + ";");
  if (i === n) { clearInterval(t); setTimeout(() => { console.log(JSON.stringify({ sent: i, got, echoes })); s.end(); }, 6000); }
}, 100);
`;

let lab: ClusterLab;
let srv: NsProcess;

before(async () => {
  if (skip) return;
  lab = await ClusterLab.create({
    gateways: 2,
    blocks: (i) => [i === 0 ? "100.64.1.0/25" : "100.64.1.128/25"],
    appsYaml: [
      "  - name: svc",
      "    subnet: 100.64.1.0/24",
      `    identities: [{ mrenclave: "${MR}" }]`,
      "policy:",
      "  default: deny",
      "  rules:",
      `    - { from: svc, to: ${SERVER_IP}, proto: tcp, ports: [7000], action: allow }`,
    ].join("\n"),
  });
  writeFileSync(join(lab.dir, "server.cjs"), SERVER);
  writeFileSync(join(lab.dir, "app.cjs"), APP);
  srv = lab.server(process.execPath, [join(lab.dir, "server.cjs")]);
  await waitLine(srv, (o) => o.event === "listening");
});

after(async () => {
  await lab?.destroy();
});

function leases(stderr: string): string[] {
  return stderr
    .split("\n")
    .filter((l) => l.includes('"event":"lease"'))
    .map((l) => (JSON.parse(l) as { address: string }).address);
}

test(
  "kill -9 of the app's gateway: BGP moves the route, the runtime moves to the other gateway with the same address, and its TCP connection survives",
  { skip },
  async (t) => {
    await lab.startGateway(0);
    await lab.startGateway(1);
    // Both sessions are up: each gateway's block is routed to it.
    await lab.waitRoute("100.64.1.1", lab.uplink(0));
    await lab.waitRoute("100.64.1.200", lab.uplink(1));

    const app = lab.app(join(lab.dir, "app.cjs"), lab.runtimeEnv(MR));
    for (let i = 0; i < 300 && leases(app.stderr).length === 0; i++)
      await new Promise((r) => setTimeout(r, 50));
    const address = leases(app.stderr)[0];
    assert.equal(address, "100.64.1.1", `the first gateway's lease:\n${app.stderr}`);
    await new Promise((r) => setTimeout(r, 1500)); // the flow runs through gateway 1

    const gw1Pids = () =>
      execFileSync("ip", ["netns", "pids", lab.gws[0]!.name], { encoding: "utf8" })
        .split("\n")
        .filter(Boolean);
    assert.ok(gw1Pids().length >= 2, "gateway 1 and its BIRD run");
    const killedAt = Date.now();
    await lab.killGateway(0);
    // BIRD is the gateway's child with a parent-death signal: nothing of gateway 1 is left running.
    for (let i = 0; i < 40 && gw1Pids().length; i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(gw1Pids(), [], "gateway 1's BIRD died with it");

    // The router now sends the app's address to gateway 2 (its /32; gateway 1's block is gone).
    const routeMs = await lab.waitRoute(address, lab.uplink(1));
    const r = await app.wait(60_000);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!) as {
      sent: number;
      got: string;
      echoes: number[];
    };
    assert.equal(
      out.got,
      Array.from({ length: out.sent }, (_, i) => `m${i};`).join(""),
      "every message echoed, in order, on the one connection",
    );
    const l = leases(r.stderr);
    assert.ok(l.length >= 2, `a second lease, from gateway 2:\n${r.stderr}`);
    assert.ok(
      l.every((a) => a === address),
      `the same address: ${l.join(", ")}`,
    );
    const conns = srv.stdout.split("\n").filter((x) => x.includes('"conn"'));
    assert.equal(conns.length, 1, `one connection at the server:\n${srv.stdout}`);
    assert.match(conns[0]!, new RegExp(`"remote":"${address.replace(/\./g, "\\.")}"`));
    const back = out.echoes.find((e) => e > killedAt);
    t.diagnostic(
      `route at the other gateway ${routeMs} ms after the kill was done; first echo ${back ? back - killedAt : "none"} ms after the kill`,
    );
  },
);

test(
  "an app whose first listed gateway is down starts through the next one, and is routed there",
  { skip },
  async () => {
    // Gateway 1 is down (killed by the test above, or never started); the list still names it first.
    await lab.killGateway(0);
    if (!lab.gateways[1]) await lab.startGateway(1);
    const app = lab.app(join(lab.dir, "app.cjs"), { ...lab.runtimeEnv(MR), MESSAGES: "5" });
    // Routed through gateway 2 while it runs (its /32 goes when the app's tunnel closes at exit).
    for (let i = 0; i < 600 && leases(app.stderr).length === 0; i++)
      await new Promise((r) => setTimeout(r, 50));
    await lab.waitRoute(leases(app.stderr)[0] ?? "none", lab.uplink(1));
    const r = await app.wait(60_000).catch((e: Error) => {
      throw new Error(
        `${e.message}\nstdout:\n${app.stdout}\nstderr:\n${app.stderr}\ngateway 2:\n${lab.gateways[1]?.stdout.slice(-3000)}`,
      );
    });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const address = leases(r.stderr)[0] ?? "";
    assert.match(address, /^100\.64\.1\.\d+$/, r.stderr);
    assert.match(
      r.stderr,
      /"event":"tunnel-closed".*handshake timed out/,
      "the first attempt (gateway 1) timed out",
    );
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!) as { sent: number; got: string };
    assert.equal(out.got, "m0;m1;m2;m3;m4;");
  },
);

test(
  "a gateway whose BIRD cannot start refuses to start, in one line, and leaves nothing behind",
  { skip },
  async () => {
    await lab.killGateway(0);
    const file = lab.configFile(0);
    // A gateway killed earlier (test 1) leaves its table: the firewall fails closed. This start must add nothing.
    const before = (await lab.gws[0]!.exec("nft", ["list", "tables"])).stdout;
    const good = readFileSync(file, "utf8");
    try {
      writeFileSync(file, good.replace("routing:\n", "routing:\n  bird: /nonexistent/bird\n"));
      const r = await lab.gws[0]!.exec(
        process.execPath,
        ["--import", "tsx", CLI, "gateway", "--config", file],
        {
          check: false,
          timeoutMs: 60_000,
        },
      );
      assert.equal(r.code, 2, r.stderr);
      assert.match(
        r.stderr,
        /^seng: .*gateway\.yaml: routing: bird: \/nonexistent\/bird not found \(install Debian's bird2/m,
      );
      assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
      const tables = await lab.gws[0]!.exec("nft", ["list", "tables"]);
      const added = tables.stdout.split("\n").filter((l) => l && !before.split("\n").includes(l));
      assert.deepEqual(added, [], "no nftables table left by this start");
      const links = await lab.gws[0]!.exec("ip", ["-br", "link"]);
      assert.doesNotMatch(links.stdout, /seng0/, "no TUN left");
    } finally {
      writeFileSync(file, good);
    }
  },
);
