/**
 * DTLS 1.2 addon (src/native/dtls.ts): handshakes through the stateless listener, records, certificates,
 * exporters, cipher choice, authentication failures (no client certificate, a certificate for a key the client
 * does not hold), cookies, garbage input, retransmission, shutdown and use after free.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPrivateKey, randomBytes, webcrypto } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { x509 } from "../../src/attest/x509gen.js";
import {
  DtlsContext,
  DtlsListener,
  DtlsSession,
  MAX_MTU,
  type DtlsConfig,
  type DtlsResult,
} from "../../src/native/dtls.js";

interface Identity {
  certPem: string;
  keyPem: string;
  der: Buffer;
}

const PEER = "198.51.100.7:40000";

/** A self-signed P-256 ECDSA certificate (optionally padded with an opaque extension, like an RA-TLS quote). */
async function identity(cn: string, padding = 0): Promise<Identity> {
  const keys = (await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: `CN=${cn}`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions:
      padding > 0 ? [new x509.Extension("1.3.6.1.4.1.99999.1", false, Buffer.alloc(padding, 0xa5))] : [],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  const keyPem = createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" }).export({
    format: "pem",
    type: "pkcs8",
  }) as string;
  return { certPem: cert.toString("pem"), keyPem, der: Buffer.from(cert.rawData) };
}

let ids: Promise<{ server: Identity; client: Identity; other: Identity }> | undefined;
const identities = () =>
  (ids ??= (async () => ({
    server: await identity("gateway"),
    client: await identity("runtime"),
    other: await identity("someone else"),
  }))());

const serverCtx = (id: Identity, extra: Partial<DtlsConfig> = {}) =>
  new DtlsContext({ role: "server", certPem: id.certPem, keyPem: id.keyPem, ...extra });
const clientCtx = (id: Identity, extra: Partial<DtlsConfig> = {}) =>
  new DtlsContext({ role: "client", certPem: id.certPem, keyPem: id.keyPem, ...extra });

/** Splits a datagram into its DTLS records; throws if a record is cut (a datagram must hold whole records). */
function records(d: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let off = 0;
  while (off < d.length) {
    assert.ok(off + 13 <= d.length, "record header cut");
    const end = off + 13 + d.readUInt16BE(off + 11);
    assert.ok(end <= d.length, "record body cut");
    out.push(d.subarray(off, end));
    off = end;
  }
  return out;
}

/** Rewrites an unencrypted client Certificate handshake message (type 11) in a datagram to carry `chain`. */
function replaceCertificate(d: Buffer, chain: Buffer[]): { datagram: Buffer; replaced: boolean } {
  let replaced = false;
  const parts = records(d).map((rec) => {
    const epoch = rec.readUInt16BE(3);
    if (rec[0] !== 22 || epoch !== 0 || rec[13] !== 11) return rec;
    const msgLen = rec.readUIntBE(14, 3);
    assert.equal(rec.readUIntBE(19, 3), 0, "certificate message fragmented: test assumes one fragment");
    assert.equal(rec.readUIntBE(22, 3), msgLen);
    const list = Buffer.concat(chain.map((c) => Buffer.concat([u24(c.length), c])));
    const body = Buffer.concat([u24(list.length), list]);
    const hs = Buffer.concat([
      rec.subarray(13, 14),
      u24(body.length),
      rec.subarray(17, 19),
      u24(0),
      u24(body.length),
    ]);
    const header = Buffer.from(rec.subarray(0, 13));
    header.writeUInt16BE(hs.length + body.length, 11);
    replaced = true;
    return Buffer.concat([header, hs, body]);
  });
  return { datagram: Buffer.concat(parts), replaced };
}

function u24(n: number): Buffer {
  const b = Buffer.alloc(3);
  b.writeUIntBE(n, 0, 3);
  return b;
}

interface Pair {
  client: DtlsSession;
  server: DtlsSession;
  /** Every datagram exchanged, in order. */
  wire: Buffer[];
  clientLast: DtlsResult;
  serverLast: DtlsResult;
}

