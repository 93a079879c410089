/**
 * IP header checks for the data path. Everything reads the packet in place: no allocation per packet.
 * Addresses are unsigned 32-bit numbers (IPv4) so lookups are Map<number, …> hits, not string building.
 */

/** Why a packet from a tunnel was dropped (metrics labels). */
export type DropReason = "malformed" | "spoofed-source" | "unsupported-version" | "no-route";

export function ipToInt(ip: string): number {
  const p = ip.split(".");
  if (p.length !== 4) throw new Error(`not an IPv4 address: ${ip}`);
  let n = 0;
  for (const x of p) {
    const v = Number(x);
    if (!/^\d{1,3}$/.test(x) || v > 255) throw new Error(`not an IPv4 address: ${ip}`);
    n = n * 256 + v;
  }
  return n >>> 0;
}

export function intToIp(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** Parses "a.b.c.d/len" into network number, prefix length and size. */
export function parseCidr(cidr: string): { network: number; prefix: number; size: number } {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(cidr);
  if (!m) throw new Error(`not an IPv4 CIDR: ${cidr}`);
  const prefix = Number(m[2]);
  if (prefix > 32) throw new Error(`prefix length above 32: ${cidr}`);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const addr = ipToInt(m[1]!);
  if ((addr & mask) >>> 0 !== addr) throw new Error(`${cidr} has host bits set`);
  return { network: addr, prefix, size: 2 ** (32 - prefix) };
}

/** IPv4 source address of a packet already checked by `checkTunnelPacket`. */
export function ipv4Src(p: Buffer): number {
  return p.readUInt32BE(12);
}

export function ipv4Dst(p: Buffer): number {
  return p.readUInt32BE(16);
}

/**
 * Checks a packet that arrived from a tunnel: IPv4, a sane header, a total length that matches the record, and the
 * tunnel's own leased address as source. Returns undefined when it may be forwarded.
 */
export function checkTunnelPacket(p: Buffer, leased: number): DropReason | undefined {
  if (p.length < 20) return "malformed";
  const v = p[0]! >> 4;
  if (v !== 4) return v === 6 ? "unsupported-version" : "malformed";
  // No IPv4 lease (an IPv6-only app): 0 must not match a source of 0.0.0.0, IPv4 is simply not this tunnel's.
  if (leased === 0) return "unsupported-version";
  const ihl = (p[0]! & 0x0f) * 4;
  if (ihl < 20 || ihl > p.length) return "malformed";
  if (p.readUInt16BE(2) !== p.length) return "malformed";
  if (p.readUInt32BE(12) !== leased) return "spoofed-source";
  return undefined;
}

/** Whether an IPv4 packet has the Don't Fragment flag set. */
export function dontFragment(p: Buffer): boolean {
  return (p[6]! & 0x40) !== 0;
}

/** The Internet checksum (RFC 1071) of `b[start, end)`. */
function checksum(b: Buffer, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i + 1 < end; i += 2) sum += b.readUInt16BE(i);
  if ((end - start) & 1) sum += b[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * ICMP "destination unreachable, fragmentation needed and DF set" (type 3 code 4, RFC 1191) from `from` to the
 * source of `orig` (a packet already checked by `checkTunnelPacket`), carrying the next-hop MTU and the original
 * header plus its first 8 bytes of data, so the sender's path MTU discovery lowers its packet size.
 */
export function fragmentationNeeded(orig: Buffer, from: number, mtu: number): Buffer {
  const ihl = (orig[0]! & 0x0f) * 4;
  const quote = orig.subarray(0, Math.min(orig.length, ihl + 8));
  const p = Buffer.alloc(28 + quote.length);
  p[0] = 0x45;
  p[1] = 0xc0; // internetwork control, as Linux sends ICMP errors
  p.writeUInt16BE(p.length, 2);
  p[8] = 64; // TTL
  p[9] = 1; // ICMP
  p.writeUInt32BE(from, 12);
  p.writeUInt32BE(ipv4Src(orig), 16);
  p.writeUInt16BE(checksum(p, 0, 20), 10);
  p[20] = 3;
  p[21] = 4;
  p.writeUInt16BE(mtu, 26);
  quote.copy(p, 28);
  p.writeUInt16BE(checksum(p, 20, p.length), 22);
  return p;
}
