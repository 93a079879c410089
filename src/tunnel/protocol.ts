/**
 * The SENG wire protocol, versions 2 and 1 (docs/PROTOCOL.md): what travels inside the one DTLS 1.2 session between
 * a runtime and the gateway.
 *
 * Every DTLS record carries exactly one of:
 *  - an IP packet (IPv4 or IPv6): its first byte's high nibble is 4 or 6;
 *  - a control message: first byte 0x00, then the protocol version, the message type, and a JSON body.
 * The two can never be confused: no IP packet starts with a zero nibble.
 *
 * The version is negotiated with ALPN in the DTLS handshake ({@link ALPN_OFFER}, {@link versionFromAlpn}): no ALPN
 * means version 1. Version 2 adds IPv6 to LEASE and LEASE_ACK; everything else is the same.
 */
import { isIPv6 } from "node:net";
import { parseIp6, isUnicast6, formatIp6 } from "../packet/addr6.js";

/** The protocol versions this code speaks. */
export type ProtocolVersion = 1 | 2;
/** The highest version this code speaks. */
export const PROTOCOL_VERSION: ProtocolVersion = 2;
/** ALPN names, most preferred first: what a runtime offers and what a gateway selects from. */
export const ALPN_OFFER: readonly string[] = ["seng/2", "seng/1"];

/**
 * The version an ALPN outcome stands for: "seng/2" is 2; "seng/1" or none ("") is 1 (runtimes from before ALPN).
 * @throws ProtocolError for any other name (a peer that selected what was not offered).
 */
export function versionFromAlpn(alpn: string): ProtocolVersion {
  if (alpn === "seng/2") return 2;
  if (alpn === "seng/1" || alpn === "") return 1;
  throw new ProtocolError(`unknown ALPN protocol ${JSON.stringify(alpn)}`);
}

export const CONTROL_MARKER = 0x00;

export const MSG = {
  LEASE: 1,
  LEASE_ACK: 2,
  KEEPALIVE: 3,
  CLOSE: 4,
} as const;
export type MsgType = (typeof MSG)[keyof typeof MSG];

/** Why a tunnel was closed. Stable strings: runtimes and logs act on them. */
export const CLOSE_REASONS = [
  "policy-rejected",
  "revoked",
  "pool-exhausted",
  "shutting-down",
  "protocol-error",
  "idle-timeout",
  "client-closed",
  "misbehaving",
] as const;
export type CloseReason = (typeof CLOSE_REASONS)[number];

/**
 * The address lease the gateway gives a tunnel after attestation: one address of each family its app has (at least
 * one). Version 1 leases always have the IPv4 fields and never the IPv6 ones.
 */
export interface Lease {
  /** Leased IPv4 address, its app subnet's prefix length, and the gateway's IPv4 address (the next hop). */
  address?: string;
  prefix?: number;
  gateway?: string;
  /** Leased IPv6 address (canonical text), its app prefix's length, and the gateway's IPv6 address. */
  address6?: string;
  prefix6?: number;
  gateway6?: string;
  /** Inner MTU; at least 1280 when an IPv6 address is leased. */
  mtu: number;
  /** DNS servers (IPv4; version 2 also IPv6). */
  dns: string[];
  /** Seconds the address stays reserved for this key after the tunnel goes away. */
  lifetime: number;
  app: string;
}

export type Control =
  | { type: typeof MSG.LEASE; lease: Lease }
  | { type: typeof MSG.LEASE_ACK; address?: string; address6?: string }
  | { type: typeof MSG.KEEPALIVE }
  | { type: typeof MSG.CLOSE; reason: CloseReason; message: string };

/** Smallest MTU of a lease with IPv6 (RFC 8200 minimum link MTU). */
export const MIN_MTU6 = 1280;

/** Whether a record is a control message (else it is an IP packet). */
export function isControl(record: Buffer): boolean {
  return record.length > 0 && record[0] === CONTROL_MARKER;
}

/**
 * Encodes a control message for a session of `version` (default 1). Under version 1 a LEASE carries only the
 * version-1 fields and IPv4 DNS servers (a version-1 runtime refuses anything else), and a LEASE_ACK only `address`.
 */
export function encodeControl(msg: Control, version: ProtocolVersion = 1): Buffer {
  let body: object = {};
  if (msg.type === MSG.LEASE) {
    const l = msg.lease;
    body = {
      lease:
        version === 1
          ? {
              address: l.address,
              prefix: l.prefix,
              gateway: l.gateway,
              mtu: l.mtu,
              dns: l.dns.filter((d) => !isIPv6(d)), // version 1 knows IPv4 servers only
              lifetime: l.lifetime,
              app: l.app,
            }
          : l,
    };
  } else if (msg.type === MSG.LEASE_ACK) {
    body = version === 1 ? { address: msg.address } : { address: msg.address, address6: msg.address6 };
  } else if (msg.type === MSG.CLOSE) {
    body = { reason: msg.reason, message: msg.message };
  }
  const json = msg.type === MSG.KEEPALIVE ? "" : JSON.stringify(body);
  const out = Buffer.allocUnsafe(3 + Buffer.byteLength(json));
  out[0] = CONTROL_MARKER;
  out[1] = version;
  out[2] = msg.type;
  out.write(json, 3, "utf8");
  return out;
}

