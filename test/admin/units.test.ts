/** Admin configuration, token handling, the pino logger's lines, and the status table, without a network. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../../src/policy/config.js";
import { AdminServer, readTokenFile, tokenEquals } from "../../src/admin/server.js";
import type { AdminBackend } from "../../src/admin/backend.js";
import { RecentEvents } from "../../src/admin/recent.js";
import { jsonLogger } from "../../src/gateway/log.js";
import { renderStatus, table } from "../../src/cli/status.js";
import { GatewayMetrics } from "../../src/metrics/metrics.js";
import type { StatusView } from "../../src/admin/backend.js";
import type { GatewayStats } from "../../src/gateway/server.js";

const BASE = `listen: 0.0.0.0:4433
certificate: gw.pem
key: gw.key
database: state/seng.db
tun: { address: 100.64.0.1/32 }
apps:
  - name: a
    subnet: 100.64.1.0/24
    identities: [{ mrenclave: ${"aa".repeat(32)} }]
`;

test("admin config: the socket defaults to the database's folder; paths resolve against the file", () => {
  const c = parseConfig(BASE, "/etc/seng/gateway.yaml");
  assert.equal(c.admin.socket, "/etc/seng/state/admin.sock");
  assert.equal(c.admin.tcp, undefined);
  assert.equal(c.metrics, undefined);
  const d = parseConfig(
    BASE +
      "admin: { socket: /run/seng.sock, tcp: 10.0.0.1:9443, tokenFile: admin.token }\nmetrics: { listen: 10.0.0.1:9464 }\n",
    "/etc/seng/gateway.yaml",
  );
  assert.deepEqual(d.admin, {
    socket: "/run/seng.sock",
    tcp: "10.0.0.1:9443",
    tokenFile: "/etc/seng/admin.token",
    tls: undefined,
  });
  assert.equal(d.metrics?.listen, "10.0.0.1:9464");
});

test("admin config: TCP without a token file is refused, naming the file and the key", () => {
  assert.throws(
    () => parseConfig(BASE + "admin: { tcp: 0.0.0.0:9443 }\n", "gw.yaml"),
    /^ConfigError: gw\.yaml: admin\.tokenFile: required when admin\.tcp is set/,
  );
  assert.throws(
    () => parseConfig(BASE + "admin: { tls: { certificate: a, key: b } }\n", "gw.yaml"),
    /gw\.yaml: admin\.tls: only meaningful with admin\.tcp/,
  );
  assert.throws(
    () => parseConfig(BASE + "admin: { tcp: nine, tokenFile: t }\n", "gw.yaml"),
    /gw\.yaml: admin\.tcp: expected host:port/,
  );
  assert.throws(
    () => parseConfig(BASE + "metrics: { port: 1 }\n", "gw.yaml"),
    /gw\.yaml: metrics\.listen: expected string/,
  );
});

test("token files: others must not read them, and they must hold a long token", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-token-"));
  try {
    const f = join(dir, "t");
    writeFileSync(f, "ab".repeat(32) + "\n", { mode: 0o600 });
    assert.equal(readTokenFile(f, "g.yaml"), "ab".repeat(32));
    writeFileSync(join(dir, "open"), "ab".repeat(32), { mode: 0o644 });
    assert.throws(
      () => readTokenFile(join(dir, "open"), "g.yaml"),
      /g\.yaml: admin\.tokenFile: .* is readable by others \(mode 644\); expected mode 600/,
    );
    writeFileSync(join(dir, "short"), "abc", { mode: 0o600 });
    assert.throws(() => readTokenFile(join(dir, "short"), "g.yaml"), /at least 32 characters/);
    assert.throws(
      () => readTokenFile(join(dir, "missing"), "g.yaml"),
      /g\.yaml: admin\.tokenFile: cannot read .*ENOENT/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(tokenEquals("x".repeat(40), "x".repeat(40)), true);
  assert.equal(tokenEquals("x".repeat(39), "x".repeat(40)), false);
  assert.equal(tokenEquals("", "x".repeat(40)), false);
});

test("pino logger: JSON lines with a string level, the event key and rate-limited repetition", () => {
  const lines: string[] = [];
  const recent = new RecentEvents(3);
  const log = jsonLogger({ write: (l) => lines.push(l), onEntry: recent.add });
  log.log("info", "tunnel-up", { app: "a", address: "100.64.1.2", measurement: "m" });
  log.log("debug", "hidden");
  for (let i = 0; i < 4; i++)
    log.limited("k", 60_000, "warn", "tunnel-refused", { reason: "no app matches" });
  assert.equal(lines.length, 2);
  const [up, refused] = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(up!.level, "info");
  assert.equal(up!.event, "tunnel-up");
  assert.equal(up!.address, "100.64.1.2");
  assert.match(String(up!.t), /^\d{4}-\d\d-\d\dT/);
  assert.equal(up!.pid, undefined);
  assert.equal(refused!.level, "warn");
  assert.ok(lines.every((l) => l.endsWith("\n") && !l.slice(0, -1).includes("\n")));
  // Only warnings reach the recent list, newest first, bounded.
  for (let i = 0; i < 5; i++) log.log("error", `e${i}`);
  assert.deepEqual(
    recent.list().map((e) => e.event),
    ["e4", "e3", "e2"],
  );
});

test("metrics: figures are read from the gateway's counters at scrape time", async () => {
  const stats: GatewayStats = {
    tunnels: 1,
    halfOpen: 2,
    handshakes: { started: 3, accepted: 1 },
    drops: { "spoofed-source": 7 },
    apps: { a: { tunnels: 1, rxPackets: 10, rxBytes: 1000, txPackets: 4, txBytes: 400 } },
    tunnelList: [],
    firewall: { enabled: true, updates: 0, batches: 0, errors: 0, resyncs: 0, addLatencyMedianMs: 0 },
  };
  const m = new GatewayMetrics(
    { stats: () => stats, firewallDrops: () => ({ policy: 5 }) },
    { processMetrics: false },
  );
  m.verdict("refused", "no_app_match", 12);
  const text = (await m.render()).body;
  for (const line of [
    'seng_tunnels{app="a"} 1',
    "seng_handshakes_in_progress 2",
    'seng_handshakes_total{result="started"} 3',
    'seng_handshakes_total{result="timeout"} 0',
    'seng_app_bytes_total{app="a",direction="in"} 1000',
    'seng_app_packets_total{app="a",direction="out"} 4',
    'seng_drops_total{reason="spoofed-source"} 7',
    'seng_drops_total{reason="malformed"} 0',
    'seng_drops_total{reason="policy"} 5',
    'seng_attestation_verdicts_total{result="refused",reason="no_app_match"} 1',
    'seng_handshake_duration_seconds_bucket{le="0.025",result="refused"} 1',
  ])
    assert.ok(text.split("\n").includes(line), `${line}\n${text}`);
  stats.apps.a!.rxBytes = 1500;
  assert.match((await m.render()).body, /seng_app_bytes_total\{app="a",direction="in"\} 1500/);
});

test("metrics: cluster series (fencing, refusals, watch age, etcd latency); a single gateway is never fenced", async () => {
  const base = {
    tunnels: 0,
    halfOpen: 0,
    handshakes: {},
    drops: {},
    apps: {},
    tunnelList: [],
    firewall: { enabled: false, updates: 0, batches: 0, errors: 0, resyncs: 0, addLatencyMedianMs: 0 },
  };
  const single = new GatewayMetrics({ stats: () => base }, { processMetrics: false });
  assert.match((await single.render()).body, /^seng_cluster_fenced 0$/m);
  const cluster = {
    gatewayId: "gw1",
    fenced: true,
    fencings: 2,
    refused: { fenced: 3, stale: 1, revoked: 4 },
    viewAgeSeconds: 0.25,
    remoteLeases: 7,
    revocations: 1,
  };
  const m = new GatewayMetrics({ stats: () => ({ ...base, cluster }) }, { processMetrics: false });
  m.etcdSeconds.observe({ operation: "acquire" }, 0.004);
  const text = (await m.render()).body;
  for (const line of [
    "seng_cluster_fenced 1",
    "seng_cluster_fencings_total 2",
    'seng_cluster_refused_total{reason="stale"} 1',
    'seng_cluster_refused_total{reason="revoked"} 4',
    "seng_cluster_watch_age_seconds 0.25",
    "seng_cluster_remote_leases 7",
    'seng_cluster_etcd_seconds_bucket{le="0.005",operation="acquire"} 1',
  ])
    assert.ok(text.split("\n").includes(line), `${line}\n${text}`);
});

test("status table: aligned columns, client-supplied text cannot reach the terminal as control characters", () => {
  assert.equal(
    table(
      ["a", ">n"],
      [
        ["xx", "1"],
        ["y", "22"],
      ],
    ),
    "a    n\nxx   1\ny   22",
  );
  const s: StatusView = {
    gateway: { listen: "0.0.0.0:4433", port: 4433, tun: "seng0", startedAt: 0, uptimeSeconds: 90 },
    apps: [
      {
        name: "a",
        subnet: "100.64.1.0/24",
        tunnels: 1,
        rxPackets: 1,
        rxBytes: 2048,
        txPackets: 0,
        txBytes: 0,
      },
    ],
    tunnels: [
      {
        id: 4,
        app: "a",
        address: "100.64.1.2",
        peer: "198.18.1.2:5000",
        measurement: "ab".repeat(32),
        key: "k",
        createdAt: 0,
        leasedAt: 1000,
        lastRx: 0,
        lastTx: 0,
        counters: { rxPackets: 1, rxBytes: 2048, txPackets: 0, txBytes: 0 },
      },
    ],
    halfOpen: 0,
    handshakes: { accepted: 1 },
    drops: { "spoofed-source": 2, malformed: 0 },
    recent: [
      {
        t: "2026-01-01T00:00:00.000Z",
        level: "warn",
        event: "tunnel-refused",
        fields: { reason: "bad\u001b[2Jthing" },
      },
    ],
  };
  const out = renderStatus(s, 61_000);
  assert.match(out, /^4\s+a\s+100\.64\.1\.2\s+198\.18\.1\.2:5000\s+60s\s+2\.0 KiB\s+0 B\s+abababab/m);
  assert.match(out, /DROPS\s+spoofed-source 2$/m);
  assert.ok(!out.includes("\u001b"));
  assert.match(out, /bad\?\[2Jthing/);
});

test("admin token rotation: a reload re-reads the token file; a broken file keeps the old token", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-rotate-"));
  try {
    const file = join(dir, "admin.token");
    writeFileSync(file, "ab".repeat(32) + "\n", { mode: 0o600 });
    const admin = new AdminServer({
      config: { socket: join(dir, "admin.sock"), tcp: "198.18.2.1:9443", tokenFile: file },
      configFile: "g.yaml",
      backend: {} as AdminBackend,
    });
    assert.equal(admin.reloadToken(), true, "first read");
    assert.equal(admin.reloadToken(), false, "unchanged");
    writeFileSync(file, "cd".repeat(32) + "\n", { mode: 0o600 });
    assert.equal(admin.reloadToken(), true, "rotated");
    writeFileSync(file, "short\n", { mode: 0o600 });
    assert.throws(() => admin.reloadToken(), /at least 32 characters/);
    writeFileSync(file, "cd".repeat(32) + "\n", { mode: 0o600 });
    assert.equal(admin.reloadToken(), false, "the old token stayed in force");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
