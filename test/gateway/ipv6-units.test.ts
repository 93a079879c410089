/**
 * The gateway's IPv6 building blocks without the network: configuration (subnet6, pool6, tun.address6, MTU),
 * IPv6 leases beside IPv4 ones (resume, expiry, audit, a database from before IPv6), and the IPv6 packet checks
 * (extension header chain, routing header 0, bounds) and ICMPv6 Packet Too Big.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { ConfigError, parseConfig } from "../../src/policy/config.js";
import { LeaseStore } from "../../src/gateway/leases.js";
import { addOffset6, parseCidr6, parseIp6 } from "../../src/packet/addr6.js";
import {
  hash6,
  Ip6Map,
  checkTunnelPacket6,
  icmp6ChecksumOk,
  lastIsIcmp6Error,
  MAX_EXT_HEADERS,
  packetTooBig,
} from "../../src/packet/ip6.js";

const base = (apps: string, extra = "") => `
listen: 198.18.1.1:4433
certificate: gw.pem
key: gw.key
tun: { name: seng0, address: 100.64.0.1/32, address6: "fd64::1/128", mtu: 1400 }
${extra}
apps:
${apps}
`;
const id = (n: number) => `    identities: [{ mrenclave: ${["aa", "bb", "cc", "dd"][n - 1]!.repeat(32)} }]`;

test("config: IPv4, IPv6 or both per app; pools per family; errors name the key and what was expected", () => {
  const c = parseConfig(
    base(
      `  - name: dual
    subnet: 100.64.1.0/24
    subnet6: fd64:1::/64
${id(1)}
  - name: six
    subnet6: FD64:2::/64
${id(2)}
  - name: four
    subnet: 100.64.3.0/24
${id(3)}
  - name: pooled
${id(4)}`,
      "pool: 100.64.128.0/17\npool6: fd64:ff::/48",
    ),
    "g.yaml",
  );
  const by = Object.fromEntries(c.apps.map((a) => [a.name, a]));
  assert.deepEqual(
    [by.dual!.subnet, by.dual!.subnet6, by.dual!.shared, by.dual!.shared6],
    ["100.64.1.0/24", "fd64:1::/64", false, false],
  );
  assert.deepEqual([by.six!.subnet, by.six!.subnet6], [undefined, "FD64:2::/64"]);
  assert.deepEqual([by.four!.subnet, by.four!.subnet6], ["100.64.3.0/24", undefined]);
  assert.deepEqual(
    [by.pooled!.subnet, by.pooled!.subnet6, by.pooled!.shared, by.pooled!.shared6],
    ["100.64.128.0/17", "fd64:ff::/48", true, true],
  );

  const app6 = (subnet6: string) => `  - name: a\n    subnet6: ${subnet6}\n${id(1)}`;
  const cases: [string, RegExp][] = [
    [
      base(app6("fd64:1::1/64")),
      /^g\.yaml: apps\[0\]\.subnet6: expected an IPv6 prefix such as fd64:1::\/64 \(.*host bits/,
    ],
    [base(app6("100.64.1.0/24")), /^g\.yaml: apps\[0\]\.subnet6: expected an IPv6 prefix/],
    [base(app6("fe80::/64")), /apps\[0\]\.subnet6: .*not a unicast range/],
    [base(app6("ff00::/64")), /apps\[0\]\.subnet6: .*not a unicast range/],
    [base(app6("fd64:1::/126")), /apps\[0\]\.subnet6: .*\/16 to \/124/],
    [base(app6('"fd64:1::%eth0/64"')), /apps\[0\]\.subnet6: expected an IPv6 prefix/],
    [
      base(`${app6("fd64:1::/64")}\n  - name: b\n    subnet6: fd64:1::8000:0:0:0/65\n${id(2)}`),
      /^g\.yaml: apps\[1\]\.subnet6: overlaps apps\[0\]\.subnet6 \(fd64:1::\/64\)/,
    ],
    [base(app6("fd64:1::/64"), "pool6: fd64::/16"), /^g\.yaml: pool6: overlaps apps\[0\]\.subnet6/],
    [
      base(app6("fd64:1::/64")).replace('address6: "fd64::1/128", ', ""),
      /^g\.yaml: tun\.address6: expected the gateway's TUN IPv6 address/,
    ],
    [base(app6("fd64:1::/64")).replace('"fd64::1/128"', '"fd64::1/64"'), /^g\.yaml: tun\.address6: expected/],
    [
      base(app6("fd64:1::/64")).replace("mtu: 1400", "mtu: 1279"),
      /^g\.yaml: tun\.mtu: expected at least 1280/,
    ],
    [
      base(`  - name: a\n${id(1)}`),
      /^g\.yaml: apps\[0\]\.subnet: expected a subnet, or a top-level pool .*subnet6 or pool6/,
    ],
    [base(app6("fd64:1::/64"), "dns: [fd64::1%1]"), /^g\.yaml: dns\[0\]: expected an IPv4 or IPv6 address/],
  ];
  for (const [text, re] of cases) {
    let msg = "no error";
    try {
      parseConfig(text, "g.yaml");
    } catch (e) {
      assert.ok(e instanceof ConfigError, String(e));
      msg = e.message;
    }
    assert.match(msg, re, text);
  }
  // An IPv4-only configuration needs neither tun.address6 nor an MTU of 1280.
  parseConfig(
    base(`  - name: a\n    subnet: 100.64.1.0/24\n${id(1)}`)
      .replace('address6: "fd64::1/128", ', "")
      .replace("mtu: 1400", "mtu: 576"),
    "g.yaml",
  );
});

const apps = [
  { name: "dual", subnet: "100.64.1.0/30", subnet6: "fd64:1::/124" },
  { name: "six", subnet6: "fd64:2::/64" },
];

test("leases: one address per family, resumed by key, reserved gateway address skipped, exhaustion, audit", () => {
  const s = new LeaseStore(":memory:", apps, [], ["fd64:1::1"]);
  try {
    const t0 = 1_000_000;
    const a = s.acquire("dual", "k1", "m", "198.18.0.2:1", t0, t0 + 60_000)!;
    const a6 = s.acquire6("dual", "k1", "m", "198.18.0.2:1", t0, t0 + 60_000)!;
    assert.equal(a.resumed, false);
    assert.deepEqual([a6.address, a6.resumed], ["fd64:1::2", false], "fd64:1::1 is the gateway's");
    // Resume: the same key gets both addresses back, as renewals.
    const r6 = s.acquire6("dual", "k1", "m", "198.18.0.2:2", t0 + 1000, t0 + 61_000)!;
    assert.deepEqual([r6.address, r6.resumed, r6.id], ["fd64:1::2", true, a6.id]);
    assert.equal(s.acquire("dual", "k1", "m", "198.18.0.2:2", t0 + 1000, t0 + 61_000)!.id, a.id);
    // A /124 has 15 leasable addresses, one of them the gateway's: 13 more keys fit, the 14th does not.
    for (let i = 2; i <= 14; i++)
      assert.ok(s.acquire6("dual", `k${i}`, "m", "o", t0, t0 + 60_000), `key ${i}`);
    assert.equal(s.acquire6("dual", "k15", "m", "o", t0, t0 + 60_000), null);
    // Releasing one frees exactly that address.
    s.release(a6.id, t0 + 2000, "revoked");
    assert.equal(s.acquire6("dual", "k15", "m", "o", t0 + 2000, t0 + 60_000)!.address, "fd64:1::2");
    // The audit log answers for IPv6 addresses, in any spelling.
    const who = s.audit.who("FD64:1:0::2", t0 + 1500);
    assert.equal(who.holder?.app, "dual");
    assert.equal(who.holder?.keyFp, "k1");
    assert.equal(who.holder?.outer, "198.18.0.2:2", "the renewal moved the outer address");
    assert.equal(s.audit.who("fd64:1::2", t0 + 2500).holder?.keyFp, "k15");
    assert.deepEqual(
      s.audit.query({ address: "fd64:1::2" }).map((r) => r.event),
      ["grant", "release", "renew", "grant"],
    );
    // An IPv6-only app has no IPv4 pool.
    assert.throws(() => s.acquire("six", "k", "m", "o", t0, t0 + 1), /no address pool/);
    assert.equal(s.acquire6("six", "k", "m", "o", t0, t0 + 1)!.address, "fd64:2::1");
  } finally {
    s.close();
  }
});

test("leases: a database from before IPv6 keeps its leases, gains the family column, and takes IPv6 leases", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-leases6-"));
  const db = join(dir, "seng.db");
  try {
    // The schema of a gateway from before IPv6 (and before the cert column), with one live lease.
    const old = new Database(db);
    old.exec(`
      CREATE TABLE leases (id INTEGER PRIMARY KEY, address TEXT NOT NULL, app TEXT NOT NULL, key_fp TEXT NOT NULL,
        measurement TEXT NOT NULL, outer TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, released INTEGER);
      CREATE UNIQUE INDEX leases_live_address ON leases(address) WHERE released IS NULL;
      INSERT INTO leases (address, app, key_fp, measurement, outer, start, end) VALUES
        ('100.64.1.1', 'dual', 'k1', 'm', '198.18.0.2:1', 1000, 9000000000000);
    `);
    old.close();
    const s = new LeaseStore(db, apps);
    try {
      const r = s.acquire("dual", "k1", "m", "198.18.0.2:9", 2000, 9000000000000)!;
      assert.deepEqual([r.resumed, r.id, r.address], [true, 1, (100 << 24) + (64 << 16) + (1 << 8) + 1]);
      const r6 = s.acquire6("dual", "k1", "m", "198.18.0.2:9", 2000, 9000000000000)!;
      assert.deepEqual([r6.address, r6.resumed], ["fd64:1::1", false]);
      assert.equal(s.get(1)?.address, "100.64.1.1");
    } finally {
      s.close();
    }
    const check = new Database(db, { readonly: true });
    assert.deepEqual(check.prepare("SELECT address, family FROM leases ORDER BY id").all(), [
      { address: "100.64.1.1", family: 4 },
      { address: "fd64:1::1", family: 6 },
    ]);
    check.close();
    // After a restart the IPv6 address is still taken, and the same key resumes it.
    const again = new LeaseStore(db, apps);
    try {
      assert.equal(again.acquire6("dual", "k2", "m", "o", 3000, 9000000000000)!.address, "fd64:1::2");
      assert.equal(again.acquire6("dual", "k1", "m", "o", 3000, 9000000000000)!.resumed, true);
    } finally {
      again.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const LEASED = Buffer.from(parseIp6("fd64:1::2")!);
const SERVER = Buffer.from(parseIp6("2001:2:ff::10")!);

/** An IPv6 packet from `src` with extension headers `ext` ([type, bytes]) and then `proto` with `payload` bytes. */
function ip6(src: Buffer, ext: [number, Buffer][], proto: number, payload = 20): Buffer {
  const chain: Buffer[] = [];
  let first = proto;
  for (let i = ext.length - 1; i >= 0; i--) {
    const [type, body] = ext[i]!;
    const h = Buffer.from(body);
    h[0] = first;
    chain.unshift(h);
    first = type;
  }
  const rest = Buffer.concat([...chain, Buffer.alloc(payload)]);
  const p = Buffer.alloc(40 + rest.length);
  p[0] = 0x60;
  p.writeUInt16BE(rest.length, 4);
  p[6] = first;
  p[7] = 64;
  src.copy(p, 8);
  SERVER.copy(p, 24);
  rest.copy(p, 40);
  return p;
}
const opts = (len8 = 0) => {
  const b = Buffer.alloc(8 * (len8 + 1));
  b[1] = len8;
  return b;
};
const routing = (type: number) => {
  const b = Buffer.alloc(24);
  b[1] = 2;
  b[2] = type;
  return b;
};
const frag = (offset: number) => {
  const b = Buffer.alloc(8);
  b.writeUInt16BE(offset << 3, 2);
  return b;
};

