/**
 * Firewall benchmarks (root, nft, iperf3), in namespaces:
 *  - `set_member_ms`: median time from a lease being granted (tunnel up) to nft confirming the address is in the
 *    app's set, as the gateway measures it (stats.firewall.addLatencyMedianMs), over real tunnels set up one at a time;
 *  - `set_updates_per_s`: 10,000 addresses joining their app and category sets at once (2,000 with --quick),
 *    through the gateway's SetSync (the long-lived `nft -i`), in a namespace of their own;
 *  - `policy_throughput_cost_pct`: one iperf3 TCP stream through a SENG tunnel with the firewall off, then with the
 *    policy table loaded (20 rules before the one that allows iperf3, an unshielded chain, marks), same lab;
 *    (off − on) / off in percent (negative: within noise).
 */
import { join } from "node:path";
import { SetSync } from "../src/firewall/sets.js";
import { Lab, waitLine } from "../test/helpers/lab.js";
import { Netns, ROOT, type NsProcess } from "../test/helpers/netns.js";
import { iperf } from "./gateway.js";
import { round } from "./util.js";

const SETUP = join(ROOT, "bench/setup-client.ts");
const ID = "b0".repeat(32);

function policyYaml(enabled: boolean): string {
  const filler = Array.from(
    { length: 20 },
    (_, i) => `    - { from: browser, to: 10.${i}.0.0/16, proto: tcp, ports: [443], action: allow }`,
  ).join("\n");
  return [
    "tunnel: { idleTimeoutSeconds: 3600, keepaliveSeconds: 3600 }",
    "limits: { handshakesPerSecondPerSource: 100000, handshakeBurstPerSource: 100000 }",
    `firewall: { enabled: ${enabled}, unshielded: { drop: true, interfaces: [gw-c9] } }`,
    "policy:",
    "  rules:",
    filler,
    "    - { from: browser, to: 198.18.2.0/24, proto: tcp, ports: [5201], action: allow }",
    "",
  ].join("\n");
}

async function setRate(n: number): Promise<number> {
  const ns = await Netns.create("fwbench");
  try {
    await ns.exec("sh", [
      "-c",
      "nft add table inet seng && nft add set inet seng seng_app_browser '{ type ipv4_addr; }' && nft add set inet seng seng_cat_web '{ type ipv4_addr; }'",
    ]);
    const sync = new SetSync(
      (m) => process.stderr.write(`set error: ${m}\n`),
      ["ip", "netns", "exec", ns.name],
    );
    // Warm the nft process.
    sync.set("100.127.255.254", ["inet seng seng_app_browser"]);
    await sync.flushed();
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const a = `100.${64 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
      sync.set(a, ["inet seng seng_app_browser", "inet seng seng_cat_web"]);
    }
    await sync.flushed();
    const secs = (performance.now() - t0) / 1000;
    const count = (await ns.exec("nft", ["list", "set", "inet", "seng", "seng_app_browser"])).stdout.split(
      ",",
    ).length;
    if (count < n) throw new Error(`only ${count} of ${n} addresses reached the set`);
    await sync.close();
    return n / secs;
  } finally {
    await ns.delete();
  }
}

export async function benchFirewall(quick: boolean): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  out.set_updates_per_s = round(await setRate(quick ? 2000 : 10_000), 0);

  const lab = await Lab.create({
    clients: 1,
    apps: [
      { name: "browser", subnet: "100.64.0.0/16", categories: ["web"], identities: [{ mrenclave: ID }] },
    ],
    extraYaml: policyYaml(true),
  });
  const procs: NsProcess[] = [];
  try {
    const cli = lab.clients[0]!;
    const secs = quick ? 3 : 5;
    // Set membership latency over real tunnels, one at a time.
    await lab.startGateway();
    const setup = cli.spawn(process.execPath, [
      "--import",
      "tsx",
      SETUP,
      lab.gatewayAddr(0),
      lab.pin,
      lab.simDir,
      String(quick ? 50 : 200),
      "1",
    ]);
    procs.push(setup);
    await waitLine(setup, (o) => typeof o.medianMs === "number", 300_000);
    await setup.wait(30_000);
    const stats = (await lab.stats()) as unknown as { firewall: { addLatencyMedianMs: number } };
    out.set_member_ms = round(stats.firewall.addLatencyMedianMs, 2);

    const through = async (enabled: boolean): Promise<number> => {
      await lab.stopGateway();
      lab.writeConfig({ extraYaml: policyYaml(enabled) });
      if (!enabled) await lab.gw.exec("nft", ["delete", "table", "inet", "seng"], { check: false });
      await lab.startGateway();
      const c = lab.startClient(ID);
      procs.push(c);
      await waitLine(c, (o) => o.event === "lease");
      const r = await iperf(lab, cli, secs, false);
      await c.kill();
      return r.mbps;
    };
    // Alternate to spread the machine's noise over both.
    const off: number[] = [];
    const on: number[] = [];
    for (let i = 0; i < (quick ? 1 : 2); i++) {
      off.push(await through(false));
      on.push(await through(true));
    }
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    out.policy_off_tcp_mbps = round(mean(off), 0);
    out.policy_on_tcp_mbps = round(mean(on), 0);
    out.policy_throughput_cost_pct = round(((mean(off) - mean(on)) / mean(off)) * 100, 1);
  } finally {
    await Promise.allSettled(procs.map((p) => p.kill("SIGKILL", 1000)));
    await lab.destroy();
  }
  return out;
}
