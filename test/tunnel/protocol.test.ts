/** Wire protocol v1 and v2: control messages round-trip, and everything malformed is a ProtocolError. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CLOSE_REASONS,
  decodeControl,
  encodeControl,
  isControl,
  MSG,
  ProtocolError,
  ALPN_OFFER,
  versionFromAlpn,
} from "../../src/tunnel/protocol.js";

const lease = {
  address: "100.64.1.2",
  prefix: 24,
  gateway: "100.64.0.1",
  mtu: 1400,
  dns: ["100.64.0.1"],
  lifetime: 300,
  app: "browser",
};

test("control messages round-trip and are told apart from IP packets", () => {
  for (const m of [
    { type: MSG.LEASE, lease },
    { type: MSG.LEASE_ACK, address: "100.64.1.2" },
    { type: MSG.KEEPALIVE },
    ...CLOSE_REASONS.map((reason) => ({ type: MSG.CLOSE, reason, message: `because ${reason}` })),
  ] as const) {
    const rec = encodeControl(m);
    assert.equal(isControl(rec), true);
    assert.deepEqual(decodeControl(rec), m);
  }
  assert.equal(encodeControl({ type: MSG.KEEPALIVE }).length, 3);
  const ipv4 = Buffer.from("4500001c000000004001000064400102c6120202", "hex");
  const ipv6 = Buffer.from("6000000000000000", "hex");
  assert.equal(isControl(ipv4), false);
  assert.equal(isControl(ipv6), false);
  assert.equal(isControl(Buffer.alloc(0)), false);
});

test("malformed control messages are ProtocolErrors with a reason", () => {
  const bad: [Buffer, RegExp][] = [
    [Buffer.from([0, 1]), /not a control/],
    [Buffer.from([0, 2, 3]), /protocol version 2/],
    [Buffer.from([0, 1, 99, 0x7b, 0x7d]), /unknown control message type 99/],
    [Buffer.from([0, 1, MSG.LEASE, 0x7b]), /not JSON/],
    [Buffer.concat([Buffer.from([0, 1, MSG.LEASE]), Buffer.from("[]")]), /must be an object/],
    [
      encodeControl({ type: MSG.LEASE, lease: { ...lease, address: "300.1.1.1" } }),
      /address must be an IPv4/,
    ],
    [encodeControl({ type: MSG.LEASE, lease: { ...lease, mtu: 10 } }), /mtu/],
    [encodeControl({ type: MSG.LEASE, lease: { ...lease, dns: ["x"] } }), /dns/],
    [
      Buffer.concat([Buffer.from([0, 1, MSG.CLOSE]), Buffer.from('{"reason":"whatever"}')]),
      /reason must be one of/,
    ],
    [Buffer.concat([Buffer.from([0, 1, MSG.LEASE_ACK]), Buffer.from("{}")]), /address/],
  ];
  for (const [rec, re] of bad)
    assert.throws(
      () => decodeControl(rec),
      (e: unknown) => e instanceof ProtocolError && re.test(e.message),
      String(re),
    );
});

test("random control bodies never throw anything but ProtocolError", () => {
  let seed = 7;
  const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
  for (let i = 0; i < 3000; i++) {
    const b = Buffer.alloc(rnd(40));
    for (let k = 0; k < b.length; k++) b[k] = rnd(256);
    if (b.length) b[0] = 0;
    if (b.length > 1) b[1] = 1 + (i & 1);
    try {
      decodeControl(b, (1 + (i & 1)) as 1 | 2);
    } catch (e) {
      assert.ok(e instanceof ProtocolError, String(e));
    }
  }
});

const dual = {
  address: "100.64.1.2",
  prefix: 24,
  gateway: "100.64.0.1",
  address6: "fd64:1::2",
  prefix6: 64,
  gateway6: "fd64:1::1",
  mtu: 1400,
  dns: ["100.64.0.1", "fd64:1::1"],
  lifetime: 300,
  app: "browser",
};
const only6 = {
  address6: "fd64:1::2",
  prefix6: 64,
  gateway6: "fd64:1::1",
  mtu: 1280,
  dns: ["fd64:1::1"],
  lifetime: 300,
  app: "v6",
};

test("version 2: dual-stack and IPv6-only leases and acks round-trip; the version byte is the session's", () => {
  for (const m of [
    { type: MSG.LEASE, lease: dual },
    { type: MSG.LEASE, lease: only6 },
    { type: MSG.LEASE, lease },
    { type: MSG.LEASE_ACK, address: "100.64.1.2", address6: "fd64:1::2" },
    { type: MSG.LEASE_ACK, address6: "fd64:1::2" },
    { type: MSG.LEASE_ACK, address: "100.64.1.2" },
    { type: MSG.KEEPALIVE },
    { type: MSG.CLOSE, reason: "revoked", message: "m" },
  ] as const) {
    const rec = encodeControl(m, 2);
    assert.equal(rec[1], 2);
    assert.deepEqual(decodeControl(rec, 2), m);
    assert.throws(() => decodeControl(rec, 1), /protocol version 2 \(this session speaks 1\)/);
  }
  assert.throws(() => decodeControl(encodeControl({ type: MSG.KEEPALIVE }, 1), 2), /protocol version 1/);
});

test("version 1 encoding of a dual-stack lease is what a version-1 runtime accepts: IPv4 fields, IPv4 DNS", () => {
  const rec = encodeControl({ type: MSG.LEASE, lease: dual }, 1);
  assert.equal(rec[1], 1);
  const body = JSON.parse(rec.toString("utf8", 3)) as { lease: Record<string, unknown> };
  assert.deepEqual(Object.keys(body.lease).sort(), [
    "address",
    "app",
    "dns",
    "gateway",
    "lifetime",
    "mtu",
    "prefix",
  ]);
  assert.deepEqual(decodeControl(rec, 1), { type: MSG.LEASE, lease });
  const ack = encodeControl({ type: MSG.LEASE_ACK, address: "100.64.1.2", address6: "fd64:1::2" }, 1);
  assert.deepEqual(JSON.parse(ack.toString("utf8", 3)), { address: "100.64.1.2" });
});

test("version 2: malformed leases and acks are ProtocolErrors naming the field", () => {
  const v2 = (body: unknown, type: number = MSG.LEASE) =>
    Buffer.concat([Buffer.from([0, 2, type]), Buffer.from(JSON.stringify(body))]);
  const bad: [Buffer, RegExp][] = [
    [v2({ lease: { ...only6, address6: "fe80::1%eth0" } }), /address6 must be a unicast IPv6/],
    [v2({ lease: { ...only6, address6: "::ffff:100.64.1.2" } }), /address6/],
    [v2({ lease: { ...only6, address6: "::ffff:6440:102" } }), /address6/], // mapped IPv4
    [v2({ lease: { ...only6, address6: "::" } }), /address6/],
    [v2({ lease: { ...only6, address6: "ff02::1" } }), /address6/],
    [v2({ lease: { ...only6, address6: "FD64:1::2" } }), /address6/], // not canonical
    [v2({ lease: { ...only6, address6: "fd64:1:0:0:0:0:0:2" } }), /address6/],
    [v2({ lease: { ...only6, address6: "fd64::1::2" } }), /address6/],
    [v2({ lease: { ...only6, gateway6: "100.64.0.1" } }), /gateway6/],
    [v2({ lease: { ...only6, prefix6: 129 } }), /prefix6/],
    [v2({ lease: { ...only6, mtu: 1279 } }), /mtu/],
    [v2({ lease: { ...only6, prefix6: undefined } }), /all present or all absent \(IPv6\)/],
    [v2({ lease: { ...dual, gateway: undefined } }), /all present or all absent \(IPv4\)/],
    [v2({ lease: { mtu: 1400, dns: [], lifetime: 1, app: "a" } }), /needs an IPv4 or an IPv6/],
    [v2({ lease: { ...dual, dns: ["fd64::1%1"] } }), /dns/],
    [v2({}, MSG.LEASE_ACK), /needs address or address6/],
    [v2({ address6: "fd64:1::2%lo" }, MSG.LEASE_ACK), /address6/],
    [v2({ address: "fd64:1::2" }, MSG.LEASE_ACK), /address must be an IPv4/],
    // Version 1 never reads IPv6 fields and still requires IPv4.
    [
      Buffer.concat([Buffer.from([0, 1, MSG.LEASE]), Buffer.from(JSON.stringify({ lease: only6 }))]),
      /address/,
    ],
  ];
  for (const [rec, re] of bad)
    assert.throws(
      () => decodeControl(rec, rec[1] as 1 | 2),
      (e: unknown) => e instanceof ProtocolError && re.test(e.message),
      `${String(re)}: ${rec.toString("utf8", 3)}`,
    );
});

test("ALPN outcomes: seng/2 is version 2; seng/1 or none is version 1; anything else is an error", () => {
  assert.equal(versionFromAlpn("seng/2"), 2);
  assert.equal(versionFromAlpn("seng/1"), 1);
  assert.equal(versionFromAlpn(""), 1);
  assert.throws(() => versionFromAlpn("h2"), ProtocolError);
  assert.deepEqual(ALPN_OFFER, ["seng/2", "seng/1"]);
});
