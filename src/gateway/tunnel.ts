/** A runtime's tunnel as the gateway holds it (cf. wireguard-go's peer): state, lease, counters, timestamps. */
import type { DtlsSession } from "../native/dtls.js";
import type { DropReason } from "../packet/ip.js";

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
  app = "";
  address = 0;
  leaseId = 0;
  keyFp = "";
  measurement = "";
  acked = false;
  /** Largest packet the DTLS session can carry in one record (set when established). */
  maxRecord = 0;
  /** ms since the epoch when the lease was sent (a reload re-checks tunnels leased while it ran). */
  leasedAt = 0;
  readonly counters = zero();
  lastRx: number;
  lastTx: number;

  constructor(
    readonly peer: string,
    readonly session: DtlsSession,
    readonly createdAt: number,
  ) {
    this.lastRx = createdAt;
    this.lastTx = createdAt;
  }
}

/** Why packets or datagrams were dropped, counted. */
export type DropCounter =
  | DropReason
  | "too-big"
  | "rate-limited"
  | "half-open-cap"
  | "tunnel-cap"
  | "unknown-session"
  | "dtls-error"
  | "not-leased";