/** Exchanges datagrams until both sides fall silent; `tamper` may rewrite or drop client datagrams. */
function settle(
  client: DtlsSession,
  server: DtlsSession,
  toClient: Buffer[],
  wire: Buffer[],
  tamper: (d: Buffer) => Buffer | null = (d) => d,
) {
  let clientLast: DtlsResult = { out: [], records: [], established: false, closed: false };
  let serverLast: DtlsResult = { ...clientLast };
  let toServer: Buffer[] = [];
  for (let round = 0; round < 20 && (toClient.length > 0 || toServer.length > 0); round++) {
    if (toClient.length > 0) {
      clientLast = client.receiveMany(toClient);
      toClient = [];
      wire.push(...clientLast.out);
      toServer = clientLast.out.map(tamper).filter((d): d is Buffer => d !== null);
    }
    if (toServer.length > 0) {
      serverLast = server.receiveMany(toServer);
      toServer = [];
      wire.push(...serverLast.out);
      toClient = serverLast.out;
    }
  }
  return { clientLast, serverLast };
}

/** Client hello → HelloVerifyRequest → hello with cookie → accept → rest of the handshake. */
function connect(
  listener: DtlsListener,
  cctx: DtlsContext,
  opts: { peer?: string; tamper?: (d: Buffer) => Buffer | null } = {},
): Pair {
  const peer = opts.peer ?? PEER;
  const wire: Buffer[] = [];
  const client = DtlsSession.client(cctx);
  const hello = client.start();
  wire.push(...hello);
  assert.equal(hello.length, 1);
  const first = listener.handle(hello[0]!, peer);
  assert.equal(first.verdict, "reply", "first ClientHello gets a HelloVerifyRequest");
  if (first.verdict !== "reply") throw new Error("unreachable");
  wire.push(...first.out);
  const again = client.receiveMany(first.out);
  assert.equal(again.out.length, 1, "ClientHello with cookie");
  wire.push(...again.out);
  const second = listener.handle(again.out[0]!, peer);
  assert.equal(second.verdict, "accept", "ClientHello with a valid cookie is accepted");
  if (second.verdict !== "accept") throw new Error("unreachable");
  assert.ok(second.out.length > 0, "ServerHello…ServerHelloDone");
  wire.push(...second.out);
  const server = second.session;
  const { clientLast, serverLast } = settle(client, server, second.out, wire, opts.tamper);
  return { client, server, wire, clientLast, serverLast };
}

async function setup(extra: Partial<DtlsConfig> = {}, clientExtra: Partial<DtlsConfig> = extra) {
  const id = await identities();
  const sctx = serverCtx(id.server, extra);
  const cctx = clientCtx(id.client, clientExtra);
  return { id, sctx, cctx, listener: new DtlsListener(sctx) };
}

test("full handshake through the listener: reply, accept, both established, whole records per datagram", async () => {
  const { sctx, listener, cctx } = await setup();
  const p = connect(listener, cctx);
  assert.equal(p.client.established(), true);
  assert.equal(p.server.established(), true);
  assert.equal(p.clientLast.established, true);
  assert.equal(p.clientLast.error, undefined);
  assert.equal(p.serverLast.error, undefined);
  assert.equal(p.client.version(), "DTLSv1.2");
  assert.equal(p.server.version(), "DTLSv1.2");
  assert.equal(p.client.cipher(), "ECDHE-ECDSA-AES256-GCM-SHA384");
  assert.equal(p.server.cipher(), p.client.cipher());
  for (const d of p.wire) {
    assert.ok(d.length <= sctx.mtu, `datagram of ${d.length} bytes exceeds the MTU`);
    records(d); // throws on a cut record
  }
  assert.equal(p.client.timeoutMs(), -1, "no timer once established");
  assert.equal(p.client.maxRecord(), 1400 - 13 - 8 - 16);
  p.client.free();
  p.server.free();
});

test("records both ways are byte-identical; N records make N datagrams and come back as N records", async () => {
  const { listener, cctx } = await setup();
  const { client, server } = connect(listener, cctx);
  const max = client.maxRecord();
  const sizes = [1, 2, 100, 1000, max - 1, max];
  for (const [from, to] of [
    [client, server],
    [server, client],
  ] as const) {
    const recs = sizes.map((n) => randomBytes(n));
    const grams = from.send(recs);
    assert.equal(grams.length, recs.length);
    for (const g of grams) {
      assert.ok(g.length <= 1400);
      assert.equal(records(g).length, 1, "one record per datagram");
    }
    const got = to.receiveMany(grams);
    assert.equal(got.records.length, recs.length);
    got.records.forEach((r, i) => assert.ok(r.equals(recs[i]!), `record ${i}`));
    assert.equal(got.out.length, 0);
    // One at a time, too.
    const one = to.receive(from.send([Buffer.from("single")])[0]!);
    assert.deepEqual(one.records.map(String), ["single"]);
  }
  assert.throws(() => client.send([Buffer.alloc(max + 1)]), /exceeds the maximum of \d+ for the MTU/);
  assert.throws(() => client.send([Buffer.from("ok"), Buffer.alloc(0)]), /empty/);
  assert.deepEqual(client.send([]), []);
  client.free();
  server.free();
});

