/**
 * A minimal, strict DER reader for the few structures the verifier reads on its hot path: certificate
 * extensions (Intel SGX PCK, AMD VCEK, RA-TLS evidence) and CRLs.
 *
 * Why our own: the handshake path verifies a certificate chain per tunnel and a general ASN.1 schema library costs
 * more than the signature checks it serves (the whole verification budget is 1 ms); AMD's VCEKs also carry
 * non-positive serial numbers that strict schema parsers reject. This reader only walks TLVs over a Buffer,
 * without copying, and throws `malformed` on anything it cannot read. Node's own X509Certificate still does
 * signature checks and validity periods. Certificate *generation* (simulated TEE, RA-TLS) uses @peculiar/x509.
 */
import { AttestError } from "./errors.js";

/** One TLV: `buf.subarray(start, end)` is the whole element, `buf.subarray(valueStart, end)` its contents. */
export interface Der {
  readonly buf: Buffer;
  readonly tag: number;
  readonly start: number;
  readonly valueStart: number;
  readonly end: number;
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  ENUMERATED: 0x0a,
  UTF8_STRING: 0x0c,
  SEQUENCE: 0x30,
  SET: 0x31,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
} as const;

function bad(msg: string): never {
  throw new AttestError("malformed", `DER: ${msg}`);
}

/** Reads the element starting at `offset` (which must end at or before `limit`). */
export function derAt(buf: Buffer, offset = 0, limit = buf.length): Der {
  if (offset + 2 > limit) bad("truncated header");
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) bad("multi-byte tags are not supported");
  let len = buf[offset + 1]!;
  let p = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) bad("indefinite length");
    if (n > 4) bad("length too large");
    if (p + n > limit) bad("truncated length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[p + i]!;
    p += n;
  }
  if (p + len > limit) bad(`element of ${len} bytes overruns its container`);
  return { buf, tag, start: offset, valueStart: p, end: p + len };
}

/** Parses a whole buffer as exactly one element. */
export function derParse(buf: Buffer): Der {
  const d = derAt(buf, 0, buf.length);
  if (d.end !== buf.length) bad("trailing bytes after element");
  return d;
}

/** The children of a constructed element. */
export function derChildren(d: Der): Der[] {
  const out: Der[] = [];
  let p = d.valueStart;
  while (p < d.end) {
    const c = derAt(d.buf, p, d.end);
    out.push(c);
    p = c.end;
  }
  return out;
}

/** Child `i` of a constructed element, checking its tag when given. */
export function derChild(d: Der, i: number, tag?: number): Der {
  const c = derChildren(d)[i];
  if (!c) bad(`missing element ${i}`);
  if (tag !== undefined && c.tag !== tag)
    bad(`element ${i} has tag 0x${c.tag.toString(16)}, expected 0x${tag.toString(16)}`);
  return c;
}

export function derValue(d: Der): Buffer {
  return d.buf.subarray(d.valueStart, d.end);
}

export function derBytes(d: Der): Buffer {
  return d.buf.subarray(d.start, d.end);
}

export function expectTag(d: Der, tag: number, what: string): Der {
  if (d.tag !== tag) bad(`${what}: tag 0x${d.tag.toString(16)}, expected 0x${tag.toString(16)}`);
  return d;
}

/** An INTEGER as a JS number (non-negative, at most 2^53). Non-minimal encodings are tolerated. */
export function derInt(d: Der): number {
  expectTag(d, TAG.INTEGER, "integer");
  const v = derValue(d);
  if (v.length === 0) bad("empty integer");
  if (v[0]! & 0x80) bad("negative integer where a count was expected");
  let n = 0;
  for (const b of v) n = n * 256 + b;
  if (!Number.isSafeInteger(n)) bad("integer too large");
  return n;
}

/** An INTEGER's magnitude bytes, without sign-padding zero bytes (for comparing serial numbers). */
export function derIntBytes(d: Der): Buffer {
  expectTag(d, TAG.INTEGER, "integer");
  let v = derValue(d);
  while (v.length > 1 && v[0] === 0) v = v.subarray(1);
  return v;
}

/** An OBJECT IDENTIFIER in dotted form. */
export function derOid(d: Der): string {
  expectTag(d, TAG.OID, "object identifier");
  const v = derValue(d);
  if (v.length === 0) bad("empty OID");
  const parts: number[] = [];
  let n = 0;
  for (let i = 0; i < v.length; i++) {
    const b = v[i]!;
    n = n * 128 + (b & 0x7f);
    // Beyond 2^53 a JS number loses digits: two different OIDs would print the same (or in exponent notation).
    if (n > Number.MAX_SAFE_INTEGER) bad("OID arc too large");
    if (!(b & 0x80)) {
      parts.push(n);
      n = 0;
    } else if (i === v.length - 1) bad("truncated OID");
  }
  // The first arc packs two numbers. Gramine's mis-encoded RA-TLS OID starts with a byte below 40, which this
  // turns into "0.x": the bytes are what they are and callers compare dotted strings.
  const first = parts[0]!;
  const head = first < 40 ? [0, first] : first < 80 ? [1, first - 40] : [2, first - 80];
  return [...head, ...parts.slice(1)].join(".");
}

/** UTCTime or GeneralizedTime to a Date. */
export function derTime(d: Der): Date {
  const s = derValue(d).toString("latin1");
  let m: RegExpMatchArray | null;
  if (d.tag === TAG.UTC_TIME && (m = s.match(/^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/))) {
    const yy = Number(m[1]);
    return new Date(Date.UTC(yy < 50 ? 2000 + yy : 1900 + yy, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
  }
  if (d.tag === TAG.GENERALIZED_TIME && (m = s.match(/^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/))) {
    return new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!));
  }
  return bad(`unsupported time ${JSON.stringify(s)}`);
}
