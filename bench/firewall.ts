/**
 * Firewall benchmarks (root, nft, iperf3), in namespaces:
 *  - `set_member_ms`: median time from a lease being granted (tunnel up) to nft confirming the address is in the
 *    app's set, as the gateway measures it (stats.firewall.addLatencyMedianMs), over real tunnels set up one at a time;
 *  - `set_updates_per_s`: 10,000 addresses joining their app and category sets at once (2,000 with --quick),
 *    through the gateway's SetSync (the long-lived `nft -i`), in a namespace of their own;
 *  - `policy_throughput_cost_pct`: one iperf3 TCP stream through one SENG tunnel, alternately without our table and
 *    with the policy table loaded (20 rules before the one that allows iperf3, an unshielded chain, marks), 3 times
 *    each (5 without --quick); (median off − median on) / median off in percent (negative: within noise).
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { SetSync } from "../src/firewall/sets.js";
import { CLI, Lab, waitLine } from "../test/helpers/lab.js";
import { Netns, ROOT, type NsProcess } from "../test/helpers/netns.js";
import { iperf } from "./gateway.js";
import { median, round } from "./util.js";

const SETUP = join(ROOT, "bench/setup-client.ts");
const ID = "b0".repeat(32);

function policyYaml(enabled: boolean): string {
  const filler = Array.from(
    { length: 20 },
    (_, i) => `    - { from: browser, to: 10.${i}.0.0/16, proto: tcp, ports: [443], action: allow }`,
  ).join("\n");
  return [
    "tunnel: { idleTimeoutSeconds: 3600, keepaliveSeconds: 3600 }",
    "limits: { handshakesPerSecondPerSource: 100000, handshakeBurstPerSource: 100000, handshakesPerSecond: 100000 }",
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

    // Throughput with and without the policy table, on one gateway and one tunnel: what differs is only the
    // kernel's work for our table, so it is switched in the kernel between runs (the gateway runs without managing
    // nftables; the table is applied by `seng policy apply` from the same configuration, and the tunnel's address
    // put in its app's set by hand). Restarting the gateway between runs instead moved the figures by +-15%.
    await lab.stopGateway();
    lab.writeConfig({ extraYaml: policyYaml(false) });
    await lab.startGateway();
    const c = lab.startClient(ID);
    procs.push(c);
    const lease = await waitLine<{ address: string }>(c, (o) => o.event === "lease");
    const withPolicy = join(lab.dir, "policy-on.yaml");
    writeFileSync(withPolicy, lab.configText({ ...lab.opts, extraYaml: policyYaml(true) }));
    const through = async (enabled: boolean): Promise<number> => {
      if (enabled) {
        await lab.gw.exec(process.execPath, ["--import", "tsx", CLI, "policy", "apply", withPolicy]);
        await lab.gw.exec("nft", [
          "add",
          "element",
          "inet",
          "seng",
          "seng_app_browser",
          `{ ${lease.address} }`,
        ]);
      } else await lab.gw.exec("nft", ["delete", "table", "inet", "seng"], { check: false });
      return (await iperf(lab, cli, secs, false)).mbps;
    };
    // Alternate, several times, to spread the machine's noise over both; medians.
    const off: number[] = [];
    const on: number[] = [];
    for (let i = 0; i < (quick ? 3 : 5); i++) {
      off.push(await through(false));
      on.push(await through(true));
    }
    if (process.env.SENG_BENCH_DEBUG)
      process.stderr.write(`policy off ${off.join(" ")} / on ${on.join(" ")}\n`);
    out.policy_off_tcp_mbps = round(median(off), 0);
    out.policy_on_tcp_mbps = round(median(on), 0);
    out.policy_throughput_cost_pct = round(((median(off) - median(on)) / median(off)) * 100, 1);
  } finally {
    await Promise.allSettled(procs.map((p) => p.kill("SIGKILL", 1000)));
    await lab.destroy();
  }
  return out;
}
