/**
 * A TCP sink and source for end-to-end tests, run inside test namespaces:
 *   tcp-tool.ts sink <ip> <port>            accept one connection, print {"remote","bytes","sha256"} when it ends
 *   tcp-tool.ts source <ip> <port> <bytes>  send deterministic data, print {"bytes","sha256","ms"}
 *   tcp-tool.ts echo <ip> <port>            echo server (prints {"listening":true})
 */
import { createHash } from "node:crypto";
import { createConnection, createServer } from "node:net";

const [mode, ip, portS, bytesS] = process.argv.slice(2);
const port = Number(portS);

function chunk(seed: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  return b;
}

if (mode === "sink") {
  const srv = createServer((s) => {
    const h = createHash("sha256");
    let bytes = 0;
    s.on("data", (d) => {
      h.update(d);
      bytes += d.length;
    });
    s.on("end", () => {
      process.stdout.write(
        JSON.stringify({ remote: s.remoteAddress, bytes, sha256: h.digest("hex") }) + "\n",
      );
      s.end();
      srv.close();
    });
  });
  srv.listen(port, ip, () => process.stdout.write(JSON.stringify({ listening: true }) + "\n"));
} else if (mode === "echo") {
  createServer((s) => {
    process.stdout.write(JSON.stringify({ remote: s.remoteAddress }) + "\n");
    s.pipe(s);
  }).listen(port, ip, () => process.stdout.write(JSON.stringify({ listening: true }) + "\n"));
} else if (mode === "source") {
  const total = Number(bytesS);
  const h = createHash("sha256");
  const t0 = Date.now();
  const s = createConnection({ host: ip, port }, () => {
    let sent = 0;
    let seed = 1;
    const pump = (): void => {
      while (sent < total) {
        const c = chunk(seed++, Math.min(65536, total - sent));
        h.update(c);
        sent += c.length;
        if (!s.write(c)) return void s.once("drain", pump);
      }
      s.end();
    };
    pump();
  });
  s.on("data", () => {});
  s.on("close", () =>
    process.stdout.write(
      JSON.stringify({ bytes: total, sha256: h.digest("hex"), ms: Date.now() - t0 }) + "\n",
    ),
  );
  s.on("error", (e) => {
    process.stderr.write(`source: ${e.message}\n`);
    process.exitCode = 1;
  });
} else {
  process.stderr.write("usage: tcp-tool.ts sink|source|echo ip port [bytes]\n");
  process.exitCode = 2;
}
