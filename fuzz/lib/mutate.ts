/**
 * Byte-level mutation of seed inputs, as a fast-check arbitrary. A "field" is a length or type field the seed's
 * builder knows about: setting it to an interesting value (0, off by one, the buffer's size, the maximum) is what
 * reaches the bounds checks, where random bit flips mostly hit payload bytes.
 */
import fc from "fast-check";

export interface Field {
  offset: number;
  size: 1 | 2 | 4;
  le: boolean;
}

export interface Seed {
  bytes: Buffer;
  fields?: Field[];
}

type Op =
  | { k: "flip"; at: number; v: number }
  | { k: "byte"; at: number; v: number }
  | { k: "truncate"; at: number }
  | { k: "append"; zero: boolean; data: Uint8Array }
  | { k: "insert"; at: number; data: Uint8Array }
  | { k: "delete"; at: number; n: number }
  | { k: "field"; which: number; choice: number; v: number }
  | { k: "copy"; from: number; to: number; n: number };

const pos = fc.nat({ max: 0x7fffffff });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({ k: fc.constant("flip" as const), at: pos, v: fc.integer({ min: 1, max: 255 }) }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ k: fc.constant("byte" as const), at: pos, v: fc.integer({ min: 0, max: 255 }) }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant("truncate" as const), at: pos }) },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant("append" as const),
      zero: fc.boolean(),
      data: fc.uint8Array({ minLength: 1, maxLength: 64 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant("insert" as const),
      at: pos,
      data: fc.uint8Array({ minLength: 1, maxLength: 16 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ k: fc.constant("delete" as const), at: pos, n: fc.integer({ min: 1, max: 64 }) }),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      k: fc.constant("field" as const),
      which: pos,
      choice: fc.nat({ max: 9 }),
      v: fc.nat({ max: 0xffffffff }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      k: fc.constant("copy" as const),
      from: pos,
      to: pos,
      n: fc.integer({ min: 1, max: 32 }),
    }),
  },
);

function readField(b: Buffer, f: Field): number {
  if (f.size === 1) return b[f.offset]!;
  if (f.size === 2) return f.le ? b.readUInt16LE(f.offset) : b.readUInt16BE(f.offset);
  return f.le ? b.readUInt32LE(f.offset) : b.readUInt32BE(f.offset);
}

function writeField(b: Buffer, f: Field, v: number): void {
  const max = 2 ** (8 * f.size) - 1;
  const x = ((v % (max + 1)) + (max + 1)) % (max + 1);
  if (f.size === 1) b[f.offset] = x;
  else if (f.size === 2 && f.le) b.writeUInt16LE(x, f.offset);
  else if (f.size === 2) b.writeUInt16BE(x, f.offset);
  else if (f.le) b.writeUInt32LE(x, f.offset);
  else b.writeUInt32BE(x, f.offset);
}

/** Applies the ops to a copy of the seed. */
export function applyOps(seed: Seed, ops: readonly Op[]): Buffer {
  let b = Buffer.from(seed.bytes);
  for (const op of ops) {
    const n = b.length;
    switch (op.k) {
      case "flip":
        if (n) b[op.at % n]! ^= op.v;
        break;
      case "byte":
        if (n) b[op.at % n] = op.v;
        break;
      case "truncate":
        b = b.subarray(0, op.at % (n + 1));
        break;
      case "append":
        b = Buffer.concat([b, op.zero ? Buffer.alloc(op.data.length) : Buffer.from(op.data)]);
        break;
      case "insert": {
        const at = op.at % (n + 1);
        b = Buffer.concat([b.subarray(0, at), Buffer.from(op.data), b.subarray(at)]);
        break;
      }
      case "delete": {
        const at = op.at % (n + 1);
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + op.n)]);
        break;
      }
      case "copy":
        if (n) b.copy(b, op.to % n, op.from % n, (op.from % n) + op.n);
        break;
      case "field": {
        const fields = (seed.fields ?? []).filter((f) => f.offset + f.size <= b.length);
        if (!fields.length) break;
        const f = fields[op.which % fields.length]!;
        const cur = readField(b, f);
        const max = 2 ** (8 * f.size) - 1;
        const choices = [0, 1, cur + 1, cur - 1, max, b.length, b.length - f.offset, cur * 2, op.v, cur + 2];
        writeField(b, f, choices[op.choice]!);
        break;
      }
    }
  }
  return b;
}

/**
 * Inputs made from `seeds`: mostly one or two mutations (field mutations weighted up), sometimes the seed as it is,
 * sometimes up to eight stacked mutations.
 */
export function mutated(seeds: readonly Seed[]): fc.Arbitrary<Buffer> {
  if (seeds.length === 0) throw new Error("mutated(): no seeds");
  const ops = fc.oneof(
    { weight: 1, arbitrary: fc.constant([] as Op[]) },
    { weight: 8, arbitrary: fc.array(opArb, { minLength: 1, maxLength: 2 }) },
    { weight: 2, arbitrary: fc.array(opArb, { minLength: 3, maxLength: 8 }) },
  );
  return fc.tuple(fc.nat({ max: seeds.length - 1 }), ops).map(([i, o]) => applyOps(seeds[i]!, o));
}

/** The length fields of every TLV in a DER buffer (walking constructed elements), for `mutated`. */
export function derFields(buf: Buffer, start = 0, end = buf.length, out: Field[] = [], depth = 0): Field[] {
  let p = start;
  while (p + 2 <= end && depth < 12) {
    const tag = buf[p]!;
    let len = buf[p + 1]!;
    let hdr = 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n === 0 || n > 2 || p + 2 + n > end) return out;
      out.push({ offset: p + 2, size: n as 1 | 2, le: false });
      len = n === 1 ? buf[p + 2]! : buf.readUInt16BE(p + 2);
      hdr += n;
    } else out.push({ offset: p + 1, size: 1, le: false });
    out.push({ offset: p, size: 1, le: false }); // the tag
    const vEnd = p + hdr + len;
    if (vEnd > end) return out;
    if (tag & 0x20) derFields(buf, p + hdr, vEnd, out, depth + 1);
    else if (tag === 0x04 && len > 2) derFields(buf, p + hdr, vEnd, out, depth + 1); // DER inside OCTET STRINGs
    p = vEnd;
  }
  return out;
}
