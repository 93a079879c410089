/**
 * The DNS wire format (RFC 1035 and the RFCs of each record type) for the shielded resolver (dns.ts): a query, and
 * the answer section of a response with each record's data decoded into the shape Node's `dns.resolve*` gives it.
 * Everything read is bounds-checked: a malformed message is a DnsFormatError, never a crash.
 */

/** Record types by name (the ones Node's resolver API knows, and ANY). */
export const RR = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  NAPTR: 35,
  ANY: 255,
  CAA: 257,
} as const;
export type RecordType = keyof typeof RR;

export const TYPE_A = RR.A;
export const TYPE_CNAME = RR.CNAME;
const CLASS_IN = 1;

/** The UDP payload size advertised with EDNS(0): what fits in one packet without fragmentation (DNS Flag Day 2020). */
export const EDNS_UDP_SIZE = 1232;

/**
 * Encodes a standard query (RD set) for `name`. With `ednsUdpSize`, an EDNS(0) OPT record (RFC 6891) says answers
 * up to that many bytes may come over UDP (without it, servers truncate answers at 512 bytes: long TXT records).
 */
export function encodeQuery(id: number, name: string, qtype: number = RR.A, ednsUdpSize?: number): Buffer {
  const labels = name.replace(/\.$/, "").split(".");
  if (name.length > 253 || labels.some((l) => l.length === 0 || Buffer.byteLength(l) > 63))
    throw new RangeError(`not a valid DNS name: ${JSON.stringify(name)}`);
  const qname = Buffer.concat([
    ...labels.map((l) => {
      const b = Buffer.from(l, "utf8");
      return Buffer.concat([Buffer.from([b.length]), b]);
    }),
    Buffer.from([0]),
  ]);
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id & 0xffff, 0);
  header.writeUInt16BE(0x0100, 2); // RD
  header.writeUInt16BE(1, 4); // QDCOUNT
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(qtype, 0);
  tail.writeUInt16BE(CLASS_IN, 2);
  if (ednsUdpSize === undefined) return Buffer.concat([header, qname, tail]);
  header.writeUInt16BE(1, 10); // ARCOUNT
  const opt = Buffer.alloc(11); // root name, TYPE OPT (41), CLASS = UDP size, TTL 0 (rcode, version 0, flags), RDLEN 0
  opt.writeUInt16BE(41, 1);
  opt.writeUInt16BE(ednsUdpSize, 3);
  return Buffer.concat([header, qname, tail, opt]);
}

export interface DnsRecord {
  name: string;
  type: number;
  class: number;
  ttl: number;
  /** A, AAAA: the address; CNAME, NS, PTR: the target name; others: undefined (see `value`). */
  data?: string;
  /**
   * The record data as Node's resolver gives it: MX {priority, exchange}, TXT string[], SRV {priority, weight, port,
   * name}, SOA {nsname, hostmaster, serial, refresh, retry, expire, minttl}, NAPTR {flags, service, regexp,
   * replacement, order, preference}, CAA {critical, <tag>: value}; the string of `data` for the others. Undefined
   * for a type not listed in RR (kept only as `raw`).
   */
  value?: unknown;
  raw: Buffer;
}

export interface DnsMessage {
  id: number;
  flags: number;
  /** Response code: 0 no error, 1 FORMERR, 2 SERVFAIL, 3 NXDOMAIN, 4 NOTIMP, 5 REFUSED. */
  rcode: number;
  response: boolean;
  truncated: boolean;
  questions: { name: string; type: number; class: number }[];
  answers: DnsRecord[];
}

/** Thrown for a malformed DNS message. */
export class DnsFormatError extends Error {
  override readonly name = "DnsFormatError";
}

/** Reads a (possibly compressed) name at `off`; returns it and the offset after it. */
function readName(buf: Buffer, off: number): [string, number] {
  const labels: string[] = [];
  let end = -1;
  let jumps = 0;
  let total = 0;
  for (;;) {
    if (off >= buf.length) throw new DnsFormatError("name runs past the message");
    const len = buf[off]!;
    if (len === 0) {
      off += 1;
      break;
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (off + 1 >= buf.length) throw new DnsFormatError("truncated compression pointer");
      if (++jumps > 32) throw new DnsFormatError("compression loop");
      if (end < 0) end = off + 2;
      off = ((len & 0x3f) << 8) | buf[off + 1]!;
      continue;
    }
    if (kind !== 0) throw new DnsFormatError(`unsupported label type 0x${kind.toString(16)}`);
    if (off + 1 + len > buf.length) throw new DnsFormatError("label runs past the message");
    labels.push(buf.toString("utf8", off + 1, off + 1 + len));
    total += len + 1;
    if (total > 255) throw new DnsFormatError("name longer than 255 bytes");
    off += 1 + len;
  }
  return [labels.join("."), end >= 0 ? end : off];
}

