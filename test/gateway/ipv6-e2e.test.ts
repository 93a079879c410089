/**
 * IPv6 through the gateway in network namespaces: a dual-stack server network, a real `seng gateway` with IPv6 app
 * prefixes, and test clients whose kernel TUN carries the leased IPv4 and IPv6 addresses (test/helpers/tun6-client.ts).
 * Protocol versions 1 and 2 against the real gateway, 100 MB over IPv6, a spoofed IPv6 source that never reaches
 * the server, ICMPv6 Packet Too Big, and revocation of an IPv6 flow with the audit log naming the app.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { CLI, Lab, SERVER_IP6, TCP_TOOL, waitLine, type LabApp } from "../helpers/lab.js";
import { ROOT, type NsProcess } from "../helpers/netns.js";

const DUAL = "d6".repeat(32);
const SIX = "a6".repeat(32);
const node = process.execPath;
const apps = (dualId = DUAL): LabApp[] => [
  { name: "dual", subnet: "100.64.1.0/24", subnet6: "fd64:1::/64", identities: [{ mrenclave: dualId }] },
  { name: "six", subnet6: "fd64:2::/64", identities: [{ mrenclave: SIX }] },
];
const EXTRA = "tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 30, leaseGraceSeconds: 60 }";

interface LeaseLine {
  version: number;
  address?: string;
  address6?: string;
  gateway6?: string;
  prefix6?: number;
  app: string;
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

describe("IPv6 through the gateway in namespaces", { concurrency: false }, () => {
  let lab: Lab;

  /** Starts the dual-stack test client in client namespace `c`; routes the server network of both families. */
  const client = (mrenclave: string, c = 0, extra: string[] = []): NsProcess =>
    lab.clients[c]!.spawn(node, [
      "--import",
      "tsx",
      join(ROOT, "test/helpers/tun6-client.ts"),
      lab.gatewayAddr(c),
      lab.pin,
      lab.simDir,
      mrenclave,
      `sengc${c}`,
      "--route",
      "198.18.2.0/24",
      "--route",
      "2001:2:ff::/48",
      ...extra,
    ]);

  before(async () => {
    lab = await Lab.create({ clients: 2, ipv6: true, apps: apps(), extraYaml: EXTRA });
    await lab.startGateway();
  });

  after(async () => {
    await lab?.destroy();
  });

  test("protocol versions against the real gateway: v2 dual-stack, v1 gets IPv4 only, v1 of an IPv6-only app is refused", async () => {
    const v2 = client(DUAL);
    const l2 = await waitLine<LeaseLine>(v2, (o) => o.event === "lease");
    assert.deepEqual(
      [l2.version, l2.address, l2.address6, l2.prefix6, l2.gateway6],
      [2, "100.64.1.1", "fd64:1::1", 64, "fd64::1"],
    );
    // The admin API shows both addresses of the tunnel and both families of the apps.
    const st = seng(["status", "--socket", join(lab.dir, "admin.sock"), "--json"]);
    assert.equal(st.code, 0, st.stderr);
    const view = JSON.parse(st.stdout) as {
      tunnels: { app: string; address: string; address6?: string; version?: number }[];
      apps: { name: string; subnet?: string; subnet6?: string }[];
    };
    assert.deepEqual(
      view.tunnels.map((t) => [t.app, t.address, t.address6, t.version]),
      [["dual", "100.64.1.1", "fd64:1::1", 2]],
    );
    assert.deepEqual(
      view.apps.map((a) => [a.name, a.subnet, a.subnet6]),
      [
        ["dual", "100.64.1.0/24", "fd64:1::/64"],
        ["six", undefined, "fd64:2::/64"],
      ],
    );
    const table = seng(["status", "--socket", join(lab.dir, "admin.sock")]).stdout;
    assert.match(table, /dual +100\.64\.1\.1 fd64:1::1 /, table);
    await v2.kill();
    const v1 = client(DUAL, 1, ["--max-version", "1"]);
    const l1 = await waitLine<LeaseLine>(v1, (o) => o.event === "lease");
    assert.deepEqual([l1.version, l1.address, l1.address6], [1, "100.64.1.2", undefined]);
    // IPv6 from a tunnel without an IPv6 lease stays `unsupported-version`, and nothing of it reaches the server.
    const before = (await lab.stats()).drops["unsupported-version"] ?? 0;
    const listener = lab.server(node, [
      "-e",
      `const s=require("dgram").createSocket("udp6");` +
        `s.on("message",(m,r)=>console.log(JSON.stringify({from:r.address})));` +
        `s.bind(7300,"${SERVER_IP6}",()=>console.log(JSON.stringify({listening:true})))`,
    ]);
    await waitLine(listener, (o) => o.listening === true);
    await lab.clients[1]!.ip("-6", "addr", "add", "fd64:1::77/128", "dev", "sengc1", "nodad");
    await lab.clients[1]!.ip(
      "-6",
      "route",
      "replace",
      "2001:2:ff::/48",
      "dev",
      "sengc1",
      "src",
      "fd64:1::77",
    );
    await lab.clients[1]!.exec(
      node,
      [
        "-e",
        `const s=require("dgram").createSocket("udp6");let i=0;` +
          `s.bind(0,"fd64:1::77",()=>{const t=setInterval(()=>{s.send("x",7300,"${SERVER_IP6}");` +
          `if(++i===3){clearInterval(t);setTimeout(()=>s.close(),300)}},20)})`,
      ],
      { timeoutMs: 10_000 },
    );
    const after = (await lab.stats()).drops["unsupported-version"] ?? 0;
    assert.ok(after >= before + 3, `unsupported-version ${before} → ${after}`);
    assert.ok(
      !listener.stdout.includes('"from"'),
      `IPv6 of a version-1 tunnel reached the server: ${listener.stdout}`,
    );
    await listener.kill("SIGKILL");
    await v1.kill();
    const refused = client(SIX, 1, ["--max-version", "1"]);
    const closed = await waitLine<{ reason: string; message: string; final: boolean }>(
      refused,
      (o) => o.event === "closed",
    );
    assert.equal(closed.reason, "policy-rejected");
    assert.match(closed.message, /only IPv6 addresses, which need protocol version 2/);
    assert.equal(closed.final, true);
    const six = client(SIX, 1);
    const l6 = await waitLine<LeaseLine>(six, (o) => o.event === "lease");
    assert.deepEqual([l6.version, l6.address, l6.address6], [2, undefined, "fd64:2::1"]);
    await six.kill();
  });

  test("kill -9 and restart of the gateway: the client reconnects and gets both addresses back", async () => {
    const c = client(DUAL);
    const first = await waitLine<LeaseLine>(c, (o) => o.event === "lease");
    await lab.stopGateway("SIGKILL");
    const from = c.stdout.length;
    await lab.startGateway();
    const again = await waitLine<LeaseLine>(c, (o) => o.event === "lease", 30_000, from);
    assert.deepEqual([again.address, again.address6], [first.address, first.address6]);
    await c.kill();
  });

  test("100 MB over TCP over IPv6 through the tunnel arrives intact, from the leased IPv6 address", async () => {
    const c = client(DUAL);
    const lease = await waitLine<LeaseLine>(c, (o) => o.event === "lease");
    const sink = lab.server(node, ["--import", "tsx", TCP_TOOL, "sink", SERVER_IP6, "7001"]);
    await waitLine(sink, (o) => o.listening === true);
    const source = lab.clients[0]!.spawn(node, [
      "--import",
      "tsx",
      TCP_TOOL,
      "source",
      SERVER_IP6,
      "7001",
      String(100 * 1024 * 1024),
    ]);
    const sent = await waitLine<{ sha256: string }>(source, (o) => typeof o.sha256 === "string", 180_000);
    const got = await waitLine<{ sha256: string; bytes: number; remote: string }>(
      sink,
      (o) => typeof o.sha256 === "string",
      30_000,
    );
    assert.equal(got.bytes, 100 * 1024 * 1024);
    assert.equal(got.sha256, sent.sha256);
    assert.equal(got.remote, lease.address6);
    const s = await lab.stats();
    assert.ok((s.apps.dual?.rxBytes ?? 0) > 100 * 1024 * 1024, `per-app counters: ${JSON.stringify(s.apps)}`);
    await c.kill();
  });

  test("a spoofed IPv6 inner source is dropped and counted, and nothing from it reaches the server", async () => {
    const c = client(DUAL);
    const lease = await waitLine<LeaseLine>(c, (o) => o.event === "lease");
    const SPOOFED = "fd64:1::99"; // inside the app's own prefix, never leased to this tunnel
    const listener = lab.server(node, [
      "-e",
      `const s=require("dgram").createSocket("udp6");` +
        `s.on("message",(m,r)=>console.log(JSON.stringify({from:r.address})));` +
        `s.bind(7100,"${SERVER_IP6}",()=>console.log(JSON.stringify({listening:true})))`,
    ]);
    await waitLine(listener, (o) => o.listening === true);
    // A counter in the server's namespace of every packet from the spoofed address, whatever it is.
    for (const cmd of [
      ["add", "table", "inet", "watch"],
      [
        "add",
        "chain",
        "inet",
        "watch",
        "in",
        "{ type filter hook prerouting priority -300; policy accept; }",
      ],
      ["add", "rule", "inet", "watch", "in", "ip6", "saddr", SPOOFED, "counter", "comment", '"spoofed"'],
    ])
      await lab.srv.exec("nft", cmd);
    const seenFrom = (a: string) =>
      listener.stdout.split("\n").filter((l) => l.includes(`"from":"${a}"`)).length;
    const send = (from: string, n: number) =>
      lab.clients[0]!.exec(
        node,
        [
          "-e",
          `const s=require("dgram").createSocket("udp6");let i=0;` +
            `s.bind(0,"${from}",()=>{const t=setInterval(()=>{s.send("x",7100,"${SERVER_IP6}");` +
            `if(++i===${n}){clearInterval(t);setTimeout(()=>s.close(),200)}},20)})`,
        ],
        { timeoutMs: 10_000 },
      );
    const before = (await lab.stats()).drops["spoofed-source"] ?? 0;
    await lab.clients[0]!.ip("-6", "addr", "add", `${SPOOFED}/128`, "dev", "sengc0", "nodad");
    await send(SPOOFED, 10);
    await send(lease.address6!, 3);
    for (let i = 0; i < 50 && seenFrom(lease.address6!) < 3; i++)
      await new Promise((r) => setTimeout(r, 100));
    assert.equal(seenFrom(lease.address6!), 3, `the listener heard the genuine address:\n${listener.stdout}`);
    assert.equal(
      seenFrom(SPOOFED),
      0,
      `datagrams from the spoofed address reached the server:\n${listener.stdout}`,
    );
    const watch = (await lab.srv.exec("nft", ["list", "chain", "inet", "watch", "in"])).stdout;
    assert.match(watch, /counter packets 0 bytes 0/, `packets from ${SPOOFED} reached the server:\n${watch}`);
    const after = (await lab.stats()).drops["spoofed-source"] ?? 0;
    assert.ok(after >= before + 10, `spoofed-source drops ${before} → ${after}`);
    await lab.clients[0]!.ip("-6", "addr", "del", `${SPOOFED}/128`, "dev", "sengc0");
    await lab.srv.exec("nft", ["delete", "table", "inet", "watch"]);
    await listener.kill("SIGKILL");
    await c.kill();
  });

  test("an IPv6 packet over the lease's MTU is answered with ICMPv6 Packet Too Big, and the sender learns the MTU", async () => {
    // The client's TUN MTU is 1500, above the lease's 1400: the kernel sends a 1500-byte packet into the tunnel.
    const c = client(DUAL, 0, ["--tun-mtu", "1500"]);
    const lease = await waitLine<LeaseLine>(c, (o) => o.event === "lease");
    const before = (await lab.stats()).drops["too-big"] ?? 0;
    await lab.clients[0]!.exec(
      node,
      [
        "-e",
        `const s=require("dgram").createSocket("udp6");` +
          `s.bind(0,"${lease.address6}",()=>s.send(Buffer.alloc(1452),7200,"${SERVER_IP6}",()=>setTimeout(()=>s.close(),300)))`,
      ],
      { timeoutMs: 10_000 },
    );
    const ptb = await waitLine<{ mtu: number; checksumOk: boolean }>(c, (o) => o.event === "icmp6-ptb", 5000);
    assert.deepEqual([ptb.mtu, ptb.checksumOk], [1400, true]);
    // The client's kernel took the answer: its route to the server now has the MTU of the lease.
    const route = (await lab.clients[0]!.exec("ip", ["-6", "route", "get", SERVER_IP6])).stdout;
    assert.match(route, /mtu 1400/, route);
    assert.ok(((await lab.stats()).drops["too-big"] ?? 0) > before);
    await c.kill();
  });

  test("revocation cuts an IPv6 flow within 1 s; audit who <ipv6> names the app", async () => {
    const c = client(DUAL);
    const lease = await waitLine<LeaseLine>(c, (o) => o.event === "lease");
    const addr6 = lease.address6!;
    // Every packet from the app's IPv6 address that reaches the server's namespace, counted there.
    for (const cmd of [
      ["add", "table", "inet", "watch"],
      [
        "add",
        "chain",
        "inet",
        "watch",
        "in",
        "{ type filter hook prerouting priority -300; policy accept; }",
      ],
      ["add", "rule", "inet", "watch", "in", "ip6", "saddr", addr6, "counter"],
    ])
      await lab.srv.exec("nft", cmd);
    const arrived = async () => {
      const out = (await lab.srv.exec("nft", ["list", "chain", "inet", "watch", "in"])).stdout;
      return Number(/counter packets (\d+)/.exec(out)?.[1] ?? -1);
    };
    const sink = lab.server(node, ["--import", "tsx", TCP_TOOL, "sink", SERVER_IP6, "7010"]);
    await waitLine(sink, (o) => o.listening === true);
    const source = lab.clients[0]!.spawn(node, [
      "--import",
      "tsx",
      TCP_TOOL,
      "source",
      SERVER_IP6,
      "7010",
      String(4 * 1024 ** 3),
    ]);
    for (let i = 0; i < 100 && (await arrived()) < 1000; i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok((await arrived()) >= 1000, "the flow runs");
    const grantedAt = Date.now();
    lab.writeConfig({ apps: apps("d7".repeat(32)) });
    const t0 = Date.now();
    const r = seng(["gateway", "reload", "--config", lab.configFile, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as { revoked: { address: string; app: string }[] };
    assert.deepEqual(
      res.revoked.map((x) => [x.address, x.app]).sort(),
      [
        [lease.address!, "dual"],
        [addr6, "dual"],
      ].sort(),
    );
    // Within 1 s of the reload request nothing more arrives from the address.
    await new Promise((r) => setTimeout(r, Math.max(0, t0 + 1000 - Date.now())));
    const at1s = await arrived();
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(
      await arrived(),
      at1s,
      "packets from the revoked IPv6 address still arrive 1 s after the reload",
    );
    const closed = await waitLine<{ reason: string }>(c, (o) => o.event === "closed", 5000);
    assert.equal(closed.reason, "revoked");
    const ct = await lab.gw.exec("conntrack", ["-L", "-f", "ipv6", "-s", addr6], { check: false });
    assert.ok(!/dport=7010/.test(ct.stdout), `flow still tracked:\n${ct.stdout}`);
    await source.kill("SIGKILL");
    await sink.kill("SIGKILL");
    await lab.srv.exec("nft", ["delete", "table", "inet", "watch"]);

    const who = seng([
      "audit",
      "who",
      addr6.toUpperCase().replace("::", ":0::"), // any spelling of the address
      "--at",
      new Date(grantedAt).toISOString(),
      "--config",
      lab.configFile,
      "--json",
    ]);
    assert.equal(who.code, 0, who.stderr);
    const w = JSON.parse(who.stdout) as {
      holder: { app: string; measurement: string; releaseReason: string };
    };
    assert.deepEqual([w.holder.app, w.holder.measurement, w.holder.releaseReason], ["dual", DUAL, "revoked"]);
    const text = seng([
      "audit",
      "who",
      addr6,
      "--at",
      new Date(grantedAt).toISOString(),
      "--config",
      lab.configFile,
    ]);
    assert.match(text.stdout, new RegExp(`^${addr6} at .*: app dual`));
    assert.equal(seng(["audit", "who", "fe80::1%lo", "--config", lab.configFile]).code, 2);
  });
});
