/**
 * A dual-stack test client for the gateway's IPv6 tests, run in a client namespace: the tunnel client
 * (src/tunnel/client.ts) with a simulated-SGX identity, joined to a kernel TUN that gets the leased IPv4 and IPv6
 * addresses and routes, so ordinary programs in the namespace reach the servers through the tunnel.
 *
 *   tun6-client.ts <gateway host:port> <pin> <sim dir> <mrenclave> <tun> [--route <cidr>]… [--max-version 1|2]
 *                  [--tun-mtu <n>]
 *
 * `--tun-mtu` sets the TUN's MTU above the lease's (to make packets the gateway must answer with Packet Too Big).
 * Prints JSON lines: {"event":"lease",…lease}, {"event":"icmp6-ptb","mtu":…,"checksumOk":…} for each ICMPv6
 * Packet Too Big that came through the tunnel, {"event":"closed",…}.
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { makeIdentity, SimAttester } from "../../src/runtime/attesters.js";
import { TunnelClient } from "../../src/tunnel/client.js";
import { Tun } from "../../src/native/io.js";
import { icmp6ChecksumOk } from "../../src/packet/ip6.js";

const args = process.argv.slice(2);
const [gateway, pin, simDir, mrenclave, tunName] = args;
const flag = (name: string): string[] =>
  args.flatMap((a, i) => (a === name && args[i + 1] !== undefined ? [args[i + 1]!] : []));
const routes = flag("--route");
const maxVersion = Number(flag("--max-version")[0] ?? 2) as 1 | 2;
const tunMtu = flag("--tun-mtu")[0];
const out = (o: Record<string, unknown>): void => void process.stdout.write(JSON.stringify(o) + "\n");
const ip = (...a: string[]): void => void execFileSync("ip", a, { stdio: ["ignore", "ignore", "pipe"] });

const id = await makeIdentity(new SimAttester(simDir!, { mrenclave: mrenclave!, mrsigner: "00".repeat(32) }));
const tun = Tun.openOffloaded(tunName!, { napi: true }, (e) =>
  out({ event: "tun-offload-unavailable", error: e.message }),
);
// No link-local address, router solicitations or DAD on the TUN: only the leased addresses speak through it.
const sysctls: [string, string][] = [
  ["addr_gen_mode", "1"],
  ["accept_dad", "0"],
  ["router_solicitations", "0"],
];
for (const [k, v] of sysctls) writeFileSync(`/proc/sys/net/ipv6/conf/${tun.name}/${k}`, v);
const client = new TunnelClient({
  gateway: gateway!,
  pin: pin!,
  certPem: id.certPem,
  keyPem: id.keyPem,
  maxVersion,
  mtu: 1464 + (tunMtu ? Math.max(0, Number(tunMtu) - 1400) : 0),
});
tun.onPackets((p) => client.send(p));
client.on("packets", (packets) => {
  for (const p of packets)
    if (p[0]! >> 4 === 6 && p.length >= 48 && p[6] === 58 && p[40] === 2)
      out({ event: "icmp6-ptb", mtu: p.readUInt32BE(44), checksumOk: icmp6ChecksumOk(p) });
  tun.writeMany(packets);
});
let configured = false;
client.on("lease", (lease) => {
  if (!configured) {
    configured = true;
    ip("link", "set", "dev", tun.name, "mtu", tunMtu ?? String(lease.mtu), "up");
    if (lease.address) ip("addr", "add", `${lease.address}/32`, "dev", tun.name);
    if (lease.address6) ip("-6", "addr", "add", `${lease.address6}/128`, "dev", tun.name, "nodad");
    for (const r of routes) {
      const six = r.includes(":");
      const src = six ? lease.address6 : lease.address;
      if (src) ip(...(six ? ["-6"] : []), "route", "replace", r, "dev", tun.name, "src", src);
    }
  }
  out({ event: "lease", version: client.version, ...lease });
});
client.on("closed", (c) => {
  out({ event: "closed", ...c });
  if (c.final) {
    tun.close();
    process.exit(0);
  }
});
process.on("SIGTERM", () => {
  client.close();
  tun.close();
  process.exit(0);
});
client.connect();
