/**
 * The admin API's TCP listener under a bounded slow-header (slowloris) attack on loopback: 70 connections that send
 * their headers a few bytes at a time, reopened as soon as the server closes them, while legitimate requests, from
 * another source address and from the attacker's own, must all be answered. Also: a slow connection is cut by the
 * header timeout, and the attacker never holds more than its per-source share of connections.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AdminServer } from "../../src/admin/server.js";
import { ADMIN_LIMITS } from "../../src/admin/guard.js";
import type { AdminBackend } from "../../src/admin/backend.js";
import { MetricsServer } from "../../src/metrics/server.js";
import { GatewayMetrics } from "../../src/metrics/metrics.js";
import type { GatewayStats } from "../../src/gateway/server.js";

const TOKEN = "5a".repeat(32);
const ATTACKER = "127.0.0.2";
const LEGIT = "127.0.0.1";

/** One GET of `path` with the token from `localAddress`; the status, or an error after `ms`. */
function status(port: number, localAddress: string, ms = 8000, path = "/v1/status"): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        localAddress,
        path,
        headers: { authorization: `Bearer ${TOKEN}` },
        agent: false,
      },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode ?? 0));
      },
    );
    req.setTimeout(ms, () => req.destroy(new Error(`no answer from ${localAddress} within ${ms} ms`)));
    req.on("error", reject);
    req.end();
  });
}

/** A slowloris: `n` connections from `localAddress`, each sending a header byte every `everyMs`, reopened when closed. */
function slowloris(port: number, n: number, everyMs: number): { stop: () => void; opened: () => number } {
  let stopped = false;
  let opened = 0;
  const socks = new Set<Socket>();
  const open = (): void => {
    if (stopped) return;
    opened++;
    const s = connect({ host: "127.0.0.1", port, localAddress: ATTACKER });
    socks.add(s);
    let timer: NodeJS.Timeout | undefined;
    s.on("connect", () => {
      s.write("GET /v1/status HTTP/1.1\r\nHost: admin\r\n");
      timer = setInterval(() => s.write("X"), everyMs); // a header line that never ends
    });
    s.on("data", () => {});
    s.on("error", () => {});
    s.on("close", () => {
      clearInterval(timer);
      socks.delete(s);
      setTimeout(open, 50); // the attacker comes back at once
    });
  };
  for (let i = 0; i < n; i++) open();
  return {
    stop: () => {
      stopped = true;
      for (const s of socks) s.destroy();
    },
    opened: () => opened,
  };
}

describe("admin API under a slow-header attack", { concurrency: false }, () => {
  let dir: string;
  let admin: AdminServer;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "seng-slowloris-"));
    writeFileSync(join(dir, "admin.token"), TOKEN + "\n", { mode: 0o600 });
    const backend = { status: () => ({ ok: true }) } as unknown as AdminBackend;
    admin = new AdminServer({
      config: { socket: join(dir, "admin.sock"), tcp: "127.0.0.1:0", tokenFile: join(dir, "admin.token") },
      backend,
    });
    await admin.start();
  });

  after(async () => {
    await admin?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a connection that never finishes its headers is closed by the header timeout", async () => {
    const s = connect({ host: "127.0.0.1", port: admin.tcpPort });
    let answer = "";
    s.on("data", (d) => (answer += String(d)));
    const t = setInterval(() => s.write("X"), 500);
    s.write("GET /v1/status HTTP/1.1\r\nHost: admin\r\n");
    // Bounded: the header timeout (5 s, swept every second) must end it well before the test gives up.
    const closed = await new Promise<boolean>((resolve) => {
      const giveUp = setTimeout(() => resolve(false), 15_000);
      s.on("close", () => {
        clearTimeout(giveUp);
        resolve(true);
      });
    });
    clearInterval(t);
    s.destroy();
    assert.ok(closed, "the server kept a connection that sent no complete headers for 15 s");
    assert.match(answer, /^HTTP\/1\.1 408/, "told why");
  });

  test("70 slow connections: every legitimate request is answered, from another source and from the attacker's", async () => {
    const attack = slowloris(admin.tcpPort, 70, 300);
    let maxOpen = 0;
    const sampler = setInterval(() => (maxOpen = Math.max(maxOpen, admin.connectionStats().open)), 20);
    try {
      await new Promise((r) => setTimeout(r, 1500)); // the attack is in full swing
      const answers: number[] = [];
      for (let i = 0; i < 12; i++) {
        answers.push(await status(admin.tcpPort, i % 2 ? ATTACKER : LEGIT));
        await new Promise((r) => setTimeout(r, 250));
      }
      assert.deepEqual(answers, new Array(12).fill(200));
      const st = admin.connectionStats();
      assert.ok(attack.opened() > 70, "the server closed attack connections (they were reopened)");
      assert.ok(st.evicted > 0, `slow connections were evicted: ${JSON.stringify(st)}`);
      // The attacker holds at most its share; the legitimate client's connection comes on top.
      assert.ok(maxOpen <= ADMIN_LIMITS.perSource + 2, `at most ${maxOpen} connections were open at once`);
      // The evictions are counted in the metrics.
      const stats = {
        drops: {},
        apps: {},
        handshakes: {},
        tunnels: 0,
        halfOpen: 0,
      } as unknown as GatewayStats;
      const m = new GatewayMetrics({ stats: () => stats }, { processMetrics: false });
      m.addConnectionGuard("admin", () => admin.connectionStats());
      const line = /^seng_http_connections_closed_total\{server="admin",reason="evicted"\} (\d+)$/m.exec(
        (await m.render()).body,
      );
      assert.ok(line && Number(line[1]) > 0, `evictions in the metrics: ${line?.[0]}`);
    } finally {
      clearInterval(sampler);
      attack.stop();
    }
  });

  test("the metrics listener holds out the same way", async () => {
    const render = () => Promise.resolve({ contentType: "text/plain", body: "seng_up 1\n" });
    const metrics = new MetricsServer({ render } as unknown as GatewayMetrics, "127.0.0.1:0");
    await metrics.start();
    const attack = slowloris(metrics.port, 70, 300);
    try {
      await new Promise((r) => setTimeout(r, 1500));
      const answers: number[] = [];
      for (let i = 0; i < 8; i++) {
        answers.push(await status(metrics.port, i % 2 ? ATTACKER : LEGIT, 8000, "/metrics"));
        await new Promise((r) => setTimeout(r, 250));
      }
      assert.deepEqual(answers, new Array(8).fill(200));
      assert.ok(attack.opened() > 70, "the server closed attack connections (they were reopened)");
    } finally {
      attack.stop();
      await metrics.stop();
    }
  });
});
