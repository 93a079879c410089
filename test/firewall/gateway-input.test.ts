/**
 * The gateway host itself behind the policy, in namespaces: from a tunnel, the gateway's admin TCP port, its metrics
 * listener and another service on the host (standing in for SSH) are unreachable unless a `to: gateway` rule allows
 * that app; `to: any` never opens them. Every case is also explained, and the verdict, the packets and the counter
 * of the deciding rule must agree. A port the host DNATs elsewhere (as Docker `-p`, kube-proxy or a NodePort do) is
 * still the gateway host's: closed by default although `to: any` allows the forwarded connection.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Lab, TCP_TOOL, waitLine, CLI, type LabApp } from "../helpers/lab.js";
import { ROOT, type Netns, type NsProcess } from "../helpers/netns.js";
import { loadConfig } from "../../src/policy/config.js";
import { explain, parseService } from "../../src/firewall/explain.js";
import { parseCounters } from "../../src/firewall/nft.js";

const BROWSER = "b0".repeat(32);
const MAIL = "a1".repeat(32);
const GW = "198.18.2.1"; // the gateway's address on the server side, routed into the tunnels by the test clients
const node = process.execPath;

const APPS: LabApp[] = [
  { name: "browser", subnet: "100.64.1.0/24", categories: ["web"], identities: [{ mrenclave: BROWSER }] },
  { name: "mail", subnet: "100.64.2.0/24", categories: ["web"], identities: [{ mrenclave: MAIL }] },
];

const base = (
  rules: string,
) => `tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 30, leaseGraceSeconds: 60 }
admin: { tcp: ${GW}:9443, tokenFile: admin.token }
metrics: { listen: ${GW}:9464 }
policy:
  default: deny
  rules:
${rules}    - { from: category:web, to: any, proto: tcp, action: allow }
`;
const CLOSED = base("");
const OPEN = base("    - { from: browser, to: gateway, proto: tcp, ports: [9464, 2222], action: allow }\n");
const PING = base("    - { from: browser, to: gateway, proto: icmp, action: allow }\n");
const DNAT_OPEN = base("    - { from: browser, to: gateway, proto: tcp, ports: [8443], action: allow }\n");

/** Opens a TCP connection to the gateway (1.5 s) and sends an HTTP GET; the first line of the answer, or null. */
async function get(ns: Netns, port: number): Promise<string | null> {
  const r = await ns.exec(
    node,
    [
      "-e",
      `const s=require("net").connect(${port},"${GW}",()=>s.write("GET /metrics HTTP/1.0\\r\\n\\r\\n"));` +
        `s.once("data",(d)=>{console.log("ok "+String(d).split("\\r\\n")[0]);s.destroy()});` +
        `s.on("error",()=>{});setTimeout(()=>process.exit(0),1500).unref()`,
    ],
    { check: false, timeoutMs: 10_000 },
  );
  const m = /^ok (.*)$/m.exec(r.stdout);
  return m ? m[1]! : null;
}

function seng(args: string[]): { code: number; stdout: string; stderr: string } {
  try {
    const stdout = execFileSync(node, ["--import", "tsx", CLI, ...args], { cwd: ROOT, encoding: "utf8" });
    return { code: 0, stdout, stderr: "" };
  } catch (e) {
    const err = e as { status: number; stdout: string; stderr: string };
    return { code: err.status, stdout: err.stdout, stderr: err.stderr };
  }
}

