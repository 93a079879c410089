/**
 * The firewall's IPv6 with the real gateway and a real dual-stack tunnel (test client in TUN mode, protocol v2): the
 * lease's IPv6 address in the app's IPv6 sets, explain's verdict against real IPv6 packets and the counters, and a
 * revocation by reload that empties the set, deletes the IPv6 flow's conntrack entry and stops the flow.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { Lab, SERVER_IP6, TCP_TOOL, waitLine, CLI, type LabApp } from "../helpers/lab.js";
import { ROOT, type NsProcess } from "../helpers/netns.js";
import { loadConfig } from "../../src/policy/config.js";
import { explain, parseService } from "../../src/firewall/explain.js";
import { parseCounters } from "../../src/firewall/nft.js";

const APP = "c0".repeat(32);
const SRV6 = SERVER_IP6;
const node = process.execPath;

const apps = (id = APP): LabApp[] => [
  { name: "browser", categories: ["web"], identities: [{ mrenclave: id }] },
];
const POLICY = `pool: 100.64.128.0/24
pool6: "fd64:ff::/64"
tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 30, leaseGraceSeconds: 60 }
policy:
  default: deny
  sets: { srv6: ["2001:2:ff::/48"] }
  rules:
    - { from: browser, to: "${SRV6}", proto: tcp, ports: [7000, 7010], action: allow }
    - { from: browser, to: "set:srv6", proto: tcp, ports: [7001], action: deny }
    - { from: category:web, to: "set:srv6", proto: icmp, action: allow }
`;

describe("IPv6 firewall with the real gateway", { concurrency: false }, () => {
  let lab: Lab;
  let client: NsProcess;
  let addr6 = "";
  const servers: NsProcess[] = [];

  const writeConfig = (id = APP) => lab.writeConfig({ apps: apps(id), extraYaml: POLICY });
  const counters = async () =>
    parseCounters((await lab.gw.exec("nft", ["-j", "list", "table", "inet", "seng"])).stdout);
  const set = async (name: string) =>
    (await lab.gw.exec("nft", ["list", "set", "inet", "seng", name])).stdout;
  const connects = async (port: number, host = SRV6) => {
    const r = await lab.clients[0]!.exec(
      node,
      [
        "-e",
        `const s=require("net").connect(${port},"${host}",()=>{console.log("ok");s.destroy()});` +
          `s.on("error",()=>{});setTimeout(()=>process.exit(0),1500).unref()`,
      ],
      { check: false, timeoutMs: 10_000 },
    );
    return r.stdout.includes("ok");
  };

  before(async () => {
    // The lab's dual-stack server network (2001:2:ff::/64) and the gateway's TUN IPv6 address fd64::1.
    lab = await Lab.create({ clients: 1, apps: apps(), extraYaml: POLICY, ipv6: true });
    await lab.startGateway();
    for (const port of ["7000", "7001", "7002"]) {
      const s = lab.server(node, ["--import", "tsx", TCP_TOOL, "echo", SRV6, port]);
      await waitLine(s, (o) => o.listening === true);
      servers.push(s);
    }
    // The server network, and the gateway's own IPv6 address (to check that it stays closed to the tunnel).
    client = lab.startClient(APP, { args: ["--route", "2001:2:ff::/48", "fd64::1/128"] });
    addr6 = (await waitLine<{ address6?: string }>(client, (o) => o.event === "lease")).address6 ?? "";
    for (let i = 0; i < 100 && !(await set("seng_app6_browser")).includes(addr6); i++)
      await new Promise((r) => setTimeout(r, 50));
  });

  after(async () => {
    await lab?.destroy();
  });

  test("the lease's IPv6 address is in the app's and its category's IPv6 sets", async () => {
    assert.match(addr6, /^fd64:ff::[0-9a-f:]+$/);
    assert.match(await set("seng_app6_browser"), new RegExp(`elements = \\{ ${addr6} \\}`));
    assert.match(await set("seng_cat6_web"), new RegExp(`elements = \\{ ${addr6} \\}`));
    assert.ok(!(await set("seng_app_browser")).includes(addr6));
  });

  test("explain's verdict is what the tunnel's IPv6 packets do, and the named counter counted them", async () => {
    const model = loadConfig(lab.configFile).model;
    const cases: [string, string][] = [
      ["tcp/7000", "policy.rules[0]"],
      ["tcp/7001", "policy.rules[1]"],
      ["tcp/7002", "policy.default"],
      ["icmp", "policy.rules[2]"],
    ];
    for (const [service, expect] of cases) {
      const svc = parseService(service);
      const e = explain(model, { from: addr6, to: SRV6, ...svc }, (a) =>
        a === addr6 ? "browser" : undefined,
      );
      assert.equal(e.decidedBy, expect, `${service}: ${e.trace.join("\n")}`);
      const key = e.decidedBy === "policy.default" ? "seng_policy_default" : e.decidedBy;
      const before = (await counters())[key] ?? 0;
      const passed =
        svc.proto === "icmp"
          ? (
              await lab.clients[0]!.exec("ping", ["-6", "-c", "1", "-W", "1", SRV6], {
                check: false,
                timeoutMs: 10_000,
              })
            ).code === 0
          : await connects(svc.port!);
      assert.equal(passed, e.verdict === "accept", `${service}: packets ${passed ? "passed" : "dropped"}`);
      assert.ok(((await counters())[key] ?? 0) > before, `${service}: ${key} did not count`);
    }
    // The server saw exactly one connection, from the app's IPv6 address; the denied ports none.
    assert.deepEqual(
      servers[0]!.stdout
        .split("\n")
        .filter((l) => l.includes('"remote"'))
        .map((l) => (JSON.parse(l) as { remote: string }).remote),
      [addr6],
    );
    assert.ok(!/"remote"/.test(servers[1]!.stdout + servers[2]!.stdout));
  });

  test("the gateway host's IPv6 address (the leases' gateway6) is closed to the tunnel without a to: gateway rule", async () => {
    const listener = lab.gw.spawn(node, ["--import", "tsx", TCP_TOOL, "echo", "::", "9002"]);
    try {
      await waitLine(listener, (o) => o.listening === true);
      const e = explain(
        loadConfig(lab.configFile).model,
        { from: addr6, to: "gateway", proto: "tcp", port: 9002 },
        (a) => (a === addr6 ? "browser" : undefined),
      );
      assert.deepEqual([e.verdict, e.decidedBy], ["drop", "gateway.default"], e.trace.join("\n"));
      const before = (await counters()).seng_gateway_default ?? 0;
      assert.equal(await connects(9002, "fd64::1"), false, "the tunnel reached the gateway's own port");
      assert.ok(((await counters()).seng_gateway_default ?? 0) > before);
      assert.ok(!/"remote"/.test(listener.stdout), listener.stdout);
    } finally {
      await listener.kill("SIGKILL");
    }
  });

  test("the subnet-router anycast address of the gateway's server network is the gateway too: UDP to it gets nowhere", async () => {
    // With forwarding on, Linux answers the all-zeros address of every prefix on its interfaces (2001:2:ff:: here)
    // as a local address of type anycast: a tunnel's UDP to it would reach sockets bound to :: on the gateway host.
    const listener = lab.gw.spawn(node, [
      "-e",
      `const s=require("dgram").createSocket("udp6");s.on("message",(m,r)=>console.log("got",r.address));` +
        `s.bind(9003,"::",()=>console.log(JSON.stringify({listening:true})))`,
    ]);
    try {
      await waitLine(listener, (o) => o.listening === true);
      const before = (await counters()).seng_gateway_default ?? 0;
      await lab.clients[0]!.exec(
        node,
        [
          "-e",
          `const s=require("dgram").createSocket("udp6");let n=0;const t=setInterval(()=>{` +
            `s.send("x","9003","2001:2:ff::");if(++n===5){clearInterval(t);setTimeout(()=>s.close(),300)}},50)`,
        ],
        { check: false, timeoutMs: 10_000 },
      );
      await new Promise((r) => setTimeout(r, 500));
      assert.ok(
        !/got/.test(listener.stdout),
        `a tunnel reached the gateway over anycast: ${listener.stdout}`,
      );
      assert.ok(
        ((await counters()).seng_gateway_default ?? 0) >= before + 5,
        "the gateway chain did not drop them",
      );
    } finally {
      await listener.kill("SIGKILL");
    }
  });

  const reload = () =>
    JSON.parse(
      execFileSync(
        node,
        ["--import", "tsx", CLI, "gateway", "reload", "--config", lab.configFile, "--json"],
        {
          cwd: ROOT,
          encoding: "utf8",
        },
      ),
    ) as { revoked: { address: string }[] };

  test("a reload that revokes nothing keeps the live IPv6 address in its sets (the apply rebuilds them)", async () => {
    lab.writeConfig({ apps: apps(), extraYaml: POLICY.replace("ports: [7001]", "ports: [7001, 7003]") });
    assert.deepEqual(reload().revoked, []);
    assert.match(await set("seng_app6_browser"), new RegExp(`elements = \\{ ${addr6} \\}`));
    assert.match(await set("seng_cat6_web"), new RegExp(`elements = \\{ ${addr6} \\}`));
    assert.equal(await connects(7000), true);
  });

  test("revocation by reload: the IPv6 set is emptied, the flow's conntrack entry deleted, the transfer cut", async () => {
    const sink = lab.server(node, ["--import", "tsx", TCP_TOOL, "sink", SRV6, "7010"]);
    await waitLine(sink, (o) => o.listening === true);
    const source = lab.clients[0]!.spawn(node, [
      "--import",
      "tsx",
      TCP_TOOL,
      "source",
      SRV6,
      "7010",
      String(4 * 1024 ** 3),
    ]);
    try {
      const tracked = async () =>
        (
          await lab.gw.exec("conntrack", ["-L", "-f", "ipv6", "-s", addr6, "-p", "tcp", "--dport", "7010"], {
            check: false,
          })
        ).stdout;
      for (let i = 0; i < 100 && !/ESTABLISHED/.test(await tracked()); i++)
        await new Promise((r) => setTimeout(r, 100));
      assert.match(await tracked(), /ESTABLISHED/);
      writeConfig("c1".repeat(32));
      const res = reload();
      assert.ok(
        res.revoked.some((r) => r.address === addr6),
        JSON.stringify(res),
      );
      // When reload answered, the address was out of the sets and the flow out of conntrack.
      assert.ok(!(await set("seng_app6_browser")).includes(addr6));
      assert.doesNotMatch(await tracked(), /dport=7010/);
      const closed = await waitLine<{ reason: string }>(client, (o) => o.event === "closed", 5000);
      assert.equal(closed.reason, "revoked");
    } finally {
      await source.kill("SIGKILL");
      await sink.kill("SIGKILL");
    }
    assert.ok(!/sha256/.test(sink.stdout), `the transfer completed despite the revocation: ${sink.stdout}`);
  });
});
