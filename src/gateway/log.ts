/**
 * Structured logs: one JSON object per line on stdout (`{"t":…,"level":"info","event":"tunnel-up",…}`), and a
 * per-key limiter so a flood of identical events (spoofed packets, refused handshakes) logs once per interval with
 * a count of what was suppressed.
 */
export type Level = "debug" | "info" | "warn" | "error";

export interface Logger {
  log(level: Level, event: string, fields?: Record<string, unknown>): void;
  /** Logs at most once per `intervalMs` for `key`; later calls in the interval are counted and reported next time. */
  limited(
    key: string,
    intervalMs: number,
    level: Level,
    event: string,
    fields?: Record<string, unknown>,
  ): void;
}

export function jsonLogger(
  write: (line: string) => void = (l) => process.stdout.write(l),
  minLevel: Level = "info",
): Logger {
  const order: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };
  const last = new Map<string, { at: number; suppressed: number }>();
  const log = (level: Level, event: string, fields: Record<string, unknown> = {}) => {
    if (order[level] < order[minLevel]) return;
    write(JSON.stringify({ t: new Date().toISOString(), level, event, ...fields }) + "\n");
  };
  return {
    log,
    limited(key, intervalMs, level, event, fields = {}) {
      const now = Date.now();
      const s = last.get(key);
      if (s && now - s.at < intervalMs) {
        s.suppressed++;
        return;
      }
      if (last.size > 10_000) last.clear();
      log(level, event, s?.suppressed ? { ...fields, suppressed: s.suppressed } : fields);
      last.set(key, { at: now, suppressed: 0 });
    },
  };
}
