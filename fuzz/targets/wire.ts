/**
 * What arrives through the tunnel: control messages (src/tunnel/protocol.ts) and inner IP packets
 * (src/packet/ip.ts), plus evidence as it arrives from files and configs (hex, base64 or binary; src/attest/input.ts).
 * Inputs: encoded control messages of every type with fields of wrong types and ranges, and byte mutations;
 * IPv4/IPv6 packets with valid headers and mutated version, IHL, length and source; IPv6 packets with extension
 * header chains (src/packet/ip6.ts).
 */
import fc from "fast-check";
import { isDeepStrictEqual } from "node:util";
import {
  CLOSE_REASONS,
  decodeControl,
  encodeControl,
  isControl,
  MSG,
  ProtocolError,
  type Control,
} from "../../src/tunnel/protocol.js";
import { checkTunnelPacket, intToIp, ipToInt, ipv4Dst, ipv4Src } from "../../src/packet/ip.js";
import { canonicalIp6, unicastIp6 } from "../../src/packet/addr6.js";
import { checkTunnelPacket6, lastIsIcmp6Error, packetTooBig, icmp6ChecksumOk } from "../../src/packet/ip6.js";
import { AttestError } from "../../src/attest/errors.js";
import { decodeEvidence } from "../../src/attest/input.js";
import { property, type FuzzTarget } from "../lib/engine.js";
import { mutated, type Field } from "../lib/mutate.js";

// ---- control messages ----

const ip = fc.ipV4();
const anyJson = fc.jsonValue({ maxDepth: 2 });
const fieldValue = <T>(good: fc.Arbitrary<T>) =>
  fc.oneof(
    { weight: 8, arbitrary: good as fc.Arbitrary<unknown> },
    { weight: 1, arbitrary: anyJson as fc.Arbitrary<unknown> },
  );

const lease = fc.record({
  address: fieldValue(ip),
  prefix: fieldValue(fc.integer({ min: 1, max: 32 })),
  gateway: fieldValue(ip),
  mtu: fieldValue(fc.integer({ min: 576, max: 65535 })),
  dns: fieldValue(fc.array(ip, { maxLength: 3 })),
  lifetime: fieldValue(fc.integer({ min: 0, max: 2 ** 31 })),
  app: fieldValue(fc.string({ maxLength: 20 })),
});

/** Valid messages, kept so the harness can check the decode(encode(m)) round trip. */
const origin = new WeakMap<Buffer, Control>();

const validControl: fc.Arbitrary<Control> = fc.oneof(
  fc
    .record({
      address: ip,
      prefix: fc.integer({ min: 1, max: 32 }),
      gateway: ip,
      mtu: fc.integer({ min: 576, max: 65535 }),
      dns: fc.array(ip, { maxLength: 3 }),
      lifetime: fc.integer({ min: 0, max: 2 ** 31 }),
      app: fc.string({ maxLength: 20 }),
    })
    .map((l): Control => ({ type: MSG.LEASE, lease: { ...l } })), // fast-check records may lack a prototype
  ip.map((a): Control => ({ type: MSG.LEASE_ACK, address: a })),
  fc.constant<Control>({ type: MSG.KEEPALIVE }),
  fc
    .tuple(fc.constantFrom(...CLOSE_REASONS), fc.string({ maxLength: 30 }))
    .map(([reason, message]): Control => ({ type: MSG.CLOSE, reason, message })),
);

/** Version 2: leases with either family or both, acks of either. */
const ip6 = fc
  .ipV6()
  .map((a) => canonicalIp6(a) ?? "fd64::2")
  .filter((a) => unicastIp6(a) === a);
