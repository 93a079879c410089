/**
 * Profiles the runtime (not part of `npm run bench`): the same apps as bench/runtime.ts, with the CPU time the app
 * and the gateway spend per request / per MB, which a loaded machine disturbs less than the rates:
 *   node --import tsx bench/profile-runtime.ts [http|tcp|first]...
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

const parts = new Set(process.argv.slice(2).length ? process.argv.slice(2) : ["http", "tcp", "first"]);
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
  if (parts.has("http")) {
    const app = cli.spawn(process.execPath, [...appArgs, ...shielded, file("http.mjs", HTTP)], {
      env: { ...env, SENG_LOG: "json" },
    });
    await waitLine(app, (o) => o.listening === true, 30_000);
    const lease = /"event":"lease"[^\n]*"address":"([\d.]+)"/.exec(app.stderr)![1]!;
    const perf = process.env.SENG_PROF_PERF
      ? spawn(
          "perf",
          [
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "2000",
            "-g",
            "-o",
            process.env.SENG_PROF_PERF,
            "-p",
            String(app.pid),
          ],
          { stdio: "ignore" },
        )
      : undefined;
    const a0 = cpu(app.pid!);
    const g0 = cpu(gw.pid!);
    const t0 = Date.now();
    const r = await lab.srv.exec("wrk", ["-t1", "-c32", "-d5s", `http://${lease}:8080/`], {
      timeoutMs: 30_000,
    });
    const secs = (Date.now() - t0) / 1000;
    const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(r.stdout)![1]);
    const reqs = rps * 5;
    const appCpu = cpu(app.pid!) - a0;
    const gwCpu = cpu(gw.pid!) - g0;
    console.log(
      JSON.stringify({
        part: "http",
        rps,
        appCores: +(appCpu / secs).toFixed(2),
        gwCores: +(gwCpu / secs).toFixed(2),
        appUsPerReq: +((appCpu * 1e6) / reqs).toFixed(1),
        gwUsPerReq: +((gwCpu * 1e6) / reqs).toFixed(1),
      }),
    );
    if (perf) {
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
