/**
 * Coverage of a module from V8's own block coverage (NODE_V8_COVERAGE, no extra packages): the share of the
 * module's code bytes (as executed, after tsx strips the types; up to the end of its last function) inside blocks
 * that ran at least once, and the
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
    // The union over processes and threads (shards of one target, its worker): a byte ran if it ran in any of them.
    // Every report covers the same transpiled source, so offsets agree.
    let union: Uint8Array | undefined;
    const run = new Set<string>();
    const names = new Set<string>();
    for (const s of mine) {
      const ranges = s.functions.flatMap((f) => f.ranges);
      // The script's own range also spans the inline source map tsx appends: measure up to the end of the last
      // function instead (top-level statements before it count; they run at import).
      const size = Math.max(0, ...s.functions.slice(1).map((f) => f.ranges[0]!.endOffset));
      const hit = new Uint8Array(size);
      const sorted = [...ranges].sort((a, b) => a.startOffset - b.startOffset || b.endOffset - a.endOffset);
      for (const r of sorted) hit.fill(r.count > 0 ? 1 : 0, r.startOffset, Math.min(r.endOffset, size));
      if (!union || union.length !== size)
        union = union && union.length > size ? union : new Uint8Array(size);
      for (let i = 0; i < size; i++) union[i]! |= hit[i]!;
      for (const f of s.functions) {
        if (f.functionName === "") continue;
        const key = `${f.functionName}@${f.ranges[0]!.startOffset}`;
        names.add(key);
        if (f.ranges[0]!.count > 0) run.add(key);
      }
    }
    let covered = 0;
    for (const h of union ?? []) covered += h;
    return {
      module: m,
      bytesPct: union?.length ? Math.round((1000 * covered) / union.length) / 10 : 0,
      functions: names.size,
      functionsRun: run.size,
    };
  });
}
