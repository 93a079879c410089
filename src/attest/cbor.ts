/**
 * A minimal, strict CBOR (RFC 8949) codec for the one structure that needs it: TCG DICE "tagged evidence" in
 * RA-TLS certificates (a tag around an array of byte strings, and a small map of claims).
 *
 * Why our own: the subset is tiny (unsigned integers, byte and text strings, arrays, maps, tags) and the input is
 * attacker-controlled, so we want exactly these types, definite lengths only, bounded nesting, no trailing bytes and
 * every failure as a `malformed` AttestError. A general library (cbor-x) decodes far more than we accept, and would
 * be a new dependency with an optional native add-on on the handshake path.
 */
import { AttestError } from "./errors.js";

/** A tagged item: `tag(value)`. */
export class CborTag {
  constructor(
    readonly tag: number,
    readonly value: CborValue,
  ) {}
}

/** Map keys are restricted to unsigned integers and text, which is all the claims formats use. */
export type CborKey = number | string;
export type CborValue = number | string | Buffer | CborValue[] | Map<CborKey, CborValue> | CborTag;

const MAX_DEPTH = 16;

function bad(msg: string): never {
  throw new AttestError("malformed", `CBOR: ${msg}`);
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Decodes exactly one item spanning the whole buffer. */
export function cborDecode(buf: Buffer): CborValue {
  let pos = 0;

  const head = (): { major: number; n: number } => {
    if (pos >= buf.length) bad("truncated");
    const b = buf[pos++]!;
    const major = b >> 5;
    const ai = b & 0x1f;
    if (ai < 24) return { major, n: ai };
    if (ai > 27) bad(ai === 31 ? "indefinite lengths are not allowed" : `reserved additional info ${ai}`);
    const size = 1 << (ai - 24);
    if (pos + size > buf.length) bad("truncated argument");
    let n = 0;
    for (let i = 0; i < size; i++) n = n * 256 + buf[pos + i]!;
    if (!Number.isSafeInteger(n)) bad("integer too large");
    pos += size;
    return { major, n };
  };

  const bytes = (n: number): Buffer => {
    if (n > buf.length - pos) bad(`string of ${n} bytes overruns the input`);
    const out = buf.subarray(pos, pos + n);
    pos += n;
    return out;
  };

  const item = (depth: number): CborValue => {
    if (depth > MAX_DEPTH) bad("nested too deeply");
    const { major, n } = head();
    switch (major) {
      case 0:
        return n;
      case 2:
        return bytes(n);
      case 3:
        try {
          return utf8.decode(bytes(n));
        } catch (e) {
          if (e instanceof AttestError) throw e;
          return bad("invalid UTF-8 in text string");
        }
      case 4: {
        // Every item takes at least one byte: a count beyond the input is a lie, not a reason to loop.
        if (n > buf.length - pos) bad(`array of ${n} items overruns the input`);
        const out: CborValue[] = [];
        for (let i = 0; i < n; i++) out.push(item(depth + 1));
        return out;
      }
      case 5: {
        if (n * 2 > buf.length - pos) bad(`map of ${n} entries overruns the input`);
        const out = new Map<CborKey, CborValue>();
        for (let i = 0; i < n; i++) {
          const k = item(depth + 1);
          if (typeof k !== "number" && typeof k !== "string")
            bad("map keys must be unsigned integers or text");
          if (out.has(k)) bad(`duplicate map key ${JSON.stringify(k)}`);
          out.set(k, item(depth + 1));
        }
        return out;
      }
      case 6:
        return new CborTag(n, item(depth + 1));
      default:
        return bad(`unsupported major type ${major}`);
    }
  };

  const v = item(0);
  if (pos !== buf.length) bad(`${buf.length - pos} trailing bytes`);
  return v;
}

function encodeHead(major: number, n: number): Buffer {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`CBOR: cannot encode ${n}`);
  const m = major << 5;
  if (n < 24) return Buffer.from([m | n]);
  if (n < 0x100) return Buffer.from([m | 24, n]);
  if (n < 0x10000) {
    const b = Buffer.alloc(3);
    b[0] = m | 25;
    b.writeUInt16BE(n, 1);
    return b;
  }
  if (n < 0x1_0000_0000) {
    const b = Buffer.alloc(5);
    b[0] = m | 26;
    b.writeUInt32BE(n, 1);
    return b;
  }
  const b = Buffer.alloc(9);
  b[0] = m | 27;
  b.writeBigUInt64BE(BigInt(n), 1);
  return b;
}

/** Encodes with definite lengths and the shortest heads (maps in insertion order). */
export function cborEncode(v: CborValue): Buffer {
  if (typeof v === "number") return encodeHead(0, v);
  if (typeof v === "string") {
    const b = Buffer.from(v, "utf8");
    return Buffer.concat([encodeHead(3, b.length), b]);
  }
  if (Buffer.isBuffer(v)) return Buffer.concat([encodeHead(2, v.length), v]);
  if (Array.isArray(v)) return Buffer.concat([encodeHead(4, v.length), ...v.map(cborEncode)]);
  if (v instanceof Map) {
    const parts = [encodeHead(5, v.size)];
    for (const [k, x] of v) parts.push(cborEncode(k), cborEncode(x));
    return Buffer.concat(parts);
  }
  return Buffer.concat([encodeHead(6, v.tag), cborEncode(v.value)]);
}
