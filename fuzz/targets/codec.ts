/**
 * The two binary codecs under the attestation parsers: the strict CBOR decoder (DICE evidence in RA-TLS
 * certificates) and the DER reader (certificate extensions, CRLs, PCK and VCEK extensions).
 * Inputs: random CBOR and DER trees (every type the decoders accept, and heads/lengths of every size), encoded and
 * then mutated, plus real DER from the vectors.
 */
import fc from "fast-check";
import { isDeepStrictEqual } from "node:util";
import { CborTag, cborDecode, cborEncode, type CborValue } from "../../src/attest/cbor.js";
import {
  derAt,
  derChildren,
  derInt,
  derIntBytes,
  derOid,
  derParse,
  derTime,
  derValue,
  TAG,
  type Der,
} from "../../src/attest/der.js";
import { AttestError } from "../../src/attest/errors.js";
import { property, type FuzzTarget } from "../lib/engine.js";
import { derFields, mutated, type Seed } from "../lib/mutate.js";
import { tlv } from "../lib/der-build.js";
import { vectors } from "../lib/seeds.js";

// ---- CBOR ----

const cborValue: fc.Arbitrary<CborValue> = fc.letrec<{ v: CborValue }>((tie) => ({
  v: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.oneof(fc.nat(30), fc.nat(0xffff), fc.nat(0xffffffff), fc.maxSafeNat()),
    fc.string({ maxLength: 20, unit: "grapheme" }),
    fc.uint8Array({ maxLength: 64 }).map((u) => Buffer.from(u)),
    fc.array(tie("v"), { maxLength: 5 }),
    fc
      .uniqueArray(fc.tuple(fc.oneof(fc.nat(100), fc.string({ maxLength: 8 })), tie("v")), {
        maxLength: 4,
        selector: ([k]) => k,
      })
      .map((es) => new Map(es)),
    fc
      .tuple(fc.oneof(fc.nat(30), fc.constantFrom(60000, 0x534e5052), fc.maxSafeNat()), tie("v"))
      .map(([t, v]) => new CborTag(t, v)),
  ),
})).v;

function cborDepth(v: CborValue): number {
  if (Array.isArray(v)) return 1 + Math.max(0, ...v.map(cborDepth));
  if (v instanceof Map) return 1 + Math.max(0, ...[...v.values()].map(cborDepth));
  if (v instanceof CborTag) return 1 + cborDepth(v.value);
  return 0;
}

/** Seeds: the DICE evidence layouts RA-TLS uses, so mutations start from what the decoder really sees. */
const diceSeeds = (): Seed[] => {
  const claims = cborEncode(
    new Map([
      ["pubkey-hash", cborEncode([1, Buffer.alloc(32, 7)])],
      ["nonce", Buffer.alloc(8)],
    ]),
  );
  return [
    cborEncode(new CborTag(60000, [Buffer.alloc(600, 3), claims])),
    cborEncode(new CborTag(0x534e5052, [Buffer.alloc(1184, 2), claims])),
    cborEncode(new CborTag(0x534e5052, [Buffer.alloc(300, 0x30), Buffer.alloc(200, 0x30)])),
    claims,
  ].map((bytes) => ({ bytes }));
};

/** The value an unmutated input was encoded from: decoding it must give that value back. */
const origin = new WeakMap<Buffer, CborValue>();

function cborArbitrary(): fc.Arbitrary<Buffer> {
  const encoded = cborValue.map((v) => {
    const b = cborEncode(v);
    origin.set(b, v);
    return b;
  });
  return fc.oneof(
    { weight: 2, arbitrary: encoded },
    { weight: 3, arbitrary: encoded.chain((b) => mutated([{ bytes: b }])) },
    { weight: 2, arbitrary: mutated(diceSeeds()) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)) },
  );
}

function runCbor(input: Buffer): void {
  const v = cborDecode(input);
  const from = origin.get(input);
  if (from !== undefined) property(isDeepStrictEqual(v, from), "decode(encode(v)) differs from v");
  // Whatever decodes re-encodes (shortest heads) to bytes that decode to the same value.
  // Exactly one item: the same bytes with one more byte after them are rejected.
  let longer = true;
  try {
    cborDecode(Buffer.concat([input, Buffer.from([0])]));
  } catch (e) {
    if (!(e instanceof AttestError)) throw e;
    longer = false;
  }
  property(!longer, "trailing bytes after the item were accepted");
  const again = cborEncode(v);
  property(isDeepStrictEqual(cborDecode(again), v), "decode(encode(decode(x))) differs from decode(x)");
  property(
    again.length <= input.length,
    "re-encoding grew: the decoder accepted something the encoder cannot make",
  );
  property(cborDepth(v) <= 17, "nesting deeper than the decoder's bound");
}

export const cbor: FuzzTarget = {
  name: "cbor",
  description: "strict CBOR decoder (src/attest/cbor.ts) used for TCG DICE evidence",
  modules: ["src/attest/cbor.ts"],
  arbitrary: cborArbitrary,
  run: runCbor,
  expected: (e) => e instanceof AttestError && e.code === "malformed",
};