test("IPv6 checks: length, leased source, every extension header walked, RH0 and long chains dropped", () => {
  const ok = (p: Buffer) => assert.equal(checkTunnelPacket6(p, LEASED), undefined);
  ok(ip6(LEASED, [], 6));
  ok(
    ip6(
      LEASED,
      [
        [0, opts()],
        [60, opts(1)],
        [43, routing(4)],
        [44, frag(0)],
      ],
      17,
    ),
  );
  ok(ip6(LEASED, [[44, frag(100)]], 6, 0)); // a later fragment has no upper-layer header
  ok(ip6(LEASED, [], 59, 0));
  const spoof = Buffer.from(LEASED);
  spoof[15] = 3;
  assert.equal(checkTunnelPacket6(ip6(spoof, [], 6), LEASED), "spoofed-source");
  assert.equal(checkTunnelPacket6(ip6(Buffer.from(parseIp6("fe80::1")!), [], 58), LEASED), "ipv6-link-local");
  assert.equal(checkTunnelPacket6(ip6(Buffer.alloc(16), [], 58), LEASED), "ipv6-link-local");
  const long = ip6(LEASED, [], 6);
  long.writeUInt16BE(long.readUInt16BE(4) + 1, 4);
  assert.equal(checkTunnelPacket6(long, LEASED), "malformed");
  assert.equal(checkTunnelPacket6(Buffer.alloc(39, 0x60), LEASED), "malformed");
  assert.equal(checkTunnelPacket6(ip6(LEASED, [], 6, 19), LEASED), "malformed", "TCP header cut");
  assert.equal(checkTunnelPacket6(ip6(LEASED, [[43, routing(0)]], 6), LEASED), "ipv6-routing-0");
  assert.equal(
    checkTunnelPacket6(
      ip6(
        LEASED,
        [
          [60, opts()],
          [0, opts()],
        ],
        6,
      ),
      LEASED,
    ),
    "ipv6-ext-headers",
  );
  const many: [number, Buffer][] = Array.from({ length: MAX_EXT_HEADERS + 1 }, () => [60, opts()]);
  assert.equal(checkTunnelPacket6(ip6(LEASED, many, 6), LEASED), "ipv6-ext-headers");
  assert.equal(checkTunnelPacket6(ip6(LEASED, many.slice(1), 6), LEASED), undefined);
  assert.equal(
    checkTunnelPacket6(ip6(LEASED, [[60, opts(70)]], 6), LEASED),
    "ipv6-ext-headers",
    "over 512 bytes",
  );
  // A header whose length runs past the packet.
  const cut = ip6(LEASED, [[60, opts()]], 59, 0);
  cut[41] = 4;
  assert.equal(checkTunnelPacket6(cut, LEASED), "ipv6-ext-headers");
  // Random bytes after a valid fixed header never throw and never pass a chain unread.
  let seed = 11;
  const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
  for (let i = 0; i < 5000; i++) {
    const p = ip6(LEASED, [], 0, rnd(120));
    for (let k = 40; k < p.length; k++) p[k] = rnd(256);
    p[6] = [0, 43, 44, 51, 60, 135][rnd(6)]!;
    const r = checkTunnelPacket6(p, LEASED);
    assert.ok(r === undefined || ["ipv6-ext-headers", "ipv6-routing-0", "malformed"].includes(r), String(r));
  }
});

