/**
 * Coverage of a module from V8's own block coverage (NODE_V8_COVERAGE, no extra packages): the share of the
 * module's code bytes (as executed, after tsx strips the types) inside blocks that ran at least once, and the
 * functions that ran. Nested ranges override their parents, as in V8's report.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

interface Range {
  startOffset: number;
  endOffset: number;
  count: number;
}
interface Fn {
  functionName: string;
  ranges: Range[];
}
interface Script {
  url: string;
  functions: Fn[];
}

export interface ModuleCoverage {
  module: string;
  bytesPct: number;
  functions: number;
  functionsRun: number;
}

export function moduleCoverage(dir: string, modules: readonly string[]): ModuleCoverage[] {
  const scripts: Script[] = [];
  for (const f of readdirSync(dir).filter((f) => f.endsWith(".json"))) {
    const j = JSON.parse(readFileSync(join(dir, f), "utf8")) as { result: Script[] };
    scripts.push(...j.result);
  }
  return modules.map((m) => {
    const mine = scripts.filter((s) => s.url.endsWith(`/${m}`));
    // Merge across processes and threads: the script with the most executed bytes wins (each is a full report).
    let best: ModuleCoverage = { module: m, bytesPct: 0, functions: 0, functionsRun: 0 };
    for (const s of mine) {
      const ranges = s.functions.flatMap((f) => f.ranges);
      const size = Math.max(0, ...ranges.map((r) => r.endOffset));
      const hit = new Uint8Array(size);
      const sorted = [...ranges].sort((a, b) => a.startOffset - b.startOffset || b.endOffset - a.endOffset);
      for (const r of sorted) hit.fill(r.count > 0 ? 1 : 0, r.startOffset, r.endOffset);
      let covered = 0;
      for (const h of hit) covered += h;
      const fns = s.functions.filter((f) => f.functionName !== "");
      const c: ModuleCoverage = {
        module: m,
        bytesPct: size ? Math.round((1000 * covered) / size) / 10 : 0,
        functions: fns.length,
        functionsRun: fns.filter((f) => f.ranges[0]!.count > 0).length,
      };
      if (c.bytesPct > best.bytesPct) best = c;
    }
    return best;
  });
}
