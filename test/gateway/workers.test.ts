/**
 * The gateway with `workers: 2` in network namespaces (docs/DATAPATH.md): tunnels land on both workers and carry
 * traffic both ways, spoofed packets on a worker never reach the server, revocation reaches a tunnel on any
 * worker, counters add up, idle tunnels are reaped, and a worker that dies neither keeps receiving traffic nor
 * loses its tunnels' leases.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { Lab, SERVER_IP, TCP_TOOL, waitLine } from "../helpers/lab.js";
import type { NsProcess } from "../helpers/netns.js";

const BROWSER = "b0".repeat(32);
const MAIL = "a1".repeat(32);
const node = process.execPath;
const CLIENTS = 4;

interface Up {
  peer: string;
  address: string;
  worker: number;
  app: string;
}

describe("gateway with two workers", { concurrency: false }, () => {
  let lab: Lab;
  const clients: NsProcess[] = [];
  const ups: Up[] = [];

  const apps = [
    { name: "browser", subnet: "100.64.1.0/24", identities: [{ mrenclave: BROWSER }] },
    { name: "mail", subnet: "100.64.2.0/24", identities: [{ mrenclave: MAIL }] },
  ];

  before(async () => {
    process.env.SENG_TEST_HOOKS = "1"; // SIGUSR2 makes worker 0 crash (pool.ts)
    lab = await Lab.create({
      clients: CLIENTS,
      apps,
      extraYaml:
        "workers: 2\nmetrics: { listen: 127.0.0.1:9464 }\n" +
        "tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 12, leaseGraceSeconds: 60 }",
    });
    await lab.startGateway();
  });

  after(async () => {
    // SENG_TEST_GATEWAY_LOG=<file>: keep the gateway's log for a post-mortem.
    if (process.env.SENG_TEST_GATEWAY_LOG && lab?.gateway)
      writeFileSync(
        process.env.SENG_TEST_GATEWAY_LOG,
        [lab.gateway, ...clients].map((p) => (p ? p.stdout + p.stderr : "")).join("\n----\n"),
      );
    await lab?.destroy();
  });

  /** Starts client `i` (browser on even, mail on odd namespaces) and waits for its lease and tunnel-up line. */
  async function start(i: number): Promise<Up> {
    const from = lab.gateway!.stdout.length;
    const c = lab.startClient(i % 2 ? MAIL : BROWSER, { client: i, args: ["--dead-seconds", "2"] });
    clients[i] = c;
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    const up = await waitLine<Up>(
      lab.gateway!,
      (o) => o.event === "tunnel-up" && o.address === lease.address,
      10_000,
      from,
    );
    ups[i] = up;
    return up;
  }

  /** One TCP exchange from client `i` to the server's echo: what the server saw as the remote address. */
  async function exchange(i: number, port: number): Promise<void> {
    await lab.clients[i]!.exec(
      node,
      [
        "-e",
        `const s=require("net").connect(${port},"${SERVER_IP}",()=>s.end("x".repeat(20000)));let n=0;` +
          `s.on("data",(d)=>n+=d.length);s.on("close",()=>process.exit(n===20000?0:3))`,
      ],
      { timeoutMs: 15_000 },
    );
  }

  test("tunnels spread over both workers and carry traffic both ways, counted per tunnel and per app", async () => {
    for (let i = 0; i < CLIENTS; i++) await start(i);
    // The kernel picks the worker by a hash of the peer's address and port: restart a client (new port) until
    // both workers hold a tunnel (each try is a coin toss).
    for (let k = 0; k < 12 && new Set(ups.map((u) => u.worker)).size < 2; k++) {
      await clients[3]!.kill();
      await start(3);
    }
    assert.deepEqual([...new Set(ups.map((u) => u.worker))].sort(), [0, 1], JSON.stringify(ups));
    // Both workers' TUN queues carry the offloads (TSO in, GSO-merged writes out).
    const started = await waitLine<{ workers: number; offload: boolean }>(
      lab.gateway!,
      (o) => o.event === "gateway-started",
    );
    assert.deepEqual([started.workers, started.offload], [2, true]);

    const echo = lab.server(node, ["--import", "tsx", TCP_TOOL, "echo", SERVER_IP, "7000"]);
    await waitLine(echo, (o) => o.listening === true);
    for (let i = 0; i < CLIENTS; i++) await exchange(i, 7000);
    const remotes = echo.stdout
      .split("\n")
      .filter((l) => l.includes("remote"))
      .map((l) => (JSON.parse(l) as { remote: string }).remote);
    assert.deepEqual(remotes.sort(), ups.map((u) => u.address).sort());
    await echo.kill("SIGKILL");

    // Counters come from the workers every 250 ms.
    await new Promise((r) => setTimeout(r, 600));
    const s = await lab.stats();
    assert.equal(s.tunnels, CLIENTS);
    const list = s.tunnelList as { address: string; counters: Record<string, number> }[];
    for (const u of ups) {
      const t = list.find((x) => x.address === u.address);
      assert.ok(t, `tunnel ${u.address} listed`);
      // 20,000 bytes each way plus headers and keepalives.
      assert.ok(t.counters.rxBytes! > 20_000 && t.counters.txBytes! > 20_000, JSON.stringify(t));
    }
    for (const app of ["browser", "mail"]) {
      const mine = list.filter((t) => ups.some((u) => u.address === t.address && u.app === app));
      const sum = mine.reduce((n, t) => n + t.counters.rxBytes!, 0);
      assert.ok(s.apps[app]!.rxBytes! >= sum && sum > 0, `${app}: ${JSON.stringify(s.apps[app])} vs ${sum}`);
      assert.equal(s.apps[app]!.tunnels, mine.length);
    }
    // The Prometheus metrics read the same sums.
    const scrape = await lab.gw.exec(process.execPath, [
      "-e",
      `fetch("http://127.0.0.1:9464/metrics").then((r) => r.text()).then((t) => process.stdout.write(t))`,
    ]);
    for (const app of ["browser", "mail"]) {
      const tunnels = new RegExp(`^seng_tunnels\\{app="${app}"\\} (\\d+)$`, "m").exec(scrape.stdout);
      assert.equal(Number(tunnels?.[1]), s.apps[app]!.tunnels, scrape.stdout);
      const rx = new RegExp(`^seng_app_bytes_total\\{app="${app}",direction="in"\\} (\\d+)$`, "m").exec(
        scrape.stdout,
      );
      assert.ok(Number(rx?.[1]) >= s.apps[app]!.rxBytes! && s.apps[app]!.rxBytes! > 0, scrape.stdout);
    }
  });

  test("a spoofed inner source on either worker never reaches the server and is counted", async () => {
    const listener = lab.server(node, [
      "-e",
      `const s=require("dgram").createSocket("udp4");` +
        `s.on("message",(m,r)=>console.log(JSON.stringify({from:r.address})));` +
        `s.bind(7100,"${SERVER_IP}",()=>console.log(JSON.stringify({listening:true})))`,
    ]);
    await waitLine(listener, (o) => o.listening === true);
    const seenFrom = (a: string) =>
      listener.stdout.split("\n").filter((l) => l.includes(`"from":"${a}"`)).length;
    const send = (i: number, from: string, n: number) =>
      lab.clients[i]!.exec(
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
    // One client on each worker.
    const picks = [0, 1].map((w) => ups.findIndex((u) => u.worker === w));
    for (const [k, i] of picks.entries()) {
      const spoofed = `100.64.1.${200 + k}`;
      await lab.clients[i]!.ip("addr", "add", `${spoofed}/32`, "dev", `sengc${i}`);
      await send(i, spoofed, 10);
      await send(i, ups[i]!.address, 3);
    }
    for (let k = 0; k < 50 && picks.some((i) => seenFrom(ups[i]!.address) < 3); k++)
      await new Promise((r) => setTimeout(r, 100));
    for (const [k, i] of picks.entries()) {
      assert.equal(seenFrom(ups[i]!.address), 3, `genuine address of client ${i} heard:\n${listener.stdout}`);
      assert.equal(seenFrom(`100.64.1.${200 + k}`), 0, `spoofed datagrams arrived:\n${listener.stdout}`);
      await lab.clients[i]!.ip("addr", "del", `100.64.1.${200 + k}/32`, "dev", `sengc${i}`);
    }
    await listener.kill("SIGKILL");
    await new Promise((r) => setTimeout(r, 600)); // the workers' next counter reports
    const after = (await lab.stats()).drops["spoofed-source"] ?? 0;
    assert.ok(after >= before + 20, `spoofed-source drops ${before} → ${after}`);
  });

  test("keepalives hold idle tunnels on both workers; a vanished runtime is reaped", async () => {
    // No traffic for longer than the idle timeout (12 s): the keepalives (the gateway's every second, the
    // runtime's every 10 s) keep every tunnel.
    await new Promise((r) => setTimeout(r, 13_000));
    assert.equal((await lab.stats()).tunnels, CLIENTS);
    // A runtime killed without a word: its worker reaps the tunnel, the control thread keeps its lease.
    const i = CLIENTS - 1;
    const from = lab.gateway!.stdout.length;
    await clients[i]!.kill("SIGKILL");
    const down = await waitLine<{ reason: string }>(
      lab.gateway!,
      (o) => o.event === "tunnel-down" && o.address === ups[i]!.address,
      20_000,
      from,
    );
    assert.equal(down.reason, "idle-timeout");
    assert.equal((await lab.stats()).tunnels, CLIENTS - 1);
    await start(i); // a new runtime process (a new key): a new tunnel
  });

  test("a worker that dies: its tunnels come back with their leases, the other worker's keep working", async () => {
    const g = lab.gateway!;
    const from = g.stdout.length;
    const onDead = ups.filter((u) => u.worker === 0);
    const onLive = ups.filter((u) => u.worker === 1);
    const marks = clients.map((c) => c.stdout.length);
    g.child.kill("SIGUSR2");
    const died = await waitLine<{ tunnels: number }>(g, (o) => o.event === "worker-died", 5000, from);
    assert.equal(
      died.tunnels,
      onDead.length,
      `${JSON.stringify(ups)}\n${g.stdout
        .slice(0, from)
        .split("\n")
        .filter((l) => /tunnel-(up|down)/.test(l))
        .join("\n")}`,
    );
    await waitLine(g, (o) => o.event === "worker-restarted", 10_000, from);
    // Their runtimes notice (no keepalive answers), reconnect, and get the same addresses back.
    for (const u of onDead) {
      const i = ups.indexOf(u);
      const back = await waitLine<{ address: string }>(
        clients[i]!,
        (o) => o.event === "lease",
        30_000,
        marks[i],
      );
      assert.equal(back.address, u.address);
    }
    const echo = lab.server(node, ["--import", "tsx", TCP_TOOL, "echo", SERVER_IP, "7002"]);
    await waitLine(echo, (o) => o.listening === true);
    for (let i = 0; i < CLIENTS; i++) await exchange(i, 7002);
    await echo.kill("SIGKILL");
    // The surviving worker's tunnels were never closed (their datagrams are relayed when the kernel now hands
    // them to the new worker's socket).
    const downs = g.stdout
      .slice(from)
      .split("\n")
      .filter((l) => l.includes('"tunnel-down"'));
    for (const u of onLive)
      assert.ok(
        !downs.some((l) => l.includes(`"${u.address}"`)),
        `${u.address} stayed up:\n${downs.join("\n")}`,
      );
    const s = await lab.stats();
    assert.equal(s.tunnels, CLIENTS);
  });

  test("kill -9 of a two-worker gateway: the runtimes come back with the same addresses", async () => {
    const marks = clients.map((c) => c.stdout.length);
    const before = await Promise.all(
      clients.map((c) =>
        waitLine<{ address: string }>(
          c,
          (o) => o.event === "lease",
          5000,
          c.stdout.lastIndexOf('{"event":"lease"'),
        ),
      ),
    );
    await lab.stopGateway("SIGKILL");
    await lab.startGateway();
    for (const [i, c] of clients.entries()) {
      const back = await waitLine<{ address: string }>(c, (o) => o.event === "lease", 30_000, marks[i]);
      assert.equal(back.address, before[i]!.address);
    }
    const echo = lab.server(node, ["--import", "tsx", TCP_TOOL, "echo", SERVER_IP, "7003"]);
    await waitLine(echo, (o) => o.listening === true);
    for (let i = 0; i < CLIENTS; i++) await exchange(i, 7003);
    await echo.kill("SIGKILL");
  });

  test("revocation reaches tunnels on every worker within a second", async () => {
    const g = lab.gateway!;
    const from = g.stdout.length;
    const marks = clients.map((c) => c.stdout.length);
    // Neither measurement is allowed any more: every tunnel, whichever worker holds it, is revoked.
    lab.writeConfig({
      apps: apps.map((a) => ({ ...a, identities: [{ mrenclave: "c3".repeat(32) }] })),
    });
    const t0 = Date.now();
    g.child.kill("SIGHUP");
    const reloaded = await waitLine<{ revoked: unknown[] }>(g, (o) => o.event === "reloaded", 10_000, from);
    assert.equal(reloaded.revoked.length, CLIENTS);
    for (const [i, c] of clients.entries()) {
      const closed = await waitLine<{ reason: string }>(c, (o) => o.event === "closed", 5000, marks[i]);
      assert.equal(closed.reason, "revoked");
    }
    const downs = g.stdout
      .slice(from)
      .split("\n")
      .filter((l) => l.includes('"tunnel-down"'))
      .map((l) => JSON.parse(l) as { t: string; reason: string });
    assert.equal(downs.filter((d) => d.reason === "revoked").length, CLIENTS);
    for (const d of downs) assert.ok(Date.parse(d.t) - t0 < 1000, `revoked after ${Date.parse(d.t) - t0} ms`);
    assert.equal((await lab.stats()).tunnels, 0);
  });
});
