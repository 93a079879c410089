/**
 * Runtime benchmarks in the namespace lab (test/helpers/lab.ts), one run so the figures compare:
 *  - one TCP stream app → server, sent by the same small Node program four ways: under the SENG runtime (lwIP in
 *    the app's process, tunnel to the gateway) = `runtime_tcp_mbps`; natively over the gateway's test client (kernel
 *    TCP over a TUN; the gateway issue's path) = `node_gateway_tcp_mbps`; natively over OpenVPN =
 *    `node_openvpn_tcp_mbps`; natively on the direct path = `node_direct_tcp_mbps`. The iperf3 figures of the
 *    gateway benchmark (`gateway_tcp_mbps`, `openvpn_tcp_mbps`) come from the same `npm run bench` run;
 *  - an HTTP server app (node:http, keep-alive, 13-byte body) under the runtime, against the same app run natively
 *    in the client namespace, both loaded by wrk from the server namespace: `runtime_http_rps`, `native_http_rps`;
 *  - runtime start to first byte (identity with the simulated TEE, DTLS handshake, attestation at the gateway, lease,
 *    a TCP connection and its first byte), measured inside the app from the moment the preload starts:
 *    `runtime_first_byte_ms` (median); `runtime_process_first_byte_ms` is the same from process start (Node's own
 *    start and module loading included; the bench runs TypeScript through tsx, which inflates it).
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Lab, SERVER_IP, waitLine } from "../test/helpers/lab.js";
import { ROOT, type Netns, type NsProcess } from "../test/helpers/netns.js";
import { openvpn } from "./gateway.js";
import { median, round } from "./util.js";

const REGISTER = join(ROOT, "src/runtime/register.ts");
const MR = "c0".repeat(32);

/** Server namespace: counts each connection's bytes and answers with one JSON line when the sender ends. */
export const SINK = `
const net = require("node:net");
net.createServer((s) => {
  let n = 0;
  s.on("data", (d) => { n += d.length; });
  s.on("end", () => s.end(JSON.stringify({ bytes: n }) + "\\n"));
  s.on("error", () => {});
}).listen(9000, process.argv[2], () => console.log(JSON.stringify({ listening: true })));
// first-byte target: answers one byte at once
net.createServer((s) => { s.end("!"); s.on("error", () => {}); })
  .listen(9001, process.argv[2]);
`;

/** The sender app: one connection, N bytes in 64 KiB writes with backpressure, timed until the sink's answer. */
export const SEND = `
import net from "node:net";
const [host, bytes] = [process.argv[2], Number(process.argv[3])];
const chunk = Buffer.alloc(65536, 7);
const s = net.connect(9000, host);
let t0 = 0, sent = 0, answer = "";
s.on("connect", () => {
  t0 = performance.now();
  const pump = () => {
    while (sent < bytes) {
      sent += chunk.length;
      if (!s.write(chunk)) return void s.once("drain", pump);
    }
    s.end();
  };
  pump();
});
s.on("data", (d) => (answer += d));
s.on("end", () => {
  const ms = performance.now() - t0;
  const got = JSON.parse(answer).bytes;
  const u = process.cpuUsage();
  console.log(JSON.stringify({ bytes: got, ms, mbps: (got * 8) / ms / 1000, cpuS: (u.user + u.system) / 1e6 }));
});
s.on("error", (e) => { console.log(JSON.stringify({ error: e.message })); process.exitCode = 1; });
`;

/** First byte: from the preload's start (or process start) to the first byte of a TCP answer. */
export const FIRST = `
import net from "node:net";
const s = net.connect(9001, process.argv[2]);
s.once("data", () => {
  const now = performance.now();
  const start = globalThis[Symbol.for("seng.runtime.startMs")];
  console.log(JSON.stringify({ ms: now - start, processMs: now }));
  s.destroy();
});
s.on("error", (e) => { console.log(JSON.stringify({ error: e.message })); process.exitCode = 1; });
`;

/** The HTTP server app. */
export const HTTP = `
import http from "node:http";
http.createServer((req, res) => res.end("hello, world\\n"))
  .listen(8080, "0.0.0.0", () => console.log(JSON.stringify({ listening: true })));
process.on("SIGINT", () => process.exit(0)); // so that --cpu-prof (bench/profile-runtime.ts) writes its profile
`;

async function wrk(srv: Netns, url: string, secs: number): Promise<number> {
  const r = await srv.exec("wrk", ["-t1", "-c32", `-d${secs}s`, url], { timeoutMs: (secs + 20) * 1000 });
  const m = /Requests\/sec:\s+([\d.]+)/.exec(r.stdout);
  if (!m) throw new Error(`wrk printed no rate:\n${r.stdout}\n${r.stderr}`);
  return Number(m[1]);
}

