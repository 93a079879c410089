/**
 * A shielded app has no debugger port and no unshielded way out by default (src/runtime/guards.ts, issue 19), tested
 * against a real gateway in the namespace lab, by what a client host or the server sees:
 *
 *   cli0 (198.18.1.2) ── gw-c0 ┐                       firewall.unshielded: { drop: true, interfaces: [gw-c0] }
 *   cli1 (198.18.3.2) ── gw-c1 ┴─ gw ── srv (198.18.2.2) an HTTP server logging who asked
 *
 * Both client hosts also route to the server on their own (the host's stack, through the gateway), as a real host
 * would: cli1's host traffic reaches the server (its LAN is not in `unshielded.interfaces`), cli0's is dropped and
 * counted. The apps run in the client namespaces under the preload or `seng runtime run`.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, realpathSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { Lab, SERVER_IP, waitLine } from "../helpers/lab.js";
import { ROOT, type NsProcess } from "../helpers/netns.js";

const MR = "b2".repeat(32);
const REGISTER = join(ROOT, "src/runtime/register.ts");
const CLI = join(ROOT, "src/cli/main.ts");
const CURL = realpathSync("/usr/bin/curl");
const ADDON = realpathSync(join(ROOT, "node_modules/better-sqlite3/build/Release/better_sqlite3.node"));
const ADDON_SHA = createHash("sha256").update(readFileSync(ADDON)).digest("hex");
const URL_BASE = `http://${SERVER_IP}:8080`;

const FILES: Record<string, string> = {
  /** The server: logs every request's source address and path as a JSON line. */
  "web.cjs": `
const http = require("http");
http.createServer((q, s) => { console.log(JSON.stringify({ remote: q.socket.remoteAddress, url: q.url })); s.end("ok " + q.url); })
  .listen(8080, "${SERVER_IP}", () => console.log(JSON.stringify({ listening: true })));
`,
  /** Every run-time way to a debugger; then waits for the test's signals and file "go", and makes one request. */
  "debugger.cjs": `
const inspector = require("inspector"), fs = require("fs"), http = require("http"), { Worker } = require("worker_threads");
const out = {};
const attempt = (k, f) => { try { f(); out[k] = "NOT REFUSED"; } catch (e) { out[k] = String(e.code); } };
attempt("open", () => inspector.open(9229, "0.0.0.0"));
attempt("openDefault", () => inspector.open());
attempt("debugProcess", () => process._debugProcess(process.pid));
attempt("binding", () => process.binding("inspector").open(9229, "0.0.0.0", false));
(async () => {
  out.worker = await new Promise((res) => {
    const w = new Worker("try { require('inspector').open(9229, '0.0.0.0'); require('worker_threads').parentPort.postMessage('NOT REFUSED'); } catch (e) { require('worker_threads').parentPort.postMessage(String(e.code)); }", { eval: true });
    w.on("message", res); w.on("error", (e) => res(e.message));
  });
  console.log(JSON.stringify({ ready: true, pid: process.pid, ...out }));
  while (!fs.existsSync(process.argv[2])) await new Promise((r) => setTimeout(r, 100));
  http.get("${URL_BASE}/after-signals", (r) => { r.resume(); r.on("end", () => console.log(JSON.stringify({ done: true, status: r.statusCode, url: inspector.url() ?? null }))); });
})();
`,
  /** Non-Node programs in every child_process form, and a worker's: each must be refused before it runs. */
  "children.cjs": `
const cp = require("child_process"), { Worker } = require("worker_threads");
const u = (k) => "${URL_BASE}/child-" + k, curl = (k) => ["-s", "--max-time", "3", u(k)];
const out = {};
const attempt = (k, f) => { try { const c = f(); out[k] = "NOT REFUSED"; if (c && c.on) c.on("error", () => {}); } catch (e) { out[k] = String(e.code); } };
attempt("spawn", () => cp.spawn("curl", curl("spawn")));
attempt("exec", () => cp.exec("curl " + curl("exec").join(" ")));
attempt("execFile", () => cp.execFile("${CURL}", curl("execFile"), () => {}));
attempt("spawnShell", () => cp.spawn("curl " + curl("shell").join(" "), { shell: true }));
attempt("spawnSync", () => { const r = cp.spawnSync("curl", curl("spawnSync")); if (r.error) throw r.error; });
attempt("execSync", () => cp.execSync("curl " + curl("execSync").join(" ")));
attempt("execFileSync", () => cp.execFileSync("curl", curl("execFileSync")));
attempt("binding", () => process.binding("spawn_sync"));
(async () => {
  out.worker = await new Promise((res) => {
    const w = new Worker("try { require('child_process').execFileSync('curl', " + JSON.stringify(curl("worker")) + "); require('worker_threads').parentPort.postMessage('NOT REFUSED'); } catch (e) { require('worker_threads').parentPort.postMessage(String(e.code)); }", { eval: true });
    w.on("message", res); w.on("error", (e) => res(e.message));
  });
  console.log(JSON.stringify(out));
})();
`,
  /** One allowed host program (curl, through allowHostPrograms). */
  "allowed.cjs": `
const r = require("child_process").spawnSync("curl", ["-s", "--max-time", "3", "${URL_BASE}/child-allowed"]);
console.log(JSON.stringify({ ran: !r.error, status: r.status, error: r.error && r.error.code }));
`,
  /** Node children: fork (with and without execArgv) and spawn of process.execPath; each asks the server once. */
  "node-children.cjs": `
const { fork, spawn } = require("child_process"), path = require("path"), http = require("http");
const kid = path.join(__dirname, "kid.cjs");
const ended = (c) => new Promise((res) => c.on("exit", (code) => res(code)));
(async () => {
  const out = {};
  out.fork = await ended(fork(kid, ["fork"], { stdio: "inherit" }));
  out.forkBare = await ended(fork(kid, ["fork-bare"], { execArgv: [], stdio: "inherit" }));
  out.spawn = await ended(spawn(process.execPath, [kid, "spawn"], { stdio: "inherit" }));
  // A Node child that would wait for a debugger before its preload runs: refused.
  try { spawn(process.execPath, ["--inspect-brk=0.0.0.0:9235", kid, "inspect"]); out.inspectArg = "NOT REFUSED"; } catch (e) { out.inspectArg = e.code; }
  try { fork(kid, ["inspect-env"], { env: { ...process.env, NODE_OPTIONS: "--inspect-wait=0.0.0.0:9236" } }); out.inspectEnv = "NOT REFUSED"; } catch (e) { out.inspectEnv = e.code; }
  http.get("${URL_BASE}/parent", (r) => { r.resume(); r.on("end", () => console.log(JSON.stringify(out))); });
})();
`,
  "kid.cjs": `
require("http").get("${URL_BASE}/" + process.argv[2], { timeout: 5000 }, (r) => { r.resume(); r.on("end", () => process.exit(0)); })
  .on("timeout", () => { console.error("kid: no answer"); process.exit(4); })
  .on("error", (e) => { console.error("kid: " + e.message); process.exit(3); });
`,
  /** Loads a native addon other than SENG's (better-sqlite3's), in the main thread and in a worker. */
  "addon.cjs": `
const { Worker } = require("worker_threads");
const out = {};
try { require(${JSON.stringify(ADDON)}); out.main = "loaded"; } catch (e) { out.main = String(e.code); }
const w = new Worker("try { require(" + JSON.stringify(${JSON.stringify(ADDON)}) + "); require('worker_threads').parentPort.postMessage('loaded'); } catch (e) { require('worker_threads').parentPort.postMessage(String(e.code)); }", { eval: true });
w.on("message", (m) => { out.worker = m; console.log(JSON.stringify(out)); });
`,
};

