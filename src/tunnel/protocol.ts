/**
 * The SENG wire protocol, version 1 (docs/PROTOCOL.md): what travels inside the one DTLS 1.2 session between a
 * runtime and the gateway.
 *
 * Every DTLS record carries exactly one of:
 *  - an IP packet (IPv4 or IPv6): its first byte's high nibble is 4 or 6;
 *  - a control message: first byte 0x00, then the protocol version, the message type, and a JSON body.
 * The two can never be confused: no IP packet starts with a zero nibble.
 */

export const PROTOCOL_VERSION = 1;
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

/** The address lease the gateway gives a tunnel after attestation. */
export interface Lease {
  /** Leased IPv4 address and its app subnet's prefix length. */
  address: string;
  prefix: number;
  /** The gateway's address on its TUN (the next hop inside the tunnel). */
  gateway: string;
  mtu: number;
  dns: string[];
  /** Seconds the address stays reserved for this key after the tunnel goes away. */
  lifetime: number;
  app: string;
}

export type Control =
  | { type: typeof MSG.LEASE; lease: Lease }
  | { type: typeof MSG.LEASE_ACK; address: string }
  | { type: typeof MSG.KEEPALIVE }
  | { type: typeof MSG.CLOSE; reason: CloseReason; message: string };

/** Whether a record is a control message (else it is an IP packet). */
export function isControl(record: Buffer): boolean {
  return record.length > 0 && record[0] === CONTROL_MARKER;
}

export function encodeControl(msg: Control): Buffer {
  const { type, ...body } = msg;
  const json = type === MSG.KEEPALIVE ? "" : JSON.stringify(body);
  const out = Buffer.allocUnsafe(3 + Buffer.byteLength(json));
  out[0] = CONTROL_MARKER;
  out[1] = PROTOCOL_VERSION;
  out[2] = type;
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
const isInt =
  (lo: number, hi: number) =>
  (v: unknown): v is number =>
    Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;

/** Decodes a control record; throws ProtocolError for anything malformed or of another version. */
export function decodeControl(record: Buffer): Control {
  if (record.length < 3 || record[0] !== CONTROL_MARKER) throw new ProtocolError("not a control message");
  if (record[1] !== PROTOCOL_VERSION)
    throw new ProtocolError(`protocol version ${record[1]} (this side speaks ${PROTOCOL_VERSION})`);
  const type = record[2]!;
  if (type === MSG.KEEPALIVE) return { type };
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(record.toString("utf8", 3)) as Record<string, unknown>;
  } catch {
    throw new ProtocolError("control message body is not JSON");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw new ProtocolError("control message body must be an object");
  switch (type) {
    case MSG.LEASE: {
      const l = field(
        body,
        "lease",
        (v): v is Record<string, unknown> => typeof v === "object" && v !== null,
        "an object",
      );
      const dns = field(
        l,
        "dns",
        (v): v is string[] => Array.isArray(v) && v.every(isIp),
        "a list of IPv4 addresses",
      );
      return {
        type,
        lease: {
          address: field(l, "address", isIp, "an IPv4 address"),
          prefix: field(l, "prefix", isInt(1, 32), "a prefix length 1-32"),
          gateway: field(l, "gateway", isIp, "an IPv4 address"),
          mtu: field(l, "mtu", isInt(576, 65535), "an MTU 576-65535"),
          dns,
          lifetime: field(l, "lifetime", isInt(0, 2 ** 31), "seconds"),
          app: field(l, "app", isStr, "a string"),
        },
      };
    }
    case MSG.LEASE_ACK:
      return { type, address: field(body, "address", isIp, "an IPv4 address") };
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