describe("the gateway host behind the policy", { concurrency: false }, () => {
  let lab: Lab;
  let sshLike: NsProcess;
  const live = new Map<string, string>();
  let browserAddr = "";
  let mailAddr = "";

  before(async () => {
    lab = await Lab.create({ clients: 2, apps: APPS, extraYaml: CLOSED });
    writeFileSync(join(lab.dir, "admin.token"), "7f".repeat(32) + "\n", { mode: 0o600 });
    const gw = await lab.startGateway();
    await waitLine(gw, (o) => o.event === "admin-started");
    // Another service of the gateway host; it prints {"remote": …} for every connection it accepts.
    sshLike = lab.gw.spawn(node, ["--import", "tsx", TCP_TOOL, "echo", GW, "2222"]);
    await waitLine(sshLike, (o) => o.listening === true);
    const b = lab.startClient(BROWSER, { client: 0 });
    const m = lab.startClient(MAIL, { client: 1 });
    browserAddr = (await waitLine<{ address: string }>(b, (o) => o.event === "lease")).address;
    mailAddr = (await waitLine<{ address: string }>(m, (o) => o.event === "lease")).address;
    live.set(browserAddr, "browser").set(mailAddr, "mail");
  });

  after(async () => {
    await sshLike?.kill("SIGKILL");
    await lab?.destroy();
  });

  const counters = async () =>
    parseCounters((await lab.gw.exec("nft", ["-j", "list", "table", "inet", "seng"])).stdout);
  const counterOf = (by: string) => (by === "gateway.default" ? "seng_gateway_default" : by);
  const accepted = () => sshLike.stdout.split("\n").filter((l) => l.includes('"remote"'));

  /** Tries each case from its tunnel; packets, explain and the deciding rule's counter must agree. */
  async function check(cases: { ns: Netns; who: string; port: number; expect: string }[]): Promise<void> {
    const config = loadConfig(lab.configFile);
    for (const c of cases) {
      const e = explain(
        config.model,
        { from: c.who, to: GW, ...parseService(`tcp/${c.port}`) },
        (a) => live.get(a),
        (a) => a === GW,
      );
      const label = `${c.who} → ${GW}:${c.port}`;
      assert.equal(e.decidedBy, c.expect, `${label}: explain says ${e.decidedBy}\n${e.trace.join("\n")}`);
      const before = (await counters())[counterOf(e.decidedBy)] ?? 0;
      const answer = await get(c.ns, c.port);
      const afterN = (await counters())[counterOf(e.decidedBy)] ?? 0;
      assert.equal(
        answer !== null,
        e.verdict === "accept",
        `${label}: ${answer === null ? "no answer" : `answered ${answer}`}, explain ${e.verdict}`,
      );
      assert.ok(afterN > before, `${label}: counter ${counterOf(e.decidedBy)} ${before} → ${afterN}`);
    }
  }

  test("by default no tunnel reaches the admin port, the metrics listener or another service of the host", async () => {
    const [b, m] = [lab.clients[0]!, lab.clients[1]!];
    await check([
      { ns: b, who: browserAddr, port: 9443, expect: "gateway.default" },
      { ns: b, who: browserAddr, port: 9464, expect: "gateway.default" },
      { ns: b, who: browserAddr, port: 2222, expect: "gateway.default" },
      { ns: m, who: mailAddr, port: 2222, expect: "gateway.default" },
    ]);
    assert.deepEqual(accepted(), [], "the host's service saw no connection");
    // The listeners are up and answer outside the tunnels (the server namespace): only the tunnel path is closed.
    assert.match((await get(lab.srv, 9464)) ?? "", /^HTTP\/1\.1 200/);
    assert.notEqual(await get(lab.srv, 2222), null);
    assert.equal(accepted().length, 1, "the server namespace's connection is seen");
    // Forwarded traffic is unaffected: `to: any` lets browser reach the server.
    const echo = lab.server(node, ["--import", "tsx", TCP_TOOL, "echo", "198.18.2.2", "7000"]);
    await waitLine(echo, (o) => o.listening === true);
    const fwd = await b.exec(
      node,
      ["-e", `require("net").connect(7000,"198.18.2.2",function(){console.log("ok");this.destroy()})`],
      { check: false, timeoutMs: 10_000 },
    );
    assert.match(fwd.stdout, /ok/);
    await echo.kill("SIGKILL");
    // The metrics report these drops under their own reason.
    const metrics = await lab.srv.exec(
      node,
      ["-e", `fetch("http://${GW}:9464/metrics").then(r=>r.text()).then(t=>console.log(t))`],
      { timeoutMs: 10_000 },
    );
    const n = /^seng_drops_total\{reason="to-gateway"\} (\d+)$/m.exec(metrics.stdout);
    assert.ok(n && Number(n[1]) >= 4, `to-gateway drops: ${n?.[0]}`);
  });

  test("a to: gateway rule opens exactly the ports it names, for exactly the app it names", async () => {
    lab.writeConfig({ extraYaml: OPEN });
    const r = seng(["gateway", "reload", "--config", lab.configFile]);
    assert.equal(r.code, 0, r.stderr);
    const [b, m] = [lab.clients[0]!, lab.clients[1]!];
    const seen = accepted().length;
    await check([
      { ns: b, who: browserAddr, port: 9464, expect: "policy.rules[0]" },
      { ns: b, who: browserAddr, port: 2222, expect: "policy.rules[0]" },
      { ns: b, who: browserAddr, port: 9443, expect: "gateway.default" },
      { ns: m, who: mailAddr, port: 2222, expect: "gateway.default" },
      { ns: m, who: mailAddr, port: 9464, expect: "gateway.default" },
    ]);
    const now = accepted().slice(seen);
    assert.equal(now.length, 1, `one connection, browser's: ${now.join(" ")}`);
    assert.equal((JSON.parse(now[0]!) as { remote: string }).remote, browserAddr);
    // The CLI explains the same path (and exits 1 for a deny).
    const cli = seng(["policy", "explain", "--config", lab.configFile, "mail", "gateway", "tcp/2222"]);
    assert.equal(cli.code, 1, cli.stdout + cli.stderr);
    assert.match(cli.stdout, /^DENY by gateway\.default/);
  });

  test("a port the host DNATs to another machine is the gateway's: closed by default, opened by to: gateway", async () => {
    // The host publishes 8443 as a DNAT to the server namespace, in a table of its own (what Docker -p does).
    const natFile = join(lab.dir, "testnat.nft");
    writeFileSync(
      natFile,
      "table ip testnat {\n  chain pre {\n    type nat hook prerouting priority dstnat;\n" +
        "    tcp dport 8443 dnat to 198.18.2.2:7443\n  }\n}\n",
    );
    await lab.gw.exec("nft", ["-f", natFile]);
    const published = lab.server(node, ["--import", "tsx", TCP_TOOL, "echo", "198.18.2.2", "7443"]);
    try {
      await waitLine(published, (o) => o.listening === true);
      const seen = () => published.stdout.split("\n").filter((l) => l.includes('"remote"'));
      const b = lab.clients[0]!;
      // `to: any` tcp allows browser's forwarded connections, but this one is addressed to the gateway host.
      lab.writeConfig({ extraYaml: CLOSED });
      assert.equal(seng(["gateway", "reload", "--config", lab.configFile]).code, 0);
      await check([{ ns: b, who: browserAddr, port: 8443, expect: "gateway.default" }]);
      assert.deepEqual(seen(), [], "nothing reached the DNAT target");
      lab.writeConfig({ extraYaml: DNAT_OPEN });
      assert.equal(seng(["gateway", "reload", "--config", lab.configFile]).code, 0);
      await check([{ ns: b, who: browserAddr, port: 8443, expect: "policy.rules[0]" }]);
      // The DNAT works: with the port opened, browser's connection reaches the server namespace.
      const now = seen();
      assert.equal(now.length, 1, `browser's connection went through: ${now.join(" ")}`);
      assert.equal((JSON.parse(now[0]!) as { remote: string }).remote, browserAddr);
    } finally {
      await published.kill("SIGKILL");
      await lab.gw.exec("nft", ["delete", "table", "ip", "testnat"], { check: false });
    }
  });

  test("a connection the host DNATs to itself is the gateway's too (judged on the input path)", async () => {
    // A transparent-proxy style DNAT: browser connects to the server's address, the host turns it to its own
    // service on :2222. Prerouting saw a forwarded destination; the input hook must still judge it.
    const natFile = join(lab.dir, "testredirect.nft");
    writeFileSync(
      natFile,
      "table ip testredirect {\n  chain pre {\n    type nat hook prerouting priority dstnat;\n" +
        '    iifname "seng0" tcp dport 9999 dnat to 198.18.2.1:2222\n  }\n}\n',
    );
    await lab.gw.exec("nft", ["-f", natFile]);
    try {
      lab.writeConfig({ extraYaml: CLOSED });
      assert.equal(seng(["gateway", "reload", "--config", lab.configFile]).code, 0);
      const seenBefore = accepted().length;
      const before = (await counters()).seng_gateway_default ?? 0;
      const r = await lab.clients[0]!.exec(
        node,
        [
          "-e",
          `const s=require("net").connect(9999,"198.18.2.2",()=>{console.log("connected");s.destroy()});` +
            `s.on("error",()=>{});setTimeout(()=>process.exit(0),2000)`,
        ],
        { check: false, timeoutMs: 10_000 },
      );
      assert.doesNotMatch(r.stdout, /connected/, "the redirected connection was answered");
      assert.equal(accepted().length, seenBefore, "the host's service saw no connection");
      assert.ok(((await counters()).seng_gateway_default ?? 0) > before, "counted by gateway.default");
    } finally {
      await lab.gw.exec("nft", ["delete", "table", "ip", "testredirect"], { check: false });
    }
  });

  test("a packet to the host is judged once: three pings allowed, three packets counted", async () => {
    lab.writeConfig({ extraYaml: PING });
    assert.equal(seng(["gateway", "reload", "--config", lab.configFile]).code, 0);
    const name = "policy.rules[0]";
    const before = (await counters())[name] ?? 0;
    // Three pings of one echo request each: three new flows (a rule counts the first packet of a flow).
    for (let i = 0; i < 3; i++) {
      const r = await lab.clients[0]!.exec("ping", ["-c", "1", "-W", "2", GW], {
        check: false,
        timeoutMs: 10_000,
      });
      assert.match(r.stdout, /1 received/, r.stdout);
    }
    assert.equal(((await counters())[name] ?? 0) - before, 3, "each echo request counted exactly once");
  });
});
