/**
 * The TypeScript fuzzing engine: structure-aware inputs from fast-check arbitraries, one parser call per input,
 * and the module's error contract checked on every outcome.
 *
 * A target says which errors are the parser's typed rejections (`expected`); anything else thrown (a TypeError, a
 * RangeError, a broken property) is a violation. Violations are saved as raw input files under
 * fuzz/regressions/<target>/ and every saved file is replayed by the short run forever after.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { ROOT } from "./seeds.js";

export interface FuzzTarget {
  name: string;
  /** What is fuzzed, for the README and reports. */
  description: string;
  /** Source files under test (for coverage figures), relative to the repository root. */
  modules: string[];
  /** Builds seeds (may be slow or async); called once before inputs are generated. */
  prepare?(): Promise<void> | void;
  /** The inputs: structure-aware builders and mutations of real vectors. Every input is bytes. */
  arbitrary(): fc.Arbitrary<Buffer>;
  /** Runs the parsers on one input and checks properties; throws PropertyViolation when one breaks. */
  run(input: Buffer): void;
  /** Whether a thrown error is one of the parser's typed rejections. */
  expected(e: unknown): boolean;
}

/** A broken invariant of a parser that did not throw. */
export class PropertyViolation extends Error {
  override readonly name = "PropertyViolation";
}

export function property(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new PropertyViolation(msg);
}

export interface Finding {
  kind: "exception" | "property" | "hang";
  message: string;
  input: Buffer;
  file?: string;
}

export const REGRESSIONS = join(ROOT, "fuzz/regressions");

/** Runs one input; returns a finding when the contract breaks. */
export function runOne(t: FuzzTarget, input: Buffer): Finding | undefined {
  try {
    t.run(input);
    return undefined;
  } catch (e) {
    if (!(e instanceof PropertyViolation) && t.expected(e)) {
      const m = (e as Error).message;
      if (typeof m === "string" && m.length > 0 && !m.includes("\n")) return undefined;
      return {
        kind: "exception",
        message: `typed error without a one-line message: ${JSON.stringify(m)}`,
        input,
      };
    }
    const err = e as Error;
    return {
      kind: e instanceof PropertyViolation ? "property" : "exception",
      message: `${err?.name ?? typeof e}: ${err?.message ?? String(e)}\n${err?.stack ?? ""}`,
      input,
    };
  }
}

/** Saves a finding as fuzz/regressions/<target>/<kind>-<sha256/12>.bin with a .txt beside it. */
export function saveFinding(target: string, f: Finding): string {
  const dir = join(REGRESSIONS, target);
  mkdirSync(dir, { recursive: true });
  const id = createHash("sha256").update(f.input).digest("hex").slice(0, 12);
  const file = join(dir, `${f.kind}-${id}.bin`);
  writeFileSync(file, f.input);
  writeFileSync(file.replace(/\.bin$/, ".txt"), `${f.message}\n`);
  return file;
}

/** The saved regression inputs of a target (libFuzzer's crash-*, timeout-*, and ours). */
export function regressionFiles(target: string): string[] {
  const dir = join(REGRESSIONS, target);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => !f.endsWith(".txt") && !f.endsWith(".md") && !f.startsWith("."))
    .map((f) => join(dir, f));
}

export function replayRegressions(t: FuzzTarget): Finding[] {
  const out: Finding[] = [];
  for (const file of regressionFiles(t.name)) {
    const f = runOne(t, readFileSync(file));
    if (f) out.push({ ...f, file });
  }
  return out;
}

export interface RunStats {
  inputs: number;
  findings: Finding[];
  ms: number;
}

export interface RunOptions {
  runs: number;
  seed: number;
  /** Called before each input (the hang watchdog records it). */
  onInput?: (input: Buffer, n: number) => void;
  /** Keep going after a finding (long runs) or stop at the first (short runs). */
  keepGoing?: boolean;
  /** Called every `progressEvery` inputs. */
  onProgress?: (n: number, findings: number) => void;
  progressEvery?: number;
  /** Stop early at this time (ms since the epoch): a long run on a busy machine ends with what it reached. */
  deadline?: number;
  /** At most this many findings with the same first message line are kept (a bug found a million times). */
  maxPerMessage?: number;
}

/** Generates `runs` inputs deterministically from `seed` and runs them. */
export function fuzz(t: FuzzTarget, o: RunOptions): RunStats {
  const arb = t.arbitrary();
  const findings: Finding[] = [];
  const perMessage = new Map<string, number>();
  const start = Date.now();
  const chunk = 1000;
  let n = 0;
  for (let c = 0; n < o.runs && !(o.deadline && Date.now() > o.deadline); c++) {
    const batch = fc.sample(arb, { numRuns: Math.min(chunk, o.runs - n), seed: (o.seed + c * 7919) | 0 });
    for (const input of batch) {
      o.onInput?.(input, n);
      const f = runOne(t, input);
      n++;
      if (f) {
        // One bug shows with many different numbers in its message: group by the message's shape.
        const key = `${f.kind}:${f.message.split("\n")[0]!.replace(/[0-9a-f]{2,}|\d+/g, "#")}`;
        const seen = perMessage.get(key) ?? 0;
        perMessage.set(key, seen + 1);
        if (seen < (o.maxPerMessage ?? 3)) findings.push(f);
        if (!o.keepGoing) return { inputs: n, findings, ms: Date.now() - start };
      }
      if (o.onProgress && n % (o.progressEvery ?? 100_000) === 0) o.onProgress(n, findings.length);
    }
  }
  return { inputs: n, findings, ms: Date.now() - start };
}
