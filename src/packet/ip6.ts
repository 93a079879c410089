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

/** The IPv6 address at `at` as a string key (16 bytes as one-byte characters): exact, but allocates. */
export function ip6Key(p: Uint8Array, at: number): string {
  return Buffer.from(p.buffer, p.byteOffset + at, 16).toString("latin1");
}

/** Whether the 16 bytes at `p[at]` equal `addr` (a byte loop: far cheaper than Buffer#compare with ranges). */
export function same6(p: Uint8Array, at: number, addr: Uint8Array): boolean {
  for (let i = 0; i < 16; i++) if (p[at + i] !== addr[i]) return false;
  return true;
}

/** A 32-bit hash of the 16 address bytes at `at`, from plain byte reads (no allocation). */
export function hash6(p: Uint8Array, at: number): number {
  let h = 0;
  for (let i = at; i < at + 16; i += 4) {
    const w = (p[i]! << 24) | (p[i + 1]! << 16) | (p[i + 2]! << 8) | p[i + 3]!;
    h = Math.imul(h ^ w, 0x9e3779b1) ^ (h >>> 15);
  }
  return h >>> 0;
}

/**
 * A map from IPv6 addresses to values for the data path: looked up with the packet and the address's offset, with
 * no allocation per lookup (a number key, then the 16 bytes compared). Two addresses whose hashes meet go to a
 * string-keyed spill map, searched only when it is not empty.
 */
export class Ip6Map<T> {
  readonly #byHash = new Map<number, { addr: Uint8Array; value: T }>();
  readonly #spill = new Map<string, T>();

  get size(): number {
    return this.#byHash.size + this.#spill.size;
  }

  /** The value of the address at `p[at]`. */
  get(p: Uint8Array, at: number): T | undefined {
    const e = this.#byHash.get(hash6(p, at));
    if (e !== undefined && same6(p, at, e.addr)) return e.value;
    return this.#spill.size === 0 ? undefined : this.#spill.get(ip6Key(p, at));
  }

  set(addr: Uint8Array, value: T): void {
    if (this.#spill.size !== 0) this.#spill.delete(ip6Key(addr, 0));
    const h = hash6(addr, 0);
    const e = this.#byHash.get(h);
    if (e === undefined || same6(addr, 0, e.addr))
      this.#byHash.set(h, { addr: Uint8Array.from(addr), value });
    else this.#spill.set(ip6Key(addr, 0), value);
  }

  delete(addr: Uint8Array): void {
    const h = hash6(addr, 0);
    const e = this.#byHash.get(h);
    if (e !== undefined && same6(addr, 0, e.addr)) this.#byHash.delete(h);
    if (this.#spill.size !== 0) this.#spill.delete(ip6Key(addr, 0));
  }
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
  if (!same6(p, 8, leased)) {
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
