/**
 * IPv6 header checks for the data path, reading the packet in place without allocation (only the ICMPv6 answer
 * below allocates, and it is rate limited).
 *
 * A packet from a tunnel is forwarded only when its whole extension header chain has been walked, within
 * {@link MAX_EXT_HEADERS} headers and {@link MAX_CHAIN_BYTES} bytes, up to an upper-layer header that is there: a
 * chain that cannot be parsed, runs past the packet or over the bound is dropped, never passed on unparsed. Routing
 * header type 0 (RFC 5095: deprecated, an amplification tool) is dropped under its own reason.
 */

/** Why an IPv6 packet from a tunnel was dropped, beside the reasons IPv4 shares (`malformed`, `spoofed-source`). */
export type Drop6Reason =
  | "malformed"
  | "spoofed-source"
  /** An extension header chain that does not parse, runs past the packet, or is longer than the bound. */
  | "ipv6-ext-headers"
  /** A routing header of type 0. */
  | "ipv6-routing-0"
  /** Link-local or unspecified source: a TUN-mode kernel's neighbour discovery and MLD, never forwarded. */
  | "ipv6-link-local";

/** At most this many extension headers are walked; a longer chain is dropped. */
export const MAX_EXT_HEADERS = 8;
/** The chain (fixed header included) must end within this many bytes. */
export const MAX_CHAIN_BYTES = 512;

const HOP_BY_HOP = 0;
const TCP = 6;
const UDP = 17;
const ROUTING = 43;
const FRAGMENT = 44;
const ESP = 50;
const AH = 51;
export const ICMPV6 = 58;
const NO_NEXT = 59;
const DEST_OPTS = 60;
const MOBILITY = 135;
const HIP = 139;
const SHIM6 = 140;
const EXP1 = 253;
const EXP2 = 254;

/** The upper-layer protocol and its offset found by the last {@link checkTunnelPacket6} that passed a packet. */
let upperProto = -1;
let upperOffset = 0;

/** Upper-layer protocol of the last packet {@link checkTunnelPacket6} passed (-1: a non-first fragment, ESP, none). */
export function lastUpperProtocol(): number {
  return upperProto;
}

/** The map key of the IPv6 address at `at` (16 bytes as a one-byte string: exact, and cheap to hash). */
export function ip6Key(p: Buffer, at: number): string {
  return p.toString("latin1", at, at + 16);
}

/**
 * Checks an IPv6 packet that arrived from a tunnel whose leased address is `leased` (16 bytes): a fixed header,
 * a payload length that matches the record, the leased source, and an extension header chain walked to its end.
 * Returns undefined when it may be forwarded.
 */
