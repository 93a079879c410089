/**
 * The fuzzing campaign's entry point (see fuzz/README.md).
 *
 *   npm run fuzz                      short run: every target for a few seconds, saved regressions replayed
 *   npm run fuzz -- --long            long run: 1,000,000 inputs per target, findings saved to fuzz/regressions/
 *   options: --runs N  --seed N  --target a,b  --no-native  --no-ts  --seconds S (native short run)
 *            --no-build (use the native harnesses as built)
 *            --shards K (long run: K processes per TypeScript target, seeds seed..seed+K-1, runs/K inputs each)
 *            --max-seconds S (long run: a TypeScript target stops after S seconds with the inputs it reached)
 *   npm run fuzz -- --coverage          coverage of each target's modules from the last long run (fuzz/out/coverage/)
 *
 * Exit status: 0 when no target found anything, 1 otherwise, 2 for a usage error.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { TARGETS, NATIVE_TARGETS } from "./targets/index.js";
import { fuzz, replayRegressions } from "./lib/engine.js";
import { buildNative, haveClang, runNative } from "./lib/native.js";
import { moduleCoverage } from "./lib/coverage.js";
import { ROOT, VECTORS } from "./lib/seeds.js";

let args;
try {
  args = parseArgs({
    options: {
      long: { type: "boolean", default: false },
      runs: { type: "string" },
      seed: { type: "string", default: "1" },
      target: { type: "string" },
      "no-native": { type: "boolean", default: false },
      "no-ts": { type: "boolean", default: false },
      seconds: { type: "string", default: "3" },
      "no-build": { type: "boolean", default: false },
      shards: { type: "string", default: "1" },
      "max-seconds": { type: "string" },
      coverage: { type: "boolean", default: false },
    },
  }).values;
} catch (e) {
  console.error(`fuzz: ${(e as Error).message}`);
  process.exit(2);
}
const long = args.long;
const runs = Number(args.runs ?? (long ? 1_000_000 : 2000));
const seed = Number(args.seed);
const only = args.target?.split(",");
if (!Number.isInteger(runs) || runs < 1 || !Number.isInteger(seed)) {
  console.error("fuzz: --runs and --seed must be integers");
  process.exit(2);
}
const want = (name: string): boolean => !only || only.includes(name);
const OUT = join(ROOT, "fuzz/out");
mkdirSync(OUT, { recursive: true });
if (!VECTORS)
  console.error("fuzz: attestation vectors not found (set SENG_VECTORS); seeds are synthetic only");

if (args.coverage) {
  for (const t of TARGETS.filter((x) => want(x.name))) {
    const dir = join(OUT, "coverage", t.name);
    const cov = existsSync(dir) ? moduleCoverage(dir, t.modules) : [];
    console.log(
      `${t.name}: ${cov.map((c) => `${c.module} ${c.bytesPct}% (${c.functionsRun}/${c.functions} functions)`).join(", ")}`,
    );
  }
  process.exit(0);
}

const summary: Record<string, unknown>[] = [];
let failed = false;

if (!args["no-ts"]) {
  for (const t of TARGETS.filter((x) => want(x.name))) {
    if (!long) {
      await t.prepare?.();
      const replay = replayRegressions(t);
      const s = fuzz(t, { runs, seed });
      const findings = [...replay, ...s.findings];
      console.log(`${t.name}: ${s.inputs} inputs in ${s.ms} ms, ${findings.length} findings`);
      for (const f of findings) console.log(`  ${f.file ?? "new input"}: ${f.message.split("\n")[0]}`);
      failed ||= findings.length > 0;
      continue;
    }
    // Long: child processes per target (shards run at once), with V8 coverage and a hang watchdog each.
    const cov = join(OUT, "coverage", t.name);
    rmSync(cov, { recursive: true, force: true });
    const shards = Math.max(1, Number(args.shards));
    const each = Math.ceil(runs / shards);
    const results = await Promise.all(
      Array.from({ length: shards }, (_, i) => {
        const result = join(OUT, shards === 1 ? `${t.name}.json` : `${t.name}.${i}.json`);
        rmSync(result, { force: true });
        const child = spawn(
          process.execPath,
          [
            "--import",
            "tsx",
            join(ROOT, "fuzz/lib/child.ts"),
            t.name,
            String(each),
            String(seed + i),
            result,
            "20",
            ...(args["max-seconds"] ? [args["max-seconds"]] : []),
          ],
          { stdio: ["ignore", "inherit", "inherit"], env: { ...process.env, NODE_V8_COVERAGE: cov } },
        );
        return new Promise<Record<string, unknown>>((done) =>
          child.on("exit", (code, signal) => {
            try {
              done(JSON.parse(readFileSync(result, "utf8")) as Record<string, unknown>);
            } catch {
              done({ target: t.name, error: `child exited with ${code ?? signal}` });
            }
          }),
        );
      }),
    );
    const res: Record<string, unknown> = {
      target: t.name,
      shards,
      inputs: results.reduce((n, r) => n + ((r.inputs as number | undefined) ?? 0), 0),
      ms: Math.max(...results.map((r) => (r.ms as number | undefined) ?? 0)),
      findings: results.flatMap((r) => (r.findings as string[] | undefined) ?? []),
      messages: results.flatMap((r) => (r.messages as string[] | undefined) ?? []),
      ...(results.some((r) => r.error)
        ? {
            error: results
              .map((r) => r.error)
              .filter(Boolean)
              .join("; "),
          }
        : {}),
    };
    res.coverage = moduleCoverage(cov, t.modules);
    summary.push(res);
    console.log(JSON.stringify(res));
    failed ||= !!res.error || (res.findings as unknown[] | undefined)?.length !== 0;
  }
}

if (!args["no-native"]) {
  if (!haveClang()) {
    console.error("fuzz: clang++ not found: native harnesses skipped (apt-get install clang)");
    failed = true;
  } else {
    if (!args["no-build"]) buildNative();
    for (const t of NATIVE_TARGETS.filter(want)) {
      const r = runNative(t, { long, runs, seconds: Number(args.seconds) });
      const { output, ...rest } = r;
      console.log(`${t}: ${JSON.stringify(rest)}`);
      if (!r.ok)
        console.log(
          output
            .split("\n")
            .filter((l) => /violated|ERROR|SUMMARY|artifact/.test(l))
            .join("\n"),
        );
      summary.push({ ...rest, native: true });
      failed ||= !r.ok;
    }
  }
}

if (long) writeFileSync(join(OUT, "summary.json"), JSON.stringify(summary, null, 2));
process.exit(failed ? 1 : 0);
