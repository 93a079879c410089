/**
 * Spoofed ClientHellos, run in a test namespace that holds the victim's address:
 *   hello-flood.ts <source ip> <gateway ip:port> <per second> <ms>
 * sends `per second` genuine DTLS ClientHellos a second from `source` (a fresh port each) for `ms`, never answering
 * the HelloVerifyRequests (they go to the real owner of the address). Prints {"started":true}, then {"sent":…}.
 */
import { generateKeyPairSync } from "node:crypto";
import { selfSignedCert } from "../../src/attest/x509gen.js";
import { DtlsContext, DtlsSession } from "../../src/native/dtls.js";
import { UdpSocket } from "../../src/native/io.js";

const [source, gateway, rateS, msS] = process.argv.slice(2);
const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
const cert = await selfSignedCert({ keys, name: "CN=hello-flood", days: 1 });
const ctx = new DtlsContext({
  role: "client",
  certPem: cert.pem,
  keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
});
const hellos = Array.from({ length: 16 }, () => {
  const s = DtlsSession.client(ctx);
  const h = s.start();
  s.free();
  return h;
});
const sockets = Array.from({ length: 32 }, () => UdpSocket.bind(source!, 0));
let sent = 0;
const perTick = Math.max(1, Math.round(Number(rateS) / 20));
const end = Date.now() + Number(msS);
process.stdout.write(JSON.stringify({ started: true }) + "\n");
const timer = setInterval(() => {
  for (let i = 0; i < perTick; i++)
    sent += sockets[sent % sockets.length]!.sendMany(hellos[sent % 16]!, gateway!);
  if (Date.now() < end) return;
  clearInterval(timer);
  for (const s of sockets) s.close();
  process.stdout.write(JSON.stringify({ sent }) + "\n");
}, 50);
