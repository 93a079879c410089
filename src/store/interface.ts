/**
 * One storage interface for what a gateway keeps about its tunnels' addresses, implemented by the embedded SQLite
 * store (one gateway, the default: sqlite.ts) and by etcd (several gateways as one system: etcd.ts). Both pass the
 * same conformance suite (test/store/conformance.ts). It is async because etcd is.
 *
 * Not wired into the gateway yet: src/gateway/server.ts still uses the synchronous LeaseStore directly.
 *
 * Times (`now`, `until`, `at`) are ms since the epoch, given by the caller, as in LeaseStore: the gateway's clock
 * decides grace periods, so tests can run on logical time. Fencing (below) is the exception: it is measured on this
 * process's monotonic clock because it must hold against etcd's own timers.
 */
import type { WhoAnswer } from "../gateway/audit.js";
import type { AcquireResult, AcquireResult6, LeaseRecord } from "../gateway/leases.js";

export type { AcquireResult, AcquireResult6, LeaseRecord, WhoAnswer };

/**
 * An app's address pools: the app's name, its IPv4 subnet and/or IPv6 prefix (apps with the same subnet share one
 * pool). The etcd store leases IPv4 only (the configuration refuses IPv6 apps in a cluster).
 */
export interface AppPool {
  name: string;
  subnet?: string | undefined;
  subnet6?: string | undefined;
}

export interface AcquireRequest {
  app: string;
  /** The tunnel key's fingerprint: the identity a lease is bound to (with the app). */
  keyFp: string;
  measurement: string;
  /** The tunnel's outer (underlay) address, ip:port. */
  outer: string;
  now: number;
  /** When the lease lapses unless extended (the grace period after the tunnel goes down). */
  until: number;
  /** The runtime's RA-TLS certificate (DER), kept with the lease so a reload can re-verify it. */
  cert?: Buffer;
}

/** A revocation: every tunnel matching `kind`/`value` is cut on every gateway and refused until it is lifted. */
export interface Revocation {
  kind: "app" | "key" | "measurement";
  value: string;
  reason: string;
  /** ms since the epoch, when it was recorded */
  t: number;
}

/** A change seen through `watch`, in store order. `rev` grows monotonically (etcd revision; SQLite: a counter). */
export type StoreEvent =
  | { type: "lease"; rev: number; address: string; app: string; keyFp: string; id: number; holder: string }
  | { type: "lease-gone"; rev: number; address: string }
  | { type: "revoke"; rev: number; revocation: Revocation }
  | { type: "unrevoke"; rev: number; kind: Revocation["kind"]; value: string }
  /** The store confirms that every change up to `rev` has been delivered (etcd progress notification). */
  | { type: "progress"; rev: number };

export interface FenceState {
  /** False once this gateway can no longer prove that it holds its addresses: stop admitting and forwarding. */
  held: boolean;
  /** Date.now() value until which holding is proven (Infinity for the single-gateway SQLite store). */
  provenUntil: number;
}

/** Thrown by `acquire` when the store is fenced: the gateway must not admit the tunnel. */
export class FencedError extends Error {
  constructor(message = "this gateway cannot prove it still holds its store lease (fenced)") {
    super(message);
    this.name = "FencedError";
  }
}

/**
 * What the gateway keeps: leases (address ↔ app ↔ tunnel key), the per-app address sets derived from them,
 * revocations and the audit trail.
 *
 * Lease semantics (those of src/gateway/leases.ts): a key that asks again for the same app while its lease has not
 * lapsed (end ≥ now) gets the same address back (`resumed`); otherwise it gets a free address of the app's pool, or
 * null when none is free. A lapsed lease found on the way is released as "expired" at its end time.
 */
export interface LeaseBackend {
  readonly kind: "sqlite" | "etcd";
  /**
   * An address released by one identity (app + key) goes to another identity only this long after its release.
   * 0 for SQLite (today's single gateway: the address is reusable at once; conntrack is flushed at release).
   */
  readonly coolDownMs: number;
  /** Fault injection for tests; all zero in production. */
  readonly faults: StoreFaults;
  /** Adds pools for apps not seen yet (at start, and for apps a reload adds). */
  addApps(apps: readonly AppPool[]): Promise<void>;
  /** Resumes or grants a lease; null when the pool is exhausted. Throws FencedError when fenced. */
  acquire(req: AcquireRequest): Promise<AcquireResult | null>;
  /** The IPv6 lease of the same request, where the store has IPv6 (SQLite); absent in stores without it. */
  acquire6?(req: AcquireRequest): Promise<AcquireResult6 | null>;
  /** Extends live leases (id → new end). */
  extendMany(ends: Iterable<[number, number]>): Promise<void>;
  /** Releases a lease now; its address becomes free (after the cool-down for another identity). */
  release(id: number, now: number, reason?: string): Promise<void>;
  /** Releases this gateway's leases whose end has passed; returns their addresses. */
  expire(now: number): Promise<string[]>;
  get(id: number): Promise<LeaseRecord | undefined>;
  certOf(id: number): Promise<Buffer | undefined>;
  /**
   * The live addresses of an app, whichever gateway holds them: the app's firewall set. Derived from the leases
   * (no separate membership records, so a set can never disagree with the leases).
   */
  members(app: string): Promise<string[]>;
  /** Free addresses left in an app's pool. */
  free(app: string): Promise<number>;
  revoke(r: Revocation): Promise<void>;
  unrevoke(kind: Revocation["kind"], value: string): Promise<void>;
  revocations(): Promise<Revocation[]>;
  /** Which lease held `address` at `at`, from any gateway's lease. */
  who(address: string, at: number): Promise<WhoAnswer>;
  /** Whether this gateway can still prove it holds its addresses (self-fencing). */
  fence(): FenceState;
  /** Calls `onEvent` for every change after the call (and progress notifications); returns a stop function. */
  watch(onEvent: (e: StoreEvent) => void): Promise<() => void>;
  close(): Promise<void>;
}

/**
 * Fault injection for the conformance suite (never set in production): `ambiguousCommits` makes the next commits
 * succeed but report an error to the caller, as a lost reply or a leader change does; `lostCommits` makes the next
 * commits fail before they reach the store. Each counts down to 0.
 */
export interface StoreFaults {
  ambiguousCommits: number;
  lostCommits: number;
}

/** The error an injected fault throws (stands for a gRPC UNAVAILABLE or deadline error). */
export class InjectedFault extends Error {
  constructor(what: string) {
    super(`injected fault: ${what}`);
    this.name = "InjectedFault";
  }
}
