/**
 * Request/response through a tunnel: `sockperf ping-pong` over TCP (TCP_NODELAY, 64-byte messages, one
 * transaction in flight) from a client namespace to `sockperf server` in the server namespace, so every
 * transaction is one small packet each way through the tunnel (the answer carries the ACK of the request, the next
 * request the ACK of the answer). The figure is the CPU time (utime + stime from /proc) the tunnel's processes
 * spent per transaction, over the whole run (at least 10 s): rates swing on a shared machine, CPU per transaction
 * much less.
 */
import { readFileSync } from "node:fs";
import type { Lab } from "../test/helpers/lab.js";
import { SERVER_IP } from "../test/helpers/lab.js";
import type { Netns } from "../test/helpers/netns.js";

/** Request/response runs last at least this long, also with --quick. */
export const RR_SECS = 10;
const RR_PORT = "11111";

/** CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat. */
export function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

export interface RrResult {
  /** Transactions completed (the client's received answers, warm-up included). */
  transactions: number;
  /** Transactions per second over the run. */
  tps: number;
  /** CPU microseconds per transaction of each pid in `pids`, in order. */
  cpuUs: number[];
}

/** Runs `sockperf ping-pong` from `client` through whatever route it has to the server for `secs` seconds. */
export async function rr(lab: Lab, client: Netns, pids: number[], secs = RR_SECS): Promise<RrResult> {
  const server = lab.server("sockperf", ["server", "--tcp", "-i", SERVER_IP, "-p", RR_PORT]);
  try {
    await new Promise((r) => setTimeout(r, 300));
    const c0 = pids.map(cpuSeconds);
    const t0 = Date.now();
    const r = await client.exec(
      "sockperf",
      ["ping-pong", "--tcp", "-i", SERVER_IP, "-p", RR_PORT, "-m", "64", "-t", String(secs)],
      { timeoutMs: (secs + 20) * 1000, check: false },
    );
    const wall = (Date.now() - t0) / 1000;
    const used = pids.map((p, i) => cpuSeconds(p) - c0[i]!);
    const m = /\[Total Run\].*ReceivedMessages=(\d+)/.exec(r.stdout + r.stderr);
    const transactions = Number(m?.[1] ?? 0);
    if (!transactions)
      throw new Error(`sockperf ping-pong gave no transactions (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
    return { transactions, tps: transactions / wall, cpuUs: used.map((u) => (u * 1e6) / transactions) };
  } finally {
    await server.kill("SIGKILL", 1000);
  }
}
