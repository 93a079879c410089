/**
 * Gateway benchmarks in namespaces (test/helpers/lab.ts), all in one run so the figures compare:
 *  - one TCP stream (iperf3, 5 s; 3 s with --quick) client → server: direct (routed by the gateway namespace, no
 *    tunnel), through SENG (TUN offloads on, and off: gateway_nooffload_tcp_mbps; and over IPv6 inside the tunnel:
 *    gateway_tcp6_mbps), and through OpenVPN 2.6 (UDP,
 *    AES-256-GCM, TLS mode) over the same namespaces; and the CPU both ends of each VPN spent per GB carried;
 *  - UDP packets per second (iperf3 -u, 64-byte payloads, unlimited rate) received at the server, SENG and OpenVPN;
 *  - tunnel setup: handshake + attestation + lease, median latency one at a time, and setups per second with 32 in
 *    flight (per gateway CPU-second, i.e. on one core, and by the wall clock);
 *  - gateway memory per idle tunnel (RSS growth / tunnels) with 10,000 tunnels (2,000 with --quick).
 */
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Lab, SERVER_IP, SERVER_IP6, waitLine } from "../test/helpers/lab.js";
import { ROOT, type Netns, type NsProcess } from "../test/helpers/netns.js";
import { round } from "./util.js";

const SETUP = join(ROOT, "bench/setup-client.ts");

export async function iperf(
  lab: Lab,
  client: Netns,
  secs: number,
  udp: boolean,
  target = SERVER_IP,
): Promise<{ mbps: number; kpps: number }> {
  const server = lab.server("iperf3", ["-s", "-1", "-B", target]);
  await new Promise((r) => setTimeout(r, 300));
  const args = ["-c", target, "-t", String(secs), "-J"];
  if (udp) args.push("-u", "-b", "0", "-l", "64");
  const r = await client.exec("iperf3", args, { timeoutMs: (secs + 20) * 1000, check: false });
  await server.wait(10_000).catch(() => server.kill("SIGKILL"));
  const j = JSON.parse(r.stdout) as {
    end: {
      sum_received?: { bits_per_second: number };
      sum?: { packets: number; lost_packets: number; seconds: number };
    };
  };
  if (udp) {
    const s = j.end.sum!;
    return { mbps: 0, kpps: (s.packets - s.lost_packets) / s.seconds / 1000 };
  }
  return { mbps: j.end.sum_received!.bits_per_second / 1e6, kpps: 0 };
}

/** CPU seconds (user + system) a process has used so far. */
function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/**
 * Runs a TCP measurement and the CPU the VPN's two ends (`pids`) spent on it per GB carried: a figure that holds
 * when other work shares the machine, unlike Mbit/s.
 */
async function perGb(
  pids: number[],
  secs: number,
  measure: () => Promise<{ mbps: number }>,
): Promise<{ mbps: number; cpuPerGb: number }> {
  const cpu = () => pids.reduce((s, p) => s + cpuSeconds(p), 0);
  const c0 = cpu();
  const r = await measure();
  const used = cpu() - c0;
  const gb = (r.mbps * secs) / 8000; // iperf3's average over its `secs`
  return { mbps: r.mbps, cpuPerGb: gb > 0 ? used / gb : 0 };
}

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0);
}