test("peer certificates are the other side's DER; exported keying material matches", async () => {
  const { id, listener, cctx } = await setup();
  const { client, server } = connect(listener, cctx);
  assert.ok(server.peerCertificate()!.equals(id.client.der));
  assert.ok(client.peerCertificate()!.equals(id.server.der));
  const a = client.exportKeyingMaterial("EXPORTER-seng-binding", 32);
  assert.equal(a.length, 32);
  assert.ok(a.equals(server.exportKeyingMaterial("EXPORTER-seng-binding", 32)));
  const ctx = Buffer.from("context");
  const b = client.exportKeyingMaterial("EXPORTER-seng-binding", 32, ctx);
  assert.ok(b.equals(server.exportKeyingMaterial("EXPORTER-seng-binding", 32, ctx)));
  assert.ok(!a.equals(b), "context changes the output");
  const empty = client.exportKeyingMaterial("EXPORTER-seng-binding", 32, Buffer.alloc(0));
  assert.ok(empty.equals(server.exportKeyingMaterial("EXPORTER-seng-binding", 32, Buffer.alloc(0))));
  assert.ok(!empty.equals(a), "an empty context is not the same as none");
  assert.ok(!a.equals(client.exportKeyingMaterial("EXPORTER-other", 32)), "label changes the output");
  const fresh = DtlsSession.client(cctx);
  assert.throws(() => fresh.exportKeyingMaterial("x", 16), /handshake not complete/);
  assert.equal(fresh.peerCertificate(), null);
  assert.throws(() => fresh.send([Buffer.from("x")]), /handshake not complete/);
  fresh.free();
});

for (const [ciphers, expected] of [
  ["ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-CHACHA20-POLY1305"],
  ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"],
  ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"],
] as const) {
  test(`${expected} is negotiable`, async () => {
    const { listener, cctx } = await setup({}, { ciphers });
    const { client, server } = connect(listener, cctx);
    assert.equal(client.cipher(), expected);
    assert.equal(server.cipher(), expected);
    const rec = randomBytes(client.maxRecord());
    assert.ok(server.receiveMany(client.send([rec])).records[0]!.equals(rec));
    assert.ok(client.receiveMany(server.send([rec])).records[0]!.equals(rec));
    client.free();
    server.free();
  });
}

test("trimPeerCertificate: the certificate's extensions go, the session keeps working, peerCertificate throws", async () => {
  const id = await identities();
  const padded = await identity("runtime with evidence", 3000);
  const listener = new DtlsListener(serverCtx(id.server));
  const fresh = DtlsSession.client(clientCtx(padded));
  assert.throws(() => fresh.trimPeerCertificate(), /handshake not complete/);
  fresh.free();
  const { client, server } = connect(listener, clientCtx(padded));
  const key = client.exportKeyingMaterial("EXPORTER-seng-binding", 32);
  assert.ok(server.peerCertificate()!.equals(padded.der));
  assert.equal(server.trimPeerCertificate(), 1, "the one (padding) extension");
  assert.throws(() => server.peerCertificate(), /trimmed/);
  assert.equal(server.trimPeerCertificate(), 0, "nothing left");
  // The keys and the record layer do not depend on the certificate.
  assert.ok(key.equals(server.exportKeyingMaterial("EXPORTER-seng-binding", 32)));
  assert.deepEqual(server.receiveMany(client.send([Buffer.from("up")])).records.map(String), ["up"]);
  assert.deepEqual(client.receiveMany(server.send([Buffer.from("down")])).records.map(String), ["down"]);
  assert.equal(client.receiveMany(server.shutdown()).closed, true);
  client.free();
  server.free();
});

