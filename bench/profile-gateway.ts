/**
 * Profiles the gateway under one load (not part of `npm run bench`):
 *   SENG_LAB_GATEWAY_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" node --import tsx bench/profile-gateway.ts [rr]
 * then open the .cpuprofile in Chrome DevTools. The load is one iperf3 TCP stream (bulk, default) or, with `rr`,
 * sockperf ping-pong over TCP (one 64-byte message each way, one in flight; bench/rr.ts). Prints the gateway's and
 * the test client's CPU per GB (bulk) or per transaction (rr), the gateway's context switches (all threads) per
 * packet, and, with `--syscalls`, the gateway's system calls per packet counted by `perf trace -s` (low overhead,
 * unlike strace) over the run.
 * `--no-offload`: gateway and test client without TUN offloads (tun.offload: false, --no-offload).
 * `--secs=N`: length of the load (default 10).
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { Lab, SERVER_IP, waitLine } from "../test/helpers/lab.js";
import { cpuSeconds, rr } from "./rr.js";

/** Voluntary + involuntary context switches of every thread of `pid` so far. */
function switches(pid: number): number {
  let n = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    const s = readFileSync(`/proc/${pid}/task/${t}/status`, "utf8");
    for (const m of s.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)/gm)) n += Number(m[1]);
  }
  return n;
}

const rrMode = process.argv.includes("rr");
const offload = !process.argv.includes("--no-offload");
const syscalls = process.argv.includes("--syscalls");
const secs = Number(process.argv.find((a) => a.startsWith("--secs="))?.slice(7) ?? 10);

const lab = await Lab.create({
  clients: 1,
  apps: [{ name: "b", subnet: "100.64.1.0/24", identities: [{ mrenclave: "b0".repeat(32) }] }],
  extraYaml: "tunnel: { idleTimeoutSeconds: 3600, keepaliveSeconds: 3600 }",
});
try {
  if (!offload)
    writeFileSync(
      join(lab.dir, "gateway.yaml"),
      lab.configText().replace("mtu: 1400 }", "mtu: 1400, offload: false }"),
    );
  await lab.startGateway();
  const c = lab.startClient("b0".repeat(32), { args: offload ? [] : ["--no-offload"] });
  await waitLine(c, (o) => o.event === "lease");
  const gwPid = lab.gateway!.pid!;
  // for `perf record -p` and the like
  process.stdout.write(`pids: gateway ${gwPid} client ${c.pid}\n`);
  const trace = syscalls
    ? spawn("perf", ["trace", "-s", "-p", String(gwPid), "--", "sleep", String(secs + 1)], { stdio: "pipe" })
    : undefined;
  let traceOut = "";
  trace?.stderr.on("data", (d: Buffer) => (traceOut += d.toString()));
  trace?.stdout.on("data", (d: Buffer) => (traceOut += d.toString()));
  const stats0 = await lab.stats();
  const sw0 = switches(gwPid);
  let packets: number;
  if (rrMode) {
    const r = await rr(lab, lab.clients[0]!, [gwPid, c.pid!], secs);
    packets = 2 * r.transactions;
    process.stdout.write(
      `rr offload ${offload}: ${r.tps.toFixed(0)} transactions/s; CPU µs per transaction: ` +
        `gateway ${r.cpuUs[0]!.toFixed(1)}, client ${r.cpuUs[1]!.toFixed(1)}\n`,
    );
  } else {
    const srv = lab.server("iperf3", ["-s", "-1", "-B", SERVER_IP]);
    await new Promise((r) => setTimeout(r, 300));
    const g0 = cpuSeconds(gwPid);
    const c0 = cpuSeconds(c.pid!);
    const t0 = Date.now();
    const r = await lab.clients[0]!.exec("iperf3", ["-c", SERVER_IP, "-t", String(secs), "-J"], {
      timeoutMs: (secs + 30) * 1000,
    });
    const wall = (Date.now() - t0) / 1000;
    const mbps =
      (JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received
        .bits_per_second / 1e6;
    const gw = (cpuSeconds(gwPid) - g0) / wall;
    const cl = (cpuSeconds(c.pid!) - c0) / wall;
    process.stdout.write(
      `bulk offload ${offload}: ${mbps.toFixed(0)} Mbit/s; gateway ${gw.toFixed(2)} cores, client ${cl.toFixed(2)} cores; ` +
        `CPU-seconds per GB: gateway ${((gw * 8000) / mbps).toFixed(2)}, client ${((cl * 8000) / mbps).toFixed(2)}\n`,
    );
    await srv.kill("SIGKILL");
    packets = 0;
  }
  const sw = switches(gwPid) - sw0;
  const stats1 = await lab.stats();
  const app0 = stats0.apps.b!;
  const app1 = stats1.apps.b!;
  const rx = app1.rxPackets! - app0.rxPackets!;
  const tx = app1.txPackets! - app0.txPackets!;
  if (!packets) packets = rx + tx;
  process.stdout.write(
    `gateway: ${rx} packets tunnel → TUN, ${tx} TUN → tunnel; ${(sw / (rx + tx)).toFixed(3)} context switches per packet\n`,
  );
  if (trace) {
    await new Promise((r) => trace.once("exit", r));
    // perf trace -s: per thread, lines "   syscall  calls  errors  total  min  avg ..."; sum calls per syscall.
    const calls = new Map<string, number>();
    for (const m of traceOut.matchAll(/^\s+([a-z_0-9]+)\s+(\d+)\s+\d+\s+[\d.]+/gm))
      calls.set(m[1]!, (calls.get(m[1]!) ?? 0) + Number(m[2]));
    const rows = [...calls].sort((a, b) => b[1] - a[1]);
    process.stdout.write(`syscalls per packet (${rx + tx} packets):\n`);
    for (const [name, n] of rows)
      process.stdout.write(`  ${name.padEnd(16)} ${(n / (rx + tx)).toFixed(3)}\n`);
  }
  await c.kill("SIGTERM");
  await lab.stopGateway("SIGTERM");
} finally {
  await lab.destroy();
}
