/**
 * The runtime with what third-party software does (issue 14, section 3), unmodified apps under the preload in the
 * namespace lab (test/helpers/lab.ts):
 *  - every record type of Node's resolver API (dns, dns.promises, both Resolver classes; what got's dnsCache does
 *    with resolve4/resolve6 { ttl: true }) answered by a DNS server in the server namespace through the tunnel,
 *    ENODATA / ENOTFOUND where it has no answer, each query from a random source port (issue 13, item 6);
 *  - TLS sockets over the runtime's sockets know their addresses: an HTTPS client, and an HTTPS server in the app
 *    (what express's req.ip reads);
 *  - Node's host-handle escapes are refused.
 * Needs root, iproute2, curl.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Lab, SERVER_IP, waitLine } from "../helpers/lab.js";
import { ROOT, type NsProcess } from "../helpers/netns.js";

const MR = "c3".repeat(32);
const REGISTER = join(ROOT, "src/runtime/register.ts");
const DISABLED = /^SENG: host networking is disabled in a shielded app: /;
const PORT_QUERIES = 16;

const SERVERS = {
  /**
   * An authoritative DNS server for seng.test (and the PTR of the server's address): every record type, a name with
   * an A record only, CNAME, NXDOMAIN. Prints each query with its source address and port.
   */
  "zone.cjs": `
const s = require("dgram").createSocket("udp4");
const name = (n) => Buffer.concat([...n.split(".").map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])), Buffer.from([0])]);
const cs = (t) => Buffer.concat([Buffer.from([Buffer.byteLength(t)]), Buffer.from(t)]);
const u16 = (n) => Buffer.from([n >> 8, n & 255]);
const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
const T = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, SRV: 33, NAPTR: 35, ANY: 255, CAA: 257 };
const SVC = [
  [T.A, Buffer.from([198, 18, 2, 2])],
  [T.AAAA, Buffer.from("20010db8000000000000000000000002", "hex")],
  [T.MX, Buffer.concat([u16(10), name("mail.seng.test")])],
  [T.TXT, Buffer.concat([cs("hello"), cs("world")])],
  [T.NS, name("ns1.seng.test")],
  [T.SOA, Buffer.concat([name("ns1.seng.test"), name("admin.seng.test"), u32(2024), u32(3600), u32(600), u32(86400), u32(30)])],
  [T.SRV, Buffer.concat([u16(1), u16(5), u16(8443), name("svc.seng.test")])],
  [T.CAA, Buffer.concat([Buffer.from([0, 5]), Buffer.from("issueca.seng.test")])],
  [T.NAPTR, Buffer.concat([u16(100), u16(10), cs("S"), cs("SIP+D2U"), cs(""), name("_sip._udp.seng.test")])],
];
const zone = (q) => {
  if (q === "svc.seng.test") return SVC;
  if (q === "v4only.seng.test" || /^n\\d+\\.seng\\.test$/.test(q)) return [[T.A, Buffer.from([198, 18, 2, 2])]];
  if (q === "alias.seng.test") return [[T.CNAME, name("svc.seng.test")]];
  if (q === "2.2.18.198.in-addr.arpa") return [[T.PTR, name("srv.seng.test")]];
  // TXT answers of about 800 and 2000 bytes: over 512 (the limit without EDNS), and over EDNS's 1232.
  if (q === "big.seng.test") return [[T.TXT, Buffer.concat([0, 1, 2, 3].map((i) => cs(String(i).repeat(200))))]];
  if (q === "huge.seng.test") return [[T.TXT, Buffer.concat([0, 1, 2, 3, 4, 5, 6, 7].map((i) => cs(String(i).repeat(250))))]];
  return undefined;
};
s.on("message", (m, r) => {
  let off = 12; const labels = [];
  while (m[off]) { labels.push(m.toString("utf8", off + 1, off + 1 + m[off])); off += m[off] + 1; }
  const q = m.subarray(12, off + 5), qname = labels.join(".").toLowerCase(), qtype = m.readUInt16BE(off + 1);
  console.log(JSON.stringify({ query: qname, type: qtype, from: r.address, port: r.port }));
  const recs = zone(qname);
  const answers = [];
  const add = (owner, [t, rdata]) => { const b = Buffer.alloc(10); b.writeUInt16BE(t, 0); b.writeUInt16BE(1, 2); b.writeUInt32BE(30, 4); b.writeUInt16BE(rdata.length, 8); answers.push(Buffer.concat([name(owner), b, rdata])); };
  for (const rec of recs ?? []) {
    if (rec[0] === qtype || qtype === T.ANY) add(qname, rec);
    else if (rec[0] === T.CNAME) { add(qname, rec); for (const t of zone("svc.seng.test")) if (t[0] === qtype) add("svc.seng.test", t); }
  }
  const h = Buffer.alloc(12); m.copy(h, 0, 0, 2); h.writeUInt16BE(1, 4);
  h.writeUInt16BE(recs ? 0x8580 : 0x8583, 2); h.writeUInt16BE(answers.length, 6);
  // UDP answers: 512 bytes at most, or what an EDNS(0) OPT record (the only additional record asked with) allows.
  const limit = m.readUInt16BE(10) > 0 ? m.readUInt16BE(off + 5 + 3) : 512;
  let res = Buffer.concat([h, q, ...answers]);
  if (res.length > limit) { h.writeUInt16BE(0x8780, 2); h.writeUInt16BE(0, 6); res = Buffer.concat([h, q]); }
  s.send(res, r.port, r.address);
});
s.bind(53, "${SERVER_IP}", () => console.log(JSON.stringify({ listening: true })));
`,
  /** HTTPS on 8443: answers with the address and port it sees. */
  "tls-server.cjs": `
const fs = require("fs"), https = require("https"), path = require("path");
const dir = process.argv[2];
https.createServer({ cert: fs.readFileSync(path.join(dir, "gateway.pem")), key: fs.readFileSync(path.join(dir, "gateway.key")) }, (q, s) => {
  s.end(JSON.stringify({ remote: q.socket.remoteAddress, remotePort: q.socket.remotePort }));
}).listen(8443, "${SERVER_IP}", () => console.log(JSON.stringify({ listening: true })));
`,
};

