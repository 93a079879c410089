/**
 * Structured logs with pino: one JSON object per line on stdout (`{"level":"info","t":"…","event":"tunnel-up",…}`),
 * and a per-key limiter so a flood of identical events (spoofed packets, refused handshakes) logs once per interval
 * with a count of what was suppressed.
 */
import { pino, type DestinationStream } from "pino";

export type Level = "debug" | "info" | "warn" | "error";

export const LEVELS: readonly Level[] = ["debug", "info", "warn", "error"];

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

export interface JsonLoggerOptions {
  /** Where lines go (default: stdout, written synchronously so nothing is lost on a crash). */
  write?: (line: string) => void;
  /** Lowest level written (default info). */
  level?: Level;
  /** Sees every entry that was written (after level filtering and rate limiting): the admin API's recent events. */
  onEntry?: (level: Level, event: string, fields: Record<string, unknown>) => void;
}

const ORDER: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export function jsonLogger(opts: JsonLoggerOptions = {}): Logger {
  const minLevel = opts.level ?? "info";
  const dest: DestinationStream = opts.write
    ? { write: opts.write }
    : pino.destination({ dest: 1, sync: true, mkdir: false });
  const p = pino(
    {
      level: minLevel,
      base: undefined, // no pid/hostname: the gateway is one process and the lines say what they are
      timestamp: () => `,"t":"${new Date().toISOString()}"`,
      formatters: { level: (label) => ({ level: label }) },
    },
    dest,
  );
  const last = new Map<string, { at: number; suppressed: number }>();
  const log = (level: Level, event: string, fields: Record<string, unknown> = {}) => {
    if (ORDER[level] < ORDER[minLevel]) return;
    p[level]({ event, ...fields });
    opts.onEntry?.(level, event, fields);
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
