/**
 * Messages between the control thread (pool.ts) and the data-path workers (worker.ts). Everything a worker learns
 * about tunnels it does not own, and everything the control thread learns about traffic, goes through these; the
 * hot path itself sends none.
 *
 * Tunnels are named by `key`: the worker's number for a tunnel still in its handshake, then the control thread's
 * Tunnel id once the control thread has admitted it (`leased` carries both).
 */
import type { Verdict } from "../../attest/claims.js";
import type { Level } from "../log.js";
import type { CloseReason, Lease } from "../../tunnel/protocol.js";
import type { Counters } from "../tunnel.js";

/** What the control thread passes a new worker (workerData). */
export interface WorkerInit {
  index: number;
  /** The configuration file: a worker loads it itself (identities, trust roots and collateral are not cloneable). */
  configFile: string;
  /** How many workers share the admission caps (each worker takes an equal share). */
  workers: number;
  /** The UDP port every worker binds with SO_REUSEPORT (the first worker's, when the config says port 0). */
  port: number;
  /** Log level of the process. */
  logLevel: Level;
}

/** Worker → control. */
export type FromWorker =
  /** Bound and reading: the port it got (the first worker of a port-0 listen picks the port for all). */
  | { type: "ready"; port: number; offload: boolean; tun: string }
  /** Handshake done and the evidence verified here (a pure function of bytes): the control thread decides. */
  | {
      type: "admit";
      hs: number;
      peer: string;
      der: Uint8Array | null;
      fingerprint: string;
      verdict: Verdict | { verified: false; code: string; reason: string };
      maxRecord: number;
      createdAt: number;
    }
  /** The worker closed a tunnel the control thread admitted (idle, client-closed, misbehaving, …). */
  | {
      type: "closed";
      key: number;
      reason: CloseReason;
      message: string;
      keepLease: boolean;
      counters: Counters;
      lastRx: number;
      lastTx: number;
    }
  /** A peer whose datagrams should go to another worker's tunnel (the kernel's socket choice changed). */
  | { type: "relay-udp"; peers: string[]; data: Uint8Array[] }
  /** Packets for addresses leased on another worker that reached this worker's TUN queue (no steering program). */
  | { type: "relay-tun"; owner: number[]; packets: Uint8Array[] }
  | { type: "block"; peer: string; ms: number }
  | {
      type: "log";
      level: Level;
      event: string;
      fields: Record<string, unknown>;
      limitKey?: string;
      ms?: number;
    }
  /**
   * Counters since the last report: drops and handshakes as increments; app counters and each changed tunnel's
   * counters as totals.
   */
  | {
      type: "stats";
      drops: Record<string, number>;
      handshakes: Record<string, number>;
      apps: Record<string, Counters>;
      tunnels: [
        key: number,
        rxP: number,
        rxB: number,
        txP: number,
        txB: number,
        lastRx: number,
        lastTx: number,
      ][];
      halfOpen: number;
    };

/** Control → worker. */
export type ToWorker =
  | {
      type: "leased";
      hs: number;
      key: number;
      lease: Lease;
      app: string;
      address: number;
      leaseId: number;
      measurement: string;
      leasedAt: number;
    }
  /** Close a tunnel (revocation, admin, replaced by a newer tunnel of its key, refused at attestation). */
  | { type: "close"; key: number; hs?: number; reason: CloseReason; message: string; notify: boolean }
  /** Which worker owns a peer and an address, so a misdirected datagram or packet can be relayed (-1: none). */
  | { type: "owner"; peer: string; address: number; worker: number }
  | { type: "relay-udp"; peers: string[]; data: Uint8Array[] }
  | { type: "relay-tun"; packets: Uint8Array[] }
  /** The configuration file was reloaded: re-read timers, trust and MTU. */
  | { type: "reload" }
  /** Steering by leased address is on: packets on this worker's TUN queue are its own, no relay check. */
  | { type: "steered"; on: boolean }
  /** Test hook (SENG_TEST_HOOKS=1, pool.ts): throw from the event loop, as a bug would. */
  | { type: "crash" }
  | { type: "stop" };
