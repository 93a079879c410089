/**
 * The guarded `worker_threads.Worker` (docs/THREAT-MODEL.md): Node 20 runs `--import` preloads in the main thread
 * only, so every worker runs the guards' source first. The class is a Proxy of Node's own, not a subclass: a
 * subclass's prototype chain (`Object.getPrototypeOf(Worker)`) would hand out Node's raw constructor, which starts
 * a worker with no guard at all. Node's prototype's `constructor` points at the Proxy too. A worker's `execArgv`
 * (and NODE_OPTIONS of its `env`, which Node parses for it) must not load code before the guard or expose Node's
 * internals. Also here: the guards' source for every worker ({@link workerGuardsSource}).
 */
import { resolve as resolvePath } from "node:path";
import { pathToFileURL } from "node:url";
import type { Worker as NodeWorker, WorkerOptions } from "node:worker_threads";
import { nativeAddonPath } from "../native/load.js";
import {
  DEBUGGER_REFUSED,
  debuggerError,
  debuggerOptions,
  loaderOptions,
  nodeOptionsTokens,
  real,
} from "./guards.js";
import { hostNetworkingError } from "./stack.js";

/**
 * Throws for a worker whose `execArgv`, or NODE_OPTIONS of an `env` object (Node parses it for the worker), would
 * run code before the guard or reach Node's raw bindings: `--expose-internals` and loaders/requires
 * (`ERR_SENG_HOST_NETWORKING`), debugger options (`ERR_SENG_DEBUGGER`). `allowed`: loader options (as
 * {@link loaderOptions} spells them) this process itself was started with.
 */
export function checkWorkerOptions(options: WorkerOptions, allowed: readonly string[] = []): void {
  const env = options.env;
  const nodeOptions =
    env !== null && typeof env === "object" ? (env as Record<string, unknown>).NODE_OPTIONS : undefined;
  const sources: [string, string[], string[]][] = [];
  if (options.execArgv !== undefined) {
    const t = Array.isArray(options.execArgv) ? options.execArgv.map(String) : [String(options.execArgv)];
    sources.push(["execArgv", t, loaderOptions(t)]);
  }
  if (nodeOptions !== undefined) {
    const t = nodeOptionsTokens(String(nodeOptions));
    sources.push(["NODE_OPTIONS", t, loaderOptions(t).filter((l) => !allowed.includes(l))]);
  }
  for (const [where, tokens, loaders] of sources) {
    const internals = tokens.filter((t) => /^--expose[-_]internals(=|$)/.test(t));
    if (internals.length)
      throw hostNetworkingError(
        `a worker with ${internals.join(" ")} in its ${where} would get Node's raw socket bindings`,
      );
    if (loaders.length)
      throw hostNetworkingError(
        `a worker with ${loaders.join(" ")} in its ${where} would run code before its guard`,
      );
    const dbg = debuggerOptions(tokens);
    if (dbg.length)
      throw debuggerError(`a worker with ${dbg.join(" ")} in its ${where} would give the host a debugger`);
  }
}

/** A Proxy of `Original` whose construction checks the options and runs `guard` before the worker's code. */
export function guardWorkerClass(Original: typeof NodeWorker, guard: string): typeof NodeWorker {
  // The loaders of this process's own NODE_OPTIONS (the operator's) may reach a worker through `env: process.env`.
  const allowed = loaderOptions(nodeOptionsTokens(process.env.NODE_OPTIONS));
  const Guarded: typeof NodeWorker = new Proxy(Original, {
    construct(target, args: unknown[], newTarget): object {
      const filename = args[0] as string | URL;
      const options = (args[1] ?? {}) as WorkerOptions;
      checkWorkerOptions(options, allowed);
      let rewritten: unknown[];
      if (options.eval) rewritten = [`${guard}\n${String(filename)}`, options];
      else {
        const href =
          filename instanceof URL
            ? filename.href
            : /^(file|data):/.test(String(filename))
              ? String(filename)
              : pathToFileURL(resolvePath(String(filename))).href;
        rewritten = [
          `${guard}\nimport(${JSON.stringify(href)}).catch((e) => process.nextTick(() => { throw e; }));`,
          { ...options, eval: true },
        ];
      }
      // `new Guarded()` builds Node's class; a subclass of Guarded keeps its own prototype.
      return Reflect.construct(target, rewritten, newTarget === Guarded ? target : newTarget) as object;
    },
  });
  Object.defineProperty(Original.prototype, "constructor", {
    value: Guarded,
    writable: true,
    configurable: true,
    enumerable: false,
  });
  return Guarded;
}

