/** Gateway building blocks without the network: IP checks, rate limiting, config validation, leases. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkTunnelPacket, intToIp, ipToInt, parseCidr } from "../../src/packet/ip.js";
import { RateLimiter, sourceIp } from "../../src/gateway/ratelimit.js";
import { ConfigError, loadConfig, parseConfig } from "../../src/policy/config.js";
import { LeaseStore } from "../../src/gateway/leases.js";

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
