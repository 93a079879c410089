/**
 * Profiles the runtime (not part of `npm run bench`): the same apps as bench/runtime.ts, with the CPU time the app
 * and the gateway spend per request / per MB, which a loaded machine disturbs less than the rates:
 *   node --import tsx bench/profile-runtime.ts [native|http|tcp|first]...
 * `native` is the HTTP app run natively on the direct path (the baseline of runtime_http_rps); `native` and `http`
 * also give wrk's CPU per request and the machine's busy CPU and idle cores over the run; `http` gives the packets
 * through the tunnel per request (gateway counters). SENG_PROF_SYSCALLS=1 adds syscalls and context switches per
 * request of the app and the gateway (perf stat); SENG_PROF_PERF / SENG_PROF_PERF_GW / SENG_PROF_PERF_ALL=<file>
 * record perf profiles of the app, the gateway or the whole machine; SENG_PROF_SECS sets wrk's duration.
 *   SENG_PROF_APP_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" node --import tsx bench/profile-runtime.ts http
 * then open the app's .cpuprofile in Chrome DevTools (SENG_LAB_GATEWAY_NODE_ARGS does the same for the gateway).
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Lab, SERVER_IP, waitLine } from "../test/helpers/lab.js";
import { ROOT } from "../test/helpers/netns.js";
import { FIRST, HTTP, SEND, SINK } from "./runtime.js";
import { median } from "./util.js";

const cpu = (pid: number): number => {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
};

/** Seconds of busy and idle CPU time of the whole machine (all cores) so far. */
const machine = (): { busy: number; idle: number } => {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.split(/\s+/).slice(1).map(Number);
  const idle = f[3]! + f[4]!;
  return { busy: (f.slice(0, 8).reduce((a, b) => a + b, 0) - idle) / 100, idle: idle / 100 };
};

const parts = new Set(
  process.argv.slice(2).length ? process.argv.slice(2) : ["native", "http", "tcp", "first"],
);
const MR = "c0".repeat(32);
const REGISTER = join(ROOT, "src/runtime/register.ts");
const appArgs = process.env.SENG_PROF_APP_ARGS?.split(" ").filter(Boolean) ?? [];