const validControl2: fc.Arbitrary<Control> = fc.oneof(
  fc
    .record({
      four: fc.option(fc.record({ address: ip, prefix: fc.integer({ min: 1, max: 32 }), gateway: ip }), {
        nil: undefined,
      }),
      six: fc.record({ address6: ip6, prefix6: fc.integer({ min: 1, max: 128 }), gateway6: ip6 }),
      mtu: fc.integer({ min: 1280, max: 65535 }),
      dns: fc.array(fc.oneof(ip, ip6), { maxLength: 3 }),
      lifetime: fc.integer({ min: 0, max: 2 ** 31 }),
      app: fc.string({ maxLength: 20 }),
    })
    .map(({ four, six, ...rest }): Control => ({ type: MSG.LEASE, lease: { ...four, ...six, ...rest } })),
  fc
    .tuple(fc.option(ip, { nil: undefined }), ip6)
    .map(([a, a6]): Control =>
      a ? { type: MSG.LEASE_ACK, address: a, address6: a6 } : { type: MSG.LEASE_ACK, address6: a6 },
    ),
);

function controlArbitrary(): fc.Arbitrary<Buffer> {
  const valid = fc.oneof(
    validControl.map((m) => {
      const b = encodeControl(m);
      origin.set(b, m);
      return b;
    }),
    validControl2.map((m) => {
      const b = encodeControl(m, 2);
      origin.set(b, m);
      return b;
    }),
  );
  const shaped = fc
    .record({
      type: fc.oneof(
        { weight: 9, arbitrary: fc.constantFrom(1, 2, 3, 4) },
        { weight: 1, arbitrary: fc.nat(255) },
      ),
      version: fc.oneof(
        { weight: 9, arbitrary: fc.constantFrom(1, 2) },
        { weight: 1, arbitrary: fc.nat(255) },
      ),
      body: fc.oneof(
        lease.map((l) => ({ lease: l })),
        fc.record({ address: fieldValue(ip) }),
        fc.record({ address6: fieldValue(ip6), address: fieldValue(ip) }, { requiredKeys: [] }),
        fc.record({ reason: fieldValue(fc.constantFrom(...CLOSE_REASONS)), message: anyJson }),
        anyJson,
      ),
    })
    .map(({ type, version, body }) =>
      Buffer.concat([Buffer.from([0, version, type]), Buffer.from(JSON.stringify(body) ?? "")]),
    );
  return fc.oneof(
    { weight: 2, arbitrary: valid },
    { weight: 3, arbitrary: shaped },
    {
      weight: 3,
      arbitrary: fc.oneof(valid, shaped).chain((b) =>
        mutated([
          {
            bytes: b,
            fields: [
              { offset: 1, size: 1, le: true },
              { offset: 2, size: 1, le: true },
            ],
          },
        ]),
      ),
    },
  );
}

function runControl(input: Buffer): void {
  const is = isControl(input);
  const version = input[1] === 2 ? 2 : 1;
  const m = decodeControl(input, version);
  property(is, "decodeControl accepted a record isControl calls a packet");
  const from = origin.get(input);
  if (from) property(isDeepStrictEqual(m, from), "decode(encode(m)) differs from m");
  // What was decoded encodes and decodes to itself, and its addresses are usable by the data path.
  property(
    isDeepStrictEqual(decodeControl(encodeControl(m, version), version), m),
    "decoded message does not round-trip",
  );
  if (m.type === MSG.LEASE) {
    for (const a of [m.lease.address, m.lease.gateway, ...m.lease.dns].filter((x) => x !== undefined))
      if (!a.includes(":")) property(ipToInt(intToIp(ipToInt(a))) === ipToInt(a), `address ${a}`);
    for (const a of [m.lease.address6, m.lease.gateway6].filter((x) => x !== undefined))
      property(unicastIp6(a) === a, `IPv6 address ${a} is not canonical unicast`);
    property(
      (m.lease.address !== undefined) === (m.lease.gateway !== undefined) &&
        (m.lease.address6 !== undefined) === (m.lease.gateway6 !== undefined) &&
        (m.lease.address !== undefined || m.lease.address6 !== undefined),
      "a lease with a partial family or none",
    );
    if (m.lease.address6 !== undefined) property(m.lease.mtu >= 1280, "an IPv6 lease under 1280");
  }
}

export const control: FuzzTarget = {
  name: "control",
  description: "tunnel control messages (decodeControl): LEASE, LEASE_ACK, KEEPALIVE, CLOSE",
  modules: ["src/tunnel/protocol.ts"],
  arbitrary: controlArbitrary,
  run: runControl,
  expected: (e) => e instanceof ProtocolError,
};

