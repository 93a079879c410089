/**
 * The firewall end to end in network namespaces with real nftables and conntrack: two apps with different policies
 * (browser in subnet mode, mail in the shared pool: set mode) and one unshielded host, a real `seng gateway`,
 * real TCP and ICMP. `explain` is checked against what the packets do and which counter of our table counted them.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { Lab, SERVER_IP, TCP_TOOL, waitLine, CLI, type LabApp } from "../helpers/lab.js";
import { ROOT, type Netns, type NsProcess } from "../helpers/netns.js";
import { loadConfig } from "../../src/policy/config.js";
import { explain, parseService } from "../../src/firewall/explain.js";
import { parseCounters } from "../../src/firewall/nft.js";

const BROWSER = "b0".repeat(32);
const MAIL = "a1".repeat(32);
const node = process.execPath;

const apps = (browserId = BROWSER): LabApp[] => [
  { name: "browser", subnet: "100.64.1.0/24", categories: ["web"], identities: [{ mrenclave: browserId }] },
  { name: "mail", categories: ["web"], identities: [{ mrenclave: MAIL }] },
];

const POLICY = `pool: 100.64.128.0/24
tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 30, leaseGraceSeconds: 60 }
firewall:
  exportSets: ["inet admin"]
  unshielded:
    drop: true
    interfaces: [gw-c2]
    allow: [{ to: ${SERVER_IP}, proto: tcp, ports: [7002] }]
policy:
  default: deny
  rules:
    - { from: browser, to: ${SERVER_IP}, proto: tcp, ports: [7000], action: allow }
    - { from: browser, to: ${SERVER_IP}, proto: tcp, ports: [7001], action: deny }
    - { from: mail, to: ${SERVER_IP}, proto: tcp, ports: ["7001-7002"], action: allow }
    - { from: category:web, to: 198.18.2.0/24, proto: icmp, action: allow }
`;

/** Tries a TCP connection (1.5 s); true when it connects. */
async function connects(ns: Netns, port: number): Promise<boolean> {
  const r = await ns.exec(
    node,
    [
      "-e",
      `const s=require("net").connect(${port},"${SERVER_IP}",()=>{console.log("ok");s.destroy()});` +
        `s.on("error",()=>{});setTimeout(()=>process.exit(0),1500).unref()`,
    ],
    { check: false, timeoutMs: 10_000 },
  );
  return r.stdout.includes("ok");
}

async function pings(ns: Netns): Promise<boolean> {
  const r = await ns.exec("ping", ["-c", "1", "-W", "1", SERVER_IP], { check: false, timeoutMs: 10_000 });
  return r.code === 0;
}