const APPS = {
  /** Every resolve method, in each of Node's forms. */
  "resolve.mjs": `
import dns from "node:dns";
import { promises as dnsP } from "node:dns";
const out = {};
const err = (e) => e.code + " " + e.syscall + " " + e.hostname;
const cb = (f) => new Promise((res) => f((e, v) => res(e ? err(e) : v)));
out.resolve6 = await dnsP.resolve6("svc.seng.test");
out.resolve6ttl = await dnsP.resolve6("svc.seng.test", { ttl: true });
out.mx = await dnsP.resolveMx("svc.seng.test");
out.txt = await dnsP.resolveTxt("svc.seng.test");
out.ns = await dnsP.resolveNs("svc.seng.test");
out.soa = await dnsP.resolveSoa("svc.seng.test");
out.srv = await dnsP.resolveSrv("svc.seng.test");
out.caa = await dnsP.resolveCaa("svc.seng.test");
out.naptr = await dnsP.resolveNaptr("svc.seng.test");
out.cname = await dnsP.resolveCname("alias.seng.test");
out.viaAlias = await dnsP.resolve6("alias.seng.test");
out.any = (await dnsP.resolveAny("svc.seng.test")).map((r) => r.type).sort();
out.ptr = await dnsP.resolvePtr("2.2.18.198.in-addr.arpa");
out.reverse = await cb((k) => dns.reverse("198.18.2.2", k));
out.resolveMxCb = await cb((k) => dns.resolve("svc.seng.test", "MX", k));
out.resolveDefault = await cb((k) => dns.resolve("svc.seng.test", k));
out.resolverCb = await cb((k) => new dns.Resolver().resolve6("svc.seng.test", k));
// What cacheable-lookup (got's dnsCache) does: a promises Resolver, A and AAAA with TTLs.
const r = new dnsP.Resolver();
out.cacheable = await Promise.all([r.resolve4("v4only.seng.test", { ttl: true }), r.resolve6("v4only.seng.test", { ttl: true }).catch((e) => err(e))]);
out.nodata = await dnsP.resolveMx("v4only.seng.test").catch(err);
out.bigTxt = (await dnsP.resolveTxt("big.seng.test")).map((rec) => rec.map((chunk) => chunk.length));
out.hugeTxt = await dnsP.resolveTxt("huge.seng.test").catch((e) => e.code + " " + e.message);
out.nx = await cb((k) => dns.resolveTxt("nope.seng.test", k));
out.badType = (() => { try { dns.resolve("svc.seng.test", "BOGUS", () => {}); return "accepted"; } catch (e) { return e.code; } })();
out.lookupService = await new Promise((res) => dns.lookupService("198.18.2.2", 22, (e) => res(e ? e.message : "NOT REFUSED")));
// Distinct names (no cache): one query each, for the source ports.
for (let i = 0; i < ${PORT_QUERIES}; i++) await dnsP.resolve4("n" + i + ".seng.test");
console.log(JSON.stringify(out));
`,
  /** TLS clients over SDK sockets: https.get and tls.connect; what their sockets say about the addresses. */
  "tls-client.cjs": `
const https = require("https"), tls = require("tls");
const addr = (s) => ({ remoteAddress: s.remoteAddress, remotePort: s.remotePort, remoteFamily: s.remoteFamily, localAddress: s.localAddress, localPort: s.localPort });
(async () => {
  const out = {};
  out.https = await new Promise((res, rej) => https.get("https://${SERVER_IP}:8443/", { rejectUnauthorized: false }, (r) => {
    let b = ""; const a = addr(r.socket); r.on("data", (d) => (b += d)); r.on("end", () => res({ ...a, seen: JSON.parse(b) }));
  }).on("error", rej));
  out.tls = await new Promise((res, rej) => { const s = tls.connect(8443, "${SERVER_IP}", { rejectUnauthorized: false }, () => { const a = addr(s); s.end(); res(a); }); s.on("error", rej); });
  console.log(JSON.stringify(out));
})().catch((e) => { console.log(JSON.stringify({ error: e.stack })); process.exitCode = 1; });
`,
  /** An HTTPS server in the app: what an express app's req.ip (req.socket.remoteAddress) would be. */
  "tls-app-server.cjs": `
const fs = require("fs"), https = require("https"), path = require("path");
const dir = process.argv[2];
const srv = https.createServer({ cert: fs.readFileSync(path.join(dir, "gateway.pem")), key: fs.readFileSync(path.join(dir, "gateway.key")) }, (q, s) => {
  const k = q.socket;
  s.end(JSON.stringify({ ip: k.remoteAddress, remotePort: k.remotePort, family: k.remoteFamily, localAddress: k.localAddress, localPort: k.localPort, address: k.address() }));
});
srv.listen(8444, () => console.log(JSON.stringify({ listening: true })));
process.on("SIGTERM", () => srv.close(() => process.exit(0)));
`,
  /** got (a devDependency) with dnsCache: cacheable-lookup resolves A and AAAA through a dns.promises.Resolver. */
  "got.mjs": `
const { default: got } = await import(process.argv[2]);
const opts = { dnsCache: true, https: { rejectUnauthorized: false }, retry: { limit: 0 }, timeout: { request: 30000 } };
const out = {};
try {
  out.first = await got("https://svc.seng.test:8443/first", opts).json();
  out.second = await got("https://svc.seng.test:8443/second", opts).json();
} catch (e) { out.error = e.code + " " + e.message; }
console.log(JSON.stringify(out));
`,
  /** Host handles: each must fail closed. */
  "escapes.cjs": `
const net = require("net"), dgram = require("dgram"), { Worker } = require("worker_threads");
const out = {};
const attempt = (k, f) => { try { const h = f(); out[k] = "NOT REFUSED"; try { h && h.close && h.close(); } catch {} } catch (e) { out[k] = e.message; } };
attempt("createServerHandle", () => net._createServerHandle("0.0.0.0", 9999, 4));
attempt("createSocketHandle", () => dgram._createSocketHandle("0.0.0.0", 9998, 4));
class TCP {} // a handle of the class Node's TCP handles have
attempt("socketHandle", () => new net.Socket({ handle: new TCP() }));
attempt("socketHandleNoNew", () => net.Socket({ handle: new TCP() }));
attempt("socketFd", () => new net.Socket({ fd: 7 }));
attempt("subclassFd", () => { class S extends net.Socket {} return new S({ fd: 7 }); });
out.stillSocket = new net.Socket() instanceof net.Socket && net.Stream === net.Socket;
(async () => {
  out.worker = await new Promise((res) => {
    const w = new Worker("require('net')._createServerHandle('0.0.0.0', 9997, 4)", { eval: true });
    w.on("error", (e) => res(e.message)); w.on("exit", () => res("NOT REFUSED"));
  });
  console.log(JSON.stringify(out));
})();
`,
};