/** Thrown for a control message that does not follow the protocol; the tunnel closes with `protocol-error`. */
export class ProtocolError extends Error {
  override readonly name = "ProtocolError";
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

function field<T>(o: Record<string, unknown>, key: string, check: (v: unknown) => v is T, what: string): T {
  const v = o[key];
  if (!check(v)) throw new ProtocolError(`control message: ${key} must be ${what}`);
  return v;
}
const isStr = (v: unknown): v is string => typeof v === "string";
const isIp = (v: unknown): v is string => typeof v === "string" && IPV4.test(v);
/** A unicast IPv6 address in canonical text (what the gateway writes): no zone, no mapped IPv4, no "::". */
const isIp6 = (v: unknown): v is string => {
  const b = typeof v === "string" ? parseIp6(v) : undefined;
  return b !== undefined && isUnicast6(b) && formatIp6(b) === v;
};
const isInt =
  (lo: number, hi: number) =>
  (v: unknown): v is number =>
    Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/** Present iff all of a family's keys are; none of them: undefined; some: a ProtocolError. */
function family(o: Record<string, unknown>, keys: readonly string[], name: string): boolean {
  const n = keys.filter((k) => o[k] !== undefined).length;
  if (n !== 0 && n !== keys.length)
    throw new ProtocolError(
      `control message: ${keys.join(", ")} must be all present or all absent (${name})`,
    );
  return n === keys.length;
}

function decodeLease(l: Record<string, unknown>, version: ProtocolVersion): Lease {
  const has4 = version === 1 || family(l, ["address", "prefix", "gateway"], "IPv4");
  const has6 = version === 2 && family(l, ["address6", "prefix6", "gateway6"], "IPv6");
  if (!has4 && !has6) throw new ProtocolError("control message: a lease needs an IPv4 or an IPv6 address");
  const dns = field(
    l,
    "dns",
    (v): v is string[] =>
      Array.isArray(v) && v.length <= 16 && v.every((d) => isIp(d) || (version === 2 && isIp6(d))),
    version === 1 ? "a list of IPv4 addresses" : "a list of at most 16 IPv4 or IPv6 addresses",
  );
  const lease: Lease = {
    mtu: field(l, "mtu", isInt(has6 ? MIN_MTU6 : 576, 65535), `an MTU ${has6 ? MIN_MTU6 : 576}-65535`),
    dns,
    lifetime: field(l, "lifetime", isInt(0, 2 ** 31), "seconds"),
    app: field(l, "app", isStr, "a string"),
  };
  if (has4) {
    lease.address = field(l, "address", isIp, "an IPv4 address");
    lease.prefix = field(l, "prefix", isInt(1, 32), "a prefix length 1-32");
    lease.gateway = field(l, "gateway", isIp, "an IPv4 address");
  }
  if (has6) {
    lease.address6 = field(l, "address6", isIp6, "a unicast IPv6 address in canonical form");
    lease.prefix6 = field(l, "prefix6", isInt(1, 128), "a prefix length 1-128");
    lease.gateway6 = field(l, "gateway6", isIp6, "a unicast IPv6 address in canonical form");
  }
  return lease;
}

/**
 * Decodes a control record of a session of `version` (default 1); throws ProtocolError for anything malformed or
 * of another version.
 */
export function decodeControl(record: Buffer, version: ProtocolVersion = 1): Control {
  if (record.length < 3 || record[0] !== CONTROL_MARKER) throw new ProtocolError("not a control message");
  if (record[1] !== version)
    throw new ProtocolError(`protocol version ${record[1]} (this session speaks ${version})`);
  const type = record[2]!;
  if (type === MSG.KEEPALIVE) return { type };
  let body: unknown;
  try {
    body = JSON.parse(record.toString("utf8", 3));
  } catch {
    throw new ProtocolError("control message body is not JSON");
  }
  if (!isObject(body)) throw new ProtocolError("control message body must be an object");
  switch (type) {
    case MSG.LEASE:
      return { type, lease: decodeLease(field(body, "lease", isObject, "an object"), version) };
    case MSG.LEASE_ACK: {
      if (version === 1) return { type, address: field(body, "address", isIp, "an IPv4 address") };
      const ack: Control = { type };
      if (body.address !== undefined) ack.address = field(body, "address", isIp, "an IPv4 address");
      if (body.address6 !== undefined)
        ack.address6 = field(body, "address6", isIp6, "a unicast IPv6 address in canonical form");
      if (ack.address === undefined && ack.address6 === undefined)
        throw new ProtocolError("control message: LEASE_ACK needs address or address6");
      return ack;
    }
    case MSG.CLOSE: {
      const reason = field(
        body,
        "reason",
        (v): v is CloseReason => CLOSE_REASONS.includes(v as CloseReason),
        `one of ${CLOSE_REASONS.join(", ")}`,
      );
      return { type, reason, message: typeof body.message === "string" ? body.message : "" };
    }
    default:
      throw new ProtocolError(`unknown control message type ${type}`);
  }
}