test("no common cipher: the handshake fails with OpenSSL's reason on both ends", async () => {
  const { listener, cctx } = await setup(
    { ciphers: "ECDHE-ECDSA-AES256-GCM-SHA384" },
    { ciphers: "ECDHE-ECDSA-CHACHA20-POLY1305" },
  );
  const client = DtlsSession.client(cctx);
  const first = listener.handle(client.start()[0]!, PEER);
  assert.equal(first.verdict, "reply");
  if (first.verdict !== "reply") return;
  const again = client.receiveMany(first.out).out;
  const second = listener.handle(again[0]!, PEER);
  // The cipher is chosen while processing the cookie-bearing ClientHello: no session, just the alert.
  assert.equal(second.verdict, "reply");
  if (second.verdict !== "reply") return;
  const r = client.receiveMany(second.out);
  assert.match(r.error ?? "", /handshake failure/);
  assert.equal(r.closed, true);
  assert.equal(client.error(), r.error);
  assert.equal(client.established(), false);
  assert.deepEqual(client.onTimeout(), [], "a failed session stays quiet");
  assert.equal(client.timeoutMs(), -1);
  client.free();
  // The listener is fine afterwards.
  const { listener: l2, cctx: c2 } = await setup();
  assert.ok(connect(l2, c2).client.established());
});

test("a client without a certificate is refused by the server", async () => {
  const { listener, cctx } = await setup();
  let replaced = false;
  const p = connect(listener, cctx, {
    tamper: (d) => {
      const r = replaceCertificate(d, []); // what a client without a certificate sends: an empty list
      replaced ||= r.replaced;
      return r.datagram;
    },
  });
  assert.ok(replaced);
  assert.equal(p.server.established(), false);
  assert.match(p.serverLast.error ?? "", /peer did not return a certificate/);
  assert.equal(p.serverLast.closed, true);
  assert.match(p.clientLast.error ?? "", /alert/, "the client is told");
  assert.equal(p.client.established(), false);
});

test("a certificate whose private key the client does not hold is refused (bad signature)", async () => {
  const { id, listener, cctx } = await setup();
  let replaced = false;
  const p = connect(listener, cctx, {
    tamper: (d) => {
      const r = replaceCertificate(d, [id.other.der]);
      replaced ||= r.replaced;
      return r.datagram;
    },
  });
  assert.ok(replaced);
  assert.equal(p.server.established(), false);
  assert.match(p.serverLast.error ?? "", /bad signature/);
  assert.equal(p.client.established(), false);
});

test("a context whose private key does not match its certificate is refused at construction", async () => {
  const id = await identities();
  for (const role of ["client", "server"] as const) {
    assert.throws(
      () => new DtlsContext({ role, certPem: id.client.certPem, keyPem: id.other.keyPem }),
      /private key does not match certificate/,
    );
  }
});

test("bad configuration: unreadable certificate or key, unknown ciphers, MTU, wrong roles", async () => {
  const id = await identities();
  const base = { role: "client" as const, certPem: id.client.certPem, keyPem: id.client.keyPem };
  assert.throws(() => new DtlsContext({ ...base, certPem: "nonsense" }), /certificate: cannot read/);
  assert.throws(() => new DtlsContext({ ...base, keyPem: "nonsense" }), /private key: cannot read/);
  assert.throws(() => new DtlsContext({ ...base, keyPem: id.client.certPem }), /private key: cannot read/);
  assert.throws(() => new DtlsContext({ ...base, ciphers: "NO-SUCH-CIPHER" }), /ciphers "NO-SUCH-CIPHER"/);
  assert.throws(
    () => new DtlsContext({ ...base, ciphers: "aNULL" }),
    /ciphers "aNULL"/,
    "anonymous suites never",
  );
  assert.throws(() => new DtlsContext({ ...base, mtu: 100 }), RangeError);
  assert.throws(() => new DtlsContext({ ...base, mtu: MAX_MTU + 1 }), RangeError);
  // Chain certificates may follow the leaf.
  new DtlsContext({ ...base, certPem: `${id.client.certPem}\n${id.other.certPem}` });
  const cctx = new DtlsContext(base);
  assert.throws(() => new DtlsListener(cctx), /server context/);
  assert.throws(() => DtlsSession.client(serverCtx(id.server)), /client context/);
});

