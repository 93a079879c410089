/** The `cluster:` section of the gateway configuration (src/policy/cluster.ts): defaults, paths, and clear errors. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError, parseConfig } from "../../src/policy/config.js";

const base = `
listen: 198.18.1.1:4433
certificate: gw.pem
key: gw.key
tun: { name: seng0, address: 100.64.0.1/32, mtu: 1400 }
apps:
  - name: browser
    subnet: 100.64.1.0/24
    identities: [{ mrenclave: ${"ab".repeat(32)} }]
`;

test("cluster config: absent means SQLite; defaults and resolved TLS paths when present", () => {
  assert.equal(parseConfig(base, "/etc/seng/g.yaml").cluster, undefined);
  const c = parseConfig(
    base +
      "cluster:\n  gatewayId: gw1\n  etcd: { endpoints: [https://10.0.0.5:2379], ca: ca.pem, cert: c.pem, key: c.key }\n",
    "/etc/seng/g.yaml",
  ).cluster!;
  assert.deepEqual(
    {
      ttl: c.ttl,
      margin: c.fenceMarginMs,
      coolDown: c.coolDown,
      stale: c.staleAfterMs,
      prefix: c.etcd.prefix,
    },
    { ttl: 10, margin: 1000, coolDown: 60, stale: 3000, prefix: "/seng/" },
  );
  assert.equal(c.etcd.ca, "/etc/seng/ca.pem");
  assert.equal(c.etcd.key, "/etc/seng/c.key");
});

test("cluster config: each mistake names the file, the key and what was expected", () => {
  const cases: [string, RegExp][] = [
    [
      "  gatewayId: 'gw 1'\n  etcd: { endpoints: [http://10.0.0.5:2379] }",
      /g\.yaml: cluster\.gatewayId: expected 1-64 letters/,
    ],
    [
      "  gatewayId: gw1\n  etcd: { endpoints: [] }",
      /cluster\.etcd\.endpoints: expected at least one etcd client URL/,
    ],
    [
      "  gatewayId: gw1\n  etcd: { endpoints: [10.0.0.5:2379] }",
      /cluster\.etcd\.endpoints\[0\]: expected an etcd client URL/,
    ],
    [
      "  gatewayId: gw1\n  etcd: { endpoints: [https://a:2379], cert: c.pem }",
      /cluster\.etcd\.key: expected both cert and key/,
    ],
    [
      "  gatewayId: gw1\n  etcd: { endpoints: [http://a:2379], ca: ca.pem }",
      /cluster\.etcd\.endpoints: expected https:\/\/ endpoints/,
    ],
    [
      "  gatewayId: gw1\n  etcd: { endpoints: [http://a:2379] }\n  ttl: 3\n  fenceMarginMs: 2500",
      /cluster\.fenceMarginMs: expected less than 2\/3 of the ttl/,
    ],
    ["  gatewayId: gw1\n  etcd: { endpoints: [http://a:2379] }\n  ttl: 1", /cluster\.ttl/],
    ["  gatewayId: gw1\n  etcd: { endpoints: [http://a:2379] }\n  etcdd: 1", /cluster: .*etcdd/],
  ];
  for (const [yaml, re] of cases)
    assert.throws(
      () => parseConfig(`${base}cluster:\n${yaml}\n`, "g.yaml"),
      (e: Error) => {
        assert.ok(e instanceof ConfigError, e.message);
        assert.match(e.message, re);
        return true;
      },
    );
});

test("cluster config: IPv6 apps and workers are refused with a cluster (the etcd store leases IPv4 only)", () => {
  const cluster = "cluster:\n  gatewayId: gw1\n  etcd: { endpoints: [http://127.0.0.1:2379] }\n";
  const six = base
    .replace("address: 100.64.0.1/32,", "address: 100.64.0.1/32, address6: fd64::1/128,")
    .replace("subnet: 100.64.1.0/24", "subnet: 100.64.1.0/24\n    subnet6: fd64:1::/64");
  assert.ok(parseConfig(six, "g.yaml").apps[0]!.subnet6, "IPv6 without a cluster is fine");
  assert.throws(
    () => parseConfig(six + cluster, "g.yaml"),
    (e: unknown) => e instanceof ConfigError && /^g\.yaml: cluster: expected IPv4-only apps/.test(e.message),
  );
  assert.throws(
    () => parseConfig(base + cluster + "workers: 2\n", "g.yaml"),
    (e: unknown) =>
      e instanceof ConfigError && /^g\.yaml: workers: expected 1 with a cluster section/.test(e.message),
  );
});
