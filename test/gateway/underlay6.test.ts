/**
 * The IPv6 underlay: the gateway listens dual-stack on "[::]:4433"; a test client reaches it over IPv6 only
 * (2001:2:0:1::/64, no IPv4 on that link), gets its lease, and traffic crosses its tunnel both ways; the IPv6 peer
 * is "[addr]:port" in the log, the admin API and the audit log, while an IPv4 client of the same socket is plain
 * IPv4. Handshake rate limits key IPv6 sources by /64: two sources of one /64 share a budget, another /64 has its
 * own (real cookie exchanges). Also: listen validation and the client's canonical peer string, without namespaces.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { CLI, Lab, SERVER_IP, waitLine } from "../helpers/lab.js";
import { Netns, ROOT } from "../helpers/netns.js";
import { parseConfig, ConfigError } from "../../src/policy/config.js";
import { canonicalPeer } from "../../src/native/io.js";

const run = promisify(execFile);
const BROWSER = "b0".repeat(32);
const GW6 = "2001:2:0:1::1";
const CLI6 = "2001:2:0:1::2";

const config = (listen: string) => `
listen: "${listen}"
certificate: gw.pem
key: gw.key
tun: { name: seng0, address: 100.64.0.1/32, mtu: 1400 }
apps:
  - name: browser
    subnet: 100.64.1.0/24
    identities: [{ mrenclave: ${"ab".repeat(32)} }]
`;

test("listen: IPv6 in brackets is accepted; a bare or bad IPv6 address names the file, key and form", () => {
  assert.equal(parseConfig(config("[::]:4433"), "g.yaml").listen, "[::]:4433");
  assert.equal(parseConfig(config("[2001:2:0:1::1]:4433"), "g.yaml").listen, "[2001:2:0:1::1]:4433");
  for (const [listen, re] of [
    [
      "::1:4433",
      /^g\.yaml: listen: expected host:port such as 0\.0\.0\.0:4433 or \[::\]:4433 \(IPv6 in brackets\)/,
    ],
    ["[2001:2::g]:4433", /^g\.yaml: listen: expected host:port/],
    ["[1.2.3.4]:4433", /^g\.yaml: listen: expected host:port: 1\.2\.3\.4 is not an IPv6 address/],
    ["[::]:70000", /^g\.yaml: listen: expected host:port with a port of 0-65535/],
  ] as const)
    assert.throws(
      () => parseConfig(config(listen), "g.yaml"),
      (e: unknown) => e instanceof ConfigError && re.test(e.message),
      listen,
    );
});

test("the client compares the gateway in the reader's form: canonical IPv6, mapped IPv4 as IPv4", () => {
  assert.equal(canonicalPeer("[2001:0002:0000::1]:4433"), "[2001:2::1]:4433");
  assert.equal(canonicalPeer("[2001:2:0:0:0:0:0:1]:4433"), "[2001:2::1]:4433");
  assert.equal(canonicalPeer("[2001:DB8::A]:1"), "[2001:db8::a]:1");
  assert.equal(canonicalPeer("[::ffff:198.18.1.1]:4433"), "198.18.1.1:4433");
  assert.equal(canonicalPeer("198.18.1.1:4433"), "198.18.1.1:4433");
  assert.equal(canonicalPeer("gw.example:4433"), "gw.example:4433");
});

describe("IPv6 underlay in namespaces", { concurrency: false }, () => {
  let lab: Lab;
  let cli6: Netns;

  before(async () => {
    lab = await Lab.create({
      clients: 1, // client 0: IPv4 (198.18.1.2), to the same dual-stack socket
      listen: "[::]:4433",
      apps: [{ name: "browser", subnet: "100.64.1.0/24", identities: [{ mrenclave: BROWSER }] }],
      // A budget of 2 handshakes per source (per /64 for IPv6) that refills only every 100 s.
      extraYaml: "limits: { handshakesPerSecondPerSource: 0.01, handshakeBurstPerSource: 2 }",
    });
    // Client 1: IPv6 only. Its link carries two /64s: 2001:2:0:1::/64 for the tunnel client and the first rate
    // limit source pair, 2001:2:0:2::/64 for the "another /64" source. No DAD: the addresses are usable at once.
    cli6 = await Netns.create("cli6");
    lab.clients.push(cli6);
    await cli6.ip("link", "add", "c6-gw", "type", "veth", "peer", "name", "gw-c6", "netns", lab.gw.name);
    for (const a of [`${CLI6}/64`, "2001:2:0:1::3/64", "2001:2:0:2::2/64"])
      await cli6.ip("addr", "add", a, "dev", "c6-gw", "nodad");
    for (const a of [`${GW6}/64`, "2001:2:0:2::1/64"])
      await lab.gw.ip("addr", "add", a, "dev", "gw-c6", "nodad");
    await cli6.ip("link", "set", "c6-gw", "up");
    await lab.gw.ip("link", "set", "gw-c6", "up");
    await lab.startGateway();
  });

  after(async () => {
    await lab?.destroy();
  });

  test("a test client over IPv6 only gets its lease; traffic flows both ways; the peer shows as [addr]:port", async () => {
    // Written the long way: the client must compare replies' peers in the reader's form (canonicalPeer).
    const c = lab.startClient(BROWSER, { client: 1, gateway: "[2001:0002:0:1:0::0001]:4433" });
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease", 20_000);
    assert.match(lease.address, /^100\.64\.1\.\d+$/);
    // Echo requests out through the tunnel, replies back through it: both directions.
    const ping = await cli6.exec("ping", ["-c", "3", "-i", "0.2", "-W", "2", SERVER_IP], { check: false });
    assert.equal(ping.code, 0, `ping through the tunnel:\n${ping.stdout}${ping.stderr}`);
    const up = await waitLine<{ peer: string }>(
      lab.gateway!,
      (o) => o.event === "tunnel-up" && o.address === lease.address,
    );
    // The kernel picks the source among the client's addresses of that /64.
    assert.match(up.peer, /^\[2001:2:0:1::[23]\]:\d+$/, "log");
    const status = await run(
      process.execPath,
      ["--import", "tsx", CLI, "status", "--socket", join(lab.dir, "admin.sock"), "--json"],
      { cwd: ROOT },
    );
    const tunnels = (JSON.parse(status.stdout) as { tunnels: { peer: string; address: string }[] }).tunnels;
    assert.equal(tunnels.find((t) => t.address === lease.address)?.peer, up.peer, "admin API");
    const who = await run(
      process.execPath,
      ["--import", "tsx", CLI, "audit", "who", lease.address, "--config", lab.configFile],
      { cwd: ROOT },
    );
    assert.ok(who.stdout.includes(`outer ${up.peer}\n`), `audit:\n${who.stdout}`);
    await c.kill("SIGTERM", 5000);
  });

  test("an IPv4 client of the dual-stack socket is keyed and shown as plain IPv4", async () => {
    const c = lab.startClient(BROWSER, { client: 0 });
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease", 20_000);
    const up = await waitLine<{ peer: string }>(
      lab.gateway!,
      (o) => o.event === "tunnel-up" && o.address === lease.address,
    );
    assert.match(up.peer, /^198\.18\.1\.2:\d+$/);
    const ping = await lab.clients[0]!.exec("ping", ["-c", "2", "-i", "0.2", "-W", "2", SERVER_IP], {
      check: false,
    });
    assert.equal(ping.code, 0, ping.stdout);
    await c.kill("SIGTERM", 5000);
  });

  test("rate limits by /64: two sources of one /64 share a budget, another /64 has its own", async () => {
    // The tunnel client above already spent one of 2001:2:0:1::/64's two tokens (its handshake).
    const p = cli6.spawn(process.execPath, [
      "--import",
      "tsx",
      join(ROOT, "test/helpers/cookie-hello.ts"),
      `[${GW6}]:4433`,
      "2001:2:0:1::3",
      "2001:2:0:1::3",
      "2001:2:0:1::2",
      "2001:2:0:2::2",
      "2001:2:0:2::2",
    ]);
    const r = await waitLine<{ answered: boolean[] }>(p, (o) => Array.isArray(o.answered), 30_000);
    assert.deepEqual(
      r.answered,
      [true, false, false, true, true],
      "::3 gets the /64's last token, then neither it nor ::2 gets more; 2001:2:0:2::/64 has a budget of its own",
    );
    const limited = await waitLine<{ source: string }>(
      lab.gateway!,
      (o) => o.event === "handshake-rate-limited",
    );
    assert.equal(limited.source, "2001:2:0:1::/64");
  });
});

test("the kernel guard drops an abusive IPv6 peer's datagrams (ip6 saddr . sport), not its neighbours'", async (t) => {
  const g = await Netns.create("guard6");
  const s = await Netns.create("send6");
  t.after(async () => {
    await Promise.allSettled([g.delete(), s.delete()]);
  });
  await s.ip("link", "add", "s6", "type", "veth", "peer", "name", "g6", "netns", g.name);
  await s.ip("addr", "add", "2001:2:0:9::2/64", "dev", "s6", "nodad");
  await g.ip("addr", "add", "2001:2:0:9::1/64", "dev", "g6", "nodad");
  await s.ip("link", "set", "s6", "up");
  await g.ip("link", "set", "g6", "up");
  const tool = g.spawn(process.execPath, [
    "--import",
    "tsx",
    join(ROOT, "test/helpers/guard-tool.ts"),
    "7000",
    "[2001:2:0:9::2]:5555",
    "10000",
  ]);
  const ready = await waitLine<{ set: string; errors: number }>(tool, (o) => o.ready === true, 20_000);
  assert.equal(ready.errors, 0);
  assert.match(ready.set, /2001:2:0:9::2 \. 5555 timeout/);
  // One datagram from the blocked (address, port), one from the same address on another port.
  const send = `const d=require("node:dgram");for(const p of [5555,5556]){const s=d.createSocket("udp6");s.bind(p,"2001:2:0:9::2",()=>s.send("x",7000,"2001:2:0:9::1",()=>s.close()))}`;
  await s.exec(process.execPath, ["-e", send]);
  const got = await waitLine<{ got: string[] }>(tool, (o) => Array.isArray(o.got), 10_000);
  assert.deepEqual(got.got, ["[2001:2:0:9::2]:5556"], "only the unblocked port got through");
});
