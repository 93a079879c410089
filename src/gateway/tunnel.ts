/** A runtime's tunnel as the gateway holds it (cf. wireguard-go's peer): state, lease, counters, timestamps. */
import type { DtlsSession } from "../native/dtls.js";
import type { DropReason } from "../packet/ip.js";
import type { Drop6Reason } from "../packet/ip6.js";
import type { ProtocolVersion } from "../tunnel/protocol.js";

/** Per-tunnel and per-app traffic counters. */
export interface Counters {
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
}

export const zero = (): Counters => ({ rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0 });

export type State = "handshake" | "leased" | "closed";

let nextTunnelId = 0;

/** One runtime's tunnel. */
export class Tunnel {
  /** Stable id for the admin API, unique within the process. */
  readonly id = ++nextTunnelId;
  state: State = "handshake";
  /** Protocol version negotiated in the handshake (ALPN); control messages carry it. */
  version: ProtocolVersion = 1;
  app = "";
  /** Leased IPv4 address (0: none) and its lease. */
  address = 0;
  leaseId = 0;
  /** Leased IPv6 address: canonical text, its 16 bytes and its lease; "" / undefined / 0: none. */
  address6 = "";
  addr6: Buffer | undefined;
  leaseId6 = 0;
  keyFp = "";
  measurement = "";
  acked = false;
  /** Largest packet the DTLS session can carry in one record (set when established). */
  maxRecord = 0;
  /** ms since the epoch when the lease was sent (a reload re-checks tunnels leased while it ran). */
  leasedAt = 0;
  readonly counters = zero();
  /** Last authenticated record received (decrypted), and last datagram sent. */
  lastRx: number;
  lastTx: number;
  /** When a runtime's KEEPALIVE was last answered (at most one answer a second). */
  keepaliveAnsweredAt = 0;
  /** The abuse budget (see {@link Tunnel.bad}): tokens left, when they were counted, throttled until when, strikes. */
  badTokens = BAD_BURST;
  badAt = 0;
  throttledUntil = 0;
  strikes = 0;
  /** ICMP "fragmentation needed" and ICMPv6 "packet too big" answers sent in the current second, and which second. */
  icmpCount = 0;
  icmpSecond = 0;

  /** The lease whose certificate stands for the tunnel (the IPv4 one, else the IPv6 one). */
  get certLease(): number {
    return this.leaseId || this.leaseId6;
  }

  /** The leased addresses as text, IPv4 first. */
  get addresses(): string[] {
    const out: string[] = [];
    if (this.address)
      out.push(
        `${this.address >>> 24}.${(this.address >>> 16) & 255}.${(this.address >>> 8) & 255}.${this.address & 255}`,
      );
    if (this.address6) out.push(this.address6);
    return out;
  }

  constructor(
    readonly peer: string,
    readonly session: DtlsSession,
    readonly createdAt: number,
  ) {
    this.lastRx = createdAt;
    this.lastTx = createdAt;
  }

  /**
   * Charges one packet the policy counts as abuse (malformed or spoofed) at time `now`. Returns "ok" within the
   * budget (BAD_RATE a second, bursts of BAD_BURST); "throttle" when it ran out (the tunnel's datagrams are then
   * dropped before decryption for THROTTLE_MS); "close" at the MAX_STRIKES-th throttle without a quiet
   * STRIKE_FORGET_MS in between.
   */
  bad(now: number): "ok" | "throttle" | "close" {
    this.badTokens = Math.min(BAD_BURST, this.badTokens + ((now - this.badAt) / 1000) * BAD_RATE);
    this.badAt = now;
    if (this.badTokens >= 1) {
      this.badTokens -= 1;
      return "ok";
    }
    if (now - this.throttledUntil > STRIKE_FORGET_MS) this.strikes = 0;
    this.throttledUntil = now + THROTTLE_MS;
    return ++this.strikes >= MAX_STRIKES ? "close" : "throttle";
  }
}

/** Abuse budget per tunnel: malformed or spoofed inner packets a second, and the burst allowed. */
export const BAD_RATE = 100;
export const BAD_BURST = 1000;
/** How long a tunnel over its budget has its datagrams dropped before decryption. */
export const THROTTLE_MS = 1000;
/** Throttles in a row (no quiet STRIKE_FORGET_MS between them) before the tunnel is closed with `misbehaving`. */
export const MAX_STRIKES = 3;
/** How long the kernel drops the datagrams of a peer closed as `misbehaving` (guard.ts). */
export const MISBEHAVING_BLOCK_MS = 30_000;
export const STRIKE_FORGET_MS = 30_000;
/** ICMP "fragmentation needed" answers per tunnel and second. */
export const ICMP_PER_SECOND = 50;

/** Why packets or datagrams were dropped, counted. */
export type DropCounter =
  | DropReason
  | Drop6Reason
  | "too-big"
  | "rate-limited"
  | "half-open-cap"
  | "tunnel-cap"
  | "throttled"
  | "unknown-session"
  | "dtls-error"
  | "not-leased";