// ---- DER ----

interface DerNode {
  tag: number;
  content: Buffer | DerNode[];
}

const primitive = fc
  .oneof(
    fc.tuple(fc.constant(TAG.INTEGER), fc.uint8Array({ minLength: 1, maxLength: 9 })),
    fc.tuple(fc.constant(TAG.OID), fc.uint8Array({ minLength: 1, maxLength: 12 })),
    fc.tuple(
      fc.constantFrom(TAG.UTC_TIME),
      fc.constantFrom("250102030405Z", "991231235959Z", "2501020304Z", ""),
    ),
    fc.tuple(
      fc.constantFrom(TAG.GENERALIZED_TIME),
      fc.constantFrom("20250102030405Z", "99991231235959Z", "2025"),
    ),
    fc.tuple(
      fc.constantFrom(TAG.OCTET_STRING, TAG.BIT_STRING, TAG.UTF8_STRING, TAG.BOOLEAN, TAG.NULL, 0x80, 0x81),
      fc.uint8Array({ maxLength: 300 }),
    ),
  )
  .map(([tag, c]): DerNode => ({
    tag,
    content: typeof c === "string" ? Buffer.from(c, "latin1") : Buffer.from(c),
  }));

const derNode: fc.Arbitrary<DerNode> = fc.letrec<{ n: DerNode }>((tie) => ({
  n: fc.oneof(
    { depthSize: "small" },
    primitive,
    fc
      .tuple(fc.constantFrom(TAG.SEQUENCE, TAG.SET, 0xa0, 0xa3), fc.array(tie("n"), { maxLength: 5 }))
      .map(([tag, content]): DerNode => ({ tag, content })),
  ),
})).n;

function encodeNode(n: DerNode): Buffer {
  return tlv(n.tag, Buffer.isBuffer(n.content) ? n.content : Buffer.concat(n.content.map(encodeNode)));
}

/** Walks every element as the verifier's readers do, with the typed readers on the tags they take. */
function walk(d: Der, depth: number): number {
  let count = 1;
  property(d.valueStart <= d.end && d.end <= d.buf.length && d.start < d.valueStart, "element bounds");
  if (d.tag & 0x20) {
    let last = d.valueStart;
    for (const c of derChildren(d)) {
      property(c.start === last && c.end <= d.end, "children do not tile their parent");
      last = c.end;
      count += walk(c, depth + 1);
    }
    property(last === d.end, "children do not end with their parent");
    return count;
  }
  const v = derValue(d);
  try {
    if (d.tag === TAG.INTEGER) {
      derIntBytes(d);
      const n = derInt(d);
      property(Number.isSafeInteger(n) && n >= 0, "derInt returned a non-count");
    } else if (d.tag === TAG.OID) {
      const s = derOid(d);
      property(/^\d+(\.\d+)+$/.test(s), `derOid gave ${JSON.stringify(s)}`);
    } else if (d.tag === TAG.UTC_TIME || d.tag === TAG.GENERALIZED_TIME) {
      const t = derTime(d);
      property(!Number.isNaN(t.getTime()) || v.length > 0, "derTime gave an invalid date");
    }
  } catch (e) {
    if (!(e instanceof AttestError && e.code === "malformed")) throw e;
  }
  return count;
}

function derArbitrary(): fc.Arbitrary<Buffer> {
  const real = vectors([
    "amd/go-sev-guest/vcek.der",
    "amd/virtee-sev/vcek_turin.der",
    "intel/intel-qvl-sample/rootCaCrl.der",
    "intel/intel-qvl-sample/intermediateCaCrl.der",
  ]).map((bytes) => ({ bytes, fields: derFields(bytes) }));
  const built = derNode.map((n) => {
    const bytes = encodeNode(n);
    return { bytes, fields: derFields(bytes) };
  });
  return fc.oneof(
    { weight: 2, arbitrary: built.map((s) => s.bytes) },
    { weight: 3, arbitrary: built.chain((s) => mutated([s])) },
    ...(real.length ? [{ weight: 3, arbitrary: mutated(real) }] : []),
  );
}

function runDer(input: Buffer): void {
  // derAt at any offset and limit never reads outside the buffer's bounds.
  if (input.length > 0) {
    try {
      const d = derAt(input, input.length >> 1, input.length);
      property(d.end <= input.length, "derAt past its limit");
    } catch (e) {
      if (!(e instanceof AttestError && e.code === "malformed")) throw e;
    }
  }
  walk(derParse(input), 0);
}

export const der: FuzzTarget = {
  name: "der",
  description: "DER reader (src/attest/der.ts): TLV walk, INTEGER, OID and time readers",
  modules: ["src/attest/der.ts"],
  arbitrary: derArbitrary,
  run: runDer,
  expected: (e) => e instanceof AttestError && e.code === "malformed",
};