// ---- inner IP packets ----

const LEASED = 0x64400002; // 100.64.0.2

function packetArbitrary(): fc.Arbitrary<Buffer> {
  const fields: Field[] = [
    { offset: 0, size: 1, le: false },
    { offset: 2, size: 2, le: false },
    { offset: 12, size: 4, le: false },
  ];
  const built = fc
    .record({
      v6: fc.boolean(),
      ihl: fc.oneof(
        { weight: 8, arbitrary: fc.constant(5) },
        { weight: 2, arbitrary: fc.integer({ min: 0, max: 15 }) },
      ),
      payload: fc.uint8Array({ maxLength: 80 }),
      spoof: fc.boolean(),
    })
    .map(({ v6, ihl, payload, spoof }) => {
      const hl = v6 ? 40 : Math.max(ihl * 4, 20);
      const p = Buffer.alloc(hl + payload.length);
      Buffer.from(payload).copy(p, hl);
      if (v6) {
        p[0] = 0x60;
        p.writeUInt16BE(payload.length, 4);
      } else {
        p[0] = 0x40 | ihl;
        p.writeUInt16BE(p.length, 2);
        p[9] = 6;
        p.writeUInt32BE(spoof ? 0x64400003 : LEASED, 12);
        p.writeUInt32BE(0xc6120001, 16);
      }
      return { bytes: p, fields };
    });
  return fc.oneof(
    built.map((s) => s.bytes),
    built.chain((s) => mutated([s])),
  );
}

function runPacket(input: Buffer): void {
  const r = checkTunnelPacket(input, LEASED);
  property(
    r === undefined || ["malformed", "spoofed-source", "unsupported-version", "no-route"].includes(r),
    `reason ${r}`,
  );
  if (r === undefined) {
    property(input.length >= 20 && input[0]! >> 4 === 4, "forwarded a packet that is not IPv4");
    property(
      input.readUInt16BE(2) === input.length,
      "forwarded a packet whose total length is not the record's",
    );
    property(
      (input[0]! & 15) * 4 >= 20 && (input[0]! & 15) * 4 <= input.length,
      "forwarded a packet with a bad IHL",
    );
    property(ipv4Src(input) === LEASED, "forwarded a spoofed source");
    ipv4Dst(input);
  }
}

export const packet: FuzzTarget = {
  name: "packet",
  description: "inner IP packets from a tunnel (checkTunnelPacket: version, IHL, total length, source)",
  modules: ["src/packet/ip.ts"],
  arbitrary: packetArbitrary,
  run: runPacket,
  expected: () => false, // it returns a drop reason, it never throws
};

// ---- inner IPv6 packets ----

const LEASED6 = Buffer.from("fd640001000000000000000000000002", "hex");
const GW6 = Buffer.from("fd640000000000000000000000000001", "hex");
/** Extension header types the walker knows, and upper layers. */
const EXT = [0, 43, 44, 51, 60, 135, 139, 140, 253, 254];
const UPPER = [6, 17, 58, 59, 50, 41, 132];

