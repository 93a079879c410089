/** Gateway building blocks without the network: IP checks, rate limiting, config validation, leases. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkTunnelPacket, intToIp, ipToInt, parseCidr } from "../../src/packet/ip.js";
import { RateLimiter, rateKey, sourceIp, TokenBucket } from "../../src/gateway/ratelimit.js";
import { BAD_BURST, BAD_RATE, MAX_STRIKES, THROTTLE_MS, Tunnel } from "../../src/gateway/tunnel.js";
import { dontFragment, fragmentationNeeded } from "../../src/packet/ip.js";
import { ConfigError, loadConfig, parseConfig } from "../../src/policy/config.js";
import { LeaseStore } from "../../src/gateway/leases.js";
import { COOKIE_ROTATION_MS, CookieRotation } from "../../src/gateway/admission.js";
import { generateKeyPairSync } from "node:crypto";
import { selfSignedCert } from "../../src/attest/x509gen.js";
import { DtlsContext, DtlsListener, DtlsSession } from "../../src/native/dtls.js";

function ipv4(src: string, dst: string, len = 28): Buffer {
  const p = Buffer.alloc(len);
  p[0] = 0x45;
  p.writeUInt16BE(len, 2);
  p[9] = 17;
  p.writeUInt32BE(ipToInt(src), 12);
  p.writeUInt32BE(ipToInt(dst), 16);
  return p;
}

test("IPv4 helpers", () => {
  assert.equal(intToIp(ipToInt("100.64.1.2")), "100.64.1.2");
  assert.equal(ipToInt("255.255.255.255"), 0xffffffff);
  assert.throws(() => ipToInt("1.2.3"));
  assert.throws(() => ipToInt("1.2.3.256"));
  assert.deepEqual(parseCidr("100.64.1.0/24"), { network: ipToInt("100.64.1.0"), prefix: 24, size: 256 });
  assert.throws(() => parseCidr("100.64.1.1/24"), /host bits/);
});

test("tunnel packet checks: version, header, length, leased source", () => {
  const leased = ipToInt("100.64.1.2");
  assert.equal(checkTunnelPacket(ipv4("100.64.1.2", "198.18.2.2"), leased), undefined);
  assert.equal(checkTunnelPacket(ipv4("100.64.1.3", "198.18.2.2"), leased), "spoofed-source");
  assert.equal(checkTunnelPacket(Buffer.alloc(10), leased), "malformed");
  const short = ipv4("100.64.1.2", "198.18.2.2");
  short.writeUInt16BE(100, 2);
  assert.equal(checkTunnelPacket(short, leased), "malformed");
  const ihl = ipv4("100.64.1.2", "198.18.2.2");
  ihl[0] = 0x44;
  assert.equal(checkTunnelPacket(ihl, leased), "malformed");
  const v6 = Buffer.alloc(40);
  v6[0] = 0x60;
  assert.equal(checkTunnelPacket(v6, leased), "unsupported-version");
  // A tunnel without an IPv4 lease (IPv6-only app; its address is 0): a 0.0.0.0 source is not "its" address.
  assert.equal(checkTunnelPacket(ipv4("0.0.0.0", "255.255.255.255"), 0), "unsupported-version");
  assert.equal(checkTunnelPacket(ipv4("0.0.0.0", "224.0.0.1"), 0), "unsupported-version");
});

test("rate limiter: burst, refill, bounded table", () => {
  const rl = new RateLimiter(10, 3, 100);
  assert.deepEqual(
    [1, 2, 3, 4].map(() => rl.take("a", 0)),
    [true, true, true, false],
  );
  assert.equal(rl.take("a", 100), true, "one token back after 100 ms at 10/s");
  assert.equal(rl.take("a", 100), false);
  assert.equal(rl.take("b", 100), true, "sources are independent");
  for (let i = 0; i < 1000; i++) rl.take(`s${i}`, 200);
  assert.ok(rl.size <= 100);
  assert.equal(sourceIp("198.18.1.2:4000"), "198.18.1.2");
  assert.equal(sourceIp("[::1]:4000"), "::1");
});

test("rate limit keys: IPv4 by address, IPv6 by /64, so one /64 shares a budget and another does not", () => {
  assert.equal(rateKey("198.18.1.2:4000"), "198.18.1.2");
  assert.equal(rateKey("[2001:2:0:1::10]:4000"), "2001:2:0:1::/64");
  assert.equal(rateKey("[2001:2:0:1:ffff:1:2:3]:5"), "2001:2:0:1::/64");
  assert.equal(rateKey("[2001:2:0:2::10]:4000"), "2001:2:0:2::/64");
  assert.equal(rateKey("[2001:2:0:1:2::]:1"), "2001:2:0:1::/64", ":: in the interface half");
  assert.equal(rateKey("[2001:db8:1:2:3:4:5:6]:1"), "2001:db8:1:2::/64");
  assert.equal(rateKey("[::1]:4000"), "::/64");
  assert.equal(rateKey("[::ffff:1.2.3.4]:1"), "::/64", "a dotted tail parses");
  assert.equal(rateKey("[1:2:3:4::]:1"), "1:2:3:4::/64");
  assert.equal(rateKey("[fe80::1%2]:4000"), "fe80::/64%2", "link-local keeps its scope");
  const rl = new RateLimiter(1, 2, 100);
  const take = (peer: string) => rl.take(rateKey(peer), 0);
  assert.deepEqual(
    [take("[2001:2:0:1::a]:1"), take("[2001:2:0:1::b]:2"), take("[2001:2:0:1::c]:3")],
    [true, true, false],
    "three addresses of one /64 draw on one bucket of 2",
  );
  assert.equal(take("[2001:2:0:2::a]:1"), true, "another /64 has its own");
  assert.equal(take("198.18.1.2:1"), true);
  assert.equal(take("198.18.1.3:1"), true, "IPv4 sources stay per address");
});

const good = `
listen: 198.18.1.1:4433
certificate: gw.pem
key: gw.key
tun: { name: seng0, address: 100.64.0.1/32, mtu: 1400 }
apps:
  - name: browser
    subnet: 100.64.1.0/24
    identities: [{ mrenclave: ${"ab".repeat(32)} }]
  - name: mail
    subnet: 100.64.2.0/24
    identities: [{ mrsigner: ${"cd".repeat(32)}, isvprodid: 1, minIsvsvn: 2 }]
`;

test("config: a valid file, defaults, resolved paths", () => {
  const c = parseConfig(good, "/etc/seng/gateway.yaml");
  assert.equal(c.certificate, "/etc/seng/gw.pem");
  assert.equal(c.database, "/etc/seng/seng.db");
  assert.equal(c.tunnel.idleTimeoutSeconds, 60);
  assert.equal(c.apps[1]!.identities[0]!.minIsvsvn, 2);
});

test("config errors name the file, the key path and what was expected", () => {
  const cases: [string, RegExp][] = [
    [good.replace("198.18.1.1:4433", "nowhere"), /^g\.yaml: listen: expected host:port/],
    [good.replace("100.64.1.0/24", "100.64.1.7/24"), /^g\.yaml: apps\[0\]\.subnet: expected an IPv4 CIDR/],
    [
      good.replace("100.64.2.0/24", "100.64.1.128/25"),
      /^g\.yaml: apps\[1\]\.subnet: overlaps apps\[0\]\.subnet/,
    ],
    [
      good.replace(`mrenclave: ${"ab".repeat(32)}`, "mrenclave: abc"),
      /^g\.yaml: apps\[0\]\.identities\[0\]\.mrenclave: expected 32 bytes of hex/,
    ],
    [good.replace("mtu: 1400", "mtu: 1400, colour: red"), /^g\.yaml: tun: unknown key\(s\) colour/],
    [good.replace("isvprodid: 1, ", ""), /^g\.yaml: apps\[1\]\.identities\[0\]\.isvprodid/],
    [good.replace("certificate: gw.pem\n", ""), /^g\.yaml: certificate: expected string/],
    ["listen: [", /^g\.yaml:1:\d+: not valid YAML/],
    [good.replace("mtu: 1400", "mtu: big"), /^g\.yaml: tun\.mtu: expected number/],
  ];
  for (const [text, re] of cases)
    assert.throws(
      () => parseConfig(text, "g.yaml"),
      (e: unknown) => e instanceof ConfigError && re.test(e.message),
      `${re} vs ${(() => {
        try {
          parseConfig(text, "g.yaml");
          return "no error";
        } catch (e) {
          return (e as Error).message;
        }
      })()}`,
    );
  assert.throws(() => loadConfig("/nonexistent/g.yaml"), /\/nonexistent\/g\.yaml: cannot read: no such file/);
});

test("leases: lowest free address, resume by key, grace, exhaustion, persistence, release", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-leases-"));
  try {
    const db = join(dir, "l.db");
    const apps = [{ name: "a", subnet: "100.64.1.0/30" }];
    let s = new LeaseStore(db, apps);
    const x = s.acquire("a", "key1", "m", "198.18.1.2:1", 1000, 5000)!;
    assert.equal(intToIp(x.address), "100.64.1.1");
    const y = s.acquire("a", "key2", "m", "198.18.1.2:2", 1000, 5000)!;
    assert.equal(intToIp(y.address), "100.64.1.2");
    assert.equal(s.acquire("a", "key3", "m", "p", 1000, 5000), null, "a /30 has two usable addresses");
    assert.equal(s.acquire("a", "key1", "m", "p", 2000, 6000)!.resumed, true);
    s.close();
    // A restarted gateway (same file) keeps the leases: key1 resumes, key3 still finds nothing.
    s = new LeaseStore(db, apps);
    const again = s.acquire("a", "key1", "m", "p", 3000, 7000)!;
    assert.deepEqual([intToIp(again.address), again.resumed], ["100.64.1.1", true]);
    assert.equal(s.acquire("a", "key3", "m", "p", 3000, 7000), null);
    // After key2's grace runs out its address is free for another key.
    const z = s.acquire("a", "key3", "m", "p", 6001, 9000)!;
    assert.equal(intToIp(z.address), "100.64.1.2");
    assert.equal(s.get(y.id)!.released, 6001);
    // Explicit release (revocation) frees at once; the same key then gets a new lease.
    s.release(again.id, 6500);
    const w = s.acquire("a", "key1", "m", "p", 6600, 9000)!;
    assert.equal(w.resumed, false);
    assert.throws(() => s.acquire("nope", "k", "m", "p", 0, 1), /no address pool/);
    s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("leases: the database refuses two live leases of one address", () => {
  const s = new LeaseStore(":memory:", [{ name: "a", subnet: "100.64.1.0/24" }]);
  s.acquire("a", "k1", "m", "p", 0, 10);
  const db = (s as unknown as { db: { prepare(q: string): { run(...a: unknown[]): void } } }).db;
  assert.throws(
    () =>
      db
        .prepare(
          "INSERT INTO leases (address, app, key_fp, measurement, outer, start, end) VALUES ('100.64.1.1','a','k2','m','p',0,10)",
        )
        .run(),
    /UNIQUE/,
  );
  s.close();
});

test("state files: seng.db, -wal and -shm are created 0600 whatever the umask; too-open files are fixed at start", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-modes-"));
  const old = process.umask(0o022); // the common default, under which SQLite alone makes 0644 files
  try {
    const db = join(dir, "seng.db");
    const apps = [{ name: "a", subnet: "100.64.1.0/30" }];
    const mode = (f: string) => (statSync(f).mode & 0o777).toString(8);
    let s = new LeaseStore(db, apps);
    s.acquire("a", "key1", "m", "198.18.1.2:1", 1000, 5000); // writes to the WAL
    for (const f of [db, `${db}-wal`, `${db}-shm`]) assert.equal(mode(f), "600", f);
    assert.deepEqual(s.fixedModes, [], "nothing to fix in a fresh database");
    s.close();
    // A database left world-readable (by an older gateway, or a copy): every file of it is made 0600 at start.
    chmodSync(db, 0o644);
    writeFileSync(`${db}-wal`, "", { mode: 0o644 });
    chmodSync(`${db}-wal`, 0o644);
    s = new LeaseStore(db, apps);
    assert.deepEqual(
      s.fixedModes.map((f) => [f.file, f.mode]),
      [
        [db, "644"],
        [`${db}-wal`, "644"],
      ],
    );
    for (const f of [db, `${db}-wal`, `${db}-shm`]) assert.equal(mode(f), "600", f);
    assert.equal(s.acquire("a", "key1", "m", "p", 2000, 6000)!.resumed, true, "the leases are still there");
    s.close();
    assert.throws(
      () => new LeaseStore(join(dir, "missing", "seng.db"), apps),
      /^Error: database: .*missing\/seng\.db: cannot create it \(ENOENT\)$/,
    );
  } finally {
    process.umask(old);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the gateway rotates its cookie secret every period; a cookie lives one to two periods", async () => {
  const ctx = async (role: "server" | "client") => {
    const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const cert = await selfSignedCert({ keys, name: `CN=${role}`, days: 1 });
    const keyPem = keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string;
    return new DtlsContext({ role, certPem: cert.pem, keyPem });
  };
  const listener = new DtlsListener(await ctx("server"));
  const cctx = await ctx("client");
  const peer = "192.0.2.1:1000";
  const cookieHello = (): Buffer => {
    const c = DtlsSession.client(cctx);
    const v = listener.handle(c.start()[0]!, peer);
    assert.equal(v.verdict, "reply");
    const hello = v.verdict === "reply" ? c.receiveMany(v.out).out[0]! : Buffer.alloc(0);
    c.free();
    return hello;
  };
  const accepted = (hello: Buffer): boolean => {
    const r = listener.handle(hello, peer);
    if (r.verdict === "accept") r.session.free();
    return r.verdict === "accept";
  };
  const rot = new CookieRotation(listener, 0);
  const hello = cookieHello();
  assert.equal(rot.tick(COOKIE_ROTATION_MS - 1), false, "not before a period has passed");
  assert.ok(accepted(hello));
  assert.equal(rot.tick(COOKIE_ROTATION_MS), true);
  assert.ok(accepted(hello), "the previous secret is accepted for one period");
  assert.equal(rot.tick(2 * COOKIE_ROTATION_MS - 1), false);
  assert.equal(rot.tick(2 * COOKIE_ROTATION_MS), true);
  assert.ok(!accepted(hello), "a cookie two secrets old is refused");
  assert.ok(accepted(cookieHello()), "fresh cookies work");
});

test("the handshake budget of all sources together: a burst, then its rate", () => {
  const b = new TokenBucket(10, 5);
  let ok = 0;
  for (let i = 0; i < 20; i++) if (b.take(1000)) ok++;
  assert.equal(ok, 5);
  assert.equal(b.take(1050), false, "half a token after 50 ms");
  assert.equal(b.take(1100), true, "one token after 100 ms");
});

test("abuse budget: a burst is tolerated, then throttle, throttle, close; quiet time forgives", () => {
  const t = new Tunnel("192.0.2.1:1", undefined as never, 0);
  let now = 1000;
  for (let i = 0; i < BAD_BURST; i++) assert.equal(t.bad(now), "ok");
  assert.equal(t.bad(now), "throttle");
  assert.equal(t.throttledUntil, now + THROTTLE_MS);
  for (let s = 2; s <= MAX_STRIKES; s++) {
    now = t.throttledUntil; // refilled by BAD_RATE a second meanwhile, then spent again
    let v: string;
    do v = t.bad(now);
    while (v === "ok");
    assert.equal(v, s === MAX_STRIKES ? "close" : "throttle");
  }
  // A tunnel whose bad packets stay within BAD_RATE is never throttled.
  const calm = new Tunnel("192.0.2.2:1", undefined as never, 0);
  for (let i = 0; i < 10 * BAD_RATE; i++) assert.equal(calm.bad(i * (1000 / BAD_RATE)), "ok");
  // Strikes are forgotten after a quiet period.
  const later = new Tunnel("192.0.2.3:1", undefined as never, 0);
  for (let i = 0; i <= BAD_BURST; i++) later.bad(0);
  assert.equal(later.strikes, 1);
  for (let i = 0; i <= BAD_BURST; i++) later.bad(60_000);
  assert.equal(later.strikes, 1, "a new first strike, not a second");
});

test("ICMP fragmentation needed: type 3 code 4, next-hop MTU, the original header quoted, valid checksums", () => {
  const orig = ipv4("100.64.1.2", "198.18.2.2", 1500);
  orig[6] = 0x40;
  assert.equal(dontFragment(orig), true);
  assert.equal(dontFragment(ipv4("100.64.1.2", "198.18.2.2")), false);
  const p = fragmentationNeeded(orig, ipToInt("100.64.0.1"), 1400);
  const sum = (b: Buffer) => {
    let x = 0;
    for (let i = 0; i < b.length; i += 2) x += b.readUInt16BE(i);
    while (x > 0xffff) x = (x & 0xffff) + (x >>> 16);
    return x;
  };
  assert.equal(p.length, 20 + 8 + 28);
  assert.equal(p.readUInt16BE(2), p.length);
  assert.equal(p[9], 1);
  assert.equal(intToIp(p.readUInt32BE(12)), "100.64.0.1");
  assert.equal(intToIp(p.readUInt32BE(16)), "100.64.1.2");
  assert.equal(sum(p.subarray(0, 20)), 0xffff, "IP header checksum");
  assert.deepEqual([p[20], p[21]], [3, 4]);
  assert.equal(p.readUInt16BE(26), 1400);
  assert.deepEqual(p.subarray(28), orig.subarray(0, 28));
  assert.equal(sum(p.subarray(20)), 0xffff, "ICMP checksum");
  assert.equal(checkTunnelPacket(p, ipToInt("100.64.0.1")), undefined, "a well-formed packet");
});
