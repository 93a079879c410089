/**
 * C heap per server-side DTLS session with real RA-TLS client certificates (simulated TEE), in one process, no
 * network (not part of `npm run bench`):
 *   node --expose-gc --import tsx bench/session-memory.ts [sessions=500]
 * Opens that many sessions through a DtlsListener, frees the client ends, and reports the malloc'd bytes per live
 * server session (mallinfo2), plain and after trimPeerCertificate (what the gateway does). Under heaptrack
 * (`heaptrack node --expose-gc --import tsx bench/session-memory.ts 200`) the same run shows where it goes.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeIdentity, SimAttester } from "../src/runtime/attesters.js";
import { DtlsContext, DtlsListener, DtlsSession } from "../src/native/dtls.js";
import { mallocInfo } from "../src/native/mem.js";
import { CLI } from "../test/helpers/lab.js";
import { round } from "./util.js";

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with node --expose-gc");
const n = Number(process.argv[2] ?? 500);
const dir = mkdtempSync(join(tmpdir(), "seng-session-memory-"));
try {
  execFileSync(process.execPath, ["--import", "tsx", CLI, "attest", "sim", "init", "--dir", dir], {
    stdio: "ignore",
  });
  const attester = new SimAttester(dir, { mrenclave: "b0".repeat(32), mrsigner: "00".repeat(32) });
  const ids: Awaited<ReturnType<typeof makeIdentity>>[] = [];
  for (let i = 0; i < n; i++) ids.push(await makeIdentity(attester));
  const gateway = await makeIdentity(attester);
  const listener = new DtlsListener(
    new DtlsContext({ role: "server", certPem: gateway.certPem, keyPem: gateway.keyPem }),
  );
  const inUse = (): number => mallocInfo()!.inUse;
  // Node-API finalizers (the client contexts' SSL_CTX) run after the collection, on the event loop.
  const settle = async (): Promise<void> => {
    for (let i = 0; i < 3; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  /** C heap bytes per live server session, with or without trimming its peer certificate. */
  const measure = async (trim: boolean): Promise<number> => {
    const servers: DtlsSession[] = [];
    await settle();
    const base = inUse();
    for (let i = 0; i < n; i++) {
      const client = DtlsSession.client(
        new DtlsContext({ role: "client", certPem: ids[i]!.certPem, keyPem: ids[i]!.keyPem }),
      );
      const peer = `192.0.2.${i & 255}:${1000 + i}`;
      const hello = listener.handle(client.start()[0]!, peer);
      if (hello.verdict !== "reply") throw new Error("no HelloVerifyRequest");
      const accepted = listener.handle(client.receiveMany(hello.out).out[0]!, peer);
      if (accepted.verdict !== "accept") throw new Error("cookie not accepted");
      const server = accepted.session;
      let toClient = accepted.out;
      for (let k = 0; k < 10 && toClient.length; k++)
        toClient = server.receiveMany(client.receiveMany(toClient).out).out;
      if (!server.established()) throw new Error(`handshake ${i} did not complete: ${server.error() ?? ""}`);
      if (trim) server.trimPeerCertificate();
      client.free();
      servers.push(server);
    }
    await settle();
    const live = inUse();
    for (const s of servers) s.free();
    await settle();
    return (live - Math.max(base, inUse())) / n;
  };
  const certBytes = Buffer.from(ids[0]!.certPem.replace(/-----[^-]+-----|\s/g, ""), "base64").length;
  const plain = await measure(false);
  const trimmed = await measure(true);
  process.stdout.write(
    JSON.stringify({
      sessions: n,
      certBytes,
      sessionKb: round(plain / 1024, 2),
      trimmedSessionKb: round(trimmed / 1024, 2),
    }) + "\n",
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
