/**
 * The shielded resolver's wire format and API shapes, without a network (src/runtime/dns-wire.ts, dns-resolve.ts):
 * every record type of Node's resolver decodes into Node's shape; malformed record data is a DnsFormatError; the
 * reverse names; rrtype validation. The same API through the tunnel is tested in test/runtime/compat.test.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  decodeMessage,
  DnsFormatError,
  EDNS_UDP_SIZE,
  encodeQuery,
  ipv6Text,
  recordsFor,
  RR,
} from "../../src/runtime/dns-wire.js";
import { methodFor, reverseName } from "../../src/runtime/dns-resolve.js";

const name = (n: string) =>
  Buffer.concat([
    ...n.split(".").map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])),
    Buffer.from([0]),
  ]);
const cs = (s: string) => Buffer.concat([Buffer.from([Buffer.byteLength(s)]), Buffer.from(s)]);
const u16 = (n: number) => Buffer.from([n >> 8, n & 0xff]);
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
function rr(owner: string, type: number, rdata: Buffer, ttl = 60): Buffer {
  return Buffer.concat([name(owner), u16(type), u16(1), u32(ttl), u16(rdata.length), rdata]);
}
function response(q: string, qtype: number, answers: Buffer[]): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(0x1234, 0);
  h.writeUInt16BE(0x8180, 2);
  h.writeUInt16BE(1, 4);
  h.writeUInt16BE(answers.length, 6);
  return Buffer.concat([h, name(q), u16(qtype), u16(1), ...answers]);
}

test("every record type decodes into Node's shape", () => {
  const v6 = Buffer.from("20010db8000000000000000000000001", "hex");
  const msg = decodeMessage(
    response("z.test", RR.ANY, [
      rr("z.test", RR.A, Buffer.from([192, 0, 2, 7])),
      rr("z.test", RR.AAAA, v6),
      rr("z.test", RR.MX, Buffer.concat([u16(10), name("mx.z.test")])),
      rr("z.test", RR.TXT, Buffer.concat([cs("v=spf1 -all"), cs("second")])),
      rr("z.test", RR.NS, name("ns1.z.test")),
      rr(
        "z.test",
        RR.SOA,
        Buffer.concat([
          name("ns1.z.test"),
          name("admin.z.test"),
          u32(7),
          u32(3600),
          u32(600),
          u32(86400),
          u32(60),
        ]),
      ),
      rr("z.test", RR.SRV, Buffer.concat([u16(1), u16(5), u16(5060), name("sip.z.test")])),
      rr(
        "z.test",
        RR.NAPTR,
        Buffer.concat([u16(100), u16(10), cs("S"), cs("SIP+D2U"), cs(""), name("_sip._udp.z.test")]),
      ),
      rr("z.test", RR.CAA, Buffer.concat([Buffer.from([0, 5]), Buffer.from("issueca.example")])),
      rr("z.test", RR.PTR, name("host.z.test")),
      rr("z.test", 99, Buffer.from("unknown type")),
    ]),
  );
  const values = Object.fromEntries(msg.answers.map((r) => [r.type, r.value]));
  assert.equal(values[RR.A], "192.0.2.7");
  assert.equal(values[RR.AAAA], "2001:db8::1");
  assert.deepEqual(values[RR.MX], { priority: 10, exchange: "mx.z.test" });
  assert.deepEqual(values[RR.TXT], ["v=spf1 -all", "second"]);
  assert.equal(values[RR.NS], "ns1.z.test");
  assert.deepEqual(values[RR.SOA], {
    nsname: "ns1.z.test",
    hostmaster: "admin.z.test",
    serial: 7,
    refresh: 3600,
    retry: 600,
    expire: 86400,
    minttl: 60,
  });
  assert.deepEqual(values[RR.SRV], { priority: 1, weight: 5, port: 5060, name: "sip.z.test" });
  assert.deepEqual(values[RR.NAPTR], {
    flags: "S",
    service: "SIP+D2U",
    regexp: "",
    replacement: "_sip._udp.z.test",
    order: 100,
    preference: 10,
  });
  assert.deepEqual(values[RR.CAA], { critical: 0, issue: "ca.example" });
  assert.equal(values[RR.PTR], "host.z.test");
  assert.equal(values[99], undefined);
  // ANY: every record of the name; a type: only those, CNAMEs followed.
  assert.equal(recordsFor(msg, "z.test", RR.ANY).length, 11);
  assert.equal(recordsFor(msg, "Z.TEST.", RR.MX).length, 1);
});

test("CNAMEs are followed for other types too; malformed record data is refused", () => {
  const msg = decodeMessage(
    response("alias.test", RR.AAAA, [
      rr("alias.test", RR.CNAME, name("real.test")),
      rr("real.test", RR.AAAA, Buffer.alloc(16)),
      rr("other.test", RR.AAAA, Buffer.alloc(16, 1)),
    ]),
  );
  assert.deepEqual(
    recordsFor(msg, "alias.test", RR.AAAA).map((r) => r.value),
    ["::"],
  );
  for (const [type, rdata] of [
    [RR.AAAA, Buffer.alloc(4)],
    [RR.MX, Buffer.from([0])],
    [RR.SRV, Buffer.concat([u16(1), u16(2)])],
    [RR.TXT, Buffer.from([5, 65])],
    [RR.SOA, name("a.test")],
    [RR.CAA, Buffer.from([0, 9, 65])],
    [RR.NAPTR, Buffer.concat([u16(1), u16(1), Buffer.from([3])])],
  ] as const)
    assert.throws(
      () => decodeMessage(response("x.test", type, [rr("x.test", type, rdata)])),
      DnsFormatError,
      `type ${type}`,
    );
});

test("queries carry an EDNS(0) OPT record when asked to", () => {
  const q = encodeQuery(0x1234, "a.test", RR.TXT, EDNS_UDP_SIZE);
  assert.equal(q.readUInt16BE(10), 1, "ARCOUNT");
  assert.equal(q.subarray(-11).toString("hex"), "00" + "0029" + "04d0" + "00000000" + "0000");
  assert.equal(encodeQuery(1, "a.test").readUInt16BE(10), 0);
});

test("IPv6 text, reverse names, rrtype checks", () => {
  assert.equal(ipv6Text(Buffer.from("00000000000000000000000000000001", "hex")), "::1");
  assert.equal(ipv6Text(Buffer.from("20010db8000100000000000100000001", "hex")), "2001:db8:1::1:0:1");
  assert.equal(ipv6Text(Buffer.from("20010db8000000010001000100010001", "hex")), "2001:db8:0:1:1:1:1:1");
  assert.equal(reverseName("192.0.2.7"), "7.2.0.192.in-addr.arpa");
  assert.equal(
    reverseName("2001:db8::1"),
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
  );
  assert.equal(reverseName("::ffff:192.0.2.1")?.startsWith("1.0.2.0.0.0.0.c.f.f.f.f.0.0.0.0."), true);
  assert.equal(reverseName("not-an-ip"), undefined);
  assert.equal(methodFor(undefined), "resolve4");
  assert.equal(methodFor("AAAA"), "resolve6");
  assert.equal(methodFor("ANY"), "resolveAny");
  assert.throws(() => methodFor("BOGUS"), { code: "ERR_INVALID_ARG_VALUE" });
  assert.throws(() => methodFor(28), { code: "ERR_INVALID_ARG_TYPE" });
});
