/**
 * IPv6 addresses as text and as 16 bytes: a strict parser (no zone ids, no embedded dotted IPv4), the RFC 5952
 * canonical form, and prefixes. For configuration and the wire protocol, not the per-packet path (ip6.ts).
 */

/** Parses an IPv6 address in hexadecimal notation into 16 bytes, or undefined if it is not one. */
export function parseIp6(text: string): Uint8Array | undefined {
  if (typeof text !== "string" || text.length < 2 || text.length > 39) return undefined;
  if (!/^[0-9a-fA-F:]+$/.test(text)) return undefined; // no zone id ("%eth0"), no dotted IPv4 tail
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const groups = (s: string): number[] | undefined => {
    if (s === "") return [];
    const out: number[] = [];
    for (const g of s.split(":")) {
      if (g.length < 1 || g.length > 4) return undefined;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (!head || !tail) return undefined;
  const n = head.length + tail.length;
  if (halves.length === 2 ? n > 7 : n !== 8) return undefined;
  const all = [...head, ...new Array<number>(8 - n).fill(0), ...tail];
  const b = new Uint8Array(16);
  all.forEach((g, i) => {
    b[2 * i] = g >> 8;
    b[2 * i + 1] = g & 0xff;
  });
  return b;
}

/** The RFC 5952 text of 16 address bytes: lowercase, no leading zeros, the longest zero run (of 2+) as "::". */
export function formatIp6(b: Uint8Array, at = 0): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[at + 2 * i]! << 8) | b[at + 2 * i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(":");
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/** The canonical text of an IPv6 address, or undefined if `text` is not one. */
export function canonicalIp6(text: string): string | undefined {
  const b = parseIp6(text);
  return b ? formatIp6(b) : undefined;
}

/**
 * Whether 16 bytes can be a tunnel's own (unicast) address: not unspecified, loopback, multicast, link-local or
 * IPv4-mapped (::ffff:0:0/96), where an app address makes no sense.
 */
export function isUnicast6(b: Uint8Array): boolean {
  if (b[0] === 0xff) return false; // multicast
  if (b[0] === 0xfe && (b[1]! & 0xc0) === 0x80) return false; // fe80::/10
  let zeros = 0;
  while (zeros < 16 && b[zeros] === 0) zeros++;
  if (zeros === 16) return false; // ::
  if (zeros === 15 && b[15] === 1) return false; // ::1
  if (zeros === 10 && b[10] === 0xff && b[11] === 0xff) return false; // ::ffff:a.b.c.d
  return true;
}

/** A strictly parsed unicast IPv6 address in canonical text, or undefined. */
export function unicastIp6(text: string): string | undefined {
  const b = parseIp6(text);
  return b && isUnicast6(b) ? formatIp6(b) : undefined;
}

/** An IPv6 prefix: network bytes (host bits zero) and length. */
export interface Prefix6 {
  network: Uint8Array;
  prefix: number;
}

/** Parses "fd64:1::/64"; throws with the reason (not a prefix, host bits set). */
export function parseCidr6(cidr: string): Prefix6 {
  const m = /^([0-9a-fA-F:]+)\/(\d{1,3})$/.exec(cidr);
  const network = m ? parseIp6(m[1]!) : undefined;
  if (!m || !network) throw new Error(`not an IPv6 prefix: ${cidr}`);
  const prefix = Number(m[2]);
  if (prefix > 128) throw new Error(`prefix length above 128: ${cidr}`);
  for (let bit = prefix; bit < 128; bit++)
    if (network[bit >> 3]! & (0x80 >> (bit & 7))) throw new Error(`${cidr} has host bits set`);
  return { network, prefix };
}

/** Whether `addr` lies inside `p`. */
export function inPrefix6(p: Prefix6, addr: Uint8Array): boolean {
  for (let bit = 0; bit < p.prefix; bit += 8) {
    const left = p.prefix - bit;
    const mask = left >= 8 ? 0xff : (0xff << (8 - left)) & 0xff;
    if ((addr[bit >> 3]! & mask) !== p.network[bit >> 3]) return false;
  }
  return true;
}

/** Whether two prefixes share any address (one contains the other). */
export function overlaps6(a: Prefix6, b: Prefix6): boolean {
  return a.prefix <= b.prefix ? inPrefix6(a, b.network) : inPrefix6(b, a.network);
}

/** The address `offset` places after the prefix's network address (offset below 2^53). */
export function addOffset6(p: Prefix6, offset: bigint): Uint8Array {
  const b = Uint8Array.from(p.network);
  let carry = offset;
  for (let i = 15; i >= 0 && carry > 0n; i--) {
    const v = BigInt(b[i]!) + (carry & 0xffn);
    b[i] = Number(v & 0xffn);
    carry = (carry >> 8n) + (v >> 8n);
  }
  return b;
}

/** The offset of `addr` from the prefix's network address (for an address inside the prefix). */
export function offsetIn6(p: Prefix6, addr: Uint8Array): bigint {
  let v = 0n;
  for (let i = 0; i < 16; i++) v = (v << 8n) | BigInt(addr[i]! ^ p.network[i]!);
  return v;
}
