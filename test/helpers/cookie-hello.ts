/**
 * Real handshake starts from chosen source addresses, run in a test namespace that holds them:
 *   cookie-hello.ts <gateway ip:port | [ip6]:port> <source> [<source>...]
 * For each source in turn: a DTLS ClientHello from a socket bound to it, the gateway's HelloVerifyRequest answered
 * with the cookie (the source owns its address), then up to 1.5 s for the gateway's next flight (ServerHello...),
 * which it sends only when the source is within its rate limit. Prints one JSON line:
 * {"answered":[true,false,...]} in the order of the sources. The handshakes are then dropped (never finished).
 */
import { generateKeyPairSync } from "node:crypto";
import { selfSignedCert } from "../../src/attest/x509gen.js";
import { DtlsContext, DtlsSession } from "../../src/native/dtls.js";
import { UdpSocket } from "../../src/native/io.js";

const [gateway, ...sources] = process.argv.slice(2);
const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
const cert = await selfSignedCert({ keys, name: "CN=cookie-hello", days: 1 });
const ctx = new DtlsContext({
  role: "client",
  certPem: cert.pem,
  keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
});

/** A socket bound to `source` whose datagrams queue up; `next(ms)` takes what came, waiting up to `ms`. */
function open(source: string): { udp: UdpSocket; next(ms: number): Promise<Buffer[]> } {
  const udp = UdpSocket.bind(source, 0);
  let queue: Buffer[] = [];
  let wake: (() => void) | undefined;
  udp.onDatagrams((b) => {
    queue.push(...b.data.map((d) => Buffer.from(d)));
    wake?.();
  });
  return {
    udp,
    async next(ms) {
      if (!queue.length) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, ms);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = undefined;
      }
      const got = queue;
      queue = [];
      return got;
    },
  };
}

const answered: boolean[] = [];
for (const source of sources) {
  const { udp, next } = open(source);
  const s = DtlsSession.client(ctx);
  udp.sendMany(s.start(), gateway!);
  const hvr = await next(1500);
  let ok = false;
  if (hvr.length) {
    udp.sendMany(s.receiveMany(hvr).out, gateway!); // the ClientHello with the cookie
    ok = (await next(1500)).length > 0;
  }
  answered.push(ok);
  s.free();
  udp.close();
}
process.stdout.write(JSON.stringify({ answered }) + "\n");
