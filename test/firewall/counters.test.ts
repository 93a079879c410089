/**
 * Policy rule counters survive a reload (issue 14): each rule counts into a named counter named from its content,
 * which `flush table` keeps, so a rule a reload keeps (even moved) keeps its count, and a removed rule's counter is
 * deleted. Applied with nft in a namespace of its own, as the gateway's reload does (render against the table's
 * current state, one `nft -f` transaction). And the counters are shown by `seng status` and the metrics.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { counterName, parseCounters, renderScript } from "../../src/firewall/nft.js";
import { parseConfig } from "../../src/policy/config.js";
import { Netns } from "../helpers/netns.js";
import { GatewayMetrics } from "../../src/metrics/metrics.js";
import { renderStatus } from "../../src/cli/status.js";

const base = `listen: 0.0.0.0:4433
certificate: gw.pem
key: gw.key
tun: { address: 100.64.0.1/32 }
apps:
  - name: browser
    subnet: 100.64.1.0/24
    identities: [{ mrenclave: "${"b0".repeat(32)}" }]
`;
const WEB = "{ from: browser, to: 198.18.2.10, proto: tcp, ports: [443], action: allow }";
const SSH = "{ from: browser, to: 198.18.2.11, proto: tcp, ports: [22], action: allow }";
const model = (rules: string[]) =>
  parseConfig(`${base}policy: { default: deny, rules: [${rules.join(", ")}] }\n`, "gw.yaml").model;

let ns: Netns;
before(async () => {
  ns = await Netns.create("counters");
});
after(async () => {
  await ns?.delete();
});

async function table(): Promise<{ chains: string[]; sets: string[]; counters: string[] }> {
  const r = await ns.exec("nft", ["-j", "list", "table", "inet", "seng"], { check: false });
  if (r.code !== 0) return { chains: [], sets: [], counters: [] };
  const items = (JSON.parse(r.stdout) as { nftables: Record<string, { name: string }>[] }).nftables;
  const names = (k: string) => items.filter((i) => i[k]).map((i) => i[k]!.name);
  return { chains: names("chain"), sets: names("set"), counters: names("counter") };
}

/** What the gateway's apply does: render against the live table, one transaction. */
async function apply(rules: string[]): Promise<Record<string, number>> {
  const script = renderScript(model(rules), { existing: await table() });
  await ns.exec("sh", ["-c", `nft -f - <<'EOF'\n${script}EOF`]);
  return parseCounters((await ns.exec("nft", ["-j", "list", "table", "inet", "seng"])).stdout);
}

test("a reload keeps each kept rule's count (also when it moves) and deletes a removed rule's counter", async () => {
  const webCounter = counterName(model([WEB]).rules[0]!);
  assert.equal(
    counterName(model([SSH, WEB]).rules[1]!),
    webCounter,
    "named from the content, not the position",
  );
  // Packets counted before: the counter as the kernel would have it after 7 packets matched the rule.
  await ns.exec("nft", [
    "add table inet seng; add counter inet seng " + webCounter + " { packets 7 bytes 700 }",
  ]);
  let c = await apply([WEB]);
  assert.equal(c["policy.rules[0]"], 7);
  // Reload: a rule added before it; the web rule is now policy.rules[1], with its count.
  c = await apply([SSH, WEB]);
  assert.equal(c["policy.rules[1]"], 7, JSON.stringify(c));
  assert.equal(c["policy.rules[0]"], 0);
  // Reload without the web rule: its counter goes with it.
  await apply([SSH]);
  assert.ok(!(await table()).counters.includes(webCounter), "the removed rule's counter is deleted");
});

test("status and metrics show the firewall counters docs/GATEWAY.md promises", async () => {
  const counters = {
    "policy.rules[0]": 12,
    "policy.rules[1]": 0,
    seng_policy_default: 3,
    seng_unshielded_drops: 5,
  };
  const stats = {
    tunnels: 0,
    halfOpen: 0,
    handshakes: {},
    drops: {},
    apps: {},
    tunnelList: [],
    firewall: { enabled: true, updates: 4, batches: 2, errors: 0, resyncs: 0, addLatencyMedianMs: 1 },
  };
  const m = new GatewayMetrics(
    { stats: () => stats as never, firewallCounters: () => counters },
    { processMetrics: false },
  );
  const text = (await m.render()).body.split("\n");
  for (const line of [
    'seng_policy_rule_packets_total{rule="policy.rules[0]"} 12',
    'seng_policy_rule_packets_total{rule="policy.default"} 3',
    'seng_policy_rule_packets_total{rule="firewall.unshielded"} 5',
  ])
    assert.ok(text.includes(line), line);
  const view = {
    gateway: { listen: "0.0.0.0:4433", port: 4433, tun: "seng0", startedAt: 0, uptimeSeconds: 1 },
    apps: [],
    tunnels: [],
    halfOpen: 0,
    handshakes: {},
    drops: {},
    firewall: { ...stats.firewall, counters },
    recent: [],
  };
  const out = renderStatus(view, 1000);
  assert.match(
    out,
    /^FIREWALL {4}packets: policy\.rules\[0\] 12, policy\.rules\[1\] 0, default 3, unshielded dropped 5$/m,
  );
  assert.match(out, /set updates 4, nft errors 0/);
});