async function counters(lab: Lab): Promise<Record<string, number>> {
  return parseCounters((await lab.gw.exec("nft", ["-j", "list", "table", "inet", "seng"])).stdout);
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

describe("firewall in namespaces", { concurrency: false }, () => {
  let lab: Lab;
  let browser: NsProcess;
  let mail: NsProcess;
  let browserAddr = "";
  let mailAddr = "";
  const servers: NsProcess[] = [];

  before(async () => {
    lab = await Lab.create({ clients: 3, apps: apps(), extraYaml: POLICY });
    // The admin's own table, where the gateway keeps copies of the app sets (firewall.exportSets).
    await lab.gw.exec("nft", ["add", "table", "inet", "admin"]);
    await lab.startGateway();
    // The unshielded host (client 2) routes to the server directly through the gateway, no tunnel.
    await lab.clients[2]!.ip("route", "add", "198.18.2.0/24", "via", "198.18.5.1");
    for (const port of ["7000", "7001", "7002"]) {
      const s = lab.server(node, ["--import", "tsx", TCP_TOOL, "echo", SERVER_IP, port]);
      await waitLine(s, (o) => o.listening === true);
      servers.push(s);
    }
    browser = lab.startClient(BROWSER, { client: 0 });
    mail = lab.startClient(MAIL, { client: 1 });
    browserAddr = (await waitLine<{ address: string }>(browser, (o) => o.event === "lease")).address;
    mailAddr = (await waitLine<{ address: string }>(mail, (o) => o.event === "lease")).address;
  });

  after(async () => {
    await lab?.destroy();
  });

  test("addresses join their app and category sets, also in the admin's table; pool and subnet mode", async () => {
    assert.match(browserAddr, /^100\.64\.1\.\d+$/);
    assert.match(mailAddr, /^100\.64\.128\.\d+$/, "mail has no subnet: it leases from the shared pool");
    const list = async (table: string, set: string) =>
      (await lab.gw.exec("nft", ["list", "set", "inet", table, set])).stdout;
    // Set updates are asynchronous (a few ms): wait until both are in.
    for (let i = 0; i < 100 && !(await list("seng", "seng_cat_web")).includes(mailAddr); i++)
      await new Promise((r) => setTimeout(r, 50));
    assert.match(await list("seng", "seng_app_browser"), new RegExp(`elements = \\{ ${browserAddr} \\}`));
    assert.match(await list("seng", "seng_app_mail"), new RegExp(`elements = \\{ ${mailAddr} \\}`));
    const web = await list("seng", "seng_cat_web");
    assert.ok(web.includes(browserAddr) && web.includes(mailAddr), web);
    assert.ok((await list("admin", "seng_app_mail")).includes(mailAddr), "exported set in the admin's table");
  });

  test("each allowed flow works, each denied flow is dropped and counted, and explain agrees", async () => {
    const config = loadConfig(lab.configFile);
    const live = new Map([
      [browserAddr, "browser"],
      [mailAddr, "mail"],
    ]);
    const cases: { who: string; ns: Netns; service: string; inIf?: string; expect: string }[] = [
      { who: browserAddr, ns: lab.clients[0]!, service: "tcp/7000", expect: "policy.rules[0]" },
      { who: browserAddr, ns: lab.clients[0]!, service: "tcp/7001", expect: "policy.rules[1]" },
      { who: browserAddr, ns: lab.clients[0]!, service: "tcp/7002", expect: "policy.default" },
      { who: browserAddr, ns: lab.clients[0]!, service: "icmp", expect: "policy.rules[3]" },
      { who: mailAddr, ns: lab.clients[1]!, service: "tcp/7000", expect: "policy.default" },
      { who: mailAddr, ns: lab.clients[1]!, service: "tcp/7001", expect: "policy.rules[2]" },
      { who: mailAddr, ns: lab.clients[1]!, service: "icmp", expect: "policy.rules[3]" },
      {
        who: "198.18.5.2",
        ns: lab.clients[2]!,
        service: "tcp/7000",
        inIf: "gw-c2",
        expect: "firewall.unshielded",
      },
      {
        who: "198.18.5.2",
        ns: lab.clients[2]!,
        service: "tcp/7002",
        inIf: "gw-c2",
        expect: "firewall.unshielded.allow[0]",
      },
      {
        who: "198.18.5.2",
        ns: lab.clients[2]!,
        service: "icmp",
        inIf: "gw-c2",
        expect: "firewall.unshielded",
      },
    ];
    const counterOf = (decidedBy: string) =>
      decidedBy === "policy.default"
        ? "seng_policy_default"
        : decidedBy === "firewall.unshielded"
          ? "seng_unshielded_drops"
          : decidedBy;
    for (const c of cases) {
      const svc = parseService(c.service);
      const e = explain(config.model, { from: c.who, to: SERVER_IP, ...svc, inInterface: c.inIf }, (a) =>
        live.get(a),
      );
      const label = `${c.who} ${c.service}`;
      assert.equal(e.decidedBy, c.expect, `${label}: explain says ${e.decidedBy}\n${e.trace.join("\n")}`);
      const before = (await counters(lab))[counterOf(e.decidedBy)] ?? 0;
      const passed = svc.proto === "icmp" ? await pings(c.ns) : await connects(c.ns, svc.port!);
      const afterN = (await counters(lab))[counterOf(e.decidedBy)] ?? 0;
      assert.equal(
        passed,
        e.verdict === "accept",
        `${label}: packets ${passed ? "passed" : "dropped"}, explain ${e.verdict}`,
      );
      assert.ok(afterN > before, `${label}: counter ${counterOf(e.decidedBy)} ${before} → ${afterN}`);
    }
    // Connections are marked per app for accounting.
    const ct = await lab.gw.exec("conntrack", ["-L", "-s", mailAddr], { check: false });
    assert.match(ct.stdout, /mark=1577058306/, `mail's mark 0x5e000002 on its connections:\n${ct.stdout}`);
  });

  test("a reload with a broken config keeps the old policy and reports the error", async () => {
    const rules = async () =>
      (await lab.gw.exec("nft", ["list", "chain", "inet", "seng", "rules"])).stdout.replace(
        /packets \d+ bytes \d+/g,
        "",
      );
    const before = await rules();
    lab.writeConfig({ extraYaml: POLICY.replace("from: mail,", "from: nosuchapp,") });
    // The CLI refuses it before signalling...
    const cli = seng(["gateway", "reload", "--config", lab.configFile, "--json"]);
    assert.equal(cli.code, 2);
    assert.match(cli.stderr, /policy\.rules\[2\]\.from: no app, category or set named nosuchapp/);
    // ...and the gateway refuses it when signalled directly (SIGHUP).
    const from = lab.gateway!.stdout.length;
    lab.gateway!.child.kill("SIGHUP");
    const failed = await waitLine(lab.gateway!, (o) => o.event === "reload-failed", 10_000, from);
    assert.match(String(failed.error), /gateway\.yaml: policy\.rules\[2\]\.from: no app/);
    assert.equal(await rules(), before, "the policy table is unchanged");
    assert.equal(await connects(lab.clients[0]!, 7000), true, "browser's allowed flow still works");
  });

  test("revoking an app mid-transfer cuts the flow; the runtime sees revoked; audit keeps who held it", async () => {
    lab.writeConfig({ extraYaml: POLICY });
    const sink = lab.server(node, ["--import", "tsx", TCP_TOOL, "sink", SERVER_IP, "7010"]);
    await waitLine(sink, (o) => o.listening === true);
    // Allow 7010 for browser through a reload that changes only the policy: nothing is revoked.
    lab.writeConfig({ extraYaml: POLICY.replace("ports: [7000]", "ports: [7000, 7010]") });
    const ok = seng(["gateway", "reload", "--config", lab.configFile, "--json"]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual((JSON.parse(ok.stdout) as { revoked: unknown[] }).revoked, []);
    const source = lab.clients[0]!.spawn(node, [
      "--import",
      "tsx",
      TCP_TOOL,
      "source",
      SERVER_IP,
      "7010",
      String(4 * 1024 ** 3),
    ]);
    // Wait until the flow is established in the gateway's conntrack table.
    for (let i = 0; i < 100; i++) {
      const ct = await lab.gw.exec("conntrack", ["-L", "-s", browserAddr, "-p", "tcp", "--dport", "7010"], {
        check: false,
      });
      if (/ESTABLISHED/.test(ct.stdout)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const grantedAt = Date.now();
    // Revoke: browser's measurement is no longer allowed.
    lab.writeConfig({
      apps: apps("b1".repeat(32)),
      extraYaml: POLICY.replace("ports: [7000]", "ports: [7000, 7010]"),
    });
    const r = seng(["gateway", "reload", "--config", lab.configFile, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as { revoked: { address: string; app: string }[] };
    assert.deepEqual(
      res.revoked.map((x) => [x.address, x.app]),
      [[browserAddr, "browser"]],
    );
    const closed = await waitLine<{ reason: string; final: boolean }>(
      browser,
      (o) => o.event === "closed",
      5000,
    );
    assert.equal(closed.reason, "revoked");
    assert.equal(closed.final, true);
    // When reload answered, the address was out of the sets and its flows were gone from conntrack.
    const set = (await lab.gw.exec("nft", ["list", "set", "inet", "seng", "seng_app_browser"])).stdout;
    assert.ok(!set.includes(browserAddr), set);
    const ct = await lab.gw.exec("conntrack", ["-L", "-s", browserAddr], { check: false });
    assert.ok(!/dport=7010/.test(ct.stdout), `flow still tracked:\n${ct.stdout}`);
    // The transfer did not complete.
    await source.kill("SIGKILL");
    await sink.kill("SIGKILL");
    assert.ok(!/sha256/.test(sink.stdout), `the transfer completed despite the revocation: ${sink.stdout}`);
    // mail was not affected.
    assert.equal(await connects(lab.clients[1]!, 7001), true);

    // The audit log says who held the address, also after a kill -9 of the gateway.
    await lab.stopGateway("SIGKILL");
    const who = seng([
      "audit",
      "who",
      browserAddr,
      "--at",
      new Date(grantedAt).toISOString(),
      "--config",
      lab.configFile,
      "--json",
    ]);
    assert.equal(who.code, 0, who.stderr);
    const w = JSON.parse(who.stdout) as {
      holder: { app: string; releaseReason: string; measurement: string };
    };
    assert.equal(w.holder.app, "browser");
    assert.equal(w.holder.measurement, BROWSER);
    assert.equal(w.holder.releaseReason, "revoked");
    const now = seng(["audit", "who", browserAddr, "--config", lab.configFile, "--json"]);
    assert.equal(now.code, 1, "nobody holds it now");
    const exp = seng(["audit", "export", "--config", lab.configFile]);
    const events = exp.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { event: string; address: string });
    assert.ok(events.some((e) => e.event === "grant" && e.address === mailAddr));
    assert.ok(events.some((e) => e.event === "release" && e.address === browserAddr));
    await mail.kill();
  });
});
