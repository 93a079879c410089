/**
 * The shielded runtime: SDK sockets (net.ts, dgram.ts, dns.ts, agents.ts) on lwIP, and the preload (register.ts).
 *
 * In this process, without any network: the DNS wire format, error mapping, and SDK sockets over lwIP's own
 * loopback (a stand-in tunnel hands out a lease): backpressure, read flow control, half-close, refusal, timeouts,
 * resets, servers.
 *
 * In a namespace lab (test/helpers/lab.ts): unmodified apps started with
 * `node --import tsx --import src/runtime/register.ts app` in the client namespace, whose only way to the server
 * namespace is the tunnel: HTTP/HTTPS/fetch clients, 100 MB both ways with SHA-256, 200 concurrent connections,
 * UDP echo, DNS answered by a responder in the server namespace (the lease's DNS), an HTTP server in the app reached
 * at its leased address, and host networking failing closed.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  addressesFor,
  decodeMessage,
  DnsFormatError,
  encodeQuery,
  lookupAll,
  TYPE_A,
  TYPE_CNAME,
} from "../../src/runtime/dns.js";
import { createConnection, createServer, errorCode, Socket, type Server } from "../../src/runtime/net.js";
import { createSocket } from "../../src/runtime/dgram.js";
import { ShieldedStack } from "../../src/runtime/stack.js";
import { Lab, SERVER_IP, TCP_TOOL, waitLine } from "../helpers/lab.js";
import { LeaseOnlyTunnel } from "../helpers/loopback-tunnel.js";
import { ROOT, type NsProcess } from "../helpers/netns.js";

/** Megabytes each way for the transfer test: the 100 by default (SENG_TEST_XFER_MB to change). */
const XFER_BYTES = Number(process.env.SENG_TEST_XFER_MB ?? 100) * 1024 * 1024;
const CONNECTIONS = 200;
const MR = "a1".repeat(32);
const REGISTER = join(ROOT, "src/runtime/register.ts");
const DISABLED = /^SENG: host networking is disabled in a shielded app: /;

// ---- without a network ----------------------------------------------------------------------------------------------

describe("DNS wire format", () => {
  function answer(id: number, name: string, records: Buffer[], rcode = 0): Buffer {
    const q = encodeQuery(id, name).subarray(12);
    const h = Buffer.alloc(12);
    h.writeUInt16BE(id, 0);
    h.writeUInt16BE(0x8180 | rcode, 2);
    h.writeUInt16BE(1, 4);
    h.writeUInt16BE(records.length, 6);
    return Buffer.concat([h, q, ...records]);
  }
  function rr(namePtr: number, type: number, ttl: number, rdata: Buffer): Buffer {
    const b = Buffer.alloc(12);
    b.writeUInt16BE(0xc000 | namePtr, 0);
    b.writeUInt16BE(type, 2);
    b.writeUInt16BE(1, 4);
    b.writeUInt32BE(ttl, 6);
    b.writeUInt16BE(rdata.length, 10);
    return Buffer.concat([b, rdata]);
  }

  test("a query encodes as RFC 1035 says", () => {
    const q = encodeQuery(0x1234, "www.example.com");
    assert.equal(
      q.toString("hex"),
      "123401000001000000000000" + "03777777076578616d706c6503636f6d00" + "00010001",
    );
    assert.throws(() => encodeQuery(1, "a..b"), RangeError);
    assert.throws(() => encodeQuery(1, `${"x".repeat(64)}.com`), RangeError);
  });

  test("answers decode with compression, CNAME chains are followed, bad messages are refused", () => {
    // www.example.com CNAME svc.example.com (svc + pointer to "example.com" at offset 16), svc A 10.1.2.3
    const cname = Buffer.concat([Buffer.from([3]), Buffer.from("svc"), Buffer.from([0xc0, 16])]);
    const msg = answer(7, "www.example.com", [
      rr(12, TYPE_CNAME, 300, cname),
      (() => {
        const r = rr(0, TYPE_A, 60, Buffer.from([10, 1, 2, 3]));
        // name: "svc" label at the CNAME's rdata (offset 12+21+12 = 45 in this message)
        r.writeUInt16BE(0xc000 | 45, 0);
        return r;
      })(),
    ]);
    const m = decodeMessage(msg);
    assert.equal(m.id, 7);
    assert.equal(m.response, true);
    assert.equal(m.rcode, 0);
    assert.deepEqual(m.questions, [{ name: "www.example.com", type: 1, class: 1 }]);
    assert.equal(m.answers[0]!.data, "svc.example.com");
    assert.equal(m.answers[1]!.name, "svc.example.com");
    assert.deepEqual(addressesFor(m, "www.example.com"), [{ address: "10.1.2.3", ttl: 60 }]);
    assert.deepEqual(addressesFor(m, "other.example.com"), []);
    assert.equal(decodeMessage(answer(9, "nope.example.com", [], 3)).rcode, 3);

    assert.throws(() => decodeMessage(Buffer.alloc(5)), DnsFormatError);
    const loop = answer(1, "a.b", [rr(0, TYPE_A, 1, Buffer.from([1, 2, 3, 4]))]);
    loop.writeUInt16BE(0xc000 | 21, 21); // the record's name (after the 21-byte header and question) points at itself
    assert.throws(() => decodeMessage(loop), /compression loop/);
    assert.throws(() => decodeMessage(msg.subarray(0, msg.length - 2)), DnsFormatError);
  });

  test("IP literals and localhost need no query", async () => {
    assert.deepEqual(await lookupAll("198.18.2.2"), [{ address: "198.18.2.2", family: 4 }]);
    assert.deepEqual(await lookupAll("localhost"), [{ address: "127.0.0.1", family: 4 }]);
    assert.deepEqual(await lookupAll("api.localhost"), [{ address: "127.0.0.1", family: 4 }]);
  });
});

