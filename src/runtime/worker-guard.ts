/**
 * The guarded `worker_threads.Worker` (docs/THREAT-MODEL.md): Node 20 runs `--import` preloads in the main thread
 * only, so every worker runs the guards' source first. The class is a Proxy of Node's own, not a subclass: a
 * subclass's prototype chain (`Object.getPrototypeOf(Worker)`) would hand out Node's raw constructor, which starts
 * a worker with no guard at all. Node's prototype's `constructor` points at the Proxy too. A worker's `execArgv`
 * must not load code before the guard or expose Node's internals. (Workers do not read NODE_OPTIONS from `env`.)
 */
import { resolve as resolvePath } from "node:path";
import { pathToFileURL } from "node:url";
import type { Worker as NodeWorker, WorkerOptions } from "node:worker_threads";
import { debuggerError, debuggerOptions, loaderOptions, nodeOptionsTokens } from "./guards.js";
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
