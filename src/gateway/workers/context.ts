/**
 * A data-path worker's side of the gateway: the members receive.ts, send.ts, admission.ts (step 6) and
 * timers.ts (sweepTunnels) use, over this worker's own tunnels, sessions, UDP socket and TUN queue. Those pipelines
 * run here unchanged against this context; what they would decide on the control thread (lease, policy, guard,
 * logs) becomes a message to it (messages.ts).
 */
import type { MessagePort } from "node:worker_threads";
import type { DtlsListener } from "../../native/dtls.js";
import type { Tun, UdpSocket } from "../../native/io.js";
import type { GatewayConfig } from "../../policy/config.js";
import type { CookieRotation } from "../admission.js";
import type { Level, Logger } from "../log.js";
import type { RateLimiter, TokenBucket } from "../ratelimit.js";
import type { Gateway } from "../server.js";
import { encodeControl, MSG, type CloseReason } from "../../tunnel/protocol.js";
import { Ip6Map } from "../../packet/ip6.js";
import type { Counters, DropCounter, Tunnel } from "../tunnel.js";
import type { FromWorker } from "./messages.js";

/** The Gateway members the shared pipelines touch; WorkerContext provides each (checked by the compiler). */
export type DataPathMembers = Pick<
  Gateway,
  | "log"
  | "now"
  | "byPeer"
  | "byAddress"
  | "byAddress6"
  | "leased"
  | "gatewayAddress6Bytes"
  | "halfOpen"
  | "appCounters"
  | "limiter"
  | "handshakeBudget"
  | "gatewayAddress"
  | "listener"
  | "cookies"
  | "udp"
  | "tun"
  | "churnAt"
  | "config"
  | "count"
  | "handshake"
  | "close"
>;

export class WorkerContext implements DataPathMembers {
  readonly now = Date.now;
  readonly byPeer = new Map<string, Tunnel>();
  readonly byAddress = new Map<number, Tunnel>();
  /** Workers lease IPv4 only (protocol version 1; the configuration refuses IPv6 apps with workers): always empty. */
  readonly byAddress6 = new Ip6Map<Tunnel>();
  readonly gatewayAddress6Bytes = Buffer.alloc(16);
  /** This worker's leased tunnels (the sweep's keepalives and idle timeouts walk them). */
  readonly leased = new Set<Tunnel>();
  readonly halfOpen = new Set<Tunnel>();
  readonly appCounters = new Map<string, Counters>();
  /** Tunnels whose handshake ended and whose admission the control thread is deciding, by handshake id. */
  readonly pending = new Map<number, Tunnel>();
  /** Leased tunnels by the control thread's key, and back. */
  readonly byKey = new Map<number, Tunnel>();
  readonly keyOf = new WeakMap<Tunnel, number>();
  /** Which worker owns a peer / an address (relay of misdirected datagrams and packets). */
  readonly peerOwner = new Map<string, number>();
  readonly addressOwner = new Map<number, number>();
  /** Counts since the last stats report. */
  readonly drops = new Map<string, number>();
  readonly handshakes = new Map<string, number>();
  churnAt = 0;
  readonly log: Logger;
  /** Only the block() the receive path calls; the nftables guard itself lives on the control thread. */
  readonly guard: { block(peer: string, ms: number): void };

  constructor(
    readonly index: number,
    public config: GatewayConfig,
    readonly gatewayAddress: number,
    readonly limiter: RateLimiter,
    readonly handshakeBudget: TokenBucket,
    readonly listener: DtlsListener,
    readonly cookies: CookieRotation,
    readonly udp: UdpSocket,
    readonly tun: Tun,
    private readonly port: MessagePort,
  ) {
    this.log = workerLogger((m) => this.post(m));
    this.guard = { block: (peer, ms) => this.post({ type: "block", peer, ms }) };
  }

  /** The shared pipelines are typed for the Gateway; this context has every member they use (DataPathMembers). */
  get gw(): Gateway {
    return this as unknown as Gateway;
  }

  post(m: FromWorker, transfer?: ArrayBuffer[]): void {
    this.port.postMessage(m, transfer);
  }

  count(reason: DropCounter, n = 1): void {
    this.drops.set(reason, (this.drops.get(reason) ?? 0) + n);
  }

  handshake(result: string): void {
    this.handshakes.set(result, (this.handshakes.get(result) ?? 0) + 1);
  }

  /**
   * Closes a tunnel of this worker, as Gateway.close does: CLOSE and close_notify first when `notify`. A leased
   * tunnel's close is reported to the control thread (lease, sets, logs, observers) unless the control thread
   * asked for it (`report` false).
   */
  close(
    t: Tunnel,
    reason: CloseReason,
    message: string,
    notify = true,
    keepLease = reason !== "revoked",
    report = true,
  ): void {
    if (t.state === "closed") return;
    if (notify) {
      try {
        if (t.session.established())
          this.udp.sendMany(
            [
              ...t.session.send([encodeControl({ type: MSG.CLOSE, reason, message })]),
              ...t.session.shutdown(),
            ],
            t.peer,
          );
      } catch {
        // The session may already be broken; closing goes on.
      }
    }
    t.state = "closed";
    t.session.free();
    this.churnAt = this.now();
    this.halfOpen.delete(t);
    this.pending.delete(t.id);
    if (this.byPeer.get(t.peer) === t) this.byPeer.delete(t.peer);
    if (this.byAddress.get(t.address) === t) this.byAddress.delete(t.address);
    this.leased.delete(t);
    const key = this.keyOf.get(t);
    if (key === undefined) return;
    this.byKey.delete(key);
    if (report)
      this.post({
        type: "closed",
        key,
        reason,
        message,
        keepLease,
        counters: { ...t.counters },
        lastRx: t.lastRx,
        lastTx: t.lastTx,
      });
  }
}

/**
 * A Logger that rate-limits here (a flood of spoofed packets must not become a flood of messages) and hands what
 * it writes to the control thread, whose logger writes it (one stdout, and the admin API's recent warnings).
 */
function workerLogger(post: (m: FromWorker) => void): Logger {
  const last = new Map<string, { at: number; suppressed: number }>();
  const log = (level: Level, event: string, fields: Record<string, unknown> = {}) =>
    post({ type: "log", level, event, fields });
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
