/**
 * The tunnel client against a fake gateway on loopback: nothing unauthenticated ends a handshake attempt, and
 * datagrams from anyone but the gateway are ignored.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createSocket, type RemoteInfo } from "node:dgram";
import { generateKeyPairSync } from "node:crypto";
import { selfSignedCert } from "../../src/attest/x509gen.js";
import { TunnelClient, gatewayList } from "../../src/tunnel/client.js";

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
