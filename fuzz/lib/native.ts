/**
 * The libFuzzer side: builds fuzz/native/*_fuzz.cc with ASan and UBSan (build.sh) and runs a harness, short
 * (seconds, saved regressions first) or long (a fixed number of inputs). Crashes, timeouts and leaks are written by
 * libFuzzer itself to fuzz/regressions/<target>/ (-artifact_prefix), which the short run replays.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "./seeds.js";
import { regressionFiles, REGRESSIONS } from "./engine.js";

const DIR = join(ROOT, "fuzz/native");

/** Whether clang++ with libFuzzer is installed. */
export function haveClang(): boolean {
  return spawnSync("clang++", ["--version"], { stdio: "ignore" }).status === 0;
}

export function buildNative(): void {
  const r = spawnSync("bash", [join(DIR, "build.sh")], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`fuzz/native/build.sh failed:\n${r.stdout}${r.stderr}`);
}

export interface NativeResult {
  target: string;
  ok: boolean;
  inputs: number;
  cov?: number;
  ft?: number;
  seconds: number;
  output: string;
}

function stats(target: string, out: string, ok: boolean, seconds: number): NativeResult {
  const runs = /stat::number_of_executed_units:\s*(\d+)/.exec(out);
  const done = [...out.matchAll(/#\d+\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+cov: (\d+) ft: (\d+)/g)].pop();
  return {
    target,
    ok,
    inputs: runs ? Number(runs[1]) : 0,
    cov: done ? Number(done[1]) : undefined,
    ft: done ? Number(done[2]) : undefined,
    seconds,
    output: out,
  };
}

/**
 * Runs one harness. Short: every saved regression, then `seconds` of fuzzing from the committed corpus (new corpus
 * units go to a temporary folder). Long: `runs` inputs, new units kept in fuzz/out/corpus/<target>.
 */
export function runNative(target: string, o: { long: boolean; runs: number; seconds: number }): NativeResult {
  const bin = join(DIR, "build", `${target}_fuzz`);
  const artifacts = join(REGRESSIONS, target);
  mkdirSync(artifacts, { recursive: true });
  const t0 = Date.now();
  const regressions = regressionFiles(target);
  if (regressions.length) {
    const r = spawnSync(bin, regressions, { encoding: "utf8", maxBuffer: 64 << 20 });
    if (r.status !== 0) return stats(target, `regression replay failed:\n${r.stderr}`, false, 0);
  }
  const work = o.long
    ? join(ROOT, "fuzz/out/corpus", target)
    : mkdtempSync(join(tmpdir(), `seng-fuzz-${target}-`));
  mkdirSync(work, { recursive: true });
  const args = [
    `-artifact_prefix=${artifacts}/`,
    "-print_final_stats=1",
    "-timeout=10",
    "-rss_limit_mb=2048",
    "-max_len=70000",
    o.long ? `-runs=${o.runs}` : `-max_total_time=${o.seconds}`,
    work,
    join(DIR, "corpus", target),
  ];
  const r = spawnSync(bin, args, { encoding: "utf8", maxBuffer: 256 << 20 });
  if (!o.long) rmSync(work, { recursive: true, force: true });
  return stats(target, r.stderr + r.stdout, r.status === 0, (Date.now() - t0) / 1000);
}
