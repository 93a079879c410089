/**
 * The gateway end to end in network namespaces: a real `seng gateway`, real DTLS tunnels from test clients with
 * simulated-TEE RA-TLS identities, a real kernel forwarding real TCP.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Lab, SERVER_IP, TCP_TOOL, waitLine } from "../helpers/lab.js";
import { ROOT } from "../helpers/netns.js";
import { join } from "node:path";

const BROWSER = "b0".repeat(32);
const MAIL_SIGNER = "5e".repeat(32);
const STRANGER = "ee".repeat(32);
const node = process.execPath;

describe("gateway in namespaces", { concurrency: false }, () => {
  let lab: Lab;

  before(async () => {
    lab = await Lab.create({
      clients: 2,
      apps: [
        { name: "browser", subnet: "100.64.1.0/24", identities: [{ mrenclave: BROWSER }] },
        { name: "mail", subnet: "100.64.2.0/30", identities: [{ mrsigner: MAIL_SIGNER, isvprodid: 1 }] },
      ],
      extraYaml: "tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 4, leaseGraceSeconds: 60 }",
    });
    await lab.startGateway();
  });

  after(async () => {
    await lab?.destroy();
  });

  test("two apps get addresses from their own subnets; the server sees those addresses", async () => {
    const a = lab.startClient(BROWSER, { client: 0 });
    const b = lab.startClient("01".repeat(32), {
      client: 1,
      args: ["--mrsigner", MAIL_SIGNER, "--isvprodid", "1"],
    });
    const la = await waitLine<{ address: string; app: string }>(a, (o) => o.event === "lease");
    const lb = await waitLine<{ address: string; app: string }>(b, (o) => o.event === "lease");
    assert.equal(la.app, "browser");
    assert.match(la.address, /^100\.64\.1\.\d+$/);
    assert.equal(lb.app, "mail");
    assert.match(lb.address, /^100\.64\.2\.[12]$/);

    const echo = lab.server(node, ["--import", "tsx", TCP_TOOL, "echo", SERVER_IP, "7000"]);
    await waitLine(echo, (o) => o.listening === true);
    for (const c of [0, 1])
      await lab.clients[c]!.exec(
        node,
        [
          "-e",
          `const s=require("net").connect(7000,"${SERVER_IP}",()=>s.end("hi"));s.on("data",()=>{});s.on("close",()=>process.exit(0))`,
        ],
        { timeoutMs: 15_000 },
      );
    const remotes = echo.stdout
      .split("\n")
      .filter((l) => l.includes("remote"))
      .map((l) => (JSON.parse(l) as { remote: string }).remote);
    assert.deepEqual(remotes.sort(), [la.address, lb.address].sort());
    await echo.kill("SIGKILL");
    await a.kill();
    await b.kill();
  });

  test("100 MB over TCP through the tunnel arrives intact; garbage and a handshake flood do not disturb it", async () => {
    const client = lab.startClient(BROWSER, { client: 0 });
    const lease = await waitLine<{ address: string }>(client, (o) => o.event === "lease");
    // both ends run the data path with TUN offloads (super-packets split on read, TCP segments merged on write)
    await waitLine(client, (o) => o.event === "tun" && o.offload === true);
    await waitLine(lab.gateway!, (o) => o.event === "gateway-started" && o.offload === true);
    const sink = lab.server(node, ["--import", "tsx", TCP_TOOL, "sink", SERVER_IP, "7001"]);
    await waitLine(sink, (o) => o.listening === true);
    const source = lab.clients[0]!.spawn(node, [
      "--import",
      "tsx",
      TCP_TOOL,
      "source",
      SERVER_IP,
      "7001",
      String(100 * 1024 * 1024),
    ]);
    // The flood comes from the other client namespace while the transfer runs.
    const flood = lab.clients[1]!.spawn(node, [
      "--import",
      "tsx",
      join(ROOT, "test/helpers/flood.ts"),
      "198.18.3.1",
      "4433",
      "300",
      "3000",
    ]);
    const sent = await waitLine<{ sha256: string; bytes: number }>(
      source,
      (o) => typeof o.sha256 === "string",
      120_000,
    );
    const got = await waitLine<{ sha256: string; bytes: number; remote: string }>(
      sink,
      (o) => typeof o.sha256 === "string",
      30_000,
    );
    await flood.wait(30_000);
    assert.equal(got.bytes, 100 * 1024 * 1024);
    assert.equal(got.sha256, sent.sha256);
    assert.equal(got.remote, lease.address);
    const s = await lab.stats();
    assert.ok(
      (s.drops["rate-limited"] ?? 0) + (s.drops["half-open-cap"] ?? 0) > 0,
      `flood was throttled: ${JSON.stringify(s.drops)}`,
    );
    assert.ok((s.drops["unknown-session"] ?? 0) > 0, "garbage was counted");
    await client.kill();
  });

  test("an unknown measurement is refused with policy-rejected", async () => {
    const c = lab.startClient(STRANGER, { client: 0 });
    const closed = await waitLine<{ reason: string; message: string; final: boolean }>(
      c,
      (o) => o.event === "closed",
    );
    assert.equal(closed.reason, "policy-rejected");
    assert.equal(closed.final, true);
    assert.match(closed.message, /no app matches/);
    await c.wait(10_000);
    const refused = await waitLine(
      lab.gateway!,
      (o) => o.event === "tunnel-refused" && o.measurement === STRANGER,
    );
    assert.ok(refused);
  });

  test("a spoofed inner source never reaches the server: nothing arrives from it, though the genuine address gets through", async () => {
    const c = lab.startClient(BROWSER, { client: 0 });
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    const SPOOFED = "100.64.1.200";
    // In the server's namespace: a UDP listener that prints the source of every datagram, and an nft counter of
    // every packet from the spoofed address, whatever its protocol or port (a table of the test's namespace).
    const listener = lab.server(node, [
      "-e",
      `const s=require("dgram").createSocket("udp4");` +
        `s.on("message",(m,r)=>console.log(JSON.stringify({from:r.address})));` +
        `s.bind(7100,"${SERVER_IP}",()=>console.log(JSON.stringify({listening:true})))`,
    ]);
    await waitLine(listener, (o) => o.listening === true);
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
      ["add", "rule", "inet", "watch", "in", "ip", "saddr", SPOOFED, "counter", "comment", '"spoofed"'],
    ])
      await lab.srv.exec("nft", cmd);
    const seenFrom = (a: string) =>
      listener.stdout.split("\n").filter((l) => l.includes(`"from":"${a}"`)).length;
    /** Sends `n` UDP datagrams to the listener from `from` (an address on the client's TUN). */
    const send = (from: string, n: number) =>
      lab.clients[0]!.exec(
        node,
        [
          "-e",
          `const s=require("dgram").createSocket("udp4");let i=0;` +
            `s.bind(0,"${from}",()=>{const t=setInterval(()=>{s.send("x",7100,"${SERVER_IP}");` +
            `if(++i===${n}){clearInterval(t);setTimeout(()=>s.close(),200)}},20)})`,
        ],
        { timeoutMs: 10_000 },
      );
    const before = (await lab.stats()).drops["spoofed-source"] ?? 0;
    // A second address on the client's TUN lets the kernel send from an address the gateway never leased.
    await lab.clients[0]!.ip("addr", "add", `${SPOOFED}/32`, "dev", "sengc0");
    await send(SPOOFED, 10);
    // The genuine address, through the same tunnel to the same listener, arrives: the listener works.
    await send(lease.address, 3);
    for (let i = 0; i < 50 && seenFrom(lease.address) < 3; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(seenFrom(lease.address), 3, `the listener heard the genuine address:\n${listener.stdout}`);
    assert.equal(
      seenFrom(SPOOFED),
      0,
      `datagrams from the spoofed address reached the server:\n${listener.stdout}`,
    );
    const watch = (await lab.srv.exec("nft", ["list", "chain", "inet", "watch", "in"])).stdout;
    assert.match(
      watch,
      /counter packets 0 bytes 0/,
      `packets from ${SPOOFED} reached the server's namespace:\n${watch}`,
    );
    const after = (await lab.stats()).drops["spoofed-source"] ?? 0;
    assert.ok(after >= before + 10, `spoofed-source drops ${before} → ${after}`);
    await lab.clients[0]!.ip("addr", "del", `${SPOOFED}/32`, "dev", "sengc0");
    await lab.srv.exec("nft", ["delete", "table", "inet", "watch"]);
    await listener.kill("SIGKILL");
    await c.kill();
  });

  test("kill -9 and restart of the gateway: the client reconnects and gets the same address", async () => {
    const c = lab.startClient(BROWSER, { client: 0, args: ["--dead-seconds", "2"] });
    const first = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    await lab.stopGateway("SIGKILL");
    await lab.startGateway();
    const from = c.stdout.length;
    const second = await waitLine<{ address: string }>(c, (o) => o.event === "lease", 30_000, from);
    assert.equal(second.address, first.address);
    const ok = await lab.clients[0]!.exec("ping", ["-c", "1", "-W", "2", SERVER_IP], {
      check: false,
      timeoutMs: 10_000,
    });
    assert.equal(ok.code, 0, "traffic flows again after the restart");
    await c.kill();
  });

  test("idle tunnels are reaped", async () => {
    // SIGSTOP freezes the client: no keepalives, no data. The gateway reaps it after idleTimeoutSeconds (4 s).
    const c = lab.startClient(BROWSER, { client: 0 });
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    const from = lab.gateway!.stdout.length;
    c.child.kill("SIGSTOP");
    try {
      const down = await waitLine(
        lab.gateway!,
        (o) => o.event === "tunnel-down" && o.address === lease.address,
        15_000,
        from,
      );
      assert.equal(down.reason, "idle-timeout");
    } finally {
      c.child.kill("SIGCONT");
      await c.kill();
    }
  });

  test("pool exhaustion closes the new tunnel with pool-exhausted", async () => {
    // mail's /30 has two addresses; earlier tests' leases are held for the grace period, so use fresh keys.
    const procs = [0, 1, 2].map(() =>
      lab.startClient("02".repeat(32), {
        client: 1,
        args: ["--mrsigner", MAIL_SIGNER, "--isvprodid", "1"],
        tun: `m${Math.random().toString(36).slice(2, 8)}`,
      }),
    );
    const outcomes = await Promise.all(
      procs.map((p) => waitLine(p, (o) => o.event === "lease" || o.event === "closed", 20_000)),
    );
    const exhausted = outcomes.filter((o) => o.event === "closed");
    assert.ok(exhausted.length >= 1, JSON.stringify(outcomes));
    for (const e of exhausted) assert.equal(e.reason, "pool-exhausted");
    await Promise.all(procs.map((p) => p.kill()));
  });
});
