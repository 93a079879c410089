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
  const ihl = (p[0]! & 0x0f) * 4;
  if (ihl < 20 || ihl > p.length) return "malformed";
  if (p.readUInt16BE(2) !== p.length) return "malformed";
  if (p.readUInt32BE(12) !== leased) return "spoofed-source";
  return undefined;
}
