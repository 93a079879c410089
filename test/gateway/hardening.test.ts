/**
 * Gateway hardening in namespaces (issue 12): liveness only from authenticated records, handshake admission under
 * spoofed ClientHellos, the tunnel cap, a tunnel that abuses its lease, the lease MTU, and recovery after an outage.
 *
 *   cli0 (198.18.1.2) ─┐                   ┌─ srv (198.18.2.2)
 *   cli1 (198.18.3.2) ─┼─ gw (seng gateway) ┘
 *   cli2 (198.18.5.2) ─┘
 *
 * Spoofing: cli1 also holds cli0's address 198.18.1.2/32, so it can send datagrams that look like cli0's (the
 * gateway namespace's reverse-path filter is off, as on a gateway that cannot check the sources of the Internet).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Lab, SERVER_IP, waitLine } from "../helpers/lab.js";
import { ROOT, type NsProcess } from "../helpers/netns.js";

const BROWSER = "b0".repeat(32);
const node = process.execPath;
const VICTIM = "198.18.1.2";

/** Node one-liners run in a namespace (bounded: each stops by itself). */
const SPOOF_GARBAGE = `
const d=require("dgram").createSocket("udp4");
const [src,port,dst,ms]=process.argv.slice(1);
d.bind({address:src,port:Number(port)},()=>{
  let n=0;const end=Date.now()+Number(ms);
  const t=setInterval(()=>{
    for(let i=0;i<20;i++){const b=require("crypto").randomBytes(100);b[0]=23;b[1]=0xfe;b[2]=0xfd;b[3]=0;b[4]=1;b.writeUInt16BE(87,11);d.send(b,4433,dst);n++}
    if(Date.now()>end){clearInterval(t);console.log(JSON.stringify({sent:n}));d.close()}
  },100);
});`;

