/** Wire protocol v1: control messages round-trip, and everything malformed is a ProtocolError. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CLOSE_REASONS,
  decodeControl,
  encodeControl,
  isControl,
  MSG,
  ProtocolError,
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
    if (b.length > 1) b[1] = 1;
    try {
      decodeControl(b);
    } catch (e) {
      assert.ok(e instanceof ProtocolError, String(e));
    }
  }
});
