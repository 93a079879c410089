/**
 * IPv6 end to end in the namespace lab (issue 17, the runtime's part): a dual-stack app (IPv4 subnet and IPv6
 * prefix) and a server network with an IPv6-only server (2001:2:ff::2, also the DNS server, over IPv6) and an IPv4
 * server (198.18.2.2). The client namespace has no IPv6 route at all: the tunnel is its only way out.
 *
 * An UNMODIFIED Node app run with `seng runtime run -- node app.cjs` fetches from the IPv6-only server by name (DNS
 * AAAA through the tunnel) and by literal, and from the IPv4 server, through one tunnel; connects by a name with both
 * families (Happy Eyeballs); echoes over dgram udp6. The servers see the app's leased addresses, and `seng audit
 * who <leased IPv6>` names the app.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DNS_ZONE_CJS } from "../helpers/dns-zone.js";
import { CLI, Lab, SERVER_IP, waitLine } from "../helpers/lab.js";
import { ROOT, type NsProcess } from "../helpers/netns.js";

const MR = "d6".repeat(32);
const SERVER6 = "2001:2:ff::2";
const GW6 = "2001:2:ff::1";
const ZONE = {
  "svc6.seng.test": { AAAA: [SERVER6] },
  "svc4.seng.test": { A: [SERVER_IP] },
  "dual.seng.test": { A: [SERVER_IP], AAAA: [SERVER6] },
};

const HTTP_SERVER = (host: string, tag: string) => `
const srv = require("http").createServer((q, s) => {
  console.log(JSON.stringify({ tag: "${tag}", url: q.url, remote: q.socket.remoteAddress }));
  s.end("${tag} " + q.url);
});
srv.listen({ port: 8080, host: "${host}", ipv6Only: ${host.includes(":")} }, () => console.log(JSON.stringify({ listening: true })));
`;

const UDP6_ECHO = `
const s = require("dgram").createSocket({ type: "udp6", ipv6Only: true });
s.on("message", (m, r) => { console.log(JSON.stringify({ udpFrom: r.address })); s.send(m, r.port, r.address); });
s.bind(7001, "${SERVER6}", () => console.log(JSON.stringify({ listening: true })));
`;

/** The app: unmodified, nothing SENG in it. */
const APP = `
const http = require("http"), dgram = require("dgram"), dns = require("dns"), net = require("net");
const text = async (url) => { const r = await fetch(url); return r.status + " " + (await r.text()); };
(async () => {
  const out = {};
  out.byName = await text("http://svc6.seng.test:8080/by-name");
  out.byLiteral = await text("http://[${SERVER6}]:8080/by-literal");
  out.v4 = await text("http://${SERVER_IP}:8080/v4");
  out.resolve6 = await dns.promises.resolve6("svc6.seng.test");
  out.all = await dns.promises.lookup("dual.seng.test", { all: true });
  out.dual = await new Promise((res, rej) => {
    const s = net.connect({ host: "dual.seng.test", port: 8080 }, () => { res({ remote: s.remoteAddress, family: s.remoteFamily, local: s.localAddress }); s.destroy(); });
    s.on("error", rej);
  });
  out.httpGet = await new Promise((res, rej) => http.get("http://[${SERVER6}]:8080/http-get", (r) => { let b = ""; r.on("data", (d) => (b += d)); r.on("end", () => res(b)); }).on("error", rej));
  out.udp = await new Promise((res, rej) => {
    const s = dgram.createSocket("udp6");
    const t = setTimeout(() => rej(new Error("no UDP echo")), 5000);
    s.on("message", (m, r) => { clearTimeout(t); res({ msg: m.toString(), from: r.address, family: r.family, local: s.address().address }); s.close(); });
    let n = 0; const send = () => { if (n++ < 20) { s.send("ping6", 7001, "${SERVER6}"); setTimeout(send, 200).unref(); } }; send();
  });
  console.log(JSON.stringify(out));
})().catch((e) => { console.log(JSON.stringify({ error: e.stack })); process.exitCode = 1; });
`;