test("stack errors map to Node's by their code, never by the wording of a message", () => {
  assert.equal(errorCode("ECONNRESET"), "ECONNRESET");
  assert.equal(errorCode("EADDRNOTAVAIL"), "EADDRNOTAVAIL");
  assert.equal(errorCode(Object.assign(new Error("x"), { code: "EADDRINUSE", lwipErr: -8 })), "EADDRINUSE");
  assert.equal(errorCode(Object.assign(new Error("x"), { code: "ERR_SENG_ENTROPY" })), "ERR_SENG_ENTROPY");
  // Messages that once were matched as text mean nothing now.
  assert.equal(errorCode("Connection reset."), "EIO");
  assert.equal(errorCode(new Error("Connection refused.")), "EIO");
  assert.equal(errorCode(-14), "EIO");
});

/** A tunnel that only hands out a lease: lwIP's own address is reached over its loopback. */
function xorshift(seed: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size + 3);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  return b.subarray(0, size);
}

describe("SDK sockets over lwIP's loopback", { concurrency: false }, () => {
  const ME = "100.64.99.2";
  let shield: ShieldedStack;
  let server: Server;
  let port = 0;
  const accepted: Socket[] = [];

  before(async () => {
    shield = ShieldedStack.start({ tunnelClient: new LeaseOnlyTunnel() });
    server = createServer({ allowHalfOpen: true }, (s) => accepted.push(s as Socket));
    server.listen(0); // before the lease: waits for it
    await once(server, "listening");
    port = (server.address() as { port: number }).port;
  });
  after(() => {
    server?.close();
    shield?.close();
  });

  async function nextAccepted(): Promise<Socket> {
    const n = accepted.length;
    while (accepted.length === n) await new Promise((r) => setTimeout(r, 5));
    return accepted[n]!;
  }

  test("a listener on port 0 gets a port; connect/accept addresses are the lease's", async () => {
    assert.ok(port > 0);
    assert.equal(server.listening, true);
    const c = createConnection(port, ME);
    const connected = once(c, "connect");
    assert.ok(c instanceof Socket);
    assert.equal(c.connecting, true);
    assert.equal(c.pending, true);
    const s = await nextAccepted();
    await connected;
    assert.equal(c.pending, false);
    assert.equal(c.remoteAddress, ME);
    assert.equal(c.remotePort, port);
    assert.equal(c.localAddress, ME);
    assert.equal(s.remotePort, c.localPort);
    assert.equal(s.localPort, port);
    assert.deepEqual(c.address(), { address: ME, family: "IPv4", port: c.localPort });
    c.destroy();
    s.resume();
    await once(s, "end"); // the server allows half-open connections: it ends its side itself
    s.end();
    await once(s, "close");
  });

  test("backpressure and read flow control: 8 MB to a reader that stalls, intact", async () => {
    const total = 8 * 1024 * 1024;
    const c = createConnection({ port, host: ME });
    const s = await nextAccepted();
    s.pause(); // the reader stalls: lwIP's window closes, then the writer's buffer fills
    const h = createHash("sha256");
    let sent = 0;
    let refused = 0;
    const done = new Promise<void>((resolve) => {
      const pump = () => {
        while (sent < total) {
          const b = xorshift(sent + 1, 65536);
          h.update(b);
          sent += b.length;
          if (!c.write(b)) {
            refused++;
            return void c.once("drain", pump);
          }
        }
        c.end();
        resolve();
      };
      pump();
    });
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(sent < total, `the writer is held back (${sent} of ${total} written while the reader stalls)`);
    assert.ok(s.bytesRead <= 2 * 65536 + 65536, `lwIP stopped delivering: ${s.bytesRead} bytes read`);
    const rh = createHash("sha256");
    let got = 0;
    s.on("data", (d: Buffer) => {
      rh.update(d);
      got += d.length;
    });
    s.resume();
    await once(s, "end");
    await done;
    assert.ok(refused > 0);
    assert.equal(got, total);
    assert.equal(rh.digest("hex"), h.digest("hex"));
    assert.equal(c.bytesWritten, total);
    s.end();
    c.resume();
    await once(c, "close");
  });

  test("half-close: the peer still answers after our FIN", async () => {
    const c = createConnection(port, ME);
    const s = await nextAccepted();
    let serverGot = "";
    s.setEncoding("utf8").on("data", (d: string) => (serverGot += d));
    s.on("end", () => s.end(`you said ${serverGot}`)); // allowHalfOpen: answers after the client's FIN
    c.end("hello");
    let reply = "";
    c.setEncoding("utf8").on("data", (d: string) => (reply += d));
    await once(c, "end");
    assert.equal(reply, "you said hello");
    await once(c, "close");
  });

  test("a port with no listener refuses (ECONNREFUSED); connect errors are Node-shaped", async () => {
    const c = createConnection(1, ME);
    const [err] = (await once(c, "error")) as [NodeJS.ErrnoException];
    assert.equal(err.code, "ECONNREFUSED");
    assert.equal(err.syscall, "connect");
    assert.match(err.message, /^connect ECONNREFUSED 100\.64\.99\.2:1/);
  });

  test("setTimeout fires 'timeout' on an idle socket; resetAndDestroy resets the peer", async () => {
    const c = createConnection(port, ME);
    const connected = once(c, "connect");
    const s = await nextAccepted();
    await connected;
    const t0 = Date.now();
    c.setTimeout(150);
    await once(c, "timeout");
    assert.ok(Date.now() - t0 >= 140);
    c.setTimeout(0);
    c.resetAndDestroy();
    const [err] = (await once(s, "error")) as [NodeJS.ErrnoException];
    assert.equal(err.code, "ECONNRESET");
  });

  test("UDP: createSocket, bind, send, 'message' with rinfo", async () => {
    const a = createSocket("udp4");
    const b = createSocket("udp4");
    a.bind(0, ME);
    await once(a, "listening");
    const got = once(a, "message");
    b.send("ping", a.address().port, ME);
    const [msg, rinfo] = (await got) as [Buffer, { address: string; port: number; size: number }];
    assert.equal(msg.toString(), "ping");
    assert.equal(rinfo.address, ME);
    assert.equal(rinfo.size, 4);
    assert.equal(rinfo.port, b.address().port);
    a.close();
    b.close();
    assert.throws(() => createSocket("udp5" as "udp4"), { code: "ERR_SOCKET_BAD_TYPE" });
  });
});

