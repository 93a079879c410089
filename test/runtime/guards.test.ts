/**
 * The guards' decisions without a network (src/runtime/guards.ts): which Node options ask for a debugger, where a
 * `node …` command line's options end, what a Node child needs to run the preload, how programs resolve, and the
 * addon allow list. The guards themselves run in test/runtime/shield.test.ts against a real gateway.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  existsSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  chmodSync,
  realpathSync,
  readFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { spawn, spawnSync } from "node:child_process";
import { EventEmitter } from "node:events";
import { SHARE_ENV, Worker, type WorkerOptions } from "node:worker_threads";
import {
  addonAllowed,
  debuggerInNodeArgs,
  debuggerOptions,
  installAddonGuard,
  installChildGuard,
  nodeArgsOptions,
  nodeChildArgs,
  nodeOptionsTokens,
  preloadArgs,
  resolveProgram,
  setAddonHashForTest,
} from "../../src/runtime/guards.js";
import { checkWorkerOptions, guardWorkerClass, workerGuardsSource } from "../../src/runtime/worker-guard.js";

test("debugger options in every spelling Node accepts", () => {
  assert.deepEqual(
    debuggerOptions([
      "--inspect",
      "--inspect=0.0.0.0:9230",
      "--inspect-brk",
      "--inspect_brk=1",
      "--inspect-wait=9",
      "--inspect-port=9229",
      "--debug-port=1",
      "--inspect-publish-uid=http",
      "--max-old-space-size=100",
      "--import",
      "--inspection", // not an option of Node's: not ours to judge
    ]),
    [
      "--inspect",
      "--inspect=0.0.0.0:9230",
      "--inspect-brk",
      "--inspect_brk=1",
      "--inspect-wait=9",
      "--inspect-port=9229",
      "--debug-port=1",
      "--inspect-publish-uid=http",
    ],
  );
  assert.deepEqual(
    debuggerOptions(nodeOptionsTokens(' --max-old-space-size=64  "--inspect=0.0.0.0:9230" ')),
    ["--inspect=0.0.0.0:9230"],
  );
  assert.deepEqual(debuggerOptions(nodeOptionsTokens(undefined)), []);
});

test("a node command line's options end at the script, -e, or --; option values are skipped", () => {
  assert.deepEqual(nodeArgsOptions(["--inspect", "app.js", "--inspect-brk"]), ["--inspect"]);
  assert.deepEqual(debuggerInNodeArgs(["app.js", "--inspect"]), [], "the app's own argument");
  assert.deepEqual(debuggerInNodeArgs(["-r", "./x.js", "--inspect-wait", "app.js"]), ["--inspect-wait"]);
  assert.deepEqual(debuggerInNodeArgs(["--import", "--inspect", "app.js"]), [], "a value, not an option");
  assert.deepEqual(debuggerInNodeArgs(["--import=x", "--inspect-port=1", "app.js"]), ["--inspect-port=1"]);
  assert.deepEqual(debuggerInNodeArgs(["-e", "1", "--inspect"]), []);
  assert.deepEqual(debuggerInNodeArgs(["--", "--inspect"]), []);
});

test("a Node child's preload: the --import/--require arguments of this process", () => {
  assert.deepEqual(
    preloadArgs([
      "--max-old-space-size=64",
      "--import",
      "tsx",
      "--import=/seng/register.js",
      "-r",
      "a.cjs",
      "--inspect",
    ]),
    ["--import", "tsx", "--import=/seng/register.js", "-r", "a.cjs"],
  );
  assert.deepEqual(preloadArgs(["--import"]), [], "a dangling option is not a preload");
});

test("programs resolve as execvp does, symlinks and all", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-guards-"));
  try {
    const prog = join(dir, "tool");
    writeFileSync(prog, "#!/bin/sh\n");
    chmodSync(prog, 0o755);
    writeFileSync(join(dir, "data"), "");
    symlinkSync(prog, join(dir, "alias"));
    assert.equal(resolveProgram("tool", `/nonexistent:${dir}`), prog);
    assert.equal(resolveProgram("data", dir), "data", "not executable: not found");
    assert.equal(resolveProgram("./tool", undefined, dir), prog);
    assert.equal(realpathSync(resolveProgram("alias", dir)), realpathSync(prog));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("addon allow list: paths by their real path, hashes in any case", () => {
  const sha = "ab".repeat(32);
  assert.equal(addonAllowed([sha.toUpperCase()], "/x.node", sha), true);
  assert.equal(addonAllowed(["/x.node"], "/x.node", "cd".repeat(32)), true);
  assert.equal(addonAllowed(["/y.node", "cd".repeat(32)], "/x.node", sha), false);
  assert.equal(addonAllowed([], "/x.node", sha), false);
});

test("the guarded Worker: no path back to Node's raw class, every construction runs the guard", async () => {
  const Guarded = guardWorkerClass(Worker, "globalThis.guarded = true;");
  const run = (W: unknown) =>
    new Promise<unknown>((res, rej) => {
      const w = new (W as typeof Worker)(
        "require('node:worker_threads').parentPort.postMessage(globalThis.guarded === true)",
        { eval: true },
      );
      w.once("message", (m) => void w.terminate().then(() => res(m)));
      w.once("error", rej);
    });
  const w = new Guarded("1", { eval: true });
  const instanceCtor = w.constructor;
  await w.terminate();
  const paths = {
    guarded: Guarded,
    prototypeOfClass: Object.getPrototypeOf(Guarded),
    protoConstructor: Guarded.prototype.constructor,
    superProtoConstructor: Object.getPrototypeOf(Guarded.prototype).constructor,
    instanceConstructor: instanceCtor,
    nodeProtoConstructor: Worker.prototype.constructor,
  };
  for (const [what, W] of Object.entries(paths)) {
    if (W === EventEmitter) continue; // Node's Worker's own parent: starts no thread
    assert.equal(await run(W), true, `${what} starts an unguarded worker`);
  }
  assert.equal(Object.getPrototypeOf(Guarded), EventEmitter);
  class Sub extends Guarded {}
  const s = new Sub("1", { eval: true });
  assert.ok(s instanceof Sub && s instanceof Guarded);
  await s.terminate();
  assert.equal(await run(Sub), true, "a subclass");
});

test("a worker's execArgv or env NODE_OPTIONS may not load code first, expose internals or open a debugger", () => {
  const code = (o: WorkerOptions, allowed?: string[]) => {
    try {
      checkWorkerOptions(o, allowed);
      return "ok";
    } catch (e) {
      return (e as { code: string }).code;
    }
  };
  const NET = "ERR_SENG_HOST_NETWORKING";
  for (const execArgv of [
    ["--expose-internals"],
    ["--expose_internals"],
    ["-r", "/tmp/x.cjs"],
    ["--require=/tmp/x.cjs"],
    ["--import", "data:text/javascript,1"],
    ["--experimental_loader=/tmp/l.mjs"],
    ["--loader", "/tmp/l.mjs"],
  ])
    assert.equal(code({ execArgv }), NET, execArgv.join(" "));
  assert.equal(code({ execArgv: ["--inspect-brk"] }), "ERR_SENG_DEBUGGER");
  assert.equal(code({ execArgv: ["--max-old-space-size=64"] }), "ok");
  assert.equal(code({ env: { NODE_OPTIONS: '--max-old-space-size=64 "--require=/tmp/x.cjs"' } }), NET);
  assert.equal(code({ env: { NODE_OPTIONS: "--expose-internals" } }), NET);
  assert.equal(code({ env: { NODE_OPTIONS: "--inspect" } }), "ERR_SENG_DEBUGGER");
  assert.equal(code({ env: { NODE_OPTIONS: "--import x" } }, ["--import=x"]), "ok", "the operator's own");
  assert.equal(code({ env: SHARE_ENV }), "ok");

  // Through the guarded class: refused before any thread starts.
  const dir = mkdtempSync(join(tmpdir(), "seng-guards-"));
  try {
    const evil = join(dir, "evil.cjs");
    writeFileSync(evil, "require('node:fs').writeFileSync(__filename + '.ran', '')");
    const Guarded = guardWorkerClass(Worker, "");
    assert.throws(() => new Guarded("1", { eval: true, execArgv: ["-r", evil] }), { code: NET });
    assert.throws(() => new Guarded("1", { eval: true, env: { NODE_OPTIONS: `--require ${evil}` } }), {
      code: NET,
    });
    assert.equal(existsSync(`${evil}.ran`), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a Node child: only the preload's own loaders pass, in its options, fork's execArgv or NODE_OPTIONS", () => {
  const preload = ["--import", "tsx", "--import=/seng/src/runtime/register.ts"];
  const code = (args: string[], nodeOptions?: string, allowed: string[] = []) => {
    try {
      return nodeChildArgs(args, nodeOptions, preload, allowed);
    } catch (e) {
      return (e as { code: string }).code;
    }
  };
  const NET = "ERR_SENG_HOST_NETWORKING";
  assert.deepEqual(code(["app.js", "-r", "x"]), [...preload, "app.js", "-r", "x"], "the app's own arguments");
  assert.deepEqual(code(["--import=tsx", "--import", "/seng/src/runtime/register.ts", "app.js"]), [
    "--import=tsx",
    "--import",
    "/seng/src/runtime/register.ts",
    "app.js",
  ]);
  for (const args of [
    ["--import=/tmp/x/register.mjs", "app.js"], // a look-alike of the preload is not the preload
    ["--import", "/tmp/x/register.js", "app.js"],
    ["-r", "evil.cjs", "app.js"],
    ["--require=evil.cjs", "app.js"],
    ["--experimental_loader", "evil.mjs", "app.js"],
    ["--loader=evil.mjs", "-e", "1"],
    ["--env-file=.env", "app.js"],
    ["--max-old-space-size=64", "--import", "tsx", "-r", "evil.cjs", "app.js"],
  ])
    assert.equal(code(args), NET, args.join(" "));
  assert.equal(code(["app.js"], '--max-old-space-size=64 "--require=/tmp/evil.cjs"'), NET);
  assert.equal(code(["app.js"], "--import /tmp/x/register.js"), NET);
  assert.deepEqual(code(["app.js"], "--import tsx"), [...preload, "app.js"], "the preload's own");
  assert.deepEqual(code(["-r", "op.cjs", "app.js"], undefined, ["-r=op.cjs"]), [
    ...preload,
    "-r",
    "op.cjs",
    "app.js",
  ]);
});

test("with allowAddons, an addon whose hash cannot be computed is refused (fails closed)", () => {
  const addon = realpathSync("node_modules/better-sqlite3/build/Release/better_sqlite3.node");
  const said: string[] = [];
  installAddonGuard({ allowAddons: [addon], say: (m) => void said.push(m) });
  setAddonHashForTest(() => {
    throw Object.assign(new Error("ENOENT: no such file or directory"), { code: "ENOENT" });
  });
  try {
    assert.throws(() => process.dlopen({ exports: {} }, addon), {
      code: "ERR_SENG_ADDON",
      message: /cannot be hashed to check it against allowAddons \(ENOENT/,
    });
    assert.deepEqual(said, [], "not loaded, not logged as loaded");
  } finally {
    setAddonHashForTest((p) => createHash("sha256").update(readFileSync(p)).digest("hex"));
  }
});

test("in a worker too: with allowAddons, an addon the guard cannot hash is refused", async () => {
  const addon = realpathSync("node_modules/better-sqlite3/build/Release/better_sqlite3.node");
  // The app breaks the guard's hashing (fs.readFileSync throws) and then loads an addon that is not allowed.
  const code = `${workerGuardsSource(["ab".repeat(32)])}
const fs = require("node:fs"), { parentPort } = require("node:worker_threads");
fs.readFileSync = () => { throw new Error("EIO"); };
try { require(${JSON.stringify(addon)}); parentPort.postMessage("loaded"); } catch (e) { parentPort.postMessage(String(e.code)); }`;
  const w = new Worker(code, { eval: true, stderr: true });
  const got = await new Promise((res, rej) => {
    w.once("message", res);
    w.once("error", rej);
  });
  await w.terminate();
  assert.equal(got, "ERR_SENG_ADDON");
});

test("a worker cannot start a nested worker (it would have fresh, unguarded modules)", async () => {
  const code = `${workerGuardsSource(undefined)}
const { parentPort } = require("node:worker_threads"), out = [];
for (const W of [require("node:worker_threads").Worker, require("node:worker_threads").Worker.prototype.constructor])
  try { const w = new W("1", { eval: true }); w.terminate(); out.push("STARTED"); } catch (e) { out.push(String(e.code)); }
import("node:worker_threads").then((m) => {
  try { new m.Worker("1", { eval: true }).terminate(); out.push("STARTED"); } catch (e) { out.push(String(e.code)); }
  parentPort.postMessage(out);
});`;
  const w = new Worker(code, { eval: true });
  const got = await new Promise((res, rej) => {
    w.once("message", res);
    w.once("error", rej);
  });
  await w.terminate();
  assert.deepEqual(got, ["ERR_SENG_HOST_NETWORKING", "ERR_SENG_HOST_NETWORKING", "ERR_SENG_HOST_NETWORKING"]);
});

test("an allowed program starts from the path that was judged, not from a second PATH look-up", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-guards-"));
  try {
    const prog = join(dir, "tool");
    writeFileSync(prog, '#!/bin/sh\necho ran "$0"\n');
    chmodSync(prog, 0o755);
    const warned: string[] = [];
    installChildGuard({ allowHostPrograms: [prog], warn: (m) => void warned.push(m) });
    const c = spawn("tool", [], { env: { PATH: dir } });
    c.kill();
    assert.equal(c.spawnfile, prog);
    const r = spawnSync("tool", [], { env: { PATH: `/nonexistent:${dir}` }, encoding: "utf8" });
    assert.equal(r.stdout, `ran ${prog}\n`);
    assert.throws(() => spawnSync("sh", ["-c", "true"]), { code: "ERR_SENG_HOST_NETWORKING" });
    assert.equal(warned.length, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
