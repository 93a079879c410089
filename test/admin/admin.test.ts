/**
 * The admin API, metrics and `seng status` against a real gateway in namespaces. Requests over TCP are made from
 * the server namespace (the admin and metrics listeners are on the gateway's 198.18.2.1); the Unix socket is a file,
 * reachable from the test process itself.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { Lab, SERVER_IP, CLI, waitLine } from "../helpers/lab.js";
import { ROOT } from "../helpers/netns.js";
import { adminJson, adminRequest } from "../../src/admin/client.js";
import { selfSignedCert, x509 } from "../../src/attest/x509gen.js";
import type { StatusView } from "../../src/admin/backend.js";
import type { TunnelDetail, TunnelInfo } from "../../src/gateway/server.js";

const BROWSER = "b0".repeat(32);
const STRANGER = "ee".repeat(32);
const TOKEN = "7f".repeat(32);
const ADMIN = "http://198.18.2.1:9443";
const METRICS = "http://198.18.2.1:9464/metrics";
const node = process.execPath;
const HTTP_TOOL = join(ROOT, "test/helpers/http-tool.ts");

interface HttpResult {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Parses Prometheus text: `name{labels}` → value. */
function parseMetrics(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

describe("admin API, metrics and status", { concurrency: false }, () => {
  let lab: Lab;
  let socket: string;

  /** One HTTP request from the server namespace. */
  async function http(method: string, url: string, ...args: string[]): Promise<HttpResult> {
    const r = await lab.srv.exec(node, ["--import", "tsx", HTTP_TOOL, method, url, ...args], {
      timeoutMs: 20_000,
    });
    return JSON.parse(r.stdout) as HttpResult;
  }

  async function scrape(): Promise<Map<string, number>> {
    const r = await http("GET", METRICS);
    assert.equal(r.status, 200, r.body);
    return parseMetrics(r.body);
  }

  before(async () => {
    lab = await Lab.create({
      clients: 1,
      apps: [{ name: "browser", subnet: "100.64.1.0/24", identities: [{ mrenclave: BROWSER }] }],
      extraYaml: [
        "tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 30, leaseGraceSeconds: 60 }",
        "admin: { tcp: 198.18.2.1:9443, tokenFile: admin.token }",
        "metrics: { listen: 198.18.2.1:9464 }",
      ].join("\n"),
    });
    writeFileSync(join(lab.dir, "admin.token"), TOKEN + "\n", { mode: 0o600 });
    socket = join(lab.dir, "admin.sock");
    const gw = await lab.startGateway();
    await waitLine(gw, (o) => o.event === "admin-started");
  });

  after(async () => {
    await lab?.destroy();
  });

  test("over TCP the admin API refuses a missing or wrong token and gives no data; the right token works", async () => {
    for (const path of ["/v1/status", "/v1/tunnels", "/v1/tunnels/1", "/metrics", "/dashboard.js"]) {
      const none = await http("GET", ADMIN + path);
      assert.equal(none.status, 401, `${path} without a token`);
      assert.equal(JSON.parse(none.body).error, "unauthorized");
      assert.doesNotMatch(none.body, /browser|100\.64|seng_/, "no data in a refusal");
      const wrong = await http("GET", ADMIN + path, "--token", "7e".repeat(32));
      assert.equal(wrong.status, 401, `${path} with a wrong token`);
      assert.doesNotMatch(wrong.body, /browser|100\.64|seng_/);
    }
    // A token prefix, an empty bearer, other schemes and a forged session cookie are refused too.
    for (const extra of [
      ["--header", `authorization:Bearer ${TOKEN.slice(0, 32)}`],
      ["--header", "authorization:Bearer "],
      ["--header", `authorization:Basic ${Buffer.from(`admin:${TOKEN}`).toString("base64")}`],
      ["--cookie", "seng_session=" + "A".repeat(43)],
    ]) {
      const r = await http("GET", ADMIN + "/v1/status", ...extra);
      assert.equal(r.status, 401, extra.join(" "));
    }
    const closeNoToken = await http("POST", ADMIN + "/v1/tunnels/1/close", "--json", "{}");
    assert.equal(closeNoToken.status, 401);
    const ok = await http("GET", ADMIN + "/v1/status", "--token", TOKEN);
    assert.equal(ok.status, 200, ok.body);
    const s = JSON.parse(ok.body) as StatusView;
    assert.deepEqual(
      s.apps.map((a) => a.name),
      ["browser"],
    );
    // The dashboard's page without a session is the login form, not the dashboard.
    const page = await http("GET", ADMIN + "/");
    assert.equal(page.status, 401);
    assert.match(page.body, /action="\/login"/);
    const badLogin = await http("POST", ADMIN + "/login", "--form", "token=nope");
    assert.equal(badLogin.status, 401);
    assert.equal(badLogin.headers["set-cookie"], undefined);
  });

  test("metrics count exactly the packets and bytes sent through a tunnel", async () => {
    const c = lab.startClient(BROWSER);
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    const before = await scrape();
    assert.equal(before.get('seng_tunnels{app="browser"}'), 1);
    // 5 echo requests of 100 bytes of payload: 20 (IP) + 8 (ICMP) + 100 = 128 bytes each way per packet.
    const ping = await lab.clients[0]!.exec(
      "ping",
      ["-c", "5", "-i", "0.2", "-W", "2", "-s", "100", SERVER_IP],
      {
        check: false,
        timeoutMs: 20_000,
      },
    );
    const received = Number(/(\d+) received/.exec(ping.stdout)?.[1] ?? -1);
    assert.ok(received >= 1, ping.stdout);
    const afterPing = await scrape();
    const delta = (k: string) => (afterPing.get(k) ?? 0) - (before.get(k) ?? 0);
    assert.equal(delta('seng_app_packets_total{app="browser",direction="in"}'), 5);
    assert.equal(delta('seng_app_bytes_total{app="browser",direction="in"}'), 5 * 128);
    assert.equal(delta('seng_app_packets_total{app="browser",direction="out"}'), received);
    assert.equal(delta('seng_app_bytes_total{app="browser",direction="out"}'), received * 128);
    // The same figures per tunnel in the admin API.
    const t = (await adminJson<{ tunnels: TunnelInfo[] }>({ socket }, "GET", "/v1/tunnels")).tunnels.find(
      (x) => x.address === lease.address,
    )!;
    assert.ok(t.counters.rxPackets >= 5 && t.counters.rxBytes >= 5 * 128);

    // Spoofed sources: counted as drops, not as the app's traffic.
    await lab.clients[0]!.ip("addr", "add", "100.64.1.200/32", "dev", "sengc0");
    await lab.clients[0]!.exec("ping", ["-c", "3", "-i", "0.2", "-W", "1", "-I", "100.64.1.200", SERVER_IP], {
      check: false,
      timeoutMs: 10_000,
    });
    const afterSpoof = await scrape();
    const d2 = (k: string) => (afterSpoof.get(k) ?? 0) - (afterPing.get(k) ?? 0);
    assert.equal(d2('seng_drops_total{reason="spoofed-source"}'), 3);
    assert.equal(d2('seng_app_packets_total{app="browser",direction="in"}'), 0);
    await lab.clients[0]!.ip("addr", "del", "100.64.1.200/32", "dev", "sengc0");

    // Handshake figures and process metrics are there.
    assert.ok((afterSpoof.get('seng_handshakes_total{result="accepted"}') ?? 0) >= 1);
    assert.ok(
      (afterSpoof.get('seng_attestation_verdicts_total{result="accepted",reason="accepted"}') ?? 0) >= 1,
    );
    assert.ok((afterSpoof.get('seng_handshake_duration_seconds_count{result="accepted"}') ?? 0) >= 1);
    assert.ok(afterSpoof.has("process_cpu_seconds_total"));
    assert.ok(afterSpoof.has("nodejs_heap_size_used_bytes"));
    await c.kill();
  });

  test("a refused measurement appears in metrics with its reason and in seng status's last errors", async () => {
    const c = lab.startClient(STRANGER);
    await waitLine(c, (o) => o.event === "closed");
    await c.kill();
    const m = await scrape();
    assert.ok((m.get('seng_attestation_verdicts_total{result="refused",reason="no_app_match"}') ?? 0) >= 1);
    const s = await adminJson<StatusView>({ socket }, "GET", "/v1/status");
    const refused = s.recent.find((e) => e.event === "tunnel-refused" && e.fields.measurement === STRANGER);
    assert.ok(refused, JSON.stringify(s.recent));
    assert.match(String(refused.fields.reason), /no app matches/);
  });

  test("seng status prints tables and --json over the socket, and works over TCP with the token file", async () => {
    const c = lab.startClient(BROWSER);
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    const run = promisify(execFile);
    const table = await run(node, ["--import", "tsx", CLI, "status", "--socket", socket], { cwd: ROOT });
    assert.match(table.stdout, /^APPS$/m);
    assert.match(table.stdout, /^TUNNELS$/m);
    assert.match(table.stdout, /^LAST ERRORS$/m);
    assert.match(
      table.stdout,
      new RegExp(`^\\d+\\s+browser\\s+${lease.address.replace(/\./g, "\\.")}\\s`, "m"),
    );
    assert.match(table.stdout, /tunnel-refused/);
    const json = await run(node, ["--import", "tsx", CLI, "status", "--socket", socket, "--json"], {
      cwd: ROOT,
    });
    const s = JSON.parse(json.stdout) as StatusView;
    assert.ok(s.tunnels.some((t) => t.address === lease.address && t.app === "browser"));
    // Over TCP from the server namespace, with the token file; and refused with a wrong one.
    const viaTcp = await lab.srv.exec(
      node,
      [
        "--import",
        "tsx",
        CLI,
        "status",
        "--url",
        ADMIN,
        "--token-file",
        join(lab.dir, "admin.token"),
        "--json",
      ],
      { timeoutMs: 20_000 },
    );
    assert.ok((JSON.parse(viaTcp.stdout) as StatusView).tunnels.some((t) => t.address === lease.address));
    const wrongFile = join(lab.dir, "wrong.token");
    writeFileSync(wrongFile, "00".repeat(32), { mode: 0o600 });
    const refused = await lab.srv.exec(
      node,
      ["--import", "tsx", CLI, "status", "--url", ADMIN, "--token-file", wrongFile],
      { timeoutMs: 20_000, check: false },
    );
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /HTTP 401 unauthorized/);
    assert.equal(refused.stdout, "");
    const noGateway = await run(
      node,
      ["--import", "tsx", CLI, "status", "--socket", join(lab.dir, "nope.sock")],
      {
        cwd: ROOT,
      },
    ).catch((e: { code: number; stderr: string }) => e);
    assert.equal((noGateway as { code: number }).code, 2);
    assert.match((noGateway as { stderr: string }).stderr, /no such socket/);
    await c.kill();
  });

  test("closing a tunnel through the API closes it: the runtime is told and the gateway forgets it", async () => {
    const c = lab.startClient(BROWSER);
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    const list = await adminJson<{ tunnels: TunnelInfo[] }>({ socket }, "GET", "/v1/tunnels");
    const t = list.tunnels.find((x) => x.address === lease.address);
    assert.ok(t, JSON.stringify(list));
    const detail = await adminJson<TunnelDetail>({ socket }, "GET", `/v1/tunnels/${t.id}`);
    assert.equal(detail.claims?.sgx?.mrenclave, BROWSER);
    assert.equal(detail.claims?.simulated, true);
    assert.equal(detail.measurement, BROWSER);

    // Without the token over TCP: refused, and the tunnel stays.
    const denied = await http("POST", `${ADMIN}/v1/tunnels/${t.id}/close`, "--json", "{}");
    assert.equal(denied.status, 401);
    const bad = await adminRequest({ socket }, "POST", `/v1/tunnels/${t.id}/close`, {
      reason: "idle-timeout",
    });
    assert.equal(bad.status, 400);
    assert.ok(
      (await adminJson<{ tunnels: TunnelInfo[] }>({ socket }, "GET", "/v1/tunnels")).tunnels.some(
        (x) => x.id === t.id,
      ),
    );

    const gwFrom = lab.gateway!.stdout.length;
    const r = await http(
      "POST",
      `${ADMIN}/v1/tunnels/${t.id}/close`,
      "--token",
      TOKEN,
      "--json",
      '{"message":"test"}',
    );
    assert.equal(r.status, 200, r.body);
    assert.deepEqual(JSON.parse(r.body), { closed: t.id, reason: "revoked" });
    const closed = await waitLine<{ reason: string; final: boolean; message: string }>(
      c,
      (o) => o.event === "closed",
    );
    assert.equal(closed.reason, "revoked");
    assert.equal(closed.final, true);
    const down = await waitLine(
      lab.gateway!,
      (o) => o.event === "tunnel-down" && o.address === lease.address,
      5000,
      gwFrom,
    );
    assert.equal(down.reason, "revoked");
    assert.equal(down.app, "browser");
    assert.equal(down.measurement, BROWSER);
    const after = await adminJson<{ tunnels: TunnelInfo[] }>({ socket }, "GET", "/v1/tunnels");
    assert.ok(!after.tunnels.some((x) => x.id === t.id));
    const gone = await adminRequest({ socket }, "POST", `/v1/tunnels/${t.id}/close`);
    assert.equal(gone.status, 404);
    const m = await scrape();
    assert.ok((m.get('seng_tunnel_closes_total{app="browser",reason="revoked"}') ?? 0) >= 1);
    await c.kill();
  });

  test("with admin.tls the TCP listener speaks HTTPS: status with --ca, a Secure session cookie", async () => {
    const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const cert = await selfSignedCert({
      keys,
      name: "CN=seng admin",
      days: 1,
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: "ip", value: "198.18.2.1" }])],
    });
    const pem = join(lab.dir, "admin.pem");
    writeFileSync(pem, cert.pem);
    writeFileSync(join(lab.dir, "admin.key"), keys.privateKey.export({ type: "pkcs8", format: "pem" }), {
      mode: 0o600,
    });
    const yaml = join(lab.dir, "gateway.yaml");
    writeFileSync(
      yaml,
      readFileSync(yaml, "utf8").replace(
        "admin: { tcp: 198.18.2.1:9443, tokenFile: admin.token }",
        "admin: { tcp: 198.18.2.1:9443, tokenFile: admin.token, tls: { certificate: admin.pem, key: admin.key } }",
      ),
    );
    await lab.stopGateway();
    const gw = await lab.startGateway();
    assert.equal((await waitLine(gw, (o) => o.event === "admin-started")).tls, true);
    const status = await lab.srv.exec(
      node,
      [
        "--import",
        "tsx",
        CLI,
        "status",
        "--url",
        "https://198.18.2.1:9443",
        "--token-file",
        join(lab.dir, "admin.token"),
        "--ca",
        pem,
        "--json",
      ],
      { timeoutMs: 20_000 },
    );
    assert.deepEqual(
      (JSON.parse(status.stdout) as StatusView).apps.map((a) => a.name),
      ["browser"],
    );
    const env = { ...process.env, NODE_EXTRA_CA_CERTS: pem };
    const login = await lab.srv.exec(
      node,
      ["--import", "tsx", HTTP_TOOL, "POST", "https://198.18.2.1:9443/login", "--form", `token=${TOKEN}`],
      { timeoutMs: 20_000, env },
    );
    const r = JSON.parse(login.stdout) as HttpResult;
    assert.equal(r.status, 303);
    assert.match(
      r.headers["set-cookie"]!,
      /^seng_session=[\w-]{43}; Path=\/; HttpOnly; SameSite=Strict; .*; Secure$/,
    );
    // Plain HTTP to the TLS listener gets nothing.
    const plain = await lab.srv.exec(
      node,
      ["--import", "tsx", HTTP_TOOL, "GET", ADMIN + "/v1/status", "--token", TOKEN],
      {
        timeoutMs: 20_000,
        check: false,
      },
    );
    assert.notEqual(plain.code, 0);
  });

  test("policy reload through the API: a broken config is refused with its reason; the audit log answers", async () => {
    // A broken file: 422 with the file, key and expectation; the running configuration stays.
    const good = readFileSync(lab.configFile, "utf8");
    writeFileSync(lab.configFile, good.replace("subnet: 100.64.1.0/24", "subnet: 100.64.1.0/33"));
    const broken = await adminRequest({ socket }, "POST", "/v1/policy/reload");
    assert.equal(broken.status, 422, broken.body);
    assert.equal(JSON.parse(broken.body).error, "reload-failed");
    assert.match(JSON.parse(broken.body).detail ?? broken.body, /apps\[0\]\.subnet/);
    writeFileSync(lab.configFile, good);
    const ok = await adminRequest({ socket }, "POST", "/v1/policy/reload");
    assert.equal(ok.status, 200, ok.body);
    assert.equal(JSON.parse(ok.body).result.ok, true);

    // Earlier tests opened browser tunnels: their grants are in the audit log, newest first, filterable.
    const audit = await adminJson<{ entries: { event: string; app: string; address: string; t: number }[] }>(
      { socket },
      "GET",
      "/v1/audit?app=browser&event=grant&limit=10",
    );
    assert.ok(audit.entries.length > 0, JSON.stringify(audit));
    assert.ok(audit.entries.every((e) => e.app === "browser" && e.event === "grant"));
    for (let i = 1; i < audit.entries.length; i++) assert.ok(audit.entries[i - 1]!.t >= audit.entries[i]!.t);
    const one = audit.entries[0]!.address;
    const byAddress = await adminJson<{ entries: { address: string }[] }>(
      { socket },
      "GET",
      `/v1/audit?address=${one}`,
    );
    assert.ok(byAddress.entries.length > 0 && byAddress.entries.every((e) => e.address === one));
    const none = await adminJson<{ entries: unknown[] }>({ socket }, "GET", "/v1/audit?app=nobody");
    assert.deepEqual(none.entries, []);
    const badLimit = await adminRequest({ socket }, "GET", "/v1/events?limit=0");
    assert.equal(badLimit.status, 400);
    const unknown = await adminRequest({ socket }, "GET", "/v1/nothing");
    assert.equal(unknown.status, 404);
  });
});