test("cookies: bound to the peer string, one rotation tolerated", async () => {
  const { listener, cctx } = await setup();
  const cookieHello = (peer: string): Buffer => {
    const client = DtlsSession.client(cctx);
    const v = listener.handle(client.start()[0]!, peer);
    assert.equal(v.verdict, "reply");
    if (v.verdict !== "reply") throw new Error("unreachable");
    const hello = client.receiveMany(v.out).out[0]!;
    client.free();
    return hello;
  };
  // A cookie made for A, presented from B: another HelloVerifyRequest, no session.
  const forA = cookieHello("192.0.2.1:1000");
  assert.equal(listener.handle(forA, "192.0.2.2:1000").verdict, "reply");
  assert.equal(listener.handle(forA, "192.0.2.1:1001").verdict, "reply");
  // From A itself it is accepted.
  const ok = listener.handle(forA, "192.0.2.1:1000");
  assert.equal(ok.verdict, "accept");
  if (ok.verdict === "accept") ok.session.free();
  // After one rotation the old cookie still works; after two it does not.
  const old = cookieHello("192.0.2.1:1000");
  listener.rotate();
  const once = listener.handle(old, "192.0.2.1:1000");
  assert.equal(once.verdict, "accept");
  if (once.verdict === "accept") once.session.free();
  listener.rotate();
  assert.equal(listener.handle(old, "192.0.2.1:1000").verdict, "reply");
  // Another listener (another secret) does not accept this one's cookies.
  const other = new DtlsListener(serverCtx((await identities()).server));
  assert.equal(other.handle(cookieHello("192.0.2.1:1000"), "192.0.2.1:1000").verdict, "reply");
});

test("admit() runs only for a ClientHello with a valid cookie; false refuses it without state", async () => {
  const { listener, cctx } = await setup();
  let asked = 0;
  const client = DtlsSession.client(cctx);
  const hello = client.start()[0]!;
  // No cookie yet: a HelloVerifyRequest, and the caller is not asked (a spoofed source costs it nothing).
  const v = listener.handle(hello, PEER, () => (asked++, true));
  assert.equal(v.verdict, "reply");
  assert.equal(asked, 0);
  if (v.verdict !== "reply") throw new Error("unreachable");
  const withCookie = client.receiveMany(v.out).out[0]!;
  // A valid cookie from another peer string: still only a HelloVerifyRequest, not asked.
  assert.equal(listener.handle(withCookie, "192.0.2.99:1", () => (asked++, true)).verdict, "reply");
  assert.equal(asked, 0);
  // A valid cookie: asked once; refused means nothing to send and no session.
  assert.deepEqual(
    listener.handle(withCookie, PEER, () => (asked++, false)),
    { verdict: "refused" },
  );
  assert.equal(asked, 1);
  // The listener works on after a refusal: the same hello admitted is accepted.
  const ok = listener.handle(withCookie, PEER, () => (asked++, true));
  assert.equal(ok.verdict, "accept");
  assert.equal(asked, 2);
  if (ok.verdict === "accept") ok.session.free();
  client.free();
});

test("garbage never throws: listener drops, sessions ignore or report an error", async () => {
  const { listener, cctx } = await setup();
  const client = DtlsSession.client(cctx);
  const hello = client.start()[0]!;
  // Truncations of a real ClientHello and of a cookie-bearing one.
  const v = listener.handle(hello, PEER);
  assert.equal(v.verdict, "reply");
  const withCookie = v.verdict === "reply" ? client.receiveMany(v.out).out[0]! : hello;
  for (const h of [hello, withCookie]) {
    for (let n = 0; n < h.length; n++) assert.equal(listener.handle(h.subarray(0, n), PEER).verdict, "drop");
  }
  // Random datagrams, and random ones that look like DTLS 1.2 handshake records.
  const garbage: Buffer[] = [];
  for (let i = 0; i < 1000; i++) {
    const g = randomBytes(1 + Math.floor(Math.random() * 1500));
    if (i % 2 === 1 && g.length > 13) {
      g[0] = 22;
      g[1] = 0xfe;
      g[2] = i % 4 === 1 ? 0xfd : 0xff;
      g.writeUInt16BE(Math.min(g.length - 13, 0xffff), 11);
    }
    garbage.push(g);
  }
  for (const g of garbage) assert.notEqual(listener.handle(g, PEER).verdict, "accept");
  // Byte flips of the cookie-bearing ClientHello: flips outside the cookie may still make a valid hello.
  for (let i = 0; i < 200; i++) {
    const g = Buffer.from(withCookie);
    const at = Math.floor(Math.random() * g.length);
    g[at] = g[at]! ^ (1 + Math.floor(Math.random() * 255));
    const r = listener.handle(g, PEER);
    if (r.verdict === "accept") r.session.free();
    garbage.push(g);
  }
  // The listener still works afterwards.
  const p = connect(listener, cctx);
  assert.ok(p.client.established() && p.server.established());
  // An established session ignores garbage (DTLS drops invalid records silently) and keeps working.
  for (const g of garbage) {
    const r = p.server.receive(g);
    assert.equal(r.records.length, 0);
    assert.equal(r.error, undefined);
  }
  const r = p.server.receiveMany(garbage);
  assert.equal(r.error, undefined);
  assert.deepEqual(p.server.receiveMany(p.client.send([Buffer.from("still here")])).records.map(String), [
    "still here",
  ]);
  // A session in the middle of its handshake: never a throw, whatever it says.
  const half = DtlsSession.client(cctx);
  half.start();
  for (const g of garbage) half.receive(g);
  half.receiveMany(garbage);
  half.free();
  client.free();
  p.client.free();
  p.server.free();
});

