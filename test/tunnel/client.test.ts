/**
 * The tunnel client against a fake gateway on loopback: nothing unauthenticated ends a handshake attempt, and
 * datagrams from anyone but the gateway are ignored; protocol versions 1 and 2 interoperate both ways.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createSocket, type RemoteInfo } from "node:dgram";
import { createHash, generateKeyPairSync, X509Certificate } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { selfSignedCert } from "../../src/attest/x509gen.js";
import { DtlsContext, DtlsListener, type DtlsSession } from "../../src/native/dtls.js";
import { TunnelClient, gatewayList } from "../../src/tunnel/client.js";
import { encodeControl, MSG, versionFromAlpn, type Lease } from "../../src/tunnel/protocol.js";

/** A DTLS 1.2 fatal handshake_failure alert in plaintext (epoch 0): what an off-path attacker can forge. */
const ALERT = Buffer.from([21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 2, 40]);

test("a forged alert or a stranger's datagram does not end a handshake attempt; its deadline does", async () => {
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = await selfSignedCert({ keys, name: "CN=runtime", days: 1 });
  const gw = createSocket("udp4");
  const stranger = createSocket("udp4");
  await new Promise<void>((r) => gw.bind(0, "127.0.0.1", r));
  await new Promise<void>((r) => stranger.bind(0, "127.0.0.1", r));
  const client = new TunnelClient({
    gateway: `127.0.0.1:${gw.address().port}`,
    pin: "00".repeat(32),
    certPem: cert.pem,
    keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    reconnect: false,
    handshakeSeconds: 1.5,
  });
  try {
    // The "gateway" answers each ClientHello with a forged alert from its own address, and a stranger sends one too.
    gw.on("message", (_m: Buffer, from: RemoteInfo) => {
      gw.send(ALERT, from.port, from.address);
      stranger.send(ALERT, from.port, from.address);
    });
    const t0 = Date.now();
    const closed = await new Promise<{ reason: string; message: string }>((resolve) => {
      client.once("closed", resolve);
      client.connect();
    });
    const ms = Date.now() - t0;
    assert.equal(closed.reason, "lost");
    assert.match(closed.message, /handshake timed out/);
    assert.ok(ms >= 1400, `the attempt ran to its deadline (${ms} ms)`);
    assert.ok(client.strays >= 1, "the stranger's datagrams were ignored");
  } finally {
    client.close();
    gw.close();
    stranger.close();
  }
});

/**
 * A fake gateway on loopback: a DTLS listener that leases `lease` under the negotiated version and records what
 * the runtime acknowledged. `alpn` undefined: a gateway from before version 2 (no ALPN at all).
 */
async function fakeGateway(alpn: string[] | undefined, lease: Lease) {
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = await selfSignedCert({ keys, name: "CN=gateway", days: 1 });
  const ctx = new DtlsContext({
    role: "server",
    certPem: cert.pem,
    keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    ...(alpn ? { alpn } : {}),
  });
  const listener = new DtlsListener(ctx);
  const sock = createSocket("udp4");
  await new Promise<void>((r) => sock.bind(0, "127.0.0.1", r));
  const acks: { version: number; body: unknown }[] = [];
  let session: DtlsSession | undefined;
  let version: 1 | 2 = 1;
  sock.on("message", (m: Buffer, from: RemoteInfo) => {
    const send = (out: Buffer[]) => out.forEach((d) => sock.send(d, from.port, from.address));
    if (!session) {
      const v = listener.handle(m, `${from.address}:${from.port}`);
      if (v.verdict === "reply") send(v.out);
      if (v.verdict === "accept") {
        session = v.session;
        send(v.out);
      }
      return;
    }
    const was = session.established();
    const r = session.receive(m);
    send(r.out);
    if (!was && r.established) {
      version = versionFromAlpn(session.alpn());
      send(session.send([encodeControl({ type: MSG.LEASE, lease }, version)]));
    }
    for (const rec of r.records) {
      if (rec[0] === 0 && rec[2] === MSG.LEASE_ACK)
        acks.push({ version: rec[1]!, body: JSON.parse(rec.toString("utf8", 3)) });
    }
  });
  const der = new X509Certificate(cert.pem).raw;
  return {
    gateway: `127.0.0.1:${sock.address().port}`,
    pin: createHash("sha256").update(der).digest("hex"),
    acks,
    version: () => version,
    close: () => {
      session?.free();
      sock.close();
    },
  };
}

