/**
 * ClientHello flood from many source addresses, run in a client namespace by bench/flood.ts:
 *   hello-flood.ts <gateway ip:port> <first source ip> <sources> <seconds>
 * Each source (`first source ip` + i, addresses the namespace holds) keeps one handshake attempt in flight: a fresh
 * ClientHello from a fresh port, the cookie answered when a HelloVerifyRequest comes (the source owns its address),
 * then abandoned at the ServerHello; an attempt without an answer is replaced after 100 ms. Stops by itself after `seconds`;
 * prints {"hellos":…,"cookies":…,"serverHellos":…}.
 */
import { generateKeyPairSync } from "node:crypto";
import { selfSignedCert } from "../src/attest/x509gen.js";
import { DtlsContext, DtlsSession } from "../src/native/dtls.js";
import { UdpSocket } from "../src/native/io.js";
import { intToIp, ipToInt } from "../src/packet/ip.js";

const [gateway, firstS, countS, secsS] = process.argv.slice(2);
const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
const cert = await selfSignedCert({ keys, name: "CN=hello-flood", days: 1 });
const ctx = new DtlsContext({
  role: "client",
  certPem: cert.pem,
  keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
});
const n = { hellos: 0, cookies: 0, serverHellos: 0 };
const end = Date.now() + Number(secsS) * 1000;
interface Source {
  ip: string;
  udp: UdpSocket | undefined;
  session: DtlsSession | undefined;
  at: number;
}
const sources: Source[] = [];

/** A new attempt from a new port: the gateway sees a new peer each time. */
function attempt(s: Source): void {
  s.session?.free();
  s.udp?.close();
  const udp = UdpSocket.bind(s.ip, 0);
  const session = DtlsSession.client(ctx);
  s.udp = udp;
  s.session = session;
  s.at = Date.now();
  udp.onDatagrams((b) => {
    if (s.session !== session || Date.now() > end) return;
    const r = session.receiveMany(b.data);
    if (r.out.length && !session.established() && r.out[0]![13] === 1) {
      n.cookies += udp.sendMany(r.out, gateway!); // the ClientHello again, now with the cookie
      return;
    }
    n.serverHellos++;
    attempt(s); // abandon at the ServerHello: the gateway holds a half-open handshake
  });
  n.hellos += udp.sendMany(session.start(), gateway!);
}

for (let i = 0; i < Number(countS); i++) {
  const s: Source = { ip: intToIp(ipToInt(firstS!) + i), udp: undefined, session: undefined, at: 0 };
  sources.push(s);
  attempt(s);
}
const timer = setInterval(() => {
  const now = Date.now();
  if (now > end) {
    clearInterval(timer);
    for (const s of sources) {
      s.session?.free();
      s.udp?.close();
    }
    process.stdout.write(JSON.stringify(n) + "\n");
    return;
  }
  for (const s of sources) if (now - s.at > 100) attempt(s);
}, 20);
