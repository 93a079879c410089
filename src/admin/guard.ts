/**
 * Connection admission for the admin API's TCP listener, so that slow-header (slowloris) clients cannot lock out
 * the administrator.
 *
 * Node's own `maxConnections` refuses every new connection once the cap is reached: 70 connections that send their
 * headers a byte at a time were enough to answer none of the legitimate requests. Here instead:
 * - one source address holds at most `perSource` connections, all sources together at most `total`;
 * - a new connection over the per-source cap evicts that source's oldest connection still waiting for its request
 *   headers; over the total cap, the oldest waiting connection of the source that holds the most connections, and
 *   only one at least `minAgeMs` old. A new connection is refused when nothing qualifies. So an attacker's new
 *   connections push out its own old ones, and connects from many sources cannot cycle a legitimate client's
 *   connection out before it has had time for its TLS handshake and first request;
 * - with the server's short `headersTimeout` (checked every second), a slow connection lives seconds, not minutes.
 * Busy connections (headers received, request being answered) are never evicted; `requestTimeout` bounds them.
 */
import type { Server } from "node:net";
import type { Socket } from "node:net";
import type { IncomingMessage, ServerResponse } from "node:http";

export interface GuardLimits {
  /** Connections one source address may hold at once. */
  perSource: number;
  /** Connections all sources together may hold at once. */
  total: number;
  /** Over the total cap, connections younger than this are never evicted (default 1,000 ms). */
  minAgeMs?: number;
}

/** Defaults: a browser opens about six connections; the admin API has a handful of users. */
export const ADMIN_LIMITS: GuardLimits = { perSource: 16, total: 128 };

export interface GuardStats {
  /** Connections open now. */
  open: number;
  /** Connections waiting for request headers that were closed to make room. */
  evicted: number;
  /** New connections closed because every connection was busy. */
  refused: number;
}

interface Conn {
  socket: Socket;
  source: string;
  /** Waiting for a request's headers (new, or idle between keep-alive requests). */
  waiting: boolean;
  /** When it was accepted (ms, monotonic). */
  since: number;
}

export class ConnectionGuard {
  /** Insertion order is age: the first waiting entry is the oldest waiting connection. */
  private readonly conns = new Map<string, Conn>();
  private readonly perSource = new Map<string, number>();
  private evicted = 0;
  private refused = 0;

  constructor(private readonly limits: GuardLimits = ADMIN_LIMITS) {}

  /**
   * Watches `server`: TCP connections as they are accepted (before a TLS handshake), and requests as their headers
   * complete. Works for HTTP and HTTPS servers (the TLS socket has the same remote address and port).
   */
  attach(server: Server): void {
    server.on("connection", (s: Socket) => this.admit(s));
    server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      const c = this.conns.get(key(req.socket));
      if (!c) return;
      c.waiting = false;
      res.once("close", () => (c.waiting = true)); // keep-alive: waiting for the next request's headers
    });
  }

  stats(): GuardStats {
    return { open: this.conns.size, evicted: this.evicted, refused: this.refused };
  }

  private admit(socket: Socket): void {
    const source = socket.remoteAddress ?? "";
    const k = key(socket);
    if ((this.perSource.get(source) ?? 0) >= this.limits.perSource && !this.evict((c) => c.source === source))
      return this.refuse(socket);
    if (this.conns.size >= this.limits.total && !this.evictFromHeaviest()) return this.refuse(socket);
    this.conns.set(k, { socket, source, waiting: true, since: performance.now() });
    this.perSource.set(source, (this.perSource.get(source) ?? 0) + 1);
    socket.once("close", () => this.forget(k));
  }

  private refuse(socket: Socket): void {
    this.refused++;
    socket.destroy();
  }

  /** Closes the oldest waiting connection that `pred` accepts; false when there is none. */
  private evict(pred: (c: Conn) => boolean): boolean {
    for (const [k, c] of this.conns) {
      if (!c.waiting || !pred(c)) continue;
      this.forget(k); // now, not at its 'close' event: the caller counts on the room
      c.socket.destroy();
      this.evicted++;
      return true;
    }
    return false;
  }

  /** Over the total cap: the oldest old-enough waiting connection of the source holding the most connections. */
  private evictFromHeaviest(): boolean {
    const oldest = performance.now() - (this.limits.minAgeMs ?? 1000);
    let heaviest: string | undefined;
    let most = 0;
    for (const c of this.conns.values()) {
      const n = this.perSource.get(c.source) ?? 0;
      if (c.waiting && c.since <= oldest && n > most) [heaviest, most] = [c.source, n];
    }
    return heaviest !== undefined && this.evict((c) => c.source === heaviest && c.since <= oldest);
  }

  private forget(k: string): void {
    const c = this.conns.get(k);
    if (!c) return;
    this.conns.delete(k);
    const n = (this.perSource.get(c.source) ?? 1) - 1;
    if (n > 0) this.perSource.set(c.source, n);
    else this.perSource.delete(c.source);
  }
}

function key(s: Socket): string {
  return `${s.remoteAddress ?? ""}|${s.remotePort ?? 0}`;
}