const DUAL: Lease = {
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

for (const [name, gwAlpn, maxVersion, expected] of [
  ["a version-2 runtime and a version-2 gateway speak version 2", ["seng/2", "seng/1"], 2, 2],
  ["a version-2 runtime and a gateway from before ALPN speak version 1", undefined, 2, 1],
  ["a version-1 runtime (no ALPN) and a version-2 gateway speak version 1", ["seng/2", "seng/1"], 1, 1],
] as const) {
  test(name, async () => {
    const gw = await fakeGateway(gwAlpn ? [...gwAlpn] : undefined, DUAL);
    const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const cert = await selfSignedCert({ keys, name: "CN=runtime", days: 1 });
    const client = new TunnelClient({
      gateway: gw.gateway,
      pin: gw.pin,
      certPem: cert.pem,
      keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
      reconnect: false,
      maxVersion,
    });
    try {
      const got = await new Promise<Lease>((resolve, reject) => {
        client.once("lease", resolve);
        client.once("closed", (c) => reject(new Error(`${c.reason}: ${c.message}`)));
        client.connect();
      });
      assert.equal(gw.version(), expected);
      assert.equal(client.version, expected);
      if (expected === 2) assert.deepEqual(got, DUAL);
      else
        assert.deepEqual(got, {
          address: "100.64.1.2",
          prefix: 24,
          gateway: "100.64.0.1",
          mtu: 1400,
          dns: ["100.64.0.1"],
          lifetime: 300,
          app: "browser",
        });
      for (let i = 0; i < 50 && gw.acks.length === 0; i++) await sleep(20);
      assert.deepEqual(gw.acks, [
        {
          version: expected,
          body: expected === 2 ? { address: "100.64.1.2", address6: "fd64:1::2" } : { address: "100.64.1.2" },
        },
      ]);
    } finally {
      client.close();
      gw.close();
    }
  });
}

test("with several gateways, each attempt after a loss goes to the next one of the list, in turn", async () => {
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = await selfSignedCert({ keys, name: "CN=runtime", days: 1 });
  const a = createSocket("udp4");
  const b = createSocket("udp4");
  await new Promise<void>((r) => a.bind(0, "127.0.0.1", r));
  await new Promise<void>((r) => b.bind(0, "127.0.0.1", r));
  const hits: string[] = [];
  // Silent gateways: each attempt ends by its handshake deadline. Count the first datagram of each attempt (a new
  // source port per attempt).
  const seen = new Set<number>();
  a.on("message", (_m, from) => void (!seen.has(from.port) && seen.add(from.port) && hits.push("a")));
  b.on("message", (_m, from) => void (!seen.has(from.port) && seen.add(from.port) && hits.push("b")));
  const client = new TunnelClient({
    gateway: `127.0.0.1:${a.address().port}, 127.0.0.1:${b.address().port}`,
    pin: "00".repeat(32),
    certPem: cert.pem,
    keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    handshakeSeconds: 0.3,
    backoffMs: [10, 20],
  });
  try {
    client.connect();
    const end = Date.now() + 10_000;
    while (hits.length < 4 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(hits.slice(0, 4), ["a", "b", "a", "b"]);
  } finally {
    client.close();
    a.close();
    b.close();
  }
});

test("a gateway list names the entry it cannot read", () => {
  assert.deepEqual(gatewayList("a:1, b:2,[fd64::1]:3"), ["a:1", "b:2", "[fd64::1]:3"]);
  assert.throws(() => gatewayList("a:1,b"), /expected host:port, got b$/);
  assert.throws(() => gatewayList(" , "), /expected host:port/);
});

test("with a gateway list, a gateway that shows another certificate is skipped, not final: the next one leases", async () => {
  const impostor = await fakeGateway(["seng/2", "seng/1"], DUAL);
  const real = await fakeGateway(["seng/2", "seng/1"], DUAL);
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = await selfSignedCert({ keys, name: "CN=runtime", days: 1 });
  const client = new TunnelClient({
    gateway: `${impostor.gateway},${real.gateway}`,
    pin: real.pin,
    certPem: cert.pem,
    keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    backoffMs: [10, 20],
  });
  const closed: { reason: string; final: boolean }[] = [];
  client.on("closed", (c) => closed.push(c));
  try {
    const got = await new Promise<Lease>((resolve, reject) => {
      client.once("lease", resolve);
      setTimeout(() => reject(new Error(`no lease; closed: ${JSON.stringify(closed)}`)), 8000).unref();
      client.connect();
    });
    assert.equal(got.address, DUAL.address);
    assert.deepEqual(
      closed.map((c) => [c.reason, c.final]),
      [["protocol-error", false]],
      "the impostor's certificate ended one attempt, not the runtime",
    );
  } finally {
    client.close();
    impostor.close();
    real.close();
  }
});

test("a pin mismatch at every gateway of the list is final", async () => {
  const a = await fakeGateway(["seng/2", "seng/1"], DUAL);
  const b = await fakeGateway(["seng/2", "seng/1"], DUAL);
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = await selfSignedCert({ keys, name: "CN=runtime", days: 1 });
  const client = new TunnelClient({
    gateway: `${a.gateway},${b.gateway}`,
    pin: "00".repeat(32),
    certPem: cert.pem,
    keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    backoffMs: [10, 20],
  });
  const closed: { reason: string; final: boolean }[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      client.on("closed", (c) => {
        closed.push(c);
        if (c.final) resolve();
      });
      setTimeout(() => reject(new Error(`not final: ${JSON.stringify(closed)}`)), 8000).unref();
      client.connect();
    });
    assert.deepEqual(
      closed.map((c) => c.final),
      [false, true],
    );
  } finally {
    client.close();
    a.close();
    b.close();
  }
});