describe("third-party behaviour of shielded apps in the namespace lab", { concurrency: false }, () => {
  let lab: Lab;
  const servers: Record<string, NsProcess> = {};

  before(async () => {
    lab = await Lab.create({
      apps: [{ name: "compat", subnet: "100.64.12.0/24", identities: [{ mrenclave: MR }] }],
      extraYaml: `dns: [${SERVER_IP}]`,
    });
    await lab.startGateway();
    for (const [name, src] of [...Object.entries(SERVERS), ...Object.entries(APPS)])
      writeFileSync(join(lab.dir, name), src);
    for (const [file, args] of [
      ["zone.cjs", []],
      ["tls-server.cjs", [lab.dir]],
    ] as const) {
      servers[file] = lab.server(process.execPath, [join(lab.dir, file), ...args]);
      await waitLine(servers[file], (o) => o.listening === true);
    }
  });

  after(async () => {
    await lab?.destroy();
  });

  function app(file: string, args: string[] = []): NsProcess {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      SENG_GATEWAY: lab.gatewayAddr(0),
      SENG_PIN: lab.pin,
      SENG_TEE: "sim",
      SENG_SIM_DIR: lab.simDir,
      SENG_MRENCLAVE: MR,
      SENG_LOG: "json",
    };
    delete env.NODE_TEST_CONTEXT;
    return lab.clients[0]!.spawn(
      process.execPath,
      ["--import", "tsx", "--import", REGISTER, join(lab.dir, file), ...args],
      { env },
    );
  }

  function leaseOf(stderr: string): string {
    const lease = stderr
      .split("\n")
      .filter((l) => l.startsWith('{"seng":true'))
      .map((l) => JSON.parse(l) as { event: string; address?: string })
      .find((o) => o.event === "lease");
    assert.ok(lease?.address, `no lease line on stderr:\n${stderr}`);
    return lease.address;
  }

  async function run(file: string, args: string[] = []) {
    const p = app(file, args);
    const r = await p.wait(90_000).catch((e: Error) => {
      throw new Error(`${e.message}\nstdout:\n${p.stdout}\nstderr:\n${p.stderr}`);
    });
    assert.equal(r.code, 0, `${file} exited ${r.code ?? r.signal}\n${r.stdout}\n${r.stderr}`);
    const out = r.stdout.split("\n").filter((l) => l.startsWith("{"));
    return {
      result: JSON.parse(out[out.length - 1]!) as Record<string, unknown>,
      address: leaseOf(r.stderr),
    };
  }

  const linesOf = (p: NsProcess, from = 0) =>
    p.stdout
      .slice(from)
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  test("every resolver record type is answered through the tunnel, each query from a random port", async () => {
    const zone = servers["zone.cjs"]!;
    const from = zone.stdout.length;
    const { result: r, address } = await run("resolve.mjs");
    assert.deepEqual(r.resolve6, ["2001:db8::2"]);
    assert.deepEqual(r.resolve6ttl, [{ address: "2001:db8::2", ttl: 30 }]);
    assert.deepEqual(r.mx, [{ priority: 10, exchange: "mail.seng.test" }]);
    assert.deepEqual(r.txt, [["hello", "world"]]);
    assert.deepEqual(r.ns, ["ns1.seng.test"]);
    assert.deepEqual(r.soa, {
      nsname: "ns1.seng.test",
      hostmaster: "admin.seng.test",
      serial: 2024,
      refresh: 3600,
      retry: 600,
      expire: 86400,
      minttl: 30,
    });
    assert.deepEqual(r.srv, [{ priority: 1, weight: 5, port: 8443, name: "svc.seng.test" }]);
    assert.deepEqual(r.caa, [{ critical: 0, issue: "ca.seng.test" }]);
    assert.deepEqual(r.naptr, [
      {
        flags: "S",
        service: "SIP+D2U",
        regexp: "",
        replacement: "_sip._udp.seng.test",
        order: 100,
        preference: 10,
      },
    ]);
    assert.deepEqual(r.cname, ["svc.seng.test"]);
    assert.deepEqual(r.viaAlias, ["2001:db8::2"]);
    assert.deepEqual(r.any, ["A", "AAAA", "CAA", "MX", "NAPTR", "NS", "SOA", "SRV", "TXT"]);
    assert.deepEqual(r.ptr, ["srv.seng.test"]);
    assert.deepEqual(r.reverse, ["srv.seng.test"]);
    assert.deepEqual(r.resolveMxCb, [{ priority: 10, exchange: "mail.seng.test" }]);
    assert.deepEqual(r.resolveDefault, [SERVER_IP]);
    assert.deepEqual(r.resolverCb, ["2001:db8::2"]);
    assert.deepEqual(r.cacheable, [[{ address: SERVER_IP, ttl: 30 }], "ENODATA queryAaaa v4only.seng.test"]);
    assert.equal(r.nodata, "ENODATA queryMx v4only.seng.test");
    // EDNS(0): an 800-byte answer comes whole; one over 1232 bytes is a clear error, not a wrong ENODATA.
    assert.deepEqual(r.bigTxt, [[200, 200, 200, 200]]);
    assert.match(
      String(r.hugeTxt),
      /^EBADRESP queryTxt EBADRESP huge\.seng\.test \(the answer is larger than 1232 bytes/,
    );
    assert.equal(r.nx, "ENOTFOUND queryTxt nope.seng.test");
    assert.equal(r.badType, "ERR_INVALID_ARG_VALUE");
    assert.match(String(r.lookupService), DISABLED);

    const queries = linesOf(zone, from) as { query: string; from: string; port: number }[];
    assert.ok(
      queries.length > 20 && queries.every((q) => q.from === address),
      `every query came from the leased address through the tunnel: ${JSON.stringify(queries)}`,
    );
    const ports = queries.filter((q) => /^n\d+\.seng\.test$/.test(q.query)).map((q) => q.port);
    assert.equal(ports.length, PORT_QUERIES);
    const steps = ports.slice(1).map((p, i) => p - ports[i]!);
    assert.ok(
      steps.filter((d) => Math.abs(d) <= 2).length <= 2,
      `successive queries' source ports are not sequential: ${ports.join(",")}`,
    );
    assert.ok(ports.every((p) => p >= 49152 && p <= 65535));
  });

  test("TLS clients over the runtime's sockets know their addresses", async () => {
    const { result: r, address } = await run("tls-client.cjs");
    for (const k of ["https", "tls"] as const) {
      const a = r[k] as Record<string, unknown>;
      assert.equal(a.remoteAddress, SERVER_IP, k);
      assert.equal(a.remotePort, 8443, k);
      assert.equal(a.remoteFamily, "IPv4", k);
      assert.equal(a.localAddress, address, k);
      assert.ok((a.localPort as number) >= 49152, k);
    }
    const seen = (r.https as { seen: { remote: string; remotePort: number } }).seen;
    assert.equal(seen.remote, address);
    assert.equal(seen.remotePort, (r.https as { localPort: number }).localPort);
  });

  test("an HTTPS server in the app knows its clients' addresses (req.ip)", async () => {
    const p = app("tls-app-server.cjs", [lab.dir]);
    try {
      await waitLine(p, (o) => o.listening === true, 60_000);
      const address = leaseOf(p.stderr);
      const r = await lab.srv.exec(
        "curl",
        ["-sSk", "--max-time", "10", "--local-port", "40123", `https://${address}:8444/`],
        { timeoutMs: 30_000 },
      );
      assert.deepEqual(JSON.parse(r.stdout), {
        ip: SERVER_IP,
        remotePort: 40123,
        family: "IPv4",
        localAddress: address,
        localPort: 8444,
        address: { address, family: "IPv4", port: 8444 },
      });
    } finally {
      await p.kill("SIGKILL", 1000);
    }
  });

  test("got with dnsCache: true works unmodified (its resolver's A and AAAA queries go through the tunnel)", async () => {
    const zone = servers["zone.cjs"]!;
    const from = zone.stdout.length;
    const { result: r, address } = await run("got.mjs", [import.meta.resolve("got")]);
    assert.equal(r.error, undefined, String(r.error));
    assert.equal((r.first as { remote: string }).remote, address);
    assert.equal((r.second as { remote: string }).remote, address);
    const asked = linesOf(zone, from) as { query: string; type: number; from: string }[];
    const svc = asked.filter((q) => q.query === "svc.seng.test");
    assert.deepEqual([...new Set(svc.map((q) => q.type))].sort(), [1, 28], JSON.stringify(asked));
    assert.ok(asked.every((q) => q.from === address));
  });

  test("Node's host-handle escapes are refused", async () => {
    const { result: r } = await run("escapes.cjs");
    for (const k of [
      "createServerHandle",
      "createSocketHandle",
      "socketHandle",
      "socketHandleNoNew",
      "socketFd",
      "subclassFd",
      "worker",
    ])
      assert.match(String(r[k]), DISABLED, `${k}: ${String(r[k])}`);
    assert.equal(r.stillSocket, true, "net.Socket is still the class apps know");
  });
});