describe("gateway hardening in namespaces", { concurrency: false }, () => {
  let lab: Lab;
  const procs: NsProcess[] = [];

  before(async () => {
    lab = await Lab.create({
      clients: 3,
      apps: [{ name: "browser", subnet: "100.64.1.0/24", identities: [{ mrenclave: BROWSER }] }],
      extraYaml: [
        "tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 4, leaseGraceSeconds: 60 }",
        "limits: { maxTunnels: 2, handshakesPerSecondPerSource: 2, handshakeBurstPerSource: 4 }",
      ].join("\n"),
    });
    await lab.gw.exec("sysctl", ["-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.gw-c1.rp_filter=0"]);
    await lab.clients[1]!.ip("addr", "add", `${VICTIM}/32`, "dev", "c1-gw");
    await lab.startGateway();
  });

  after(async () => {
    await Promise.allSettled(procs.map((p) => p.kill("SIGKILL", 1000)));
    await lab?.destroy();
  });

  const client = (c: number, args: string[] = []): NsProcess => {
    const p = lab.startClient(BROWSER, { client: c, args });
    procs.push(p);
    return p;
  };

  test("datagrams spoofed from a tunnel's outer address do not keep it alive", async () => {
    const c = client(0);
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    const up = await waitLine<{ peer: string }>(
      lab.gateway!,
      (o) => o.event === "tunnel-up" && o.address === lease.address,
    );
    const port = up.peer.split(":")[1]!;
    const from = lab.gateway!.stdout.length;
    c.child.kill("SIGSTOP"); // the runtime goes silent; only the spoofer speaks from its address
    try {
      const spoof = lab.clients[1]!.spawn(node, ["-e", SPOOF_GARBAGE, VICTIM, port, "198.18.3.1", "9000"]);
      procs.push(spoof);
      // Idle timeout 4 s: reaped within ~5 s although garbage keeps arriving from the tunnel's address for 9 s.
      const down = await waitLine(
        lab.gateway!,
        (o) => o.event === "tunnel-down" && o.address === lease.address,
        8000,
        from,
      );
      assert.equal(down.reason, "idle-timeout");
      const sent = await waitLine<{ sent: number }>(spoof, (o) => typeof o.sent === "number", 15_000);
      assert.ok(sent.sent > 500, "the spoofer sent its garbage");
    } finally {
      c.child.kill("SIGCONT");
      await c.kill();
    }
  });

  test("spoofed ClientHellos from a victim's address do not use up its handshakes", async () => {
    const before = (await lab.stats()).drops["rate-limited"] ?? 0;
    // 100 ClientHellos a second "from" cli0's address for 8 s (their HelloVerifyRequests go to cli0, unanswered).
    const flood = lab.clients[1]!.spawn(node, [
      "--import",
      "tsx",
      join(ROOT, "test/helpers/hello-flood.ts"),
      VICTIM,
      "198.18.3.1:4433",
      "100",
      "8000",
    ]);
    procs.push(flood);
    await waitLine(flood, (o) => o.started === true);
    await new Promise((r) => setTimeout(r, 1500)); // a bucket of 4 at 2/s is long empty by now
    const c = client(0);
    try {
      await waitLine(c, (o) => o.event === "lease", 6000);
      const sent = await waitLine<{ sent: number }>(flood, (o) => typeof o.sent === "number", 15_000);
      assert.ok(sent.sent >= 500, `the flood ran (${sent.sent} hellos)`);
      // The spoofed hellos were answered with cookies, never charged to the victim's bucket.
      assert.equal((await lab.stats()).drops["rate-limited"] ?? 0, before);
    } finally {
      await c.kill();
      await flood.kill("SIGKILL");
    }
  });

  test("maxTunnels reached is counted as tunnel-cap, not half-open-cap", async () => {
    const a = client(0);
    const b = client(1);
    await waitLine(a, (o) => o.event === "lease");
    await waitLine(b, (o) => o.event === "lease");
    const s0 = await lab.stats();
    const c = client(2);
    try {
      // The third client's hellos are refused as they come (its start takes seconds on a loaded machine).
      let s1 = await lab.stats();
      for (let i = 0; i < 60 && (s1.drops["tunnel-cap"] ?? 0) <= (s0.drops["tunnel-cap"] ?? 0); i++) {
        await new Promise((r) => setTimeout(r, 250));
        s1 = await lab.stats();
      }
      assert.ok((s1.drops["tunnel-cap"] ?? 0) > (s0.drops["tunnel-cap"] ?? 0), JSON.stringify(s1.drops));
      assert.equal(s1.drops["half-open-cap"] ?? 0, s0.drops["half-open-cap"] ?? 0);
      assert.ok(!c.stdout.includes('"event":"lease"'), "a third tunnel was refused");
    } finally {
      await Promise.all([a.kill(), b.kill(), c.kill()]);
    }
  });

  test("a tunnel flooding malformed and spoofed packets is throttled, then closed; another keeps working", async () => {
    const good = client(0);
    await waitLine(good, (o) => o.event === "lease");
    const from = lab.gateway!.stdout.length;
    const bad = lab.clients[1]!.spawn(node, [
      "--import",
      "tsx",
      join(ROOT, "test/helpers/inner-flood.ts"),
      lab.gatewayAddr(1),
      lab.pin,
      lab.simDir,
      BROWSER,
      "8",
    ]);
    procs.push(bad);
    const lease = await waitLine<{ address: string }>(bad, (o) => o.event === "lease");
    try {
      const closed = await waitLine(bad, (o) => o.event === "closed", 10_000);
      assert.equal(closed.reason, "misbehaving");
      const down = await waitLine(
        lab.gateway!,
        (o) => o.event === "tunnel-down" && o.address === lease.address,
        5000,
        from,
      );
      assert.equal(down.reason, "misbehaving");
      await waitLine(lab.gateway!, (o) => o.event === "tunnel-throttled", 1000, from);
      // The kernel drops the closed tunnel's datagrams before the gateway's socket (guard.ts).
      let guard = "";
      for (let i = 0; i < 20 && !/198\.18\.3\.2 \. \d+ timeout/.test(guard); i++) {
        if (i) await new Promise((r) => setTimeout(r, 250));
        guard = (await lab.gw.exec("nft", ["list", "set", "inet", "seng_guard", "peers"])).stdout;
      }
      assert.match(
        guard,
        /198\.18\.3\.2 \. \d+ timeout/,
        lab
          .gateway!.stdout.split("\n")
          .filter((l) => /peer-guard|throttled|misbehaving/.test(l))
          .join("\n"),
      );
      // The other tunnel still carries traffic while the flood goes on from the closed tunnel's port.
      const ok = await lab.clients[0]!.exec("ping", ["-c", "2", "-W", "2", SERVER_IP], {
        check: false,
        timeoutMs: 10_000,
      });
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      const s = await lab.stats();
      assert.ok((s.drops.throttled ?? 0) > 0, JSON.stringify(s.drops));
    } finally {
      await bad.kill("SIGKILL");
      await good.kill();
    }
  });

  test("packets above the lease MTU are dropped as too-big; with DF they get ICMP fragmentation needed", async () => {
    const c = client(0);
    await waitLine(c, (o) => o.event === "lease");
    const cli = lab.clients[0]!;
    // The runtime's kernel is told a larger MTU than leased (a misconfigured or hostile runtime).
    await cli.ip("link", "set", "dev", "sengc0", "mtu", "1500");
    const sink = lab.server(node, [
      "-e",
      `const d=require("dgram").createSocket("udp4");d.on("message",(m)=>console.log(JSON.stringify({got:m.length})));d.bind(7100,"${SERVER_IP}",()=>console.log(JSON.stringify({listening:true})))`,
    ]);
    procs.push(sink);
    await waitLine(sink, (o) => o.listening === true);
    try {
      const before = (await lab.stats()).drops["too-big"] ?? 0;
      // Three 1418-byte packets without DF (fit the tunnel's record, not the 1400 MTU), then one that fits.
      await cli.exec("python3", [
        "-c",
        `import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.setsockopt(socket.IPPROTO_IP,10,0)
for n in (1390,1390,1390,1000): s.sendto(b"x"*n,("${SERVER_IP}",7100))`,
      ]);
      await waitLine(sink, (o) => o.got === 1000);
      await new Promise((r) => setTimeout(r, 300));
      assert.deepEqual(
        sink.stdout.split("\n").filter((l) => l.includes("got")),
        ['{"got":1000}'],
        "nothing above the MTU reached the server",
      );
      assert.equal(((await lab.stats()).drops["too-big"] ?? 0) - before, 3);
      // With DF: the gateway answers "fragmentation needed, next-hop MTU 1400" through the tunnel.
      const ping = await cli.exec("ping", ["-c", "2", "-W", "1", "-M", "do", "-s", "1396", SERVER_IP], {
        check: false,
        timeoutMs: 10_000,
      });
      assert.match(ping.stdout + ping.stderr, /mtu = 1400/);
      const route = await cli.exec("ip", ["route", "get", SERVER_IP]);
      assert.match(route.stdout, /mtu 1400/, "the runtime's kernel learnt the path MTU");
    } finally {
      await sink.kill("SIGKILL");
      await c.kill();
    }
  });

  test("after an 8 s outage of the client's path the lease is back, same address, within 5 s", async () => {
    const c = client(0);
    const first = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    const cli = lab.clients[0]!;
    await cli.exec("nft", [
      "add table inet seng_cut; add chain inet seng_cut in { type filter hook input priority 0; policy drop; }; add chain inet seng_cut out { type filter hook output priority 0; policy drop; }",
    ]);
    let healed: number;
    try {
      await new Promise((r) => setTimeout(r, 8000));
    } finally {
      await cli.exec("nft", ["delete table inet seng_cut"], { check: false });
      healed = Date.now();
    }
    const from = c.stdout.length;
    const again = await waitLine<{ address: string }>(c, (o) => o.event === "lease", 5000, from);
    assert.equal(again.address, first.address);
    assert.ok(Date.now() - healed <= 5000);
    const lost = c.stdout.slice(0, from);
    assert.match(lost, /"event":"closed"/, "the outage was detected");
    const ok = await cli.exec("ping", ["-c", "1", "-W", "2", SERVER_IP], { check: false, timeoutMs: 10_000 });
    assert.equal(ok.code, 0, "traffic flows again");
    await c.kill();
  });
});
