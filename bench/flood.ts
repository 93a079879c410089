/**
 * What floods cost an established tunnel (issue 12), in namespaces (test/helpers/lab.ts), all in one run:
 *  - baseline: one TCP stream (iperf3, 5 s) from cli0 through its tunnel to the server, no flood;
 *  - flood_hello_tcp_ratio: the same stream while 200 source addresses in cli1 send ClientHellos, answer the cookies
 *    and abandon the handshakes (bench/hello-flood.ts), divided by the baseline;
 *  - flood_inner_tcp_ratio: the same while a tunnel from cli1 sends malformed and spoofed inner packets as fast as it
 *    can, reconnecting with the same key whenever the gateway closes it (test/helpers/inner-flood.ts --reconnect).
 * The flooders share the machine's two cores with the gateway and iperf3: their CPU seconds are reported too
 * (flood_*_flooder_cpu_s), as are the gateway's (flood_*_gateway_cpu_s). The gateway runs with its default limits.
 */
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { Lab, waitLine } from "../test/helpers/lab.js";
import { ROOT, type NsProcess } from "../test/helpers/netns.js";
import { iperf } from "./gateway.js";
import { round } from "./util.js";

const SOURCES = 200;

function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
}

export async function benchFlood(quick: boolean): Promise<Record<string, number>> {
  const secs = quick ? 4 : 8;
  const lab = await Lab.create({
    clients: 2,
    apps: [{ name: "browser", subnet: "100.64.0.0/16", identities: [{ mrenclave: "b0".repeat(32) }] }],
    extraYaml: "tunnel: { idleTimeoutSeconds: 60, keepaliveSeconds: 10 }",
  });
  const out: Record<string, number> = {};
  /** The flooder's own summary line (what it sent), for the report. */
  const summary = (f: NsProcess): Record<string, number> => {
    const line = f.stdout.trim().split("\n").pop() ?? "{}";
    try {
      return JSON.parse(line) as Record<string, number>;
    } catch {
      return {};
    }
  };
  const procs: NsProcess[] = [];
  try {
    const flooder = lab.clients[1]!;
    // 200 source addresses for the hello flood: 198.18.3.10 … 198.18.3.209.
    for (let i = 0; i < SOURCES; i++)
      await flooder.ip("addr", "add", `198.18.3.${10 + i}/32`, "dev", "c1-gw");
    await lab.startGateway();
    const gwPid = lab.gateway!.pid!;
    const client = lab.startClient("b0".repeat(32));
    procs.push(client);
    await waitLine(client, (o) => o.event === "lease");
    const cli = lab.clients[0]!;

    const measure = async (
      flood?: () => NsProcess,
    ): Promise<{ mbps: number; flooderCpu: number; gwCpu: number; sent: Record<string, number> }> => {
      const f = flood?.();
      if (f) {
        procs.push(f);
        await new Promise((r) => setTimeout(r, 1000)); // the flood is under way before the stream starts
      }
      const g0 = cpuSeconds(gwPid);
      const f0 = f ? cpuSeconds(f.pid!) : 0;
      const r = await iperf(lab, cli, secs, false);
      const flooderCpu = f ? cpuSeconds(f.pid!) - f0 : 0;
      const gwCpu = cpuSeconds(gwPid) - g0;
      if (f) await f.wait(30_000).catch(() => f.kill("SIGKILL"));
      return { mbps: r.mbps, flooderCpu, gwCpu, sent: f ? summary(f) : {} };
    };

    const base = await measure();
    const hello = await measure(() =>
      flooder.spawn(process.execPath, [
        "--import",
        "tsx",
        join(ROOT, "bench/hello-flood.ts"),
        lab.gatewayAddr(1),
        "198.18.3.10",
        String(SOURCES),
        String(secs + 2),
      ]),
    );
    const inner = await measure(() =>
      flooder.spawn(process.execPath, [
        "--import",
        "tsx",
        join(ROOT, "test/helpers/inner-flood.ts"),
        lab.gatewayAddr(1),
        lab.pin,
        lab.simDir,
        "b0".repeat(32),
        String(secs + 2),
        "64",
        "--reconnect",
      ]),
    );
    const again = await measure();
    // The baseline is the mean of the stream before and after the floods (the shared machine drifts).
    const baseline = (base.mbps + again.mbps) / 2;
    out.flood_baseline_tcp_mbps = round(baseline, 0);
    out.flood_hello_tcp_mbps = round(hello.mbps, 0);
    out.flood_hello_tcp_ratio = round(hello.mbps / baseline, 2);
    out.flood_hello_flooder_cpu_s = round(hello.flooderCpu, 2);
    out.flood_hello_gateway_cpu_s = round(hello.gwCpu, 2);
    out.flood_inner_tcp_mbps = round(inner.mbps, 0);
    out.flood_inner_tcp_ratio = round(inner.mbps / baseline, 2);
    out.flood_inner_flooder_cpu_s = round(inner.flooderCpu, 2);
    out.flood_inner_gateway_cpu_s = round(inner.gwCpu, 2);
    out.flood_baseline_gateway_cpu_s = round((base.gwCpu + again.gwCpu) / 2, 2);
    out.flood_seconds = secs;
    for (const [k, v] of Object.entries(hello.sent)) out[`flood_hello_sent_${k}`] = v;
    for (const [k, v] of Object.entries(inner.sent)) out[`flood_inner_sent_${k}`] = v;
    const s = await lab.stats();
    for (const k of ["throttled", "rate-limited", "half-open-cap", "unknown-session"])
      out[`flood_drops_${k.replace(/-/g, "_")}`] = s.drops[k] ?? 0;
  } finally {
    await Promise.allSettled(procs.map((p) => p.kill("SIGKILL", 1000)));
    await lab.destroy();
  }
  return out;
}
