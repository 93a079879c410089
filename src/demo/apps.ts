/**
 * The demo's programs, written to its folder and run with plain `node`: the services on the internet side, and the
 * client apps, which are ordinary unmodified Node programs (they know nothing of SENG; `seng runtime run` shields
 * them). Each prints JSON lines the demo reads.
 */

/** Web server on the internet side: answers every request and logs who asked. */
export const WEB_SERVER = `
const http = require("node:http");
http.createServer((req, res) => {
  console.log(JSON.stringify({ event: "request", remote: req.socket.remoteAddress, url: req.url }));
  res.end("welcome to the web server\\n");
}).listen(80, process.argv[2], () => console.log(JSON.stringify({ listening: true })));
`;

/** A database-like TCP service: one line in, one "row" out; logs who asked. */
export const DB_SERVER = `
const net = require("node:net");
net.createServer((s) => {
  let buf = "";
  s.on("data", (d) => {
    buf += d;
    for (let i; (i = buf.indexOf("\\n")) >= 0; ) {
      const q = buf.slice(0, i);
      buf = buf.slice(i + 1);
      console.log(JSON.stringify({ event: "query", remote: s.remoteAddress, q }));
      s.write("row for " + q + "\\n");
    }
  });
  s.on("error", () => {});
}).listen(5432, process.argv[2], () => console.log(JSON.stringify({ listening: true })));
`;

/** The browser app: one GET to the web server. */
export const BROWSER = `
import http from "node:http";
const url = process.argv[2];
const req = http.get(url, { timeout: 3000 }, (res) => {
  let body = "";
  res.on("data", (d) => (body += d));
  res.on("end", () => console.log(JSON.stringify({ status: res.statusCode, body: body.trim() })));
});
req.on("timeout", () => req.destroy(new Error("timed out")));
req.on("error", (e) => { console.log(JSON.stringify({ error: e.message })); process.exitCode = 1; });
`;

/**
 * The db-client app: first tries the web server (its policy does not allow that), then queries the database every
 * 100 ms until its connection ends.
 */
export const DB_CLIENT = `
import http from "node:http";
import net from "node:net";
const [web, dbHost] = process.argv.slice(2);
const say = (o) => console.log(JSON.stringify({ t: Date.now(), ...o }));
await new Promise((done) => {
  const req = http.get(web, { timeout: 2000 }, (res) => { say({ web: res.statusCode }); res.resume(); done(); });
  req.on("timeout", () => req.destroy(new Error("timed out")));
  req.on("error", (e) => { say({ web: "failed", error: e.message }); done(); });
});
const s = net.connect(5432, dbHost);
let n = 0, buf = "";
s.on("connect", () => {
  const timer = setInterval(() => s.write("query " + ++n + "\\n"), 100);
  s.on("close", () => { clearInterval(timer); say({ db: "closed" }); });
});
s.on("data", (d) => {
  buf += d;
  for (let i; (i = buf.indexOf("\\n")) >= 0; buf = buf.slice(i + 1)) say({ db: buf.slice(0, i) });
});
s.on("error", (e) => say({ db: "error", error: e.message }));
`;

/** A server app in a TEE: reachable from the internet side at its leased address. */
export const ENCLAVE_SERVER = `
import http from "node:http";
http.createServer((req, res) => {
  console.log(JSON.stringify({ event: "request", remote: req.socket.remoteAddress, url: req.url }));
  res.end("hello from the enclave\\n");
}).listen(8080, () => console.log(JSON.stringify({ listening: true })));
`;