test("retransmission: the server's flight is lost once, timers resend, the handshake completes", async () => {
  const { listener, cctx } = await setup();
  const client = DtlsSession.client(cctx);
  const v1 = listener.handle(client.start()[0]!, PEER);
  assert.equal(v1.verdict, "reply");
  if (v1.verdict !== "reply") return;
  const hello = client.receiveMany(v1.out).out;
  const v2 = listener.handle(hello[0]!, PEER);
  assert.equal(v2.verdict, "accept");
  if (v2.verdict !== "accept") return;
  const server = v2.session;
  // v2.out (ServerHello…ServerHelloDone) is lost.
  const wait = client.timeoutMs();
  assert.ok(wait > 0 && wait <= 1000, `client timer ${wait} ms`);
  assert.deepEqual(client.onTimeout(), [], "nothing to resend before the timer expires");
  await sleep(Math.max(client.timeoutMs(), server.timeoutMs()) + 20);
  assert.equal(client.timeoutMs(), 0);
  const resent = client.onTimeout();
  assert.equal(resent.length, 1, "the client resends its ClientHello");
  const wire: Buffer[] = [];
  const fromServer = [...server.receiveMany(resent).out, ...server.onTimeout()];
  assert.ok(fromServer.length > 0, "the server resends its flight");
  settle(client, server, fromServer, wire);
  assert.equal(client.established(), true);
  assert.equal(server.established(), true);
  assert.deepEqual(server.receiveMany(client.send([Buffer.from("late")])).records.map(String), ["late"]);
  client.free();
  server.free();
});

test("large certificates are fragmented to the MTU", async () => {
  const server = await identity("gateway", 9000);
  const client = await identity("runtime", 9000);
  const mtu = 1200;
  const listener = new DtlsListener(serverCtx(server, { mtu }));
  const p = connect(listener, clientCtx(client, { mtu }));
  assert.ok(p.client.established() && p.server.established());
  assert.ok(p.server.peerCertificate()!.equals(client.der));
  assert.ok(p.client.peerCertificate()!.equals(server.der));
  assert.ok(p.wire.length > 14, "certificates span several datagrams");
  for (const d of p.wire) {
    assert.ok(d.length <= mtu);
    records(d);
  }
  assert.equal(p.client.maxRecord(), mtu - 13 - 8 - 16);
  p.client.free();
  p.server.free();
});

test("shutdown: the peer sees closed; no records after close_notify either way", async () => {
  const { listener, cctx } = await setup();
  const { client, server } = connect(listener, cctx);
  const bye = client.shutdown();
  assert.equal(bye.length, 1);
  const r = server.receiveMany(bye);
  assert.equal(r.closed, true);
  assert.equal(r.error, undefined);
  assert.equal(server.receive(bye[0]!).closed, true, "stays closed");
  assert.throws(() => client.send([Buffer.from("x")]), /shut down/);
  assert.throws(() => server.send([Buffer.from("x")]), /peer closed/);
  assert.deepEqual(client.shutdown(), [], "close_notify is sent once");
  const reply = server.shutdown();
  assert.equal(reply.length, 1, "the server may answer with its own close_notify");
  assert.equal(client.receiveMany(reply).closed, true);
  assert.deepEqual(server.shutdown(), []);
  client.free();
  server.free();
});