test("ICMPv6 Packet Too Big: from the gateway to the source, the MTU, a valid checksum, at most 1280 bytes", () => {
  const gw = Buffer.from(parseIp6("fd64::1")!);
  const big = ip6(LEASED, [], 6, 1500);
  assert.equal(checkTunnelPacket6(big, LEASED), undefined);
  assert.equal(lastIsIcmp6Error(big), false);
  const ptb = packetTooBig(big, gw, 1400);
  assert.equal(ptb.length, 1280);
  assert.equal(ptb[0]! >> 4, 6);
  assert.equal(ptb.readUInt16BE(4), ptb.length - 40);
  assert.equal(ptb[6], 58);
  assert.deepEqual(ptb.subarray(8, 24), gw);
  assert.deepEqual(ptb.subarray(24, 40), LEASED);
  assert.deepEqual([ptb[40], ptb[41], ptb.readUInt32BE(44)], [2, 0, 1400]);
  assert.deepEqual(ptb.subarray(48), big.subarray(0, 1232));
  assert.equal(icmp6ChecksumOk(ptb), true);
  ptb[50] = ptb[50]! ^ 1;
  assert.equal(icmp6ChecksumOk(ptb), false);
  // An ICMPv6 error is never answered with another.
  const err = ip6(LEASED, [], 58, 1500);
  err[40] = 1; // destination unreachable
  assert.equal(checkTunnelPacket6(err, LEASED), undefined);
  assert.equal(lastIsIcmp6Error(err), true);
  err[40] = 128; // echo request
  checkTunnelPacket6(err, LEASED);
  assert.equal(lastIsIcmp6Error(err), false);
});

