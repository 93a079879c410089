/** Firewall building blocks without the network: config errors, the compiled model and its nft text, explain, audit. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, parseConfig } from "../../src/policy/config.js";
import { explain, parseService } from "../../src/firewall/explain.js";
import { counterName, renderScript } from "../../src/firewall/nft.js";
import { LeaseStore } from "../../src/gateway/leases.js";
import { AuditLog } from "../../src/gateway/audit.js";
import { ipToInt } from "../../src/packet/ip.js";

const BASE = `listen: 0.0.0.0:4433
certificate: gw.pem
key: gw.key
tun: { address: 100.64.0.1/32 }
`;
const APPS = `apps:
  - name: browser
    subnet: 100.64.1.0/24
    categories: [web]
    identities: [{ mrenclave: "${"b0".repeat(32)}" }]
  - name: mail
    categories: [web]
    identities: [{ mrenclave: "${"a0".repeat(32)}" }]
`;

const cfg = (extra: string, apps = APPS) => parseConfig(BASE + apps + extra, "gw.yaml");

test("config errors name the file, the key path and what was expected", () => {
  const cases: [string, RegExp][] = [
    [
      "",
      /gw\.yaml: apps\[1\]\.subnet: expected a subnet, or a top-level pool for apps without one \(for IPv6: subnet6 or pool6\)/,
    ],
    ["pool: 100.64.1.128/25\n", /gw\.yaml: pool: overlaps apps\[0\]\.subnet \(100\.64\.1\.0\/24\)/],
    [
      "pool: 100.64.128.0/24\npolicy: { rules: [{ from: nobody, to: any, action: allow }] }\n",
      /gw\.yaml: policy\.rules\[0\]\.from: no app, category or set named nobody/,
    ],
    [
      "pool: 100.64.128.0/24\npolicy: { rules: [{ from: browser, proto: icmp, ports: [1], action: allow }] }\n",
      /gw\.yaml: policy\.rules\[0\]\.ports: ports need proto tcp or udp/,
    ],
    [
      "pool: 100.64.128.0/24\npolicy: { rules: [{ from: browser, proto: tcp, ports: [70000], action: allow }] }\n",
      /gw\.yaml: policy\.rules\[0\]\.ports\[0\]/,
    ],
    [
      "pool: 100.64.128.0/24\npolicy: { rules: [{ from: 10.0.0.0/8, to: 1.2.3.4, action: allow }] }\n",
      /gw\.yaml: policy\.rules\[0\]: from or to must name an app or category/,
    ],
    [
      "pool: 100.64.128.0/24\npolicy: { sets: { s: [10.0.0.1/8] } }\n",
      /gw\.yaml: policy\.sets\.s\[0\]: expected an IPv4 or IPv6 address or CIDR/,
    ],
    [
      "pool: 100.64.128.0/24\npolicy: { rules: [{ from: browser, action: maybe }] }\n",
      /gw\.yaml: policy\.rules\[0\]\.action: /,
    ],
    [
      "pool: 100.64.128.0/24\nfirewall: { unshielded: { drop: true, interfaces: [] } }\n",
      /gw\.yaml: firewall\.unshielded\.interfaces: expected at least one LAN interface/,
    ],
    [
      "pool: 100.64.128.0/24\nfirewall: { table: 9seng }\n",
      /gw\.yaml: firewall\.table: expected a table name/,
    ],
    [
      "pool: 100.64.128.0/24\nfirewall: { table: sengmark7 }\n",
      /gw\.yaml: firewall\.table: sengmark… is reserved/,
    ],
  ];
  for (const [extra, re] of cases)
    assert.throws(
      () => cfg(extra),
      (e: Error) => e instanceof ConfigError && re.test(e.message),
      extra,
    );
});

test("pool mode: apps without a subnet lease from one shared pool; marks and categories", () => {
  const c = cfg("pool: 100.64.128.0/24\n");
  const mail = c.apps.find((a) => a.name === "mail")!;
  assert.equal(mail.subnet, "100.64.128.0/24");
  assert.equal(mail.shared, true);
  assert.equal(mail.mark, 0x5e000002);
  assert.deepEqual(c.model.categories, { web: ["browser", "mail"] });
  assert.equal(c.model.filtering, false, "no policy section: not filtered");
});

test("unshielded: naming the LAN interfaces turns the drop on; drop: false turns it off", () => {
  const on = cfg("pool: 100.64.128.0/24\nfirewall: { unshielded: { interfaces: [lan0] } }\n");
  assert.deepEqual(on.model.unshielded, { interfaces: ["lan0"], allow: [] });
  const off = cfg("pool: 100.64.128.0/24\nfirewall: { unshielded: { drop: false, interfaces: [lan0] } }\n");
  assert.equal(off.model.unshielded, null);
});

test("compiled rules: one nft rule per family, our table only, default counted", () => {
  const c = cfg(`pool: 100.64.128.0/24
policy:
  sets: { servers: [198.18.2.2, "2001:db8::/32"] }
  rules:
    - { from: browser, to: set:servers, proto: tcp, ports: [443, "8000-8080"], action: allow }
    - { from: category:web, to: 198.18.2.0/24, proto: icmp, action: allow }
`);
  const s = renderScript(c.model);
  assert.match(s, /^add table inet seng\nflush table inet seng\n/);
  assert.ok(!/flush ruleset/.test(s));
  for (const line of s.trim().split("\n")) assert.match(line, / inet seng\b/, line);
  assert.match(
    s,
    /ip saddr @seng_app_browser ip daddr @seng_net_servers tcp dport \{ 443, 8000-8080 \} counter name "seng_c_[0-9a-f]{16}" accept comment "policy.rules\[0\]"/,
  );
  assert.match(s, /ip6 saddr @seng_app6_browser ip6 daddr @seng_net6_servers/);
  assert.match(
    s,
    /ip saddr @seng_cat_web ip daddr 198\.18\.2\.0\/24 meta l4proto icmp counter name "seng_c_[0-9a-f]{16}" accept/,
  );
  assert.ok(!/ip6 saddr @seng_cat6_web ip6 daddr/.test(s), "no IPv6 rule for an IPv4-only destination");
  assert.match(s, /counter name "seng_policy_default" drop comment "policy.default"\n$/);
  // A re-apply deletes what the table had and keeps app sets (with their live members) unless told the members.
  const again = renderScript(c.model, {
    existing: { chains: ["forward", "old"], sets: ["seng_app_gone", "seng_app_mail"] },
  });
  assert.match(again, /delete chain inet seng old/);
  assert.match(again, /delete set inet seng seng_app_gone/);
  assert.ok(!/delete set inet seng seng_app_mail/.test(again));
});

test("explain: first match wins, the default decides the rest, unshielded and non-tunnel traffic", () => {
  const c = cfg(`pool: 100.64.128.0/24
firewall: { unshielded: { drop: true, interfaces: [lan0], allow: [{ to: 10.0.0.53, proto: udp, ports: [53] }] } }
policy:
  rules:
    - { from: browser, to: 198.18.2.2, proto: tcp, ports: [443], action: allow }
    - { from: category:web, to: 198.18.2.2, proto: tcp, action: deny }
    - { from: mail, to: any, proto: tcp, ports: [25], action: allow }
    - { from: 198.18.2.0/24, to: mail, proto: tcp, ports: [8080], action: allow }
`);
  const live = new Map([
    ["100.64.1.5", "browser"],
    ["100.64.128.9", "mail"],
  ]);
  const ex = (from: string, to: string, svc: string, inIf?: string) =>
    explain(c.model, { from, to, ...parseService(svc), inInterface: inIf }, (a) => live.get(a));
  const table: [string, string, string, string | undefined, string, string][] = [
    ["browser", "198.18.2.2", "tcp/443", undefined, "accept", "policy.rules[0]"],
    ["100.64.1.5", "198.18.2.2", "tcp/80", undefined, "drop", "policy.rules[1]"],
    ["100.64.128.9", "198.18.2.2", "tcp/25", undefined, "drop", "policy.rules[1]"],
    ["100.64.128.9", "9.9.9.9", "tcp/25", undefined, "accept", "policy.rules[2]"],
    ["100.64.128.9", "9.9.9.9", "udp/53", undefined, "drop", "policy.default"],
    ["198.18.2.7", "100.64.128.9", "tcp/8080", undefined, "accept", "policy.rules[3]"],
    ["198.18.2.7", "100.64.1.5", "tcp/8080", undefined, "drop", "policy.default"],
    ["10.1.1.1", "9.9.9.9", "tcp/80", "lan0", "drop", "firewall.unshielded"],
    ["10.1.1.1", "10.0.0.53", "udp/53", "lan0", "accept", "firewall.unshielded.allow[0]"],
    // The allow list is for infrastructure: it never opens a way from the LAN into a tunnel.
    ["10.1.1.1", "100.64.1.5", "udp/53", "lan0", "drop", "firewall.unshielded"],
    ["10.1.1.1", "9.9.9.9", "tcp/80", "wan0", "accept", "none"],
    // An address of the pool with no live tunnel is no app: rules naming mail do not match it.
    ["100.64.128.10", "9.9.9.9", "tcp/25", undefined, "accept", "none"],
  ];
  for (const [from, to, svc, inIf, verdict, by] of table) {
    const r = ex(from, to, svc, inIf);
    assert.deepEqual(
      [r.verdict, r.decidedBy],
      [verdict, by],
      `${from} → ${to} ${svc}: ${r.trace.join("; ")}`,
    );
  }
  assert.throws(() => parseService("tcp/0"), /port out of range/);
  assert.throws(() => parseService("sctp/1"), /expected tcp\/<port>/);
});

test("audit: who held an address at a time, after address reuse by another app and key, and after reopening", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-audit-"));
  try {
    const db = join(dir, "seng.db");
    const apps = [
      { name: "a", subnet: "100.64.9.0/30" },
      { name: "b", subnet: "100.64.9.0/30" }, // a shared pool: one address for both
    ];
    let s = new LeaseStore(db, apps);
    const l1 = s.acquire("a", "key-a", "m-a", "198.18.1.2:1000", 1000, 2000)!;
    s.acquire("a", "key-a", "m-a", "198.18.1.2:2000", 1500, 2500); // renewal from a new outer port
    s.release(l1.id, 3000, "revoked");
    const x = s.acquire("b", "key-b", "m-b", "198.18.3.2:1000", 4000, 5000)!;
    const y = s.acquire("b", "key-c", "m-b", "198.18.3.2:1001", 4000, 5000)!;
    assert.ok([x.address, y.address].includes(l1.address), "the address was reused");
    const reused = x.address === l1.address ? x : y;
    s.close(); // as after a kill -9: nothing else is written
    s = new LeaseStore(db, apps);
    s.close();
    const { audit, close } = AuditLog.openReadOnly(db);
    const addr = `100.64.9.${l1.address - ipToInt("100.64.9.0")}`;
    const at = (t: number) => audit.who(addr, t);
    assert.equal(at(500).holder, null);
    assert.equal(at(1200).holder?.app, "a");
    assert.equal(at(1200).holder?.outer, "198.18.1.2:1000");
    assert.equal(at(1700).holder?.outer, "198.18.1.2:2000", "the renewal moved the outer address");
    assert.equal(at(2999).holder?.releaseReason, "revoked");
    assert.equal(at(3500).holder, null);
    assert.equal(at(3500).previous?.app, "a");
    const later = at(4500).holder!;
    assert.equal(later.app, "b");
    assert.equal(later.keyFp, reused === x ? "key-b" : "key-c");
    const rows = [...audit.since(0)].map((r) => r.event);
    assert.deepEqual(rows, ["grant", "renew", "release", "grant", "grant"]);
    close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the unshielded allow list is rendered for non-tunnel destinations only", () => {
  const c = cfg(`pool: 100.64.128.0/24
firewall: { unshielded: { drop: true, interfaces: [lan0], allow: [{ proto: udp, ports: [53] }] } }
`);
  const allow = renderScript(c.model)
    .split("\n")
    .filter((l) => l.includes("firewall.unshielded.allow[0]"));
  assert.ok(allow.length > 0);
  for (const l of allow) assert.match(l, /oifname != "seng0" .*accept/, l);
});

test("reload: settings read only at start are refused, not silently ignored", async () => {
  const { immutableChange } = await import("../../src/gateway/reload.js");
  const a = cfg("pool: 100.64.128.0/24\n");
  const cases: [string, RegExp][] = [
    [
      "pool: 100.64.128.0/24\nlimits: { handshakesPerSecondPerSource: 7 }\n",
      /gw\.yaml: limits: cannot change on reload/,
    ],
    [
      "pool: 100.64.128.0/24\nadmin: { socket: /tmp/other.sock }\n",
      /gw\.yaml: admin: cannot change on reload/,
    ],
    ["pool: 100.64.128.0/24\nfirewall: { table: other }\n", /gw\.yaml: firewall\.table: cannot change/],
    ["pool: 100.64.128.0/24\nfirewall: { enabled: false }\n", /gw\.yaml: firewall\.enabled: cannot change/],
  ];
  for (const [extra, re] of cases) assert.match(String(immutableChange(a, cfg(extra))), re);
  assert.equal(immutableChange(a, cfg("pool: 100.64.128.0/24\npolicy: { default: allow }\n")), undefined);
});

test("leases: an app re-added with another subnet leases from the new one; live leases of others are never reused", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-leases-"));
  try {
    const store = new LeaseStore(
      join(dir, "l.db"),
      [{ name: "x", subnet: "100.64.1.0/24" }],
      [ipToInt("100.64.0.1")],
    );
    const now = Date.now();
    const first = store.acquire("x", "k1", "m", "o", now, now + 60_000)!;
    assert.equal(first.address, ipToInt("100.64.1.1"));
    // x is removed, and later comes back with another subnet; y now owns part of x's old range.
    store.addApps([
      { name: "x", subnet: "100.64.9.0/24" },
      { name: "y", subnet: "100.64.1.0/25" },
    ]);
    const again = store.acquire("x", "k2", "m", "o", now, now + 60_000)!;
    assert.equal(again.address, ipToInt("100.64.9.1"));
    // 100.64.1.1 is still x's live lease (grace period): y must not be given it.
    const y = store.acquire("y", "k3", "m", "o", now, now + 60_000)!;
    assert.equal(y.address, ipToInt("100.64.1.2"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("exported sets of removed apps and categories, or of tables no longer exported, are flushed (not deleted)", () => {
  const c = cfg(`pool: 100.64.128.0/24
firewall: { exportSets: ["ip filter"] }
`);
  const script = renderScript(c.model, {
    exported: new Map([
      ["ip filter", ["seng_app_browser", "seng_app_gone", "seng_cat_old"]],
      ["inet other", ["seng_app_browser"]],
    ]),
  });
  const flushes = script.split("\n").filter((l) => /^flush set (ip filter|inet other) /.test(l));
  assert.deepEqual(flushes.sort(), [
    "flush set inet other seng_app_browser",
    "flush set ip filter seng_app_gone",
    "flush set ip filter seng_cat_old",
  ]);
  assert.doesNotMatch(script, /delete set ip filter|delete set inet other/);
});

test("the gateway host: to: gateway rules go to the gateway chain only, before NAT; default drop, counted; dns; explain agrees", () => {
  const c = parseConfig(
    BASE.replace("tun: { address: 100.64.0.1/32 }", "tun: { address: 100.64.0.1/32 }\ndns: [100.64.0.1]") +
      APPS +
      `pool: 100.64.128.0/24
policy:
  default: allow
  rules:
    - { from: browser, to: gateway, proto: tcp, ports: [9443], action: allow }
    - { from: category:web, to: gateway, proto: icmp, action: allow }
    - { from: category:web, to: any, proto: tcp, action: allow }
`,
    "gw.yaml",
  );
  const s = renderScript(c.model);
  // Hooked before DNAT (dstnat is -100), so a redirected packet to the host is still judged as one to the host.
  assert.match(
    s,
    /add chain inet seng prerouting \{ type filter hook prerouting priority dstnat - 1; policy accept; \}/,
  );
  assert.match(
    s,
    /add rule inet seng prerouting iifname "seng0" fib daddr type \{ local, anycast, broadcast, multicast \} jump gateway\n/,
  );
  // Judged once: no input-hooked chain, and one way into the gateway chain.
  // The input hook sees only what the host's own DNAT/REDIRECT turned toward it: the rest was judged before NAT.
  assert.match(s, /add rule inet seng input iifname "seng0" ct status dnat jump gateway\n/);
  assert.equal(s.match(/jump gateway/g)?.length, 2);
  const gw = s.split("\n").filter((l) => l.startsWith("add rule inet seng gateway "));
  // Named counters (kept across reloads), as in the forward chain.
  const [r0, r1] = c.model.rules.map((r) => `counter name "${counterName(r)}"`);
  assert.deepEqual(
    gw.map((l) => l.slice("add rule inet seng gateway ".length)),
    [
      // No neighbour/router discovery from a tunnel, whatever the rules say (docs/POLICY.md).
      'icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } counter name "seng_gateway_default" drop comment "gateway.nd"',
      "ct state established,related accept",
      'ip daddr 100.64.0.1 udp dport 53 counter accept comment "dns"',
      'ip daddr 100.64.0.1 tcp dport 53 counter accept comment "dns"',
      `ip saddr @seng_app_browser tcp dport 9443 ${r0} accept comment "policy.rules[0]"`,
      `ip6 saddr @seng_app6_browser tcp dport 9443 ${r0} accept comment "policy.rules[0]"`,
      `ip saddr @seng_cat_web meta l4proto icmp ${r1} accept comment "policy.rules[1]"`,
      `ip6 saddr @seng_cat6_web meta l4proto ipv6-icmp ${r1} accept comment "policy.rules[1]"`,
      // policy.default is allow for forwarded traffic; the gateway host is still default deny.
      'counter name "seng_gateway_default" drop comment "gateway.default"',
    ],
  );
  const fwd = s.split("\n").filter((l) => l.startsWith("add rule inet seng rules "));
  assert.ok(
    !fwd.some((l) => /rules\[[01]\]/.test(l)),
    `to: gateway rules are not forward rules:\n${fwd.join("\n")}`,
  );
  // Without a policy section the gateway host is filtered all the same.
  const bare = renderScript(cfg("pool: 100.64.128.0/24\n").model);
  assert.match(bare, /add rule inet seng gateway counter name "seng_gateway_default" drop/);
  assert.ok(!/ dport 53 /.test(bare), "no DNS rule when the leases do not name the gateway as DNS server");

  const live = new Map([
    ["100.64.1.5", "browser"],
    ["100.64.128.9", "mail"],
  ]);
  const local = new Set(["198.18.2.1"]);
  const table: [string, string, string, string, string][] = [
    ["100.64.1.5", "198.18.2.1", "tcp/9443", "accept", "policy.rules[0]"],
    ["100.64.1.5", "gateway", "tcp/9443", "accept", "policy.rules[0]"],
    ["100.64.128.9", "198.18.2.1", "tcp/9443", "drop", "gateway.default"],
    // `to: any` does not reach the gateway host: rules[2] would allow it if it were forwarded.
    ["100.64.1.5", "198.18.2.1", "tcp/22", "drop", "gateway.default"],
    ["100.64.1.5", "198.18.2.9", "tcp/22", "accept", "policy.rules[2]"],
    ["100.64.128.9", "100.64.0.1", "icmp", "accept", "policy.rules[1]"],
    ["100.64.128.9", "100.64.0.1", "udp/53", "accept", "dns"],
    ["100.64.128.9", "198.18.2.1", "udp/53", "drop", "gateway.default"],
    // Not from a tunnel (the LAN, say) to the gateway host, or from the gateway host: not SENG's table.
    ["10.1.1.1", "198.18.2.1", "tcp/22", "accept", "none"],
    ["198.18.2.1", "100.64.1.5", "tcp/22", "accept", "none"],
  ];
  for (const [from, to, svc, verdict, by] of table) {
    const r = explain(
      c.model,
      { from, to, ...parseService(svc) },
      (a) => live.get(a),
      (a) => local.has(a),
    );
    assert.deepEqual(
      [r.verdict, r.decidedBy],
      [verdict, by],
      `${from} → ${to} ${svc}: ${r.trace.join("; ")}`,
    );
  }

  const bad: [string, RegExp][] = [
    [
      "policy: { rules: [{ from: gateway, to: browser, action: allow }] }\n",
      /gw\.yaml: policy\.rules\[0\]\.from: gateway is only a destination/,
    ],
    [
      "policy: { sets: { gateway: [10.0.0.1] } }\n",
      /gw\.yaml: policy\.sets\.gateway: gateway is reserved for the gateway host/,
    ],
    [
      "firewall: { unshielded: { drop: true, interfaces: [lan0], allow: [{ to: gateway }] } }\n",
      /gw\.yaml: firewall\.unshielded\.allow\[0\]\.to: expected an address, CIDR or set/,
    ],
  ];
  for (const [extra, re] of bad)
    assert.throws(
      () => cfg("pool: 100.64.128.0/24\n" + extra),
      (e: Error) => e instanceof ConfigError && re.test(e.message),
      extra,
    );
  assert.throws(
    () => cfg("pool: 100.64.128.0/24\n", APPS.replace("name: mail", "name: gateway")),
    (e: Error) =>
      e instanceof ConfigError && /gw\.yaml: apps\[1\]\.name: gateway is reserved/.test(e.message),
  );
});