test("free(): any later call throws; free is idempotent", async () => {
  const { listener, cctx } = await setup();
  const { client, server } = connect(listener, cctx);
  client.free();
  client.free();
  assert.throws(() => client.send([Buffer.from("x")]), /used after free/);
  assert.throws(() => client.receive(Buffer.alloc(10)), /used after free/);
  assert.throws(() => client.timeoutMs(), /used after free/);
  assert.throws(() => client.peerCertificate(), /used after free/);
  assert.throws(() => client.established(), /used after free/);
  server.free();
  assert.throws(() => server.shutdown(), /used after free/);
});

test("the server's last flight is lost: the client's timer resends and the server answers", async () => {
  const { listener, cctx } = await setup();
  const client = DtlsSession.client(cctx);
  const v1 = listener.handle(client.start()[0]!, PEER);
  if (v1.verdict !== "reply") throw new Error("expected reply");
  const v2 = listener.handle(client.receiveMany(v1.out).out[0]!, PEER);
  if (v2.verdict !== "accept") throw new Error("expected accept");
  const server = v2.session;
  const flight3 = client.receiveMany(v2.out).out;
  const last = server.receiveMany(flight3);
  assert.equal(last.established, true, "the server is done after sending CCS+Finished");
  // last.out is lost: the client is still waiting.
  assert.equal(client.established(), false);
  await sleep(client.timeoutMs() + 20);
  const again = server.receiveMany(client.onTimeout());
  assert.ok(again.out.length > 0, "the server retransmits CCS+Finished on the repeated Finished");
  assert.equal(client.receiveMany(again.out).established, true);
  client.free();
  server.free();
});

test("sessions beyond the most recently active ones release their buffers and keep working", async () => {
  const { listener, cctx } = await setup();
  // A client in the middle of its handshake, then enough other sessions to push it out of the active set.
  const waiting = DtlsSession.client(cctx);
  const v = listener.handle(waiting.start()[0]!, "192.0.2.9:9");
  assert.equal(v.verdict, "reply");
  const pairs = Array.from({ length: 40 }, (_, i) => connect(listener, cctx, { peer: `192.0.2.10:${i}` }));
  for (const [i, p] of pairs.entries()) {
    const a = Buffer.from(`to server ${i}`);
    const b = Buffer.from(`to client ${i}`);
    assert.ok(p.server.receiveMany(p.client.send([a])).records[0]!.equals(a));
    assert.ok(p.client.receiveMany(p.server.send([b])).records[0]!.equals(b));
  }
  // Writes right after a rest: send, onTimeout, shutdown, and close_notify after the peer closed.
  for (const p of pairs.slice(0, 20)) p.client.send([Buffer.from("x")]);
  for (const p of pairs) {
    assert.equal(p.server.receiveMany(p.client.shutdown()).closed, true);
  }
  for (const p of pairs) {
    assert.equal(p.client.receiveMany(p.server.shutdown()).closed, true);
    p.client.free();
    p.server.free();
  }
  // The waiting client's retransmission timer still works after its buffers were released.
  await sleep(waiting.timeoutMs() + 20);
  assert.equal(waiting.onTimeout().length, 1);
  waiting.free();
});

test("ALPN: the server picks its first protocol the client offered; none offered or none shared: no ALPN", async () => {
  const cases: [string[] | undefined, string[] | undefined, string][] = [
    [["seng/2", "seng/1"], ["seng/2", "seng/1"], "seng/2"],
    [["seng/2", "seng/1"], ["seng/1", "seng/2"], "seng/2"], // the server's preference decides
    [["seng/2", "seng/1"], ["seng/1"], "seng/1"],
    [["seng/1"], ["seng/2", "seng/1"], "seng/1"], // an old gateway that knew only version 1
    [["seng/2", "seng/1"], undefined, ""], // a runtime from before ALPN
    [undefined, ["seng/2", "seng/1"], ""], // a gateway from before ALPN
    [["seng/2"], ["seng/3"], ""],
  ];
  for (const [server, client, expected] of cases) {
    const { listener, cctx } = await setup(server ? { alpn: server } : {}, client ? { alpn: client } : {});
    const p = connect(listener, cctx);
    const what = `server ${String(server)}, client ${String(client)}`;
    assert.equal(p.client.established(), true, what);
    assert.equal(p.server.alpn(), expected, what);
    assert.equal(p.client.alpn(), expected, what);
    p.client.free();
    p.server.free();
  }
  const id = await identities();
  for (const bad of [[], [""], ["x".repeat(256)], ["sp ace"]])
    assert.throws(() => clientCtx(id.client, { alpn: bad }), /alpn/, JSON.stringify(bad));
});