function packet6Arbitrary(): fc.Arbitrary<Buffer> {
  const header = fc.record({
    type: fc.constantFrom(...EXT),
    len8: fc.oneof(
      { weight: 8, arbitrary: fc.integer({ min: 0, max: 2 }) },
      { weight: 1, arbitrary: fc.nat(255) },
    ),
    b2: fc.nat(255),
    b3: fc.nat(255),
  });
  const built = fc
    .record({
      chain: fc.array(header, { maxLength: 11 }),
      upper: fc.constantFrom(...UPPER),
      payload: fc.uint8Array({ maxLength: 60 }),
      spoof: fc.oneof({ weight: 5, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(3) }),
    })
    .map(({ chain, upper, payload, spoof }) => {
      const parts: Buffer[] = [];
      for (let i = 0; i < chain.length; i++) {
        const h = chain[i]!;
        const size = h.type === 44 ? 8 : h.type === 51 ? (h.len8 + 2) * 4 : (h.len8 + 1) * 8;
        const b = Buffer.alloc(Math.min(size, 2048));
        b[0] = i + 1 < chain.length ? chain[i + 1]!.type : upper;
        b[1] = h.len8;
        b[2] = h.b2;
        b[3] = h.b3;
        parts.push(b);
      }
      const rest = Buffer.concat([...parts, Buffer.from(payload)]);
      const p = Buffer.alloc(40 + rest.length);
      p[0] = 0x60;
      p.writeUInt16BE(rest.length & 0xffff, 4);
      p[6] = chain.length ? chain[0]!.type : upper;
      p[7] = 64;
      LEASED6.copy(p, 8);
      if (spoof === 1) p[23] = 3;
      if (spoof === 2) p.fill(0, 8, 24);
      if (spoof === 3) p.writeUInt16BE(0xfe80, 8);
      p[24] = 0x20;
      rest.copy(p, 40);
      const fields: Field[] = [
        { offset: 0, size: 1, le: false },
        { offset: 4, size: 2, le: false },
        { offset: 6, size: 1, le: false },
        { offset: 41, size: 1, le: false },
      ];
      return { bytes: p, fields };
    });
  return fc.oneof(
    built.map((s) => s.bytes),
    built.chain((s) => mutated([s])),
  );
}

function runPacket6(input: Buffer): void {
  const r = checkTunnelPacket6(input, LEASED6);
  property(
    r === undefined ||
      ["malformed", "spoofed-source", "ipv6-ext-headers", "ipv6-routing-0", "ipv6-link-local"].includes(r),
    `reason ${r}`,
  );
  if (r !== undefined) return;
  property(input.length >= 40 && input[0]! >> 4 === 6, "forwarded a packet that is not IPv6");
  property(
    input.readUInt16BE(4) + 40 === input.length,
    "forwarded a packet whose payload length is not the record's",
  );
  property(input.subarray(8, 24).equals(LEASED6), "forwarded a spoofed source");
  // What passes may be answered: the answer is well formed whatever the packet.
  lastIsIcmp6Error(input);
  const ptb = packetTooBig(input, GW6, 1280);
  property(ptb.length <= 1280 && icmp6ChecksumOk(ptb), "Packet Too Big malformed");
}

export const packet6: FuzzTarget = {
  name: "packet6",
  description:
    "inner IPv6 packets from a tunnel (checkTunnelPacket6: length, source, extension header chain)",
  modules: ["src/packet/ip6.ts"],
  arbitrary: packet6Arbitrary,
  run: runPacket6,
  expected: () => false, // it returns a drop reason, it never throws
};

// ---- evidence input (files, configs, the CLI) ----

const evidenceOrigin = new WeakMap<Buffer, Buffer>();

function evidenceArbitrary(): fc.Arbitrary<Buffer> {
  const bin = fc.uint8Array({ minLength: 1, maxLength: 200 }).map((u) => Buffer.from(u));
  const hex = bin.map((b) => {
    const t = Buffer.from(b.toString("hex"));
    evidenceOrigin.set(t, b);
    return t;
  });
  const text = fc.oneof(
    hex,
    bin.map((b) => Buffer.from(b.toString("base64"))),
    bin.map((b) => Buffer.from(b.toString("base64url"))),
    fc.string({ maxLength: 60 }).map((s) => Buffer.from(s, "latin1")),
  );
  return fc.oneof(
    bin,
    text,
    text.chain((b) => mutated([{ bytes: b }])),
  );
}

function runEvidence(input: Buffer): void {
  const out = decodeEvidence(input);
  property(Buffer.isBuffer(out) && out.length > 0, "decodeEvidence returned nothing");
  const from = evidenceOrigin.get(input);
  if (from) property(out.equals(from), "hex evidence does not decode to its bytes");
}

export const evidenceInput: FuzzTarget = {
  name: "evidence-input",
  description: "evidence as read from files and configs (decodeEvidence: binary, hex, base64)",
  modules: ["src/attest/input.ts"],
  arbitrary: evidenceArbitrary,
  run: runEvidence,
  expected: (e) => e instanceof AttestError && e.code === "malformed",
};
