/** Small helpers shared by the benchmarks: timing loops and summary statistics. */

/** Median of a list of numbers. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * Runs `fn` `warmup` times, then `samples` batches of `batch` calls each, and returns the median time per call in
 * milliseconds (batches smooth out timer resolution; the median resists noise from the shared machine).
 */
export function timePerCall(
  fn: () => unknown,
  opts: { warmup: number; samples: number; batch: number },
): number {
  for (let i = 0; i < opts.warmup; i++) fn();
  const per: number[] = [];
  for (let s = 0; s < opts.samples; s++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < opts.batch; i++) fn();
    per.push(Number(process.hrtime.bigint() - t0) / 1e6 / opts.batch);
  }
  return median(per);
}

export function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