export async function benchRuntime(quick: boolean): Promise<Record<string, number>> {
  const bytes = (quick ? 200 : 500) * 2 ** 20;
  const secs = quick ? 3 : 6;
  const lab = await Lab.create({
    clients: 1,
    apps: [{ name: "bench", subnet: "100.64.16.0/20", identities: [{ mrenclave: MR }] }],
    extraYaml: "tunnel: { idleTimeoutSeconds: 3600, keepaliveSeconds: 3600 }",
  });
  const out: Record<string, number> = {};
  const procs: NsProcess[] = [];
  const cli = lab.clients[0]!;
  const file = (name: string, src: string) => {
    const p = join(lab.dir, name);
    writeFileSync(p, src);
    return p;
  };
  const send = file("send.mjs", SEND);
  const first = file("first.mjs", FIRST);
  const httpApp = file("http.mjs", HTTP);
  const shieldedEnv: NodeJS.ProcessEnv = {
    ...process.env,
    SENG_GATEWAY: lab.gatewayAddr(0),
    SENG_PIN: lab.pin,
    SENG_TEE: "sim",
    SENG_SIM_DIR: lab.simDir,
    SENG_MRENCLAVE: MR,
  };
  const shielded = ["--import", "tsx", "--import", REGISTER];
  const sendOnce = async (args: string[], env?: NodeJS.ProcessEnv): Promise<number> => {
    const r = await cli.exec(process.execPath, [...args, send, SERVER_IP, String(bytes)], {
      env,
      timeoutMs: 300_000,
    });
    const o = JSON.parse(r.stdout.trim().split("\n").pop()!) as { bytes: number; mbps: number };
    if (o.bytes !== bytes) throw new Error(`sink got ${o.bytes} of ${bytes} bytes`);
    return o.mbps;
  };
  try {
    const sink = lab.server(process.execPath, [file("sink.cjs", SINK), SERVER_IP]);
    procs.push(sink);
    await waitLine(sink, (o) => o.listening === true);

    // Native sender, direct path (no tunnel).
    await cli.ip("route", "replace", "198.18.2.0/24", "via", "198.18.1.1");
    out.node_direct_tcp_mbps = round(await sendOnce([]), 0);
    // The same HTTP app natively, reached on the direct path.
    const native = cli.spawn(process.execPath, [httpApp]);
    procs.push(native);
    await waitLine(native, (o) => o.listening === true);
    out.native_http_rps = round(await wrk(lab.srv, "http://198.18.1.2:8080/", secs), 0);
    await native.kill("SIGTERM", 5000);
    await cli.ip("route", "del", "198.18.2.0/24");

    const ovpn = await openvpn(lab);
    out.node_openvpn_tcp_mbps = round(await sendOnce([]), 0);
    await ovpn.stop();

    await lab.startGateway();
    const tc = lab.startClient(MR);
    procs.push(tc);
    await waitLine(tc, (o) => o.event === "lease");
    out.node_gateway_tcp_mbps = round(await sendOnce([]), 0);
    await tc.kill("SIGTERM", 5000);

    out.runtime_tcp_mbps = round(await sendOnce(shielded, shieldedEnv), 0);

    const app = cli.spawn(process.execPath, [...shielded, httpApp], {
      env: { ...shieldedEnv, SENG_LOG: "json" },
    });
    procs.push(app);
    await waitLine(app, (o) => o.listening === true, 30_000);
    const lease = /"event":"lease"[^\n]*"address":"([\d.]+)"/.exec(app.stderr);
    if (!lease) throw new Error(`no lease line from the HTTP app:\n${app.stderr}`);
    out.runtime_http_rps = round(await wrk(lab.srv, `http://${lease[1]}:8080/`, secs), 0);
    await app.kill("SIGTERM", 5000);

    const starts: number[] = [];
    const fromProcess: number[] = [];
    for (let i = 0; i < (quick ? 7 : 21); i++) {
      const r = await cli.exec(process.execPath, [...shielded, first, SERVER_IP], {
        env: shieldedEnv,
        timeoutMs: 30_000,
      });
      const o = JSON.parse(r.stdout.trim().split("\n").pop()!) as { ms: number; processMs: number };
      starts.push(o.ms);
      fromProcess.push(o.processMs);
    }
    out.runtime_first_byte_ms = round(median(starts), 1);
    out.runtime_process_first_byte_ms = round(median(fromProcess), 0);
  } finally {
    await Promise.allSettled(procs.map((p) => p.kill("SIGKILL", 1000)));
    await lab.destroy();
  }
  return out;
}
