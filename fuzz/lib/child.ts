/**
 * One long run of one TypeScript target, in its own process (so V8 coverage is per target). The inputs run in a
 * worker thread; before each input the worker copies it into shared memory, and this thread, the watchdog, saves
 * that input as a hang and stops the worker when no input has finished for --hang seconds.
 *
 *   node --import tsx fuzz/lib/child.ts <target> <runs> <seed> <result.json> [hangSeconds] [maxSeconds]
 */
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { writeFileSync } from "node:fs";
import { TARGETS } from "../targets/index.js";
import { fuzz, saveFinding, type Finding } from "./engine.js";

const MAX_INPUT = 1 << 20;

interface Data {
  target: string;
  runs: number;
  seed: number;
  shared: SharedArrayBuffer;
  deadline?: number;
}

if (isMainThread) {
  const [target, runs, seed, out, hang, maxSeconds] = process.argv.slice(2);
  if (!target || !out) {
    console.error("usage: child.ts <target> <runs> <seed> <result.json> [hangSeconds]");
    process.exit(2);
  }
  const shared = new SharedArrayBuffer(8 + MAX_INPUT);
  const meta = new Int32Array(shared, 0, 2); // [inputs started, input length]
  // Workers do not inherit tsx's loader: the worker registers it, then imports this file.
  const tsx = import.meta.resolve("tsx/esm/api");
  const worker = new Worker(
    `import(${JSON.stringify(tsx)}).then(({ register }) => { register(); return import(${JSON.stringify(import.meta.url)}); });`,
    {
      eval: true,
      workerData: {
        target,
        runs: Number(runs),
        seed: Number(seed),
        shared,
        deadline: maxSeconds ? Date.now() + Number(maxSeconds) * 1000 : undefined,
      } satisfies Data,
    },
  );
  let last = -1;
  let still = 0;
  const hangS = Number(hang ?? 20);
  const timer = setInterval(() => {
    const n = Atomics.load(meta, 0);
    if (n === 0) return; // still starting: loading modules and preparing seeds is not an input
    if (n !== last) {
      last = n;
      still = 0;
      return;
    }
    if (++still < hangS) return;
    const len = Atomics.load(meta, 1);
    const input = Buffer.from(new Uint8Array(shared, 8, len));
    const file = saveFinding(target!, {
      kind: "hang",
      message: `no result after ${hangS} s (input ${n - 1})`,
      input,
    });
    writeFileSync(out!, JSON.stringify({ target, inputs: n, hang: file, findings: [file] }));
    console.error(`${target}: hang at input ${n - 1}, saved ${file}`);
    clearInterval(timer);
    void worker.terminate().then(() => process.exit(3));
  }, 1000);
  worker.on("message", (m: { progress?: number; result?: unknown }) => {
    if (m.progress !== undefined) console.error(`${target}: ${m.progress} inputs`);
    if (m.result) {
      clearInterval(timer);
      writeFileSync(out!, JSON.stringify(m.result));
    }
  });
  worker.on("error", (e) => {
    clearInterval(timer);
    console.error(`${target}: worker failed: ${e.stack ?? e}`);
    process.exitCode = 2;
  });
} else {
  const d = workerData as Data;
  const meta = new Int32Array(d.shared, 0, 2);
  const bytes = new Uint8Array(d.shared, 8, MAX_INPUT);
  const t = TARGETS.find((x) => x.name === d.target);
  if (!t) throw new Error(`unknown target ${d.target}`);
  await t.prepare?.();
  const stats = fuzz(t, {
    runs: d.runs,
    seed: d.seed,
    keepGoing: true,
    deadline: d.deadline,
    onInput: (input, n) => {
      const len = Math.min(input.length, MAX_INPUT);
      bytes.set(input.subarray(0, len));
      Atomics.store(meta, 1, len);
      Atomics.store(meta, 0, n + 1);
    },
    onProgress: (n) => parentPort!.postMessage({ progress: n }),
    progressEvery: 100_000,
  });
  const saved = stats.findings.map((f: Finding) => saveFinding(t.name, f));
  parentPort!.postMessage({
    result: {
      target: t.name,
      inputs: stats.inputs,
      ms: stats.ms,
      findings: saved,
      messages: stats.findings.map((f) => f.message.split("\n")[0]),
    },
  });
}