export async function openvpn(lab: Lab): Promise<{ pids: number[]; stop: () => Promise<void> }> {
  const d = join(lab.dir, "ovpn");
  execFileSync("mkdir", ["-p", d]);
  const ossl = (...a: string[]) => execFileSync("openssl", a, { cwd: d, stdio: "ignore" });
  ossl(
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=bench-ca",
  );
  for (const n of ["server", "client"]) {
    ossl(
      "req",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      `${n}.key`,
      "-out",
      `${n}.csr`,
      "-subj",
      `/CN=${n}`,
    );
    ossl(
      "x509",
      "-req",
      "-in",
      `${n}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${n}.pem`,
      "-days",
      "2",
    );
  }
  const common = [
    "--dev-type",
    "tun",
    "--disable-dco",
    "--proto",
    "udp",
    "--data-ciphers",
    "AES-256-GCM",
    "--cipher",
    "AES-256-GCM",
    "--ca",
    join(d, "ca.pem"),
    "--verb",
    "1",
    "--tun-mtu",
    "1400",
    "--mssfix",
    "0",
  ];
  const srv = lab.gw.spawn("openvpn", [
    ...common,
    "--dev",
    "ovpns",
    "--lport",
    "1194",
    "--ifconfig",
    "100.127.0.1",
    "100.127.0.2",
    "--tls-server",
    "--dh",
    "none",
    "--cert",
    join(d, "server.pem"),
    "--key",
    join(d, "server.key"),
  ]);
  const cli = lab.clients[0]!.spawn("openvpn", [
    ...common,
    "--dev",
    "ovpnc",
    "--remote",
    "198.18.1.1",
    "1194",
    "--ifconfig",
    "100.127.0.2",
    "100.127.0.1",
    "--tls-client",
    "--cert",
    join(d, "client.pem"),
    "--key",
    join(d, "client.key"),
    "--route",
    "198.18.2.0",
    "255.255.255.0",
  ]);
  await lab.srv.ip("route", "replace", "100.127.0.0/24", "via", "198.18.2.1");
  const end = Date.now() + 20_000;
  while (!/Initialization Sequence Completed/.test(cli.stdout)) {
    if (Date.now() > end) throw new Error(`openvpn did not come up:\n${cli.stdout}\n${srv.stdout}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    pids: [srv.pid!, cli.pid!],
    stop: async () => {
      await cli.kill();
      await srv.kill();
    },
  };
}

/** `parts`: which of "throughput", "setup", "memory" to run (default all). */
export async function benchGateway(
  quick: boolean,
  parts: ReadonlySet<string> = new Set(["throughput", "setup", "memory"]),
): Promise<Record<string, number>> {
  const secs = quick ? 3 : 5;
  const lab = await Lab.create({
    clients: 1,
    ipv6: true,
    apps: [
      {
        name: "browser",
        subnet: "100.64.0.0/12",
        subnet6: "fd64:1::/64",
        identities: [{ mrenclave: "b0".repeat(32) }],
      },
    ],
    extraYaml:
      "tunnel: { idleTimeoutSeconds: 3600, keepaliveSeconds: 3600 }\nlimits: { handshakesPerSecondPerSource: 100000, handshakeBurstPerSource: 100000, handshakesPerSecond: 100000, maxHalfOpen: 5000 }",
  });
  const out: Record<string, number> = {};
  const procs: NsProcess[] = [];
  try {
    const cli = lab.clients[0]!;
    if (parts.has("throughput")) {
      // Direct path: the client routes to the server through the gateway namespace, no tunnel.
      await cli.ip("route", "replace", "198.18.2.0/24", "via", "198.18.1.1");
      out.direct_tcp_mbps = round((await iperf(lab, cli, secs, false)).mbps, 0);
      await cli.ip("route", "del", "198.18.2.0/24");

      const ovpn = await openvpn(lab);
      const ov = await perGb(ovpn.pids, secs, () => iperf(lab, cli, secs, false));
      out.openvpn_tcp_mbps = round(ov.mbps, 0);
      out.openvpn_cpu_s_per_gb = round(ov.cpuPerGb, 2);
      out.openvpn_udp_kpps = round((await iperf(lab, cli, secs, true)).kpps, 1);
      await ovpn.stop();

      // SENG without TUN offloads (one packet per TUN read and write) on gateway and client, for comparison.
      const yaml = join(lab.dir, "gateway.yaml");
      writeFileSync(yaml, lab.configText().replace("mtu: 1400 }", "mtu: 1400, offload: false }"));
      await lab.startGateway();
      const plain = lab.startClient("b0".repeat(32), { args: ["--no-offload"] });
      procs.push(plain);
      await waitLine(plain, (o) => o.event === "lease");
      out.gateway_nooffload_tcp_mbps = round((await iperf(lab, cli, secs, false)).mbps, 0);
      await plain.kill();
      await lab.stopGateway();
      writeFileSync(yaml, lab.configText());
    }
    await lab.startGateway();
    if (parts.has("throughput")) {
      const client = lab.startClient("b0".repeat(32));
      procs.push(client);
      await waitLine(client, (o) => o.event === "lease");
      const gw = await perGb([lab.gateway!.pid!, client.pid!], secs, () => iperf(lab, cli, secs, false));
      out.gateway_tcp_mbps = round(gw.mbps, 0);
      out.gateway_cpu_s_per_gb = round(gw.cpuPerGb, 2);
      out.gateway_udp_kpps = round((await iperf(lab, cli, secs, true)).kpps, 1);
      await client.kill();
      // The same over IPv6 inside the tunnel: the dual-stack test client (a kernel TUN with the leased IPv6).
      const six = cli.spawn(process.execPath, [
        "--import",
        "tsx",
        join(ROOT, "test/helpers/tun6-client.ts"),
        lab.gatewayAddr(0),
        lab.pin,
        lab.simDir,
        "b0".repeat(32),
        "sengc0",
        "--route",
        "2001:2:ff::/48",
      ]);
      procs.push(six);
      await waitLine(six, (o) => o.event === "lease");
      out.gateway_tcp6_mbps = round((await iperf(lab, cli, secs, false, SERVER_IP6)).mbps, 0);
      await six.kill();
    }

    // Setup latency one at a time, then throughput with 32 in flight.
    const run = async (count: number, conc: number, hold = false) => {
      const p = cli.spawn(process.execPath, [
        "--import",
        "tsx",
        SETUP,
        lab.gatewayAddr(0),
        lab.pin,
        lab.simDir,
        String(count),
        String(conc),
        ...(hold ? ["--hold"] : []),
      ]);
      procs.push(p);
      const r = await waitLine<{ medianMs: number; perSecond: number; setups: number; failed: number }>(
        p,
        (o) => typeof o.medianMs === "number",
        600_000,
      );
      return { r, p };
    };
    if (parts.has("setup")) {
      const seq = await run(quick ? 50 : 200, 1);
      out.setup_ms = round(seq.r.medianMs, 2);
      await seq.p.wait(30_000);
      // The load generator shares the machine's two cores with the gateway, so the wall-clock rate understates the
      // gateway's capacity; setups per gateway CPU-second is the "one core" figure.
      const cpu0 = cpuSeconds(lab.gateway!.pid!);
      const par = await run(quick ? 500 : 2000, 32);
      const cpu = cpuSeconds(lab.gateway!.pid!) - cpu0;
      out.setups_per_s = round(par.r.setups / cpu, 0);
      out.setups_wall_per_s = round(par.r.perSecond, 0);
      await par.p.wait(30_000);
    }
    if (parts.has("memory")) {
      // Memory per idle tunnel: gateway RSS growth while N tunnels are held open.
      const gwPid = lab.gateway!.pid!;
      global.gc?.();
      const n = quick ? 2000 : 10_000;
      const before = rssKb(gwPid);
      const held = await run(n, 64, true);
      await new Promise((r) => setTimeout(r, 1000));
      const afterKb = rssKb(gwPid);
      out.idle_tunnel_kb = round((afterKb - before) / held.r.setups, 1);
      out.idle_tunnels = held.r.setups;
      await held.p.kill("SIGTERM", 10_000);
    }
  } finally {
    await Promise.allSettled(procs.map((p) => p.kill("SIGKILL", 1000)));
    await lab.destroy();
  }
  return out;
}