const lab = await Lab.create({
  clients: 1,
  apps: [{ name: "bench", subnet: "100.64.16.0/20", identities: [{ mrenclave: MR }] }],
  extraYaml: "tunnel: { idleTimeoutSeconds: 3600, keepaliveSeconds: 3600 }",
});
const file = (name: string, src: string) => {
  const p = join(lab.dir, name);
  writeFileSync(p, src);
  return p;
};
const env: NodeJS.ProcessEnv = {
  ...process.env,
  SENG_GATEWAY: lab.gatewayAddr(0),
  SENG_PIN: lab.pin,
  SENG_TEE: "sim",
  SENG_SIM_DIR: lab.simDir,
  SENG_MRENCLAVE: MR,
};
const shielded = ["--import", "tsx", "--import", REGISTER];
const cli = lab.clients[0]!;
try {
  const gw = await lab.startGateway();
  const sink = lab.server(process.execPath, [file("sink.cjs", SINK), SERVER_IP]);
  await waitLine(sink, (o) => o.listening === true);
  /** wrk from the server namespace for `secs`, with its own CPU time (bash's `time`). */
  const wrk = async (url: string, secs: number) => {
    const r = await lab.srv.exec("bash", ["-c", `TIMEFORMAT='%U %S'; time wrk -t1 -c32 -d${secs}s ${url}`], {
      timeoutMs: (secs + 25) * 1000,
    });
    const [u, sy] = r.stderr.trim().split("\n").pop()!.split(" ").map(Number);
    if (process.env.SENG_PROF_WRK) console.log(r.stdout);
    return {
      rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(r.stdout)![1]),
      reqs: Number(/(\d+) requests in/.exec(r.stdout)![1]),
      wrkCpu: u! + sy!,
      errors: /Socket errors:[^\n]*|Non-2xx[^\n]*/.exec(r.stdout)?.[0] ?? "none",
    };
  };
  const secs = Number(process.env.SENG_PROF_SECS ?? 5);
  if (parts.has("native")) {
    // The same app natively, reached on the direct path (the baseline of runtime_http_rps).
    await cli.ip("route", "replace", "198.18.2.0/24", "via", "198.18.1.1");
    const app = cli.spawn(process.execPath, [file("http.mjs", HTTP)]);
    await waitLine(app, (o) => o.listening === true, 30_000);
    const a0 = cpu(app.pid!);
    const m0 = machine();
    const t0 = Date.now();
    const w = await wrk("http://198.18.1.2:8080/", secs);
    const m1 = machine();
    const wall = (Date.now() - t0) / 1000;
    const appCpu = cpu(app.pid!) - a0;
    console.log(
      JSON.stringify({
        part: "native",
        rps: w.rps,
        appCores: +(appCpu / wall).toFixed(2),
        appUsPerReq: +((appCpu * 1e6) / w.reqs).toFixed(1),
        wrkUsPerReq: +((w.wrkCpu * 1e6) / w.reqs).toFixed(1),
        machineBusyUsPerReq: +(((m1.busy - m0.busy) * 1e6) / w.reqs).toFixed(1),
        machineIdleCores: +((m1.idle - m0.idle) / wall).toFixed(2),
        errors: w.errors,
      }),
    );
    await app.kill("SIGINT", 5000);
    await cli.ip("route", "del", "198.18.2.0/24");
  }
  if (parts.has("http")) {
    const app = cli.spawn(process.execPath, [...appArgs, ...shielded, file("http.mjs", HTTP)], {
      env: { ...env, SENG_LOG: "json" },
    });
    await waitLine(app, (o) => o.listening === true, 30_000);
    const lease = /"event":"lease"[^\n]*"address":"([\d.]+)"/.exec(app.stderr)![1]!;
    // perf: SENG_PROF_PERF=file (the app), SENG_PROF_PERF_GW=file (the gateway), SENG_PROF_PERF_ALL=file (-a)
    const perfs = (
      [
        [process.env.SENG_PROF_PERF, ["-p", String(app.pid)]],
        [process.env.SENG_PROF_PERF_GW, ["-p", String(gw.pid)]],
        [process.env.SENG_PROF_PERF_ALL, ["-a"]],
      ] as const
    )
      .filter(([f]) => f)
      .map(([f, target]) =>
        spawn("perf", ["record", "-e", "cpu-clock", "-F", "2000", "-g", "-o", f!, ...target], {
          stdio: "ignore",
        }),
      );
    // SENG_PROF_SYSCALLS=1: syscalls and context switches of the app and the gateway (perf stat), per request
    const SYSCALLS = ["read", "write", "recvmmsg", "sendmmsg", "epoll_wait", "writev", "futex"];
    const stats = process.env.SENG_PROF_SYSCALLS
      ? [app.pid!, gw.pid!].map((pid) => {
          const p = spawn(
            "perf",
            [
              "stat",
              "-x,",
              "-e",
              ["context-switches", ...SYSCALLS.map((c) => `syscalls:sys_enter_${c}`)].join(","),
              "-p",
              String(pid),
            ],
            { stdio: ["ignore", "ignore", "pipe"] },
          );
          let err = "";
          p.stderr.on("data", (d: Buffer) => (err += d.toString()));
          return { p, out: () => err };
        })
      : [];
    const s0 = (await lab.stats()).apps.bench!;
    const a0 = cpu(app.pid!);
    const g0 = cpu(gw.pid!);
    const m0 = machine();
    const t0 = Date.now();
    const w = await wrk(`http://${lease}:8080/`, secs);
    const m1 = machine();
    const wall = (Date.now() - t0) / 1000;
    const appCpu = cpu(app.pid!) - a0;
    const gwCpu = cpu(gw.pid!) - g0;
    const s1 = (await lab.stats()).apps.bench!;
    console.log(
      JSON.stringify({
        part: "http",
        rps: w.rps,
        appCores: +(appCpu / wall).toFixed(2),
        gwCores: +(gwCpu / wall).toFixed(2),
        appUsPerReq: +((appCpu * 1e6) / w.reqs).toFixed(1),
        gwUsPerReq: +((gwCpu * 1e6) / w.reqs).toFixed(1),
        wrkUsPerReq: +((w.wrkCpu * 1e6) / w.reqs).toFixed(1),
        machineBusyUsPerReq: +(((m1.busy - m0.busy) * 1e6) / w.reqs).toFixed(1),
        machineIdleCores: +((m1.idle - m0.idle) / wall).toFixed(2),
        // packets through the tunnel per request: app → gateway (rx), gateway → app (tx)
        upPktPerReq: +((s1.rxPackets! - s0.rxPackets!) / w.reqs).toFixed(2),
        downPktPerReq: +((s1.txPackets! - s0.txPackets!) / w.reqs).toFixed(2),
        errors: w.errors,
      }),
    );
    for (const [i, st] of stats.entries()) {
      st.p.kill("SIGINT");
      await new Promise((r) => st.p.once("exit", r));
      const per: Record<string, number> = {};
      for (const line of st.out().split("\n")) {
        const [v, , ev] = line.split(",");
        if (ev && v && !isNaN(Number(v)))
          per[ev.replace("syscalls:sys_enter_", "")] = +(Number(v) / w.reqs).toFixed(3);
      }
      console.log(
        JSON.stringify({ part: "http-syscalls", who: i === 0 ? "app" : "gateway", perRequest: per }),
      );
    }
    for (const perf of perfs) {
      perf.kill("SIGINT");
      await new Promise((r) => perf.once("exit", r));
    }
    await app.kill("SIGINT", 5000);
  }
  if (parts.has("tcp")) {
    const mb = Number(process.env.SENG_PROF_MB ?? 200);
    const g0 = cpu(gw.pid!);
    const pargs = [...appArgs, ...shielded, file("send.mjs", SEND), SERVER_IP, String(mb * 2 ** 20)];
    const r = process.env.SENG_PROF_PERF_TCP
      ? await cli.exec(
          "perf",
          [
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "2000",
            "-g",
            "-o",
            process.env.SENG_PROF_PERF_TCP,
            process.execPath,
            ...pargs,
          ],
          { env, timeoutMs: 300_000 },
        )
      : await cli.exec(process.execPath, pargs, { env, timeoutMs: 300_000 });
    const o = JSON.parse(r.stdout.trim().split("\n").pop()!) as { mbps: number; cpuS: number; ms: number };
    const gwCpu = cpu(gw.pid!) - g0;
    console.log(
      JSON.stringify({
        part: "tcp",
        mbps: Math.round(o.mbps),
        appCpuMsPerMB: +((o.cpuS * 1000) / mb).toFixed(2),
        gwCpuMsPerMB: +((gwCpu * 1000) / mb).toFixed(2),
      }),
    );
  }
  if (parts.has("first")) {
    const ms: number[] = [];
    for (let i = 0; i < Number(process.env.SENG_PROF_N ?? 9); i++) {
      const r = await cli.exec(
        process.execPath,
        [...appArgs, ...shielded, file("first.mjs", FIRST), SERVER_IP],
        {
          env: { ...env, SENG_LOG: process.env.SENG_PROF_LOG ?? "" },
          timeoutMs: 30_000,
        },
      );
      if (process.env.SENG_PROF_LOG) process.stderr.write(r.stderr);
      ms.push((JSON.parse(r.stdout.trim().split("\n").pop()!) as { ms: number }).ms);
    }
    console.log(JSON.stringify({ part: "first", medianMs: median(ms), all: ms.map((x) => Math.round(x)) }));
  }
} finally {
  await lab.destroy();
}