/**
 * JavaScript for the start of every worker thread (self-contained, run by the worker guard in register.ts): no
 * debugger, no child processes and no nested workers at all (start them from the main thread), and the addon
 * policy.
 */
export function workerGuardsSource(allowAddons: readonly string[] | undefined): string {
  const allow = allowAddons
    ? JSON.stringify(allowAddons.map((a) => (/^[0-9a-fA-F]{64}$/.test(a) ? a.toLowerCase() : real(a))))
    : "null";
  return `{
  const dbg = (what) => Object.assign(new Error(${JSON.stringify(DEBUGGER_REFUSED)} + ": " + what), { code: "ERR_SENG_DEBUGGER" });
  const host = (what) => Object.assign(new Error("SENG: host networking is disabled in a shielded app: " + what + " (worker threads cannot start programs or workers; use the main thread)"), { code: "ERR_SENG_HOST_NETWORKING" });
  const def = (o, k, f) => { try { Object.defineProperty(o, k, { value: f, writable: true, configurable: true }); } catch {} };
  const inspector = require("node:inspector"), cp = require("node:child_process"), fs = require("node:fs");
  def(inspector, "open", () => { throw dbg("inspector.open() would give the host a debugger"); });
  def(process, "_debugProcess", () => { throw dbg("process._debugProcess() opens a debugger in a Node process"); });
  for (const k of ["spawn", "exec", "execFile", "fork", "spawnSync", "execSync", "execFileSync"]) def(cp, k, () => { throw host("child_process." + k); });
  def(cp.ChildProcess.prototype, "spawn", () => { throw host("ChildProcess#spawn"); });
  // A nested worker would get fresh, unguarded modules: none (a Proxy, so no prototype path to Node's class).
  const wt = require("node:worker_threads"), NoWorker = new Proxy(wt.Worker, { construct() { throw host("new Worker"); } });
  def(wt.Worker.prototype, "constructor", NoWorker);
  def(wt, "Worker", NoWorker);
  const binding = process.binding;
  def(process, "binding", (n) => {
    if (n === "inspector") throw dbg('process.binding("inspector") can open a debugger');
    if (n === "process_wrap" || n === "spawn_sync") throw host("process.binding(" + n + ")");
    return binding.call(process, n);
  });
  const allow = ${allow}, own = ${JSON.stringify(real(nativeAddonPath()))}, dlopen = process.dlopen;
  def(process, "dlopen", function (m, f, ...r) {
    let p = String(f); try { p = fs.realpathSync(p); } catch {}
    if (p !== own) {
      let h; try { h = require("node:crypto").createHash("sha256").update(fs.readFileSync(p)).digest("hex"); } catch (e) {
        if (allow) throw Object.assign(new Error("SENG: native addon refused: " + p + " cannot be hashed to check it against allowAddons (" + e.message + ")"), { code: "ERR_SENG_ADDON" });
        return dlopen.call(this, m, f, ...r);
      }
      // Known limit: the file may change between this hash and dlopen (TOCTOU).
      if (allow && !allow.includes(h) && !allow.includes(p))
        throw Object.assign(new Error("SENG: native addon refused: " + p + " (sha256 " + h + ") is not in the runtime config's allowAddons (add its path or hash)"), { code: "ERR_SENG_ADDON" });
      process.stderr.write("seng: " + (allow ? "" : "warning: ") + "native addon " + p + " sha256 " + h + " loaded in a worker" + (allow ? " (in allowAddons)" : " without allowAddons") + "\\n");
    }
    return dlopen.call(this, m, f, ...r);
  });
  require("node:module").syncBuiltinESMExports();
}`;
}