// ---- in the namespace lab -----------------------------------------------------------------------------------------

const SERVERS = {
  /** HTTP on 8080 and HTTPS on 8443: print each request's peer. */
  "web.cjs": `
const fs = require("fs"), http = require("http"), https = require("https"), path = require("path");
const handler = (proto) => (q, s) => {
  console.log(JSON.stringify({ proto, remote: q.socket.remoteAddress, url: q.url, method: q.method }));
  let body = ""; q.on("data", (d) => (body += d));
  q.on("end", () => s.end(q.url === "/echo" ? body : "hello " + q.url));
};
const dir = process.argv[2];
let n = 0; const up = () => { if (++n === 2) console.log(JSON.stringify({ listening: true })); };
http.createServer(handler("http")).listen(8080, "${SERVER_IP}", up);
https.createServer({ cert: fs.readFileSync(path.join(dir, "gateway.pem")), key: fs.readFileSync(path.join(dir, "gateway.key")) }, handler("https")).listen(8443, "${SERVER_IP}", up);
`,
  /** Sends N bytes while it receives; prints both hashes when the connection closes. */
  "xfer.cjs": `
const net = require("net"), crypto = require("crypto");
const N = Number(process.argv[2]);
function chunk(seed, size) { const b = Buffer.allocUnsafe(size + 3); let x = seed >>> 0 || 1; for (let i = 0; i < size; i += 4) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; b.writeUInt32LE(x >>> 0, i); } return b.subarray(0, size); }
// allowHalfOpen: the app's FIN may come first; the server still sends the rest of its data.
net.createServer({ allowHalfOpen: true }, (s) => {
  const rx = crypto.createHash("sha256"), tx = crypto.createHash("sha256");
  let rxBytes = 0, sent = 0, seed = 7777;
  const remote = s.remoteAddress; // a closed host socket no longer knows its peer
  s.on("data", (d) => { rx.update(d); rxBytes += d.length; });
  const pump = () => { while (sent < N) { const c = chunk(seed++, Math.min(65536, N - sent)); tx.update(c); sent += c.length; if (!s.write(c)) return void s.once("drain", pump); } s.end(); };
  pump();
  s.on("error", (e) => console.log(JSON.stringify({ error: e.message })));
  s.on("close", () => console.log(JSON.stringify({ remote, rxBytes, rxSha: rx.digest("hex"), txBytes: sent, txSha: tx.digest("hex") })));
}).listen(9000, "${SERVER_IP}", () => console.log(JSON.stringify({ listening: true })));
`,
  "udp-echo.cjs": `
const s = require("dgram").createSocket("udp4");
s.on("message", (m, r) => { console.log(JSON.stringify({ udpFrom: r.address })); s.send(m, r.port, r.address); });
s.bind(7001, "${SERVER_IP}", () => console.log(JSON.stringify({ listening: true })));
`,
  /** A tiny authoritative DNS responder for seng.test: A, CNAME, NXDOMAIN. */
  "dns.cjs": `
const s = require("dgram").createSocket("udp4");
const ZONE = { "svc.seng.test": ["A", "${SERVER_IP}"], "www.seng.test": ["CNAME", "svc.seng.test"] };
const name = (n) => Buffer.concat([...n.split(".").map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])), Buffer.from([0])]);
const rr = (owner, type, rdata) => { const b = Buffer.alloc(10); b.writeUInt16BE(type, 0); b.writeUInt16BE(1, 2); b.writeUInt32BE(30, 4); b.writeUInt16BE(rdata.length, 8); return Buffer.concat([owner, b, rdata]); };
s.on("message", (m, r) => {
  let off = 12; const labels = [];
  while (m[off]) { labels.push(m.toString("utf8", off + 1, off + 1 + m[off])); off += m[off] + 1; }
  const q = m.subarray(12, off + 5), qname = labels.join(".").toLowerCase(), qtype = m.readUInt16BE(off + 1);
  console.log(JSON.stringify({ query: qname, type: qtype, from: r.address }));
  const h = Buffer.alloc(12); m.copy(h, 0, 0, 2); h.writeUInt16BE(1, 4);
  const answers = []; let n = qname;
  while (ZONE[n]) { const [t, v] = ZONE[n]; if (t === "A") { answers.push(rr(name(n), 1, Buffer.from(v.split(".").map(Number)))); break; } answers.push(rr(name(n), 5, name(v))); n = v; }
  h.writeUInt16BE(answers.length ? 0x8580 : 0x8583, 2); h.writeUInt16BE(answers.length, 6);
  s.send(Buffer.concat([h, q, ...answers]), r.port, r.address);
});
s.bind(53, "${SERVER_IP}", () => console.log(JSON.stringify({ listening: true })));
`,
};

