/**
 * The SDK's fetch dispatcher (src/runtime/fetch.ts) without the preload: Node's global fetch and undici's fetch reach
 * an HTTP and an HTTPS server that live in lwIP (SDK sockets on the loopback stack), so every byte went through
 * SDK sockets; host sockets were never involved (nothing listens on the host).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { once } from "node:events";
import http from "node:http";
import https from "node:https";
import type { Socket as NodeSocket } from "node:net";
import { selfSignedCert, x509 } from "../../src/attest/x509gen.js";
import { createShieldedDispatcher, shieldedDispatcher, shieldedFetch } from "../../src/runtime/fetch.js";
import { createServer, type Server } from "../../src/runtime/net.js";
import { ShieldedStack } from "../../src/runtime/stack.js";
import { LeaseOnlyTunnel, LOOPBACK_ADDRESS as ME } from "../helpers/loopback-tunnel.js";

describe("fetch through shielded sockets (SDK dispatcher)", () => {
  let stack: ShieldedStack;
  const servers: Server[] = [];
  let ca = "";
  const seen: string[] = [];

  /** An http(s).Server fed with connections accepted by an SDK listener in lwIP; returns its port. */
  async function serve(h: http.Server | https.Server): Promise<number> {
    const s = createServer((c) => h.emit("connection", c as unknown as NodeSocket));
    s.listen(0);
    await once(s, "listening");
    servers.push(s);
    return (s.address() as { port: number }).port;
  }

  let httpPort = 0;
  let httpsPort = 0;

  before(async () => {
    stack = ShieldedStack.start({ tunnelClient: new LeaseOnlyTunnel() });
    const handler = (proto: string) => (req: http.IncomingMessage, res: http.ServerResponse) => {
      let body = "";
      req.on("data", (d: Buffer) => (body += d.toString()));
      req.on("end", () => {
        seen.push(`${proto} ${req.method} ${req.url} from ${req.socket.remoteAddress}`);
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify({ proto, method: req.method, url: req.url, body }));
      });
    };
    httpPort = await serve(http.createServer(handler("http")));
    const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const cert = await selfSignedCert({
      keys,
      name: `CN=${ME}`,
      days: 1,
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: "ip", value: ME }])],
    });
    ca = cert.pem;
    const key = keys.privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    httpsPort = await serve(https.createServer({ cert: cert.pem, key }, handler("https")));
  });

  after(async () => {
    for (const s of servers) s.close();
    await shieldedDispatcher().close();
    stack.close();
  });

  test("shieldedFetch: GET and POST with a JSON body over HTTP", async () => {
    const r = await shieldedFetch(`http://${ME}:${httpPort}/get`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { proto: "http", method: "GET", url: "/get", body: "" });
    const p = await shieldedFetch(`http://${ME}:${httpPort}/post`, { method: "POST", body: '{"n":42}' });
    assert.deepEqual(await p.json(), { proto: "http", method: "POST", url: "/post", body: '{"n":42}' });
    assert.ok(seen.includes(`http GET /get from ${ME}`));
  });

  test("Node's global fetch with the dispatcher; HTTPS checks the certificate", async () => {
    const d = createShieldedDispatcher({ tlsOptions: { ca } });
    try {
      const r = await fetch(`https://${ME}:${httpsPort}/tls`, {
        dispatcher: d,
      } as RequestInit & { dispatcher: unknown });
      assert.deepEqual(await r.json(), { proto: "https", method: "GET", url: "/tls", body: "" });
      // Without the CA the self-signed certificate is refused: TLS is Node's, with its checks.
      await assert.rejects(shieldedFetch(`https://${ME}:${httpsPort}/tls`), (e: Error) =>
        /certificate/i.test(String((e.cause as Error | undefined)?.message ?? e.message)),
      );
    } finally {
      await d.close();
    }
  });

  test("a refused connection is a fetch error, not a crash", async () => {
    await assert.rejects(shieldedFetch(`http://${ME}:1/`), (e: Error) => e instanceof TypeError);
  });
});
