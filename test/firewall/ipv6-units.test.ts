/**
 * The firewall's IPv6 without the network: rules with IPv6 addresses, prefixes and sets; set membership by the
 * address's family; the LAN-side neighbour/router discovery rules; the gateway chain's ND drop; explain for IPv6.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError, parseConfig } from "../../src/policy/config.js";
import { compilePolicy, canonicalAddress, parseNet, type PolicyInput } from "../../src/firewall/model.js";
import { lanNdRules, renderScript } from "../../src/firewall/nft.js";
import { setRefs } from "../../src/firewall/firewall.js";
import { explain, parseService } from "../../src/firewall/explain.js";

const BASE = `listen: 0.0.0.0:4433
certificate: gw.pem
key: gw.key
tun: { address: 100.64.0.1/32 }
pool: 100.64.128.0/24
apps:
  - name: browser
    subnet: 100.64.1.0/24
    categories: [web]
    identities: [{ mrenclave: "${"b0".repeat(32)}" }]
  - name: mail
    categories: [web]
    identities: [{ mrenclave: "${"a0".repeat(32)}" }]
`;
const cfg = (extra: string) => parseConfig(BASE + extra, "gw.yaml");

/** The model as the gateway compiles it once apps have IPv6 prefixes and the TUN an IPv6 address. */
function model6(policy: PolicyInput["policy"], unshielded = true) {
  return compilePolicy({
    apps: [
      {
        name: "browser",
        mark: 0x5e000001,
        categories: ["web"],
        subnet: "100.64.1.0/24",
        shared: false,
        subnet6: "fd64:1::/64",
      },
      { name: "v6only", mark: 0x5e000002, categories: ["web"], shared: false, subnet6: "fd64:2::/64" },
      {
        name: "pooled",
        mark: 0x5e000003,
        categories: [],
        shared: true,
        subnet6: "fd64:ff::/48",
        shared6: true,
      },
    ],
    tun: "seng0",
    gateway: { address: "100.64.0.1", address6: "fd64::1", dns: ["100.64.0.1", "fd64:0:0::1"] },
    firewall: {
      enabled: true,
      table: "seng",
      marks: true,
      exportSets: ["ip filter", "ip6 filter6", "inet admin"],
      unshielded: unshielded ? { drop: true, interfaces: ["lan0"], allow: [] } : undefined,
    },
    policy,
  });
}

test("IPv6 endpoints: addresses, prefixes and sets render for IPv6 only; errors name file, key, expected", () => {
  const c = cfg(`policy:
  sets: { srv6: ["2001:2:ff::/48", "2001:2:ff:1::10"], mixed: [198.18.2.0/24, "2001:2:ff:2::/64"] }
  rules:
    - { from: browser, to: "2001:2:ff:1::2", proto: tcp, ports: [443], action: allow }
    - { from: category:web, to: "set:srv6", proto: udp, ports: [53], action: allow }
    - { from: "2001:2:ff::/48", to: mail, proto: tcp, ports: [25], action: allow }
    - { from: browser, to: mixed, proto: icmp, action: allow }
`);
  const s = renderScript(c.model);
  const rules = s.split("\n").filter((l) => l.startsWith("add rule inet seng rules "));
  const r0 = rules.filter((l) => l.includes('"policy.rules[0]"'));
  assert.equal(r0.length, 1, "an IPv6 destination renders one IPv6 rule and no IPv4 one");
  assert.match(r0[0]!, /ip6 saddr @seng_app6_browser ip6 daddr 2001:2:ff:1::2 tcp dport 443 counter/);
  assert.match(s, /add set inet seng seng_net6_srv6 \{ type ipv6_addr; flags interval; auto-merge; \}/);
  assert.match(s, /add element inet seng seng_net6_srv6 \{ 2001:2:ff::\/48, 2001:2:ff:1::10 \}/);
  assert.match(s, /ip6 saddr @seng_cat6_web ip6 daddr @seng_net6_srv6 udp dport 53/);
  assert.ok(!/ip saddr @seng_cat_web ip daddr @seng_net_srv6/.test(s), "no IPv4 rule for an IPv6-only set");
  assert.match(s, /ip6 saddr 2001:2:ff::\/48 ip6 daddr @seng_app6_mail tcp dport 25/);
  const r3 = rules.filter((l) => l.includes('"policy.rules[3]"'));
  assert.equal(r3.length, 2, "a set of both families renders one rule per family");
  assert.match(r3[1]!, /ip6 saddr @seng_app6_browser ip6 daddr @seng_net6_mixed meta l4proto ipv6-icmp/);

  const cases: [string, RegExp][] = [
    [
      `policy: { rules: [{ from: browser, to: "2001:2:ff::1/48", action: allow }] }\n`,
      /^gw\.yaml: policy\.rules\[0\]\.to: expected an IPv4 or IPv6 address or CIDR without host bits \(got "2001:2:ff::1\/48"\)$/,
    ],
    [
      `policy: { rules: [{ from: "2001:2:zz::1", to: browser, action: allow }] }\n`,
      /^gw\.yaml: policy\.rules\[0\]\.from: expected an IPv4 or IPv6 address or CIDR/,
    ],
    [
      `policy: { rules: [{ from: browser, to: "fd64::/129", action: allow }] }\n`,
      /^gw\.yaml: policy\.rules\[0\]\.to: expected an IPv4 or IPv6 address or CIDR/,
    ],
    [
      `policy: { sets: { s: ["2001:2::1/32"] } }\n`,
      /^gw\.yaml: policy\.sets\.s\[0\]: expected an IPv4 or IPv6 address or CIDR \(got "2001:2::1\/32"\)$/,
    ],
    [
      `firewall: { unshielded: { drop: true, interfaces: [lan0], allow: [{ to: "fe80::1/10" }] } }\n`,
      /^gw\.yaml: firewall\.unshielded\.allow\[0\]\.to: expected an IPv4 or IPv6 address or CIDR without host bits/,
    ],
  ];
  for (const [extra, re] of cases)
    assert.throws(
      () => cfg(extra),
      (e: unknown) => e instanceof ConfigError && re.test(e.message),
      `${extra} → ${re}`,
    );
  // Host bits are found in every spelling of an IPv6 prefix.
  assert.equal(parseNet("2001:2::/32")?.net, "2001:2::/32");
  assert.equal(parseNet("2001:2:0:0:0:0:0:1/127"), undefined);
  assert.equal(parseNet("::ffff:10.0.0.1/120"), undefined);
  assert.equal(parseNet("::ffff:10.0.0.0/120")?.net, "::ffff:10.0.0.0/120");
  assert.equal(canonicalAddress("FD64:0001:0:0::2"), "fd64:1::2");
  assert.equal(canonicalAddress("FE80:0::1%seng0"), "fe80::1");
  assert.equal(canonicalAddress("100.64.1.2"), "100.64.1.2");
});

