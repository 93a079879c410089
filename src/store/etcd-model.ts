/**
 * The data model of the etcd store: key names and the JSON values under them (docs/CLUSTER.md describes it).
 * Values are parsed defensively: a key written by another version or by hand is reported, never trusted blindly.
 */

/** `/seng/lease/<ip>`: the live lease of an address; attached to the holder gateway's etcd lease. */
export interface LeaseValue {
  app: string;
  keyFp: string;
  measurement: string;
  outer: string;
  /** ms since the epoch: granted, and when it lapses unless extended (grace) */
  start: number;
  end: number;
  /** gateway id of the holder */
  holder: string;
  /** nonce of the last write (read back after an ambiguous commit) */
  nonce: string;
  /** nonce of the grant; differs from `nonce` once the lease was resumed or extended */
  grant: string;
  /** the audit record's key */
  audit: string;
  /** RA-TLS certificate, base64 DER */
  cert?: string;
}

/** `/seng/last/<ip>`: who held an address last and when it was released (persistent: drives the cool-down). */
export interface LastValue {
  app: string;
  keyFp: string;
  /** null while held; set on release, or by the first gateway that finds the address freed by a lease expiry */
  released: number | null;
  reason: string | null;
  audit: string;
}

/** `/seng/audit/<ip>/<start, 15 digits>/<nonce>`: one lease's history (persistent). */
export interface AuditValue {
  app: string;
  measurement: string;
  keyFp: string;
  outer: string;
  start: number;
  /** audit time of the release: when the lease lapsed, for an expiry found late (as in the SQLite audit log) */
  released: number | null;
  /** when the address was actually freed (LeaseRecord.released) */
  freed?: number | null;
  reason: string | null;
  /** resumptions: time and outer address */
  renews: { t: number; outer: string }[];
}

/** `/seng/revoke/<kind>/<value>` */
export interface RevokeValue {
  reason: string;
  t: number;
}

export class Keys {
  constructor(readonly prefix: string) {}
  gateway(id: string): string {
    return `${this.prefix}gw/${id}`;
  }
  get gateways(): string {
    return `${this.prefix}gw/`;
  }
  lease(ip: string): string {
    return `${this.prefix}lease/${ip}`;
  }
  get leases(): string {
    return `${this.prefix}lease/`;
  }
  owner(app: string, keyFp: string): string {
    return `${this.prefix}owner/${app}/${keyFp}`;
  }
  last(ip: string): string {
    return `${this.prefix}last/${ip}`;
  }
  auditOf(ip: string): string {
    return `${this.prefix}audit/${ip}/`;
  }
  audit(ip: string, start: number, nonce: string): string {
    return `${this.auditOf(ip)}${pad(start)}/${nonce}`;
  }
  get revokes(): string {
    return `${this.prefix}revoke/`;
  }
  revoke(kind: string, value: string): string {
    return `${this.prefix}revoke/${kind}/${value}`;
  }
}

/** Fixed width, so keys sort by time (ms since the epoch fit in 15 digits until the year 33658). */
export function pad(t: number): string {
  return String(Math.max(0, Math.trunc(t))).padStart(15, "0");
}

/** The end of a prefix range: the prefix with its last byte incremented. */
export function prefixEnd(prefix: string): Buffer {
  const b = Buffer.from(prefix);
  b[b.length - 1]!++;
  return b;
}

export function encode(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v));
}

/** Parses a JSON object value; `fields` are the keys it must have. Throws naming the etcd key otherwise. */
export function decode<T>(key: string, value: Buffer, fields: readonly (keyof T & string)[]): T {
  let v: unknown;
  try {
    v = JSON.parse(value.toString());
  } catch {
    throw new Error(`etcd key ${key}: value is not JSON`);
  }
  if (typeof v !== "object" || v === null) throw new Error(`etcd key ${key}: value is not an object`);
  for (const f of fields) if (!(f in v)) throw new Error(`etcd key ${key}: value has no '${f}'`);
  return v as T;
}

export const LEASE_FIELDS = ["app", "keyFp", "start", "end", "holder", "nonce", "grant", "audit"] as const;
export const LAST_FIELDS = ["app", "keyFp", "released", "audit"] as const;
export const AUDIT_FIELDS = ["app", "keyFp", "start", "released", "renews"] as const;

/** A lease value, or undefined when it is not one (reported by the range reads that need it). */
export function parseLease(kv: { key: Buffer; value: Buffer }): LeaseValue | undefined {
  try {
    return decode<LeaseValue>(kv.key.toString(), kv.value, LEASE_FIELDS);
  } catch {
    return undefined;
  }
}