/** An IPv6 address in RFC 5952 text (lowercase, the longest run of two or more zero groups as "::"). */
export function ipv6Text(b: Buffer): string {
  const g = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
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
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(":");
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLen).join(":")}`;
}

/** Decodes one record's data (rdata at [start, end) of the message) into Node's shape for its type. */
function decodeRdata(
  buf: Buffer,
  type: number,
  start: number,
  end: number,
): { data?: string; value?: unknown } {
  let off = start;
  const need = (n: number) => {
    if (off + n > end) throw new DnsFormatError(`record data of type ${type} is too short`);
  };
  const u8 = () => (need(1), buf[off++]!);
  const u16 = () => (need(2), (off += 2), buf.readUInt16BE(off - 2));
  const u32 = () => (need(4), (off += 4), buf.readUInt32BE(off - 4));
  const name = () => {
    const [n, next] = readName(buf, off);
    if (next > end) throw new DnsFormatError("name runs past its record");
    off = next;
    return n;
  };
  const charString = () => {
    const len = u8();
    need(len);
    off += len;
    return buf.toString("utf8", off - len, off);
  };
  switch (type) {
    case RR.A: {
      if (end - start !== 4) throw new DnsFormatError(`A record of ${end - start} bytes`);
      const data = `${buf[start]}.${buf[start + 1]}.${buf[start + 2]}.${buf[start + 3]}`;
      return { data, value: data };
    }
    case RR.AAAA: {
      if (end - start !== 16) throw new DnsFormatError(`AAAA record of ${end - start} bytes`);
      const data = ipv6Text(buf.subarray(start, end));
      return { data, value: data };
    }
    case RR.CNAME:
    case RR.NS:
    case RR.PTR: {
      const data = name();
      return { data, value: data };
    }
    case RR.MX: {
      const priority = u16();
      return { value: { priority, exchange: name() } };
    }
    case RR.TXT: {
      const parts: string[] = [];
      while (off < end) parts.push(charString());
      return { value: parts };
    }
    case RR.SRV: {
      const priority = u16();
      const weight = u16();
      const port = u16();
      return { value: { priority, weight, port, name: name() } };
    }
    case RR.SOA: {
      const nsname = name();
      const hostmaster = name();
      return {
        value: {
          nsname,
          hostmaster,
          serial: u32(),
          refresh: u32(),
          retry: u32(),
          expire: u32(),
          minttl: u32(),
        },
      };
    }
    case RR.NAPTR: {
      const order = u16();
      const preference = u16();
      const flags = charString();
      const service = charString();
      const regexp = charString();
      return { value: { flags, service, regexp, replacement: name(), order, preference } };
    }
    case RR.CAA: {
      const critical = u8();
      const tagLen = u8();
      need(tagLen);
      const tag = buf.toString("latin1", off, off + tagLen);
      off += tagLen;
      return { value: { critical, [tag]: buf.toString("utf8", off, end) } };
    }
    default:
      return {};
  }
}

/** Decodes a DNS message (header, questions, answer section). */
export function decodeMessage(buf: Buffer): DnsMessage {
  if (buf.length < 12) throw new DnsFormatError("shorter than a DNS header");
  const id = buf.readUInt16BE(0);
  const flags = buf.readUInt16BE(2);
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  let off = 12;
  const questions: DnsMessage["questions"] = [];
  for (let i = 0; i < qd; i++) {
    const [name, next] = readName(buf, off);
    if (next + 4 > buf.length) throw new DnsFormatError("truncated question");
    questions.push({ name, type: buf.readUInt16BE(next), class: buf.readUInt16BE(next + 2) });
    off = next + 4;
  }
  const answers: DnsRecord[] = [];
  for (let i = 0; i < an; i++) {
    const [name, next] = readName(buf, off);
    if (next + 10 > buf.length) throw new DnsFormatError("truncated resource record");
    const type = buf.readUInt16BE(next);
    const klass = buf.readUInt16BE(next + 2);
    const ttl = buf.readUInt32BE(next + 4);
    const rdlen = buf.readUInt16BE(next + 8);
    const rdata = next + 10;
    if (rdata + rdlen > buf.length) throw new DnsFormatError("record data runs past the message");
    const raw = buf.subarray(rdata, rdata + rdlen);
    // Only class IN data is interpreted (the A of another class is not an address).
    const { data, value } = klass === CLASS_IN ? decodeRdata(buf, type, rdata, rdata + rdlen) : {};
    answers.push({ name, type, class: klass, ttl, data, value, raw });
    off = rdata + rdlen;
  }
  return {
    id,
    flags,
    rcode: flags & 0x0f,
    response: (flags & 0x8000) !== 0,
    truncated: (flags & 0x0200) !== 0,
    questions,
    answers,
  };
}

/** The names `name` leads to through the CNAMEs in an answer (itself included), lowercased. */
export function aliasesOf(msg: DnsMessage, name: string): Set<string> {
  const names = new Set([name.toLowerCase().replace(/\.$/, "")]);
  for (let grew = true; grew;) {
    grew = false;
    for (const r of msg.answers)
      if (
        r.type === RR.CNAME &&
        r.data &&
        names.has(r.name.toLowerCase()) &&
        !names.has(r.data.toLowerCase())
      ) {
        names.add(r.data.toLowerCase());
        grew = true;
      }
  }
  return names;
}

/**
 * The records of `type` for `name` in an answer, following CNAMEs inside it (except for CNAME itself); ANY: every
 * record whose owner is `name`.
 */
export function recordsFor(msg: DnsMessage, name: string, type: number): DnsRecord[] {
  if (type === RR.ANY) {
    const n = name.toLowerCase().replace(/\.$/, "");
    return msg.answers.filter((r) => r.class === CLASS_IN && r.name.toLowerCase() === n);
  }
  const names = type === RR.CNAME ? new Set([name.toLowerCase().replace(/\.$/, "")]) : aliasesOf(msg, name);
  return msg.answers.filter(
    (r) =>
      r.type === type && r.class === CLASS_IN && r.value !== undefined && names.has(r.name.toLowerCase()),
  );
}

/** The A records for `name` in an answer, following CNAMEs inside it. */
export function addressesFor(msg: DnsMessage, name: string): { address: string; ttl: number }[] {
  return recordsFor(msg, name, RR.A).map((r) => ({ address: r.data!, ttl: r.ttl }));
}