export function checkTunnelPacket6(p: Buffer, leased: Buffer): Drop6Reason | undefined {
  upperProto = -1;
  const len = p.length;
  if (len < 40 || p[0]! >> 4 !== 6) return "malformed";
  if (p.readUInt16BE(4) + 40 !== len) return "malformed"; // also refuses jumbograms (payload length 0)
  if (p.compare(leased, 0, 16, 8, 24) !== 0) {
    // fe80::/10 or ::: a kernel's own chatter (router solicitation, DAD, MLD), not a forged source.
    if ((p[8] === 0xfe && (p[9]! & 0xc0) === 0x80) || isZero(p, 8)) return "ipv6-link-local";
    return "spoofed-source";
  }
  let next = p[6]!;
  let off = 40;
  for (let n = 0; ; n++) {
    switch (next) {
      case HOP_BY_HOP:
      case DEST_OPTS:
      case ROUTING:
      case MOBILITY:
      case HIP:
      case SHIM6:
      case EXP1:
      case EXP2: {
        if (n >= MAX_EXT_HEADERS) return "ipv6-ext-headers";
        if (next === HOP_BY_HOP && n !== 0) return "ipv6-ext-headers"; // only right after the fixed header
        if (off + 8 > len) return "ipv6-ext-headers";
        const size = (p[off + 1]! + 1) * 8;
        if (off + size > len || off + size > MAX_CHAIN_BYTES) return "ipv6-ext-headers";
        if (next === ROUTING && p[off + 2] === 0) return "ipv6-routing-0";
        next = p[off]!;
        off += size;
        continue;
      }
      case AH: {
        if (n >= MAX_EXT_HEADERS) return "ipv6-ext-headers";
        if (off + 8 > len) return "ipv6-ext-headers";
        const size = (p[off + 1]! + 2) * 4;
        if (off + size > len || off + size > MAX_CHAIN_BYTES) return "ipv6-ext-headers";
        next = p[off]!;
        off += size;
        continue;
      }
      case FRAGMENT: {
        if (n >= MAX_EXT_HEADERS) return "ipv6-ext-headers";
        if (off + 8 > len || off + 8 > MAX_CHAIN_BYTES) return "ipv6-ext-headers";
        const fragOffset = p.readUInt16BE(off + 2) >> 3;
        next = p[off]!;
        off += 8;
        // A later fragment carries no headers of its own; the first must hold the whole chain (RFC 7112).
        if (fragOffset !== 0) return undefined;
        continue;
      }
      case ESP:
      case NO_NEXT:
        return undefined;
      default: {
        // The upper layer: its header must be there (TCP 20 bytes, UDP 8, ICMPv6 4).
        const need = next === TCP ? 20 : next === UDP ? 8 : next === ICMPV6 ? 4 : 0;
        if (off + need > len) return "malformed";
        upperProto = next;
        upperOffset = off;
        return undefined;
      }
    }
  }
}

function isZero(p: Buffer, at: number): boolean {
  for (let i = at; i < at + 16; i++) if (p[i] !== 0) return false;
  return true;
}

/** Whether the last packet {@link checkTunnelPacket6} passed is an ICMPv6 error message (never answered, RFC 4443). */
export function lastIsIcmp6Error(p: Buffer): boolean {
  return upperProto === ICMPV6 && p[upperOffset]! < 128;
}

/** The Internet checksum of an ICMPv6 message `b[start, end)` with the IPv6 pseudo-header of packet `b`. */
function icmp6Checksum(b: Buffer, start: number, end: number): number {
  let sum = 0;
  for (let i = 8; i < 40; i += 2) sum += b.readUInt16BE(i); // source and destination
  const len = end - start;
  sum += (len >>> 16) + (len & 0xffff) + ICMPV6;
  for (let i = start; i + 1 < end; i += 2) sum += b.readUInt16BE(i);
  if (len & 1) sum += b[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * ICMPv6 Packet Too Big (type 2, RFC 4443) from `from` (16 bytes: the gateway's IPv6 address) to the source of
 * `orig` (a packet {@link checkTunnelPacket6} passed), carrying `mtu` and as much of `orig` as fits in 1280 bytes,
 * so the sender's path MTU discovery lowers its packet size. IPv6 routers never fragment: this is always the answer.
 */
export function packetTooBig(orig: Buffer, from: Buffer, mtu: number): Buffer {
  const quote = Math.min(orig.length, 1280 - 48);
  const p = Buffer.alloc(48 + quote);
  p[0] = 0x60;
  p.writeUInt16BE(8 + quote, 4);
  p[6] = ICMPV6;
  p[7] = 64; // hop limit
  from.copy(p, 8, 0, 16);
  orig.copy(p, 24, 8, 24);
  p[40] = 2; // Packet Too Big
  p[41] = 0;
  p.writeUInt32BE(mtu, 44);
  orig.copy(p, 48, 0, quote);
  p.writeUInt16BE(icmp6Checksum(p, 40, p.length), 42);
  return p;
}

/** Verifies an ICMPv6 message's checksum (tests). */
export function icmp6ChecksumOk(p: Buffer): boolean {
  return icmp6Checksum(p, 40, p.length) === 0;
}
