/**
 * Bounded abuse of a gateway, run from a test namespace:
 *   flood.ts <gateway ip> <port> <handshakes> <garbage>
 * sends `handshakes` genuine DTLS ClientHellos from distinct source ports (each abandoned mid-handshake), and
 * `garbage` random datagrams. Prints {"sent":…} and exits; it stops by itself.
 */
import { generateKeyPairSync } from "node:crypto";
import { selfSignedCert } from "../../src/attest/x509gen.js";
import { DtlsContext, DtlsSession } from "../../src/native/dtls.js";
import { UdpSocket } from "../../src/native/io.js";

const [ip, portS, hsS, garbageS] = process.argv.slice(2);
const peer = `${ip}:${portS}`;
const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
const cert = await selfSignedCert({ keys, name: "CN=flood", days: 1 });
const ctx = new DtlsContext({
  role: "client",
  certPem: cert.pem,
  keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
});
let sent = 0;
const sockets: UdpSocket[] = [];
for (let i = 0; i < Number(hsS); i++) {
  const s = UdpSocket.bind("0.0.0.0", 0);
  const session = DtlsSession.client(ctx);
  // Answer the HelloVerifyRequest once, so the gateway really creates per-client state, then stop answering in the
  // middle of the handshake (the gateway must time these out while serving everyone else).
  let answered = false;
  s.onDatagrams((b) => {
    if (answered) return;
    answered = true;
    const r = session.receiveMany(b.data);
    if (r.out.length) s.sendMany(r.out, peer);
  });
  sent += s.sendMany(session.start(), peer);
  sockets.push(s);
}
const g = UdpSocket.bind("0.0.0.0", 0);
let seed = 99;
for (let i = 0; i < Number(garbageS); i++) {
  const b = Buffer.alloc(1 + ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % 1200));
  for (let k = 0; k < b.length; k++) b[k] = (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 255;
  if (i % 3 === 0) b[0] = 22; // looks like a handshake record
  sent += g.sendMany([b], peer);
}
setTimeout(() => {
  for (const s of sockets) s.close();
  g.close();
  process.stdout.write(JSON.stringify({ sent }) + "\n");
}, 1500);
