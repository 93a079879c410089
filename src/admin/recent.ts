/** The last warnings and errors the gateway logged (refusals, drops, pool exhaustion), for `seng status` and the dashboard. */
import type { Level } from "../gateway/log.js";

export interface RecentEvent {
  /** ISO time. */
  t: string;
  level: Level;
  event: string;
  fields: Record<string, unknown>;
}

/** A ring of the newest `capacity` entries at warn level or above. */
export class RecentEvents {
  private readonly ring: RecentEvent[] = [];

  constructor(private readonly capacity = 200) {}

  /** Usable as {@link JsonLoggerOptions.onEntry}. */
  readonly add = (level: Level, event: string, fields: Record<string, unknown>): void => {
    if (level !== "warn" && level !== "error") return;
    this.ring.push({ t: new Date().toISOString(), level, event, fields });
    if (this.ring.length > this.capacity) this.ring.shift();
  };

  /** Newest first. */
  list(limit = 50): RecentEvent[] {
    return this.ring.slice(-Math.max(0, limit)).reverse();
  }
}