test("a lease's IPv6 address joins the IPv6 sets of its app and categories (and only IPv6-capable exported tables)", () => {
  const m = model6(undefined);
  assert.deepEqual(setRefs(m, "browser", "fd64:1::2").sort(), [
    "inet admin seng_app6_browser",
    "inet admin seng_cat6_web",
    "inet seng seng_app6_browser",
    "inet seng seng_cat6_web",
    "ip6 filter6 seng_app6_browser",
    "ip6 filter6 seng_cat6_web",
  ]);
  assert.deepEqual(setRefs(m, "browser", "100.64.1.2").sort(), [
    "inet admin seng_app_browser",
    "inet admin seng_cat_web",
    "inet seng seng_app_browser",
    "inet seng seng_cat_web",
    "ip filter seng_app_browser",
    "ip filter seng_cat_web",
  ]);
  assert.deepEqual(setRefs(m, "browser", "not-an-address"), []);
  assert.deepEqual(setRefs(m, "nobody", "fd64:1::2"), []);
  // The live members are written into the IPv6 sets by a policy apply.
  const s = renderScript(m, {
    members: new Map([
      ["seng_app6_browser", ["fd64:1::2"]],
      ["seng_cat6_web", ["fd64:1::2", "fd64:2::7"]],
    ]),
  });
  assert.match(s, /add element inet seng seng_app6_browser \{ fd64:1::2 \}/);
  assert.match(s, /add element ip6 filter6 seng_cat6_web \{ fd64:1::2, fd64:2::7 \}/);
  assert.ok(!/ip filter seng_app6_/.test(s), "no IPv6 set in an ip (IPv4) table");
  assert.match(s, /add rule inet seng marks ip6 saddr @seng_app6_v6only ct mark set 0x5e000002/);
});