const APPS = {
  /** Unmodified HTTP clients: http.get (global agent), a new http.Agent, https.get, fetch (GET and POST). */
  "http-client.cjs": `
const http = require("http"), https = require("https");
const get = (mod, url, opts = {}) => new Promise((res, rej) => mod.get(url, opts, (r) => { let b = ""; r.on("data", (d) => (b += d)); r.on("end", () => res({ status: r.statusCode, body: b })); }).on("error", rej));
(async () => {
  const out = {};
  out.get = await get(http, "http://${SERVER_IP}:8080/get");
  out.agent = await get(http, "http://${SERVER_IP}:8080/agent", { agent: new http.Agent({ keepAlive: false }) });
  out.https = await get(https, "https://${SERVER_IP}:8443/tls", { rejectUnauthorized: false });
  const f = await fetch("http://${SERVER_IP}:8080/fetch"); out.fetch = { status: f.status, body: await f.text() };
  const p = await fetch("http://${SERVER_IP}:8080/echo", { method: "POST", body: JSON.stringify({ n: 42 }), headers: { "content-type": "application/json" } });
  out.post = await p.json();
  console.log(JSON.stringify(out));
})().catch((e) => { console.log(JSON.stringify({ error: e.stack })); process.exitCode = 1; });
`,
  /** 20 MB each way at once through net.connect (an SDK socket under the preload), ESM named import. */
  "xfer.mjs": `
import { connect, Socket } from "node:net";
import { createHash } from "node:crypto";
const N = Number(process.argv[2]);
function chunk(seed, size) { const b = Buffer.allocUnsafe(size + 3); let x = seed >>> 0 || 1; for (let i = 0; i < size; i += 4) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; b.writeUInt32LE(x >>> 0, i); } return b.subarray(0, size); }
const tx = createHash("sha256"), rx = createHash("sha256");
let sent = 0, rxBytes = 0, seed = 1, t0, tUp, tDown, local;
const s = connect(9000, "${SERVER_IP}", () => {
  t0 = performance.now();
  local = s.localAddress;
  const pump = () => { while (sent < N) { const c = chunk(seed++, Math.min(65536, N - sent)); tx.update(c); sent += c.length; if (!s.write(c)) return void s.once("drain", pump); } s.end(); };
  pump();
});
s.on("finish", () => (tUp = performance.now()));
s.on("data", (d) => { rx.update(d); rxBytes += d.length; });
s.on("end", () => (tDown = performance.now()));
s.on("error", (e) => { console.log(JSON.stringify({ error: e.message })); process.exitCode = 1; });
s.on("close", () => console.log(JSON.stringify({ sdk: s.constructor.name, isNetSocket: s instanceof Socket, local, txBytes: sent, txSha: tx.digest("hex"), rxBytes, rxSha: rx.digest("hex"), upMs: tUp - t0, downMs: tDown - t0, totalMs: performance.now() - t0 })));
`,
  /** Many connections at once to an echo server; half made as \`new net.Socket().connect()\`. */
  "many.mjs": `
import net from "node:net";
import { createHash } from "node:crypto";
const N = Number(process.argv[2]);
const t0 = performance.now();
const one = (i) => new Promise((resolve) => {
  const data = Buffer.alloc(32768, i);
  const s = i % 2 ? net.connect(7000, "${SERVER_IP}") : new net.Socket().connect(7000, "${SERVER_IP}");
  const h = createHash("sha256"); let n = 0;
  s.on("data", (d) => { h.update(d); n += d.length; });
  s.on("end", () => resolve(n === data.length && h.digest("hex") === createHash("sha256").update(data).digest("hex")));
  s.on("error", (e) => resolve(e.message));
  s.end(data);
});
const results = await Promise.all(Array.from({ length: N }, (_, i) => one(i)));
console.log(JSON.stringify({ ok: results.filter((r) => r === true).length, failures: results.filter((r) => r !== true), ms: performance.now() - t0 }));
`,
  "udp.cjs": `
const dgram = require("dgram");
const s = dgram.createSocket("udp4");
const N = 10, seen = new Set();
const timer = setTimeout(() => { console.log(JSON.stringify({ got: seen.size, timeout: true })); process.exit(1); }, 10000);
s.on("message", (m, r) => { seen.add(m.toString()); if (seen.size === N) { clearTimeout(timer); console.log(JSON.stringify({ got: seen.size, from: r.address, port: r.port, local: s.address() })); s.close(); } });
let i = 0; const send = () => { if (seen.size === N) return; s.send("ping " + (i++ % N), 7001, "${SERVER_IP}"); if (i < 200) setTimeout(send, 20); }; send();
`,
  "dns.mjs": `
import dns from "node:dns";
import { lookup } from "node:dns/promises";
import http from "node:http";
const out = {};
out.lookup = await new Promise((res) => dns.lookup("svc.seng.test", (e, a, f) => res(e ? e.code : [a, f])));
out.cname = await lookup("www.seng.test");
out.all = await lookup("svc.seng.test", { all: true });
out.resolve4 = await dns.promises.resolve4("svc.seng.test");
out.nx = await lookup("nope.seng.test").catch((e) => e.code);
out.v6 = await lookup("svc.seng.test", { family: 6 }).catch((e) => e.code);
out.mx = await dns.promises.resolveMx("seng.test").catch((e) => e.code); // through the tunnel too (compat.test.ts)
out.http = await new Promise((res, rej) => http.get("http://svc.seng.test:8080/by-name", (r) => { let b = ""; r.on("data", (d) => (b += d)); r.on("end", () => res(b)); }).on("error", rej));
console.log(JSON.stringify(out));
`,
  /** An HTTP server inside the app, listening on the leased address through the tunnel. */
  "enclave-server.cjs": `
const http = require("http");
const srv = http.createServer((q, s) => s.end(JSON.stringify({ hello: "from the enclave", remote: q.socket.remoteAddress, url: q.url })));
srv.listen(8081, () => console.log(JSON.stringify({ listening: true, address: srv.address() })));
process.on("SIGTERM", () => srv.close(() => { console.log(JSON.stringify({ closed: true })); process.exit(0); }));
`,
  /** Sends a numbered message every 200 ms over one connection for a while; prints what came back. */
  "survive.cjs": `
const s = require("net").connect(7000, "${SERVER_IP}");
let i = 0, got = "";
s.setEncoding("utf8").on("data", (d) => (got += d));
s.on("error", (e) => { console.log(JSON.stringify({ error: e.message })); process.exitCode = 1; });
const t = setInterval(() => {
  s.write("m" + i++ + ";");
  if (i === 40) { clearInterval(t); setTimeout(() => { console.log(JSON.stringify({ sent: i, got })); s.end(); }, 5000); }
}, 200);
`,
  /** Host networking in every way the preload cannot shield: each must fail closed with the clear error. */
  "fail-closed.cjs": `
const net = require("net"), tls = require("tls"), dgram = require("dgram"), dns = require("dns"), { Worker } = require("worker_threads");
const out = {};
const attempt = (k, f) => { try { f(); out[k] = "NOT REFUSED"; } catch (e) { out[k] = e.message; } };
attempt("binding", () => process.binding("tcp_wrap"));
attempt("ipc", () => net.connect("/run/host.sock"));
attempt("listenPath", () => net.createServer().listen("/tmp/host.sock"));
attempt("hostDgram", () => new dgram.Socket("udp4").send("x", 7001, "${SERVER_IP}"));
attempt("tlsHandle", () => new tls.TLSSocket(null).connect(8443, "${SERVER_IP}"));
(async () => {
  out.lookupService = await new Promise((res) => dns.lookupService("${SERVER_IP}", 22, (e) => res(e ? e.message : "NOT REFUSED")));
  out.resolver = await dns.promises.lookupService("${SERVER_IP}", 22).then(() => "NOT REFUSED", (e) => e.message);
  out.worker = await new Promise((res) => {
    const w = new Worker("require('net').connect(7000, '${SERVER_IP}')", { eval: true });
    w.on("error", (e) => res(e.message)); w.on("exit", () => res("NOT REFUSED"));
  });
  // The original net.Socket class, as a library keeping a reference would use it: shielded, not refused.
  const { Socket } = net;
  out.original = await new Promise((res) => { const s = new Socket(); s.connect(7000, "${SERVER_IP}", () => { res(s.localAddress); s.end(); }); s.on("error", (e) => res(e.message)); });
  console.log(JSON.stringify(out));
})();
`,
};

