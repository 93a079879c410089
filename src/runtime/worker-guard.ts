/**
 * The guarded `worker_threads.Worker` (docs/THREAT-MODEL.md): Node 20 runs `--import` preloads in the main thread
 * only, so every worker runs the guards' source first. The class is a Proxy of Node's own, not a subclass: a
 * subclass's prototype chain (`Object.getPrototypeOf(Worker)`) would hand out Node's raw constructor, which starts
 * a worker with no guard at all. Node's prototype's `constructor` points at the Proxy too.
 */
import { resolve as resolvePath } from "node:path";
import { pathToFileURL } from "node:url";
import type { Worker as NodeWorker, WorkerOptions } from "node:worker_threads";

/** A Proxy of `Original` whose construction runs `guard` before the worker's code. */
export function guardWorkerClass(Original: typeof NodeWorker, guard: string): typeof NodeWorker {
  const Guarded: typeof NodeWorker = new Proxy(Original, {
    construct(target, args: unknown[], newTarget): object {
      const filename = args[0] as string | URL;
      const options = (args[1] ?? {}) as WorkerOptions;
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
