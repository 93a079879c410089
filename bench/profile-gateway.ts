/**
 * Profiles the gateway under one TCP stream (not part of `npm run bench`):
 *   SENG_LAB_GATEWAY_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" node --import tsx bench/profile-gateway.ts
 * then open the .cpuprofile in Chrome DevTools. Prints the stream's Mbit/s and the gateway's and client's CPU use.
 * `--no-offload`: gateway and test client without TUN offloads (tun.offload: false, --no-offload).
 */
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Lab, SERVER_IP, waitLine } from "../test/helpers/lab.js";

const cpu = (pid: number): number => {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(f[11]) + Number(f[12])) / 100;
};

const lab = await Lab.create({
  clients: 1,
  apps: [{ name: "b", subnet: "100.64.1.0/24", identities: [{ mrenclave: "b0".repeat(32) }] }],
});
const offload = !process.argv.includes("--no-offload");
try {
  if (!offload)
    writeFileSync(
      join(lab.dir, "gateway.yaml"),
      lab.configText().replace("mtu: 1400 }", "mtu: 1400, offload: false }"),
    );
  await lab.startGateway();
  const c = lab.startClient("b0".repeat(32), { args: offload ? [] : ["--no-offload"] });
  await waitLine(c, (o) => o.event === "lease");
  // for `perf record -p` and the like
  process.stdout.write(`pids: gateway ${lab.gateway!.pid} client ${c.pid}\n`);
  const srv = lab.server("iperf3", ["-s", "-1", "-B", SERVER_IP]);
  await new Promise((r) => setTimeout(r, 300));
  const g0 = cpu(lab.gateway!.pid!);
  const c0 = cpu(c.pid!);
  const t0 = Date.now();
  const r = await lab.clients[0]!.exec("iperf3", ["-c", SERVER_IP, "-t", "5", "-J"], { timeoutMs: 30_000 });
  const secs = (Date.now() - t0) / 1000;
  const mbps =
    (JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received
      .bits_per_second / 1e6;
  const gw = (cpu(lab.gateway!.pid!) - g0) / secs;
  const cl = (cpu(c.pid!) - c0) / secs;
  process.stdout.write(
    `offload ${offload}: ${mbps.toFixed(0)} Mbit/s; gateway ${gw.toFixed(2)} cores, client ${cl.toFixed(2)} cores; ` +
      `CPU-seconds per GB: gateway ${((gw * 8000) / mbps).toFixed(2)}, client ${((cl * 8000) / mbps).toFixed(2)}\n`,
  );
  await srv.kill("SIGKILL");
  await c.kill("SIGTERM");
  await lab.stopGateway("SIGTERM");
} finally {
  await lab.destroy();
}