describe("shielded apps in the namespace lab", { concurrency: false }, () => {
  let lab: Lab;
  const servers: Record<string, NsProcess> = {};

  before(async () => {
    lab = await Lab.create({
      apps: [{ name: "shielded", subnet: "100.64.8.0/24", identities: [{ mrenclave: MR }] }],
      extraYaml: `dns: [${SERVER_IP}]`,
    });
    await lab.startGateway();
    for (const [name, src] of [...Object.entries(SERVERS), ...Object.entries(APPS)])
      writeFileSync(join(lab.dir, name), src);
    const start: [string, string[]][] = [
      ["web.cjs", [lab.dir]],
      ["xfer.cjs", [String(XFER_BYTES)]],
      ["udp-echo.cjs", []],
      ["dns.cjs", []],
    ];
    for (const [file, args] of start) {
      servers[file] = lab.server(process.execPath, [join(lab.dir, file), ...args]);
      await waitLine(servers[file], (o) => o.listening === true);
    }
    servers.echo = lab.server(process.execPath, ["--import", "tsx", TCP_TOOL, "echo", SERVER_IP, "7000"]);
    await waitLine(servers.echo, (o) => o.listening === true);
  });

  after(async () => {
    await lab?.destroy();
  });

  function env(): NodeJS.ProcessEnv {
    const e: NodeJS.ProcessEnv = {
      ...process.env,
      SENG_GATEWAY: lab.gatewayAddr(0),
      SENG_PIN: lab.pin,
      SENG_TEE: "sim",
      SENG_SIM_DIR: lab.simDir,
      SENG_MRENCLAVE: MR,
      SENG_LOG: "json",
    };
    delete e.NODE_TEST_CONTEXT;
    return e;
  }

  /** Starts an app under the preload in the client namespace. */
  function app(file: string, args: string[] = []): NsProcess {
    return lab.clients[0]!.spawn(
      process.execPath,
      ["--import", "tsx", "--import", REGISTER, join(lab.dir, file), ...args],
      {
        env: env(),
      },
    );
  }

  /** Runs an app to its end (it must exit by itself: the preload keeps no handle of its own). */
  async function run(file: string, args: string[] = [], timeoutMs = 60_000) {
    const p = app(file, args);
    const r = await p.wait(timeoutMs).catch((e: Error) => {
      throw new Error(`${e.message}\nstdout:\n${p.stdout}\nstderr:\n${p.stderr}`);
    });
    const out = r.stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const lease = r.stderr
      .split("\n")
      .filter((l) => l.startsWith('{"seng":true'))
      .map((l) => JSON.parse(l) as { event: string; address?: string })
      .find((o) => o.event === "lease");
    assert.equal(r.code, 0, `${file} exited ${r.code ?? r.signal}\n${r.stdout}\n${r.stderr}`);
    assert.ok(lease?.address, `no lease line on stderr:\n${r.stderr}`);
    assert.match(lease.address, /^100\.64\.8\.\d+$/);
    return { result: out[out.length - 1]!, address: lease.address, stderr: r.stderr };
  }

  function linesOf(p: NsProcess, from = 0): Record<string, unknown>[] {
    return p.stdout
      .slice(from)
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  test("an unmodified HTTP client app (http, new Agent, https, fetch) reaches the server as its leased address", async () => {
    const web = servers["web.cjs"]!;
    const from = web.stdout.length;
    const { result, address } = await run("http-client.cjs");
    assert.equal(result.error, undefined, String(result.error));
    assert.deepEqual(result.get, { status: 200, body: "hello /get" });
    assert.deepEqual(result.agent, { status: 200, body: "hello /agent" });
    assert.deepEqual(result.https, { status: 200, body: "hello /tls" });
    assert.deepEqual(result.fetch, { status: 200, body: "hello /fetch" });
    assert.deepEqual(result.post, { n: 42 });
    const seen = linesOf(web, from);
    assert.deepEqual(
      seen.map((o) => o.url),
      ["/get", "/agent", "/tls", "/fetch", "/echo"],
    );
    for (const o of seen) assert.equal(o.remote, address, `${String(o.url)} came from ${String(o.remote)}`);
  });

  test("seng runtime run --config runtime.yaml -- node app: the same unmodified app, started by the command", async () => {
    const web = servers["web.cjs"]!;
    const from = web.stdout.length;
    // Relative paths in the file are resolved against its folder; the pin is the gateway's certificate file.
    writeFileSync(
      join(lab.dir, "runtime.yaml"),
      [
        `gateway: ${lab.gatewayAddr(0)}`,
        `pin: ${lab.pin}`,
        "tee: sim",
        `sim: { dir: ${lab.simDir}, mrenclave: "${MR}" }`,
        "log: json",
        "",
      ].join("\n"),
    );
    const e = env();
    for (const k of ["SENG_GATEWAY", "SENG_PIN", "SENG_TEE", "SENG_SIM_DIR", "SENG_MRENCLAVE", "SENG_LOG"])
      delete e[k];
    const p = lab.clients[0]!.spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        join(ROOT, "src/cli/main.ts"),
        "runtime",
        "run",
        "--config",
        join(lab.dir, "runtime.yaml"),
        "--",
        "node",
        join(lab.dir, "http-client.cjs"),
      ],
      { env: e },
    );
    const r = await p.wait(60_000);
    assert.equal(r.code, 0, r.stderr);
    const lease = r.stderr
      .split("\n")
      .filter((l) => l.startsWith('{"seng":true'))
      .map((l) => JSON.parse(l) as { event: string; address?: string })
      .find((o) => o.event === "lease");
    assert.match(lease?.address ?? "", /^100\.64\.8\.\d+$/, r.stderr);
    const result = JSON.parse(r.stdout.trim().split("\n").pop()!) as Record<string, unknown>;
    assert.deepEqual(result.fetch, { status: 200, body: "hello /fetch" });
    const seen = linesOf(web, from);
    assert.ok(seen.length >= 5);
    for (const o of seen) assert.equal(o.remote, lease!.address);
  });

  test("seng runtime run: the app's exit code comes back, and a wrong identity stops the app before it runs", async () => {
    const base = ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "runtime", "run"];
    const flags = [
      "--gateway",
      lab.gatewayAddr(0),
      "--pin",
      lab.pin,
      "--tee",
      "sim",
      "--sim-dir",
      lab.simDir,
    ];
    const e = env();
    for (const k of ["SENG_GATEWAY", "SENG_PIN", "SENG_TEE", "SENG_SIM_DIR", "SENG_MRENCLAVE"]) delete e[k];
    const ok = await lab.clients[0]!.exec(
      process.execPath,
      [...base, ...flags, "--mrenclave", MR, "--", "node", "-e", "process.exitCode = 7"],
      { env: e, check: false, timeoutMs: 60_000 },
    );
    assert.equal(ok.code, 7, ok.stderr);
    const bad = await lab.clients[0]!.exec(
      process.execPath,
      [...base, ...flags, "--mrenclave", "ee".repeat(32), "--", "node", "-e", "console.log('app ran')"],
      { env: e, check: false, timeoutMs: 60_000 },
    );
    assert.equal(bad.code, 1);
    assert.doesNotMatch(bad.stdout, /app ran/);
    assert.match(bad.stderr, /closed for good \(policy-rejected\): no app matches.*; the app is not started/);
    assert.doesNotMatch(bad.stderr, /^\s+at /m, "no stack trace");
  });

  test(`${XFER_BYTES / 2 ** 20} MB each way at once through an SDK socket, SHA-256 equal`, async (t) => {
    const srv = servers["xfer.cjs"]!;
    const from = srv.stdout.length;
    const { result, address, stderr } = await run("xfer.mjs", [String(XFER_BYTES)], 180_000);
    assert.equal(result.error, undefined, String(result.error));
    assert.equal(result.sdk, "Socket");
    assert.equal(result.isNetSocket, true);
    assert.equal(result.local, address, JSON.stringify(result));
    const [seen] = await waitFor(() => linesOf(srv, from).filter((o) => o.rxBytes !== undefined));
    assert.equal(seen!.remote, address);
    assert.equal(seen!.rxBytes, XFER_BYTES, `${JSON.stringify(seen)}\n${stderr}`);
    assert.equal(result.rxBytes, XFER_BYTES, `${JSON.stringify(result)}\n${JSON.stringify(seen)}\n${stderr}`);
    assert.equal(seen!.rxSha, result.txSha, "app → server");
    assert.equal(result.rxSha, seen!.txSha, "server → app");
    const mbps = (bytes: number, ms: number) => ((bytes * 8) / (ms / 1000) / 1e6).toFixed(0);
    const up = result.upMs as number;
    const down = result.downMs as number;
    const total = result.totalMs as number;
    t.diagnostic(
      `throughput: up ${mbps(XFER_BYTES, up)} Mbit/s (${up.toFixed(0)} ms), down ${mbps(XFER_BYTES, down)} Mbit/s ` +
        `(${down.toFixed(0)} ms), both ${mbps(2 * XFER_BYTES, total)} Mbit/s in ${total.toFixed(0)} ms`,
    );
  });

  test(`${CONNECTIONS} concurrent connections (net.connect and new net.Socket().connect)`, async (t) => {
    const echo = servers.echo!;
    const from = echo.stdout.length;
    const { result, address } = await run("many.mjs", [String(CONNECTIONS)]);
    assert.deepEqual(result.failures, []);
    assert.equal(result.ok, CONNECTIONS);
    const remotes = linesOf(echo, from).map((o) => o.remote);
    assert.equal(remotes.length, CONNECTIONS);
    assert.ok(remotes.every((r) => r === address));
    t.diagnostic(`${CONNECTIONS} connections × 32 KiB echoed in ${(result.ms as number).toFixed(0)} ms`);
  });

  test("UDP echo through dgram.createSocket", async () => {
    const udp = servers["udp-echo.cjs"]!;
    const from = udp.stdout.length;
    const { result, address } = await run("udp.cjs");
    assert.equal(result.got, 10);
    assert.equal(result.from, SERVER_IP);
    assert.equal(result.port, 7001);
    assert.equal((result.local as { address: string }).address, address);
    assert.ok(linesOf(udp, from).every((o) => o.udpFrom === address));
  });

  test("DNS: lookups go to the lease's DNS server through the tunnel", async () => {
    const dnsSrv = servers["dns.cjs"]!;
    const from = dnsSrv.stdout.length;
    const { result, address } = await run("dns.mjs");
    assert.deepEqual(result.lookup, [SERVER_IP, 4]);
    assert.deepEqual(result.cname, { address: SERVER_IP, family: 4 });
    assert.deepEqual(result.all, [{ address: SERVER_IP, family: 4 }]);
    assert.deepEqual(result.resolve4, [SERVER_IP]);
    assert.equal(result.nx, "ENOTFOUND");
    assert.equal(result.v6, "ENOTFOUND");
    assert.equal(result.mx, "ENOTFOUND");
    assert.equal(result.http, "hello /by-name");
    const queries = linesOf(dnsSrv, from);
    assert.ok(queries.length >= 3);
    assert.ok(
      queries.every((q) => q.from === address),
      JSON.stringify(queries),
    );
    // svc.seng.test was asked once per type: the answers (AAAA: none) were cached for the later lookups.
    assert.equal(queries.filter((q) => q.query === "svc.seng.test" && q.type === 1).length, 1);
    assert.ok(queries.filter((q) => q.query === "svc.seng.test" && q.type === 28).length <= 1);
  });

  test("an HTTP server in the app is reached from the server namespace at its leased address", async () => {
    const p = app("enclave-server.cjs");
    try {
      const listening = await waitLine<{ address: { address: string; port: number } }>(
        p,
        (o) => o.listening === true,
        30_000,
      );
      assert.deepEqual(listening.address, { address: "0.0.0.0", family: "IPv4", port: 8081 });
      const lease = JSON.parse(p.stderr.split("\n").find((l) => l.includes('"event":"lease"'))!) as {
        address: string;
      };
      for (let i = 0; i < 3; i++) {
        const r = await lab.srv.exec(
          "curl",
          ["-sS", "--max-time", "5", `http://${lease.address}:8081/hi${i}`],
          {
            timeoutMs: 15_000,
          },
        );
        assert.deepEqual(JSON.parse(r.stdout), {
          hello: "from the enclave",
          remote: SERVER_IP,
          url: `/hi${i}`,
        });
      }
      await p.kill("SIGTERM", 5000);
      assert.ok(
        linesOf(p).some((o) => o.closed === true),
        "the server closed cleanly",
      );
    } finally {
      await p.kill("SIGKILL", 1000);
    }
  });

  test("host networking fails closed with a clear error", async () => {
    const { result, address } = await run("fail-closed.cjs");
    for (const k of [
      "binding",
      "ipc",
      "listenPath",
      "hostDgram",
      "tlsHandle",
      "lookupService",
      "resolver",
      "worker",
    ])
      assert.match(String(result[k]), DISABLED, `${k}: ${String(result[k])}`);
    assert.equal(result.original, address, "the original net.Socket class connects through the tunnel");
  });

  test("a connection in the app survives a gateway restart (the tunnel comes back with the same lease)", async () => {
    const p = app("survive.cjs");
    const leases = () =>
      p.stderr
        .split("\n")
        .filter((l) => l.includes('"event":"lease"'))
        .map((l) => (JSON.parse(l) as { address: string }).address);
    for (let i = 0; i < 100 && leases().length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 1500));
    await lab.stopGateway("SIGTERM");
    await lab.startGateway();
    const r = await p.wait(60_000);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!) as { sent: number; got: string };
    assert.equal(
      out.got,
      Array.from({ length: out.sent }, (_, i) => `m${i};`).join(""),
      "every message echoed, in order",
    );
    assert.match(r.stderr, /"event":"tunnel-closed"/);
    const l = leases();
    assert.ok(l.length >= 2, `a second lease after the restart:\n${r.stderr}`);
    assert.ok(
      l.every((a) => a === l[0]),
      `the same address: ${l.join(", ")}`,
    );
  });

  test("an identity the gateway rejects: the app does not start", async () => {
    const e = env();
    e.SENG_MRENCLAVE = "ee".repeat(32);
    const p = lab.clients[0]!.spawn(
      process.execPath,
      ["--import", "tsx", "--import", REGISTER, "-e", "console.log('app ran')"],
      { env: e },
    );
    const r = await p.wait(30_000);
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stdout, /app ran/);
    assert.match(r.stderr, /^seng: the tunnel to the gateway closed for good \(policy-rejected\)/m);
  });

  test("no gateway configured: the app does not start", async () => {
    const e = env();
    delete e.SENG_GATEWAY;
    const p = lab.clients[0]!.spawn(
      process.execPath,
      ["--import", "tsx", "--import", REGISTER, "-e", "console.log('app ran')"],
      { env: e },
    );
    const r = await p.wait(30_000);
    assert.equal(r.code, 2, "a configuration error");
    assert.doesNotMatch(r.stdout, /app ran/);
    assert.match(r.stderr, /^seng: no gateway: set SENG_GATEWAY .*; the app is not started/m);
  });
});

async function waitFor<T>(f: () => T[], timeoutMs = 10_000): Promise<T[]> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = f();
    if (v.length || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}
