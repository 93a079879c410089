/**
 * TUN mode (`seng runtime up --tun`) as in a confidential VM: the whole client namespace's traffic goes through the
 * tunnel (default route), an unmodified program (curl) reaches the server, the server sees the app's address, and
 * stopping the runtime restores the routes.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { CLI, Lab, SERVER_IP, waitLine } from "../helpers/lab.js";

const MR = "c0".repeat(32);
let lab: Lab;

before(async () => {
  lab = await Lab.create({
    apps: [{ name: "cvm", subnet: "100.64.7.0/24", identities: [{ mrenclave: MR }] }],
  });
  await lab.startGateway();
});
after(async () => {
  await lab?.destroy();
});

test("curl through TUN mode with the default route taken over", async () => {
  const http = lab.server(process.execPath, [
    "-e",
    `require("http").createServer((q,s)=>{console.log(JSON.stringify({remote:q.socket.remoteAddress}));s.end("hello from the server\\n")}).listen(8080,"${SERVER_IP}",()=>console.log(JSON.stringify({listening:true})))`,
  ]);
  await waitLine(http, (o) => o.listening === true);
  const cli = lab.clients[0]!;
  const rt = cli.spawn(process.execPath, [
    "--import",
    "tsx",
    CLI,
    "runtime",
    "up",
    "--json",
    "--tun",
    "seng-rt0",
    "--tee",
    "sim",
    "--sim-dir",
    lab.simDir,
    "--mrenclave",
    MR,
    "--gateway",
    lab.gatewayAddr(0),
    "--pin",
    `${lab.dir}/gateway.pem`,
    "--route",
    "default",
  ]);
  const lease = await waitLine<{ address: string }>(rt, (o) => o.event === "lease");
  assert.match(lease.address, /^100\.64\.7\./);
  let out = { code: 1 as number | null, stdout: "", stderr: "" };
  for (let i = 0; i < 20 && out.code !== 0; i++) {
    out = await cli.exec("curl", ["-sS", "--max-time", "3", `http://${SERVER_IP}:8080/`], {
      check: false,
      timeoutMs: 10_000,
    });
    if (out.code !== 0) await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(out.code, 0, out.stderr);
  assert.equal(out.stdout, "hello from the server\n");
  const seen = await waitLine<{ remote: string }>(http, (o) => typeof o.remote === "string");
  assert.equal(seen.remote, lease.address);
  const routes = (await cli.ip("route", "show", "default")).stdout;
  assert.match(routes, /default dev seng-rt0/);

  await rt.kill("SIGTERM", 10_000);
  const after = (await cli.ip("route", "show")).stdout;
  assert.doesNotMatch(after, /seng-rt0/, "routes through the TUN are gone");
  assert.doesNotMatch(after, /^default/m);
  const links = (await cli.ip("link", "show")).stdout;
  assert.doesNotMatch(links, /seng-rt0/, "the TUN is gone");
});