describe("a shielded app has no debugger and no unshielded way out", { concurrency: false }, () => {
  let lab: Lab;
  let web: NsProcess;

  before(async () => {
    lab = await Lab.create({
      clients: 2,
      apps: [{ name: "shielded", subnet: "100.64.9.0/24", identities: [{ mrenclave: MR }] }],
      extraYaml: "firewall: { unshielded: { drop: true, interfaces: [gw-c0] } }",
    });
    // The client hosts reach the server on their own too (not through a tunnel), as real hosts would.
    await lab.clients[0]!.ip("route", "add", "198.18.2.0/24", "via", "198.18.1.1");
    await lab.clients[1]!.ip("route", "add", "198.18.2.0/24", "via", "198.18.3.1");
    await lab.startGateway();
    for (const [name, src] of Object.entries(FILES)) writeFileSync(join(lab.dir, name), src);
    web = lab.server(process.execPath, [join(lab.dir, "web.cjs")]);
    await waitLine(web, (o) => o.listening === true);
  });

  after(async () => {
    await lab?.destroy();
  });

  function env(extra: NodeJS.ProcessEnv = {}, client = 0): NodeJS.ProcessEnv {
    const e: NodeJS.ProcessEnv = {
      ...process.env,
      SENG_GATEWAY: lab.gatewayAddr(client),
      SENG_PIN: lab.pin,
      SENG_TEE: "sim",
      SENG_SIM_DIR: lab.simDir,
      SENG_MRENCLAVE: MR,
      SENG_LOG: "json",
      ...extra,
    };
    delete e.NODE_TEST_CONTEXT;
    return e;
  }

  /** Runs an app under the preload in client namespace `client` to its end. */
  async function run(file: string, opts: { env?: NodeJS.ProcessEnv; client?: number; node?: string[] } = {}) {
    const c = opts.client ?? 0;
    const p = lab.clients[c]!.spawn(
      process.execPath,
      [...(opts.node ?? []), "--import", "tsx", "--import", REGISTER, join(lab.dir, file)],
      { env: env(opts.env, c) },
    );
    // An app whose guard is broken may leave a child waiting for a debugger on its pipes: end everything in time.
    const timer = setTimeout(() => killAllIn(c), 60_000);
    const r = await p.wait(90_000).finally(() => clearTimeout(timer));
    const lines = r.stdout.split("\n").filter((l) => l.startsWith("{"));
    const lease = /"event":"lease".*?"address":"([\d.]+)"/.exec(r.stderr)?.[1];
    return {
      ...r,
      result: lines.length ? (JSON.parse(lines.at(-1)!) as Record<string, unknown>) : {},
      lease,
    };
  }

  /** What the server was asked since `from` (its stdout offset). */
  function seen(from: number): { remote: string; url: string }[] {
    return web.stdout
      .slice(from)
      .split("\n")
      .filter((l) => l.startsWith('{"remote"'))
      .map((l) => JSON.parse(l) as { remote: string; url: string });
  }

  /** Ends every process left in client namespace `c` (an app whose launcher was killed keeps its pipes open). */
  function killAllIn(c: number): void {
    const pids = execFileSync("ip", ["netns", "pids", lab.clients[c]!.name], { encoding: "utf8" });
    for (const pid of pids.split(/\s+/).filter(Boolean).map(Number))
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
  }

  async function unshieldedDrops(): Promise<number> {
    const s = (await lab.stats()) as { firewallCounters?: Record<string, number> };
    return s.firewallCounters?.seng_unshielded_drops ?? 0;
  }

  /** Asserts that no inspector answers: nothing listens in client namespace `c`, and no port 9229 answers. */
  async function noInspector(c: number, lease?: string): Promise<void> {
    const ss = await lab.clients[c]!.exec("ss", ["-Hltn"]);
    assert.equal(ss.stdout.trim(), "", `something listens on the client host:\n${ss.stdout}`);
    const host = `198.18.${2 * c + 1}.2`;
    const probe = (ns: { exec: Lab["srv"]["exec"] }, addr: string) =>
      ns.exec("curl", ["-sS", "--max-time", "2", `http://${addr}:9229/json/version`], {
        check: false,
        timeoutMs: 10_000,
      });
    for (const addr of ["127.0.0.1", host]) {
      const r = await probe(lab.clients[c]!, addr);
      assert.notEqual(r.code, 0, `the client host got an answer from ${addr}:9229: ${r.stdout}`);
    }
    for (const addr of [host, ...(lease ? [lease] : [])]) {
      const r = await probe(lab.srv, addr);
      assert.notEqual(r.code, 0, `the server got an answer from ${addr}:9229: ${r.stdout}`);
    }
  }

  test("no debugger at run time: inspector.open, _debugProcess, the binding, a worker, SIGUSR1 to app and launcher", async () => {
    const go = join(lab.dir, "go-debugger");
    const e = env();
    for (const k of ["SENG_GATEWAY", "SENG_PIN", "SENG_TEE", "SENG_SIM_DIR", "SENG_MRENCLAVE"]) delete e[k];
    // Through the launcher, so that it is signalled too.
    const p = lab.clients[0]!.spawn(
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
        join(lab.dir, "debugger.cjs"),
        go,
      ],
      { env: e },
    );
    try {
      const ready = await waitLine<Record<string, unknown> & { pid: number }>(
        p,
        (o) => o.ready === true,
        60_000,
      );
      const keys = ["open", "openDefault", "debugProcess", "binding", "worker"];
      assert.deepEqual(
        Object.fromEntries(keys.map((k) => [k, ready[k]])),
        Object.fromEntries(keys.map((k) => [k, "ERR_SENG_DEBUGGER"])),
      );
      const lease = /"event":"lease".*?"address":"([\d.]+)"/.exec(p.stderr)?.[1];
      assert.ok(lease, p.stderr);
      // Real signals: Node would open an inspector on 127.0.0.1:9229 in either process.
      process.kill(ready.pid, "SIGUSR1");
      process.kill(p.child.pid!, "SIGUSR1");
      await new Promise((r) => setTimeout(r, 1500));
      await noInspector(0, lease);
      const from = web.stdout.length;
      writeFileSync(go, "");
      const done = await waitLine(p, (o) => o.done === true, 30_000);
      assert.deepEqual(
        done,
        { done: true, status: 200, url: null },
        "the app still works, with no inspector",
      );
      const r = await p.wait(30_000);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(seen(from), [{ remote: lease, url: "/after-signals" }]);
    } finally {
      killAllIn(0);
      await p.kill("SIGKILL", 1000);
    }
  });

  test("--inspect in execArgv or NODE_OPTIONS: the preload stops the app before it has a tunnel", async () => {
    for (const [what, node, extra] of [
      ["execArgv", ["--inspect=0.0.0.0:9231"], {}],
      ["NODE_OPTIONS", [], { NODE_OPTIONS: "--inspect=0.0.0.0:9232" }],
      ["--inspect-port", ["--inspect-port=9233"], {}],
    ] as const) {
      const r = await run("kid.cjs", { node: [...node], env: { ...extra } });
      assert.equal(r.code, 1, `${what}: ${r.stderr}`);
      assert.match(
        r.stderr,
        /seng: no debugger in a shielded app: --inspect.*; the app is not started/,
        what,
      );
      assert.doesNotMatch(r.stderr, /"event":"(identity|lease)"/, `${what}: no identity, no tunnel`);
      assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
    }
    await noInspector(0);
  });

  test("seng runtime run refuses a debugger for the app or for itself before node starts", async () => {
    const base = [
      "--import",
      "tsx",
      CLI,
      "runtime",
      "run",
      "--gateway",
      lab.gatewayAddr(0),
      "--pin",
      lab.pin,
    ];
    const tail = ["--tee", "sim", "--sim-dir", lab.simDir, "--mrenclave", MR, "--"];
    const app = ["-e", "console.log('app ran')"];
    const cases: [string, string[], NodeJS.ProcessEnv][] = [
      ["--inspect-brk", ["node", "--inspect-brk=0.0.0.0:9231", ...app], {}],
      ["--inspect-wait", ["node", "--inspect-wait=0.0.0.0:9231", ...app], {}],
      ["--inspect (after -r x)", ["node", "-r", "/dev/null", "--inspect=0.0.0.0:9231", ...app], {}],
      ["NODE_OPTIONS", ["node", ...app], { NODE_OPTIONS: "--inspect=0.0.0.0:9230" }],
    ];
    try {
      for (const [what, cmd, extra] of cases) {
        const p = lab.clients[0]!.spawn(process.execPath, [...base, ...tail, ...cmd], {
          env: { ...env(), ...extra },
        });
        // A launcher that let the flag through leaves node waiting for a debugger: end it, and fail.
        const timer = setTimeout(() => killAllIn(0), 20_000);
        const r = await p.wait(60_000).finally(() => clearTimeout(timer));
        assert.equal(r.code, 2, `${what}: ${r.stderr}`);
        assert.doesNotMatch(r.stdout, /app ran/);
        assert.match(r.stderr, /runtime run: .*--inspect.*: no debugger in a shielded process/, what);
        // One line of ours (Node itself announces the launcher's inspector that NODE_OPTIONS opened).
        const ours = r.stderr.split("\n").filter((l) => l && !/^(Debugger listening|For help, see)/.test(l));
        assert.equal(ours.length, 1, `one line: ${r.stderr}`);
      }
      await noInspector(0);
    } finally {
      killAllIn(0);
    }
  });

  test("a debug TEE may have a debugger, says so, and the gateway refuses it as debug", async () => {
    const r = await run("kid.cjs", {
      node: ["--inspect=127.0.0.1:9234"],
      env: { SENG_DEBUG_ENCLAVE: "1" },
    });
    assert.match(
      r.stderr,
      /seng: warning: debugger allowed \(--inspect=127\.0\.0\.1:9234\): the identity is a debug TEE/,
    );
    assert.match(r.stderr, /policy-rejected.*debug TEE.*refused unless allowDebug/);
    assert.equal(r.code, 1);
    assert.equal(r.lease, undefined);
  });

  test("non-Node children are refused in every form; nothing reaches the server, nothing leaves the host", async () => {
    const from = web.stdout.length;
    const drops = await unshieldedDrops();
    // cli1: its host traffic would reach the server (its LAN is not dropped at the gateway).
    const r = await run("children.cjs", { client: 1 });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.lease, r.stderr);
    const forms = [
      "spawn",
      "exec",
      "execFile",
      "spawnShell",
      "spawnSync",
      "execSync",
      "execFileSync",
      "binding",
    ];
    assert.deepEqual(
      r.result,
      Object.fromEntries([...forms, "worker"].map((k) => [k, "ERR_SENG_HOST_NETWORKING"])),
    );
    await new Promise((res) => setTimeout(res, 1000));
    assert.deepEqual(seen(from), [], "the server saw nothing from a refused child");
    assert.equal(await unshieldedDrops(), drops);
  });

  test("an allowed host program runs with a warning, and the gateway counts its traffic as unshielded", async () => {
    const from = web.stdout.length;
    const drops = await unshieldedDrops();
    const r = await run("allowed.cjs", { env: { SENG_ALLOW_HOST_PROGRAMS: "/usr/bin/curl" } });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.result.ran, true, JSON.stringify(r.result));
    assert.match(
      r.stderr,
      new RegExp(
        `seng: warning: child process ${CURL} runs on the host's network stack: its traffic is NOT shielded`,
      ),
    );
    assert.ok((await unshieldedDrops()) > drops, "the gateway counted the child's packets as unshielded");
    assert.deepEqual(seen(from), [], "dropped at the gateway");
  });

  test("Node children (fork, fork with execArgv: [], spawn of process.execPath) get the preload and their own tunnel", async () => {
    const from = web.stdout.length;
    const r = await run("node-children.cjs");
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      r.result,
      { fork: 0, forkBare: 0, spawn: 0, inspectArg: "ERR_SENG_DEBUGGER", inspectEnv: "ERR_SENG_DEBUGGER" },
      r.stderr,
    );
    const asked = seen(from);
    assert.deepEqual(
      asked.map((o) => o.url),
      ["/fork", "/fork-bare", "/spawn", "/parent"],
    );
    const parent = asked.at(-1)!.remote;
    assert.equal(parent, r.lease);
    for (const o of asked.slice(0, 3)) {
      assert.match(o.remote, /^100\.64\.9\.\d+$/, `${o.url} came from ${o.remote}`);
      assert.notEqual(o.remote, parent, `${o.url}: its own tunnel, its own address`);
    }
  });

  test("native addons: logged with path and SHA-256; allowAddons pins the set; SENG's own always loads", async () => {
    const free = await run("addon.cjs");
    assert.equal(free.code, 0, free.stderr);
    assert.deepEqual(free.result, { main: "loaded", worker: "loaded" });
    assert.match(
      free.stderr,
      new RegExp(`seng: warning: native addon ${ADDON} sha256 ${ADDON_SHA} loaded without allowAddons`),
    );
    assert.equal(
      free.stderr.split(`native addon ${ADDON} sha256`).length - 1,
      2,
      "once in the thread, once in the worker",
    );

    const pinned = await run("addon.cjs", { env: { SENG_ALLOW_ADDONS: ADDON_SHA } });
    assert.equal(pinned.code, 0, pinned.stderr);
    assert.deepEqual(pinned.result, { main: "loaded", worker: "loaded" });
    assert.match(
      pinned.stderr,
      new RegExp(`seng: native addon ${ADDON} sha256 ${ADDON_SHA} \\(in allowAddons\\)`),
    );

    const other = await run("addon.cjs", { env: { SENG_ALLOW_ADDONS: "none" } });
    assert.equal(other.code, 0, other.stderr);
    assert.ok(other.lease, "SENG's own addon loaded: the app has its tunnel");
    assert.deepEqual(other.result, { main: "ERR_SENG_ADDON", worker: "ERR_SENG_ADDON" });
  });
});