test("LAN side: RAs and redirects dropped, ND for app prefixes and the gateway's TUN address dropped, counted", () => {
  const m = model6({ default: "deny", sets: {}, rules: [] });
  const lan = lanNdRules(m);
  assert.deepEqual(lan, [
    'iifname { "lan0" } icmpv6 type { nd-router-advert, nd-redirect } counter name "seng_nd_drops" drop comment "firewall.unshielded.nd"',
    'iifname { "lan0" } icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,64,64 0xfd64000100000000 counter name "seng_nd_drops" drop comment "firewall.unshielded.nd"',
    'iifname { "lan0" } icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,64,64 0xfd64000200000000 counter name "seng_nd_drops" drop comment "firewall.unshielded.nd"',
    'iifname { "lan0" } icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,64,48 0xfd6400ff0000 counter name "seng_nd_drops" drop comment "firewall.unshielded.nd"',
    'iifname { "lan0" } icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,64,128 0xfd640000000000000000000000000001 counter name "seng_nd_drops" drop comment "firewall.unshielded.nd"',
    'iifname { "lan0" } ip6 saddr fe80::/10 fib daddr type != { local, anycast, multicast } counter name "seng_unshielded_drops" drop comment "firewall.unshielded"',
  ]);
  const s = renderScript(m);
  for (const l of lan) assert.ok(s.includes(`add rule inet seng prerouting ${l}\n`), l);
  // A prefix length that is not a multiple of 8: its first bits, right-aligned (nftables masks them).
  const odd = compilePolicy({
    apps: [{ name: "a", mark: 1, categories: [], shared: false, subnet6: "fd64:1:0:10::/60" }],
    tun: "seng0",
    firewall: {
      enabled: true,
      table: "seng",
      marks: false,
      exportSets: [],
      unshielded: { drop: true, interfaces: ["lan0"], allow: [] },
    },
  });
  assert.ok(
    lanNdRules(odd).some((r) => r.includes("@th,64,60 0xfd6400010000001 ")),
    lanNdRules(odd).join("\n"),
  );
  assert.match(s, /add counter inet seng seng_nd_drops\n/);
  // Without unshielded.drop the LAN side is not ours to filter.
  const off = renderScript(model6(undefined, false));
  assert.ok(!/firewall\.unshielded/.test(off), "no LAN rules without unshielded.drop");
  // From a tunnel: no ND at all, before anything that could accept it (established, dns, to: gateway rules).
  const open = model6({
    default: "allow",
    sets: {},
    rules: [{ from: "any", to: "gateway", proto: "icmp", action: "allow" }],
  });
  const gw = renderScript(open)
    .split("\n")
    .filter((l) => l.startsWith("add rule inet seng gateway "));
  assert.equal(
    gw[0],
    'add rule inet seng gateway icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } counter name "seng_gateway_default" drop comment "gateway.nd"',
  );
  assert.ok(
    gw.includes('add rule inet seng gateway ip6 daddr fd64::1 udp dport 53 counter accept comment "dns"'),
  );
});

test("explain for IPv6 sources and destinations, on the same model", () => {
  const m = model6({
    default: "deny",
    sets: { srv6: ["2001:2:ff::/48"] },
    rules: [
      { from: "browser", to: "set:srv6", proto: "tcp", ports: [443], action: "allow" },
      { from: "category:web", to: "2001:2:ff:1::9", proto: "any", action: "deny" },
      { from: "category:web", to: "any", proto: "icmp", action: "allow" },
      { from: "v6only", to: "gateway", proto: "tcp", ports: [22], action: "allow" },
    ],
  });
  const live = new Map([
    ["fd64:1::2", "browser"],
    ["fd64:2::5", "v6only"],
  ]);
  const ex = (from: string, to: string, service: string, inInterface?: string) =>
    explain(m, { from, to, ...parseService(service), inInterface }, (a) => live.get(canonicalAddress(a)));
  const cases: [string, string, string, string | undefined, string, string][] = [
    ["fd64:1::2", "2001:2:ff:1::2", "tcp/443", undefined, "accept", "policy.rules[0]"],
    ["fd64:1:0:0::2", "2001:2:ff:1::2", "tcp/443", undefined, "accept", "policy.rules[0]"],
    ["fd64:2::5", "2001:2:ff:1::2", "tcp/443", undefined, "drop", "policy.default"],
    ["fd64:1::2", "2001:2:ff:1::9", "tcp/443", undefined, "accept", "policy.rules[0]"],
    ["fd64:2::5", "2001:2:ff:1::9", "icmp", undefined, "drop", "policy.rules[1]"],
    ["fd64:2::5", "2001:db8::1", "icmp", undefined, "accept", "policy.rules[2]"],
    // An address of an app prefix without a live lease is no tunnel: neither side is one.
    ["fd64:1::99", "2001:2:ff:1::2", "tcp/443", undefined, "accept", "none"],
    // The gateway host: its IPv6 TUN address, the keyword with an IPv6 source, multicast.
    ["fd64:2::5", "fd64::1", "tcp/22", undefined, "accept", "policy.rules[3]"],
    ["fd64:1::2", "gateway", "tcp/22", undefined, "drop", "gateway.default"],
    ["fd64:1::2", "gateway", "udp/53", undefined, "accept", "dns"],
    ["fd64:1::2", "ff02::1", "icmp", undefined, "drop", "gateway.default"],
    // The LAN side: global and link-local sources are unshielded.
    ["2001:2:0:10::5", "2001:2:ff:1::2", "tcp/443", "lan0", "drop", "firewall.unshielded"],
    ["fe80::5", "2001:2:ff:1::2", "udp/7000", "lan0", "drop", "firewall.unshielded"],
  ];
  for (const [from, to, svc, inIf, verdict, by] of cases) {
    const e = ex(from, to, svc, inIf);
    assert.deepEqual(
      [e.verdict, e.decidedBy],
      [verdict, by],
      `${from} → ${to} ${svc}\n${e.trace.join("\n")}`,
    );
  }
  assert.match(ex("fd64:1::2", "gateway", "udp/53").trace.join("\n"), /fd64::1 is a DNS server/);
  assert.throws(() => ex("fd64:1::2", "198.18.2.1", "tcp/443"), /different address families/);
});