describe("IPv6 end to end: an unmodified app on a dual-stack lease", { concurrency: false }, () => {
  let lab: Lab;
  const procs: Record<string, NsProcess> = {};

  before(async () => {
    lab = await Lab.create({
      apps: [{ name: "dual", subnet: "100.64.9.0/24", identities: [{ mrenclave: MR }] }],
      extraYaml: `dns: [${SERVER6}]`,
    });
    // The app's IPv6 prefix and the gateway's IPv6 address in the tunnel (the lab's config is IPv4 only).
    const cfg = readFileSync(lab.configFile, "utf8")
      .replace("address: 100.64.0.1/32,", "address: 100.64.0.1/32, address6: fd64:9::1/128,")
      .replace("    subnet: 100.64.9.0/24\n", "    subnet: 100.64.9.0/24\n    subnet6: fd64:9::/64\n");
    assert.match(cfg, /subnet6: fd64:9::\/64/);
    writeFileSync(lab.configFile, cfg);
    // IPv6 between the gateway and the server network only; the client namespace gets none.
    await lab.gw.ip("-6", "addr", "add", `${GW6}/64`, "dev", "gw-srv", "nodad");
    await lab.srv.ip("-6", "addr", "add", `${SERVER6}/64`, "dev", "srv-gw", "nodad");
    await lab.srv.ip("-6", "route", "add", "fd64::/16", "via", GW6);
    await lab.startGateway();
    const dnsFile = join(lab.dir, "dns.cjs");
    writeFileSync(dnsFile, DNS_ZONE_CJS);
    const files: Record<string, [string, string[]]> = {
      web6: ["web6.cjs", []],
      web4: ["web4.cjs", []],
      udp6: ["udp6.cjs", []],
      dns: ["dns.cjs", [SERVER6, JSON.stringify(ZONE)]],
    };
    writeFileSync(join(lab.dir, "web6.cjs"), HTTP_SERVER(SERVER6, "v6-only server"));
    writeFileSync(join(lab.dir, "web4.cjs"), HTTP_SERVER(SERVER_IP, "v4 server"));
    writeFileSync(join(lab.dir, "udp6.cjs"), UDP6_ECHO);
    writeFileSync(join(lab.dir, "app.cjs"), APP);
    for (const [k, [f, args]] of Object.entries(files)) {
      procs[k] = lab.server(process.execPath, [join(lab.dir, f), ...args]);
      await waitLine(procs[k], (o) => o.listening === true);
    }
  });
  after(async () => {
    await lab?.destroy();
  });

  test("fetch from the IPv6-only server (by name via AAAA, by literal) and the IPv4 server through one tunnel; the servers see the leased addresses; audit who names the app", async () => {
    const cli = lab.clients[0]!;
    assert.equal((await cli.ip("-6", "route", "show", "2001:2:ff::/48")).stdout.trim(), "", "no IPv6 route");
    const e: NodeJS.ProcessEnv = { ...process.env, SENG_LOG: "json" };
    delete e.NODE_TEST_CONTEXT;
    const p = cli.spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        CLI,
        "runtime",
        "run",
        "--gateway",
        lab.gatewayAddr(0),
        "--pin",
        lab.pin,
        "--tee",
        "sim",
        "--sim-dir",
        lab.simDir,
        "--mrenclave",
        MR,
        "--",
        "node",
        join(lab.dir, "app.cjs"),
      ],
      { env: e },
    );
    const r = await p.wait(90_000);
    const lease = r.stderr
      .split("\n")
      .filter((l) => l.startsWith('{"seng":true'))
      .map((l) => JSON.parse(l) as { event: string; address?: string; address6?: string })
      .find((o) => o.event === "lease");
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(lease?.address ?? "", /^100\.64\.9\.\d+$/, r.stderr);
    assert.match(lease?.address6 ?? "", /^fd64:9::/, r.stderr);
    const a4 = lease!.address!;
    const a6 = lease!.address6!;
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!) as Record<string, unknown>;
    assert.equal(out.byName, "200 v6-only server /by-name");
    assert.equal(out.byLiteral, "200 v6-only server /by-literal");
    assert.equal(out.v4, "200 v4 server /v4");
    assert.equal(out.httpGet, "v6-only server /http-get");
    assert.deepEqual(out.resolve6, [SERVER6]);
    // verbatim order with an IPv6 lease: IPv6 first, and Happy Eyeballs connects to it.
    assert.deepEqual(out.all, [
      { address: SERVER6, family: 6 },
      { address: SERVER_IP, family: 4 },
    ]);
    assert.deepEqual(out.dual, { remote: SERVER6, family: "IPv6", local: a6 });
    assert.deepEqual(out.udp, { msg: "ping6", from: SERVER6, family: "IPv6", local: "::" });

    const seen6 = procs
      .web6!.stdout.split("\n")
      .filter((l) => l.startsWith('{"tag"'))
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      seen6.map((o: { url: string; remote: string }) => [o.url, o.remote]),
      [
        ["/by-name", a6],
        ["/by-literal", a6],
        ["/http-get", a6],
      ],
    );
    const seen4 = procs
      .web4!.stdout.split("\n")
      .filter((l) => l.startsWith('{"tag"'))
      .map((l) => JSON.parse(l));
    assert.deepEqual(seen4, [{ tag: "v4 server", url: "/v4", remote: a4 }]);
    const queries = procs
      .dns!.stdout.split("\n")
      .filter((l) => l.startsWith('{"query"'))
      .map((l) => JSON.parse(l));
    assert.ok(
      queries.some(
        (q: { query: string; type: number; from: string }) =>
          q.query === "svc6.seng.test" && q.type === 28 && q.from === a6,
      ),
      JSON.stringify(queries),
    );
    assert.ok(procs.udp6!.stdout.includes(`"udpFrom":"${a6}"`));

    const who = execFileSync(
      process.execPath,
      ["--import", "tsx", CLI, "audit", "who", a6, "--config", lab.configFile, "--json"],
      {
        cwd: ROOT,
        encoding: "utf8",
      },
    );
    const w = JSON.parse(who) as { holder: { app: string; measurement?: string } };
    assert.equal(w.holder.app, "dual");
  });

  test("TUN mode (confidential VM): the leased IPv6 address on the TUN, ::/0 through it, no link-local; curl -6 reaches the IPv6-only server", async () => {
    const cli = lab.clients[0]!;
    const rt = cli.spawn(process.execPath, [
      "--import",
      "tsx",
      CLI,
      "runtime",
      "up",
      "--json",
      "--tun",
      "seng-rt6",
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
    const lease = await waitLine<{ address: string; address6: string }>(
      rt,
      (o) => o.event === "lease",
      30_000,
    );
    assert.match(lease.address6, /^fd64:9::/);
    const addrs = (await cli.ip("-6", "addr", "show", "dev", "seng-rt6")).stdout;
    assert.match(addrs, new RegExp(`inet6 ${lease.address6}/128`));
    assert.doesNotMatch(addrs, /fe80:/, "no link-local address on the TUN");
    assert.match((await cli.ip("-6", "route", "show", "default")).stdout, /default dev seng-rt6/);
    const from = procs.web6!.stdout.length;
    let out = { code: 1 as number | null, stdout: "", stderr: "" };
    for (let i = 0; i < 20 && out.code !== 0; i++) {
      out = await cli.exec("curl", ["-6", "-sS", "--max-time", "3", `http://[${SERVER6}]:8080/tun`], {
        check: false,
        timeoutMs: 10_000,
      });
      if (out.code !== 0) await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(out.code, 0, out.stderr);
    assert.equal(out.stdout, "v6-only server /tun");
    const seen = await waitLine<{ remote: string }>(procs.web6!, (o) => o.url === "/tun", 5000, from);
    assert.equal(seen.remote, lease.address6);
    await rt.kill("SIGTERM", 10_000);
    assert.doesNotMatch(
      (await cli.ip("-6", "route", "show")).stdout,
      /seng-rt6|^default/m,
      "IPv6 routes restored",
    );
    assert.doesNotMatch((await cli.ip("link", "show")).stdout, /seng-rt6/, "the TUN is gone");
  });
});