test("Ip6Map: exact lookups by the packet's bytes, also for two addresses whose hashes meet", () => {
  const m = new Ip6Map<string>();
  const a = parseIp6("fd64:1::2")!;
  const b = parseIp6("fd64:2::2")!;
  m.set(a, "a");
  m.set(b, "b");
  const pkt = Buffer.alloc(40);
  Buffer.from(a).copy(pkt, 24);
  assert.equal(m.get(pkt, 24), "a");
  Buffer.from(b).copy(pkt, 24);
  assert.equal(m.get(pkt, 24), "b");
  pkt[39] = 3;
  assert.equal(m.get(pkt, 24), undefined);
  // Find two addresses of one /64 with the same hash (a 32-bit hash: a few hundred thousand tries at most).
  const seen = new Map<number, Uint8Array>();
  let x: Uint8Array | undefined;
  let y: Uint8Array | undefined;
  for (let i = 1; i < 2_000_000 && !x; i++) {
    const c = addOffset6(parseCidr6("fd64:9::/64"), BigInt(i) * 2654435761n);
    const h = hash6(c, 0);
    const other = seen.get(h);
    if (other) [x, y] = [other, c];
    else seen.set(h, c);
  }
  assert.ok(x && y, "a hash collision was found");
  m.set(x, "x");
  m.set(y, "y");
  assert.equal(m.size, 4);
  assert.deepEqual([m.get(Buffer.from(x), 0), m.get(Buffer.from(y), 0)], ["x", "y"]);
  m.delete(x);
  assert.deepEqual([m.get(Buffer.from(x), 0), m.get(Buffer.from(y), 0)], [undefined, "y"]);
  m.set(x, "x2"); // now in the hashed slot, y still spilled
  m.delete(y);
  assert.deepEqual([m.get(Buffer.from(x), 0), m.get(Buffer.from(y), 0)], ["x2", undefined]);
  m.delete(x);
  assert.equal(m.size, 2);
});
