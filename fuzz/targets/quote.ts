/**
 * Intel DCAP quotes (v3, v4, v5; SGX, TD 1.0 and TD 1.5 bodies) and their certification data: parseQuote, the claim
 * readers, and the PCK chain a type-5 certification data carries (PEM parse and the PCK certificate's SGX
 * extensions). Inputs: quotes rebuilt from the parts of real quotes in every version and body type, with length and
 * type fields set to interesting values, plus raw mutations of the real quotes.
 */
import fc from "fast-check";
import { AttestError } from "../../src/attest/errors.js";
import {
  CERT_PCK_CHAIN_PEM,
  CERT_QE_REPORT,
  HEADER_LEN,
  looksLikeQuote,
  parseQuote,
  quoteReportData,
  SGX_REPORT_LEN,
  sgxClaims,
  TD10_REPORT_LEN,
  TD15_REPORT_LEN,
  tdxClaims,
  type Quote,
} from "../../src/attest/intel/quote.js";
import { pckExtensions } from "../../src/attest/intel/pck.js";
import { Cert } from "../../src/attest/x509.js";
import { property, type FuzzTarget } from "../lib/engine.js";
import { mutated, type Field, type Seed } from "../lib/mutate.js";
import { vectors } from "../lib/seeds.js";

const REAL = [
  "intel/dcap-qvl/sgx_quote",
  "intel/dcap-qvl/tdx_quote",
  "intel/teekit/sgx-occlum.dat",
  "intel/teekit/sgx-chinenyeokafor.dat",
  "intel/teekit/tdx-v4-edgeless.dat",
  "intel/intel-qvl-sample/quote.dat",
];

export interface QuoteParts {
  version: number;
  akType: number;
  teeType: number;
  /** v5 only. */
  bodyType?: number;
  header: Buffer;
  body: Buffer;
  signature: Buffer;
  attestKey: Buffer;
  outerType?: number;
  qeReport: Buffer;
  qeReportSignature: Buffer;
  qeAuthData: Buffer;
  certType: number;
  certData: Buffer;
  trailing?: Buffer;
}

const u16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n & 0xffff);
  return b;
};
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};

/** Assembles a quote from parts and lists its length and type fields. */
export function buildQuote(p: QuoteParts): Seed {
  const fields: Field[] = [
    { offset: 0, size: 2, le: true },
    { offset: 2, size: 2, le: true },
    { offset: 4, size: 4, le: true },
  ];
  const header = Buffer.from(p.header);
  header.writeUInt16LE(p.version, 0);
  header.writeUInt16LE(p.akType, 2);
  header.writeUInt32LE(p.teeType, 4);
  const parts: Buffer[] = [header];
  let at = HEADER_LEN;
  if (p.version === 5) {
    fields.push({ offset: at, size: 2, le: true }, { offset: at + 2, size: 4, le: true });
    parts.push(u16(p.bodyType ?? 0), u32(p.body.length));
    at += 6;
  }
  parts.push(p.body);
  at += p.body.length;
  let qe = Buffer.concat([p.qeReport, p.qeReportSignature, u16(p.qeAuthData.length), p.qeAuthData]);
  const qeFields: Field[] = [{ offset: qe.length - p.qeAuthData.length - 2, size: 2, le: true }];
  qeFields.push({ offset: qe.length, size: 2, le: true }, { offset: qe.length + 2, size: 4, le: true });
  qe = Buffer.concat([qe, u16(p.certType), u32(p.certData.length), p.certData]);
  let sig = Buffer.concat([p.signature, p.attestKey]);
  let qeAt = sig.length;
  if (p.version >= 4) {
    fields.push(
      { offset: at + 4 + sig.length, size: 2, le: true },
      { offset: at + 4 + sig.length + 2, size: 4, le: true },
    );
    sig = Buffer.concat([sig, u16(p.outerType ?? CERT_QE_REPORT), u32(qe.length)]);
    qeAt = sig.length;
  }
  sig = Buffer.concat([sig, qe]);
  fields.push({ offset: at, size: 4, le: true });
  for (const f of qeFields) fields.push({ ...f, offset: at + 4 + qeAt + f.offset });
  parts.push(u32(sig.length), sig);
  if (p.trailing) parts.push(p.trailing);
  return { bytes: Buffer.concat(parts), fields };
}

function partsOf(q: Quote): QuoteParts {
  return {
    version: q.version,
    akType: q.akType,
    teeType: q.teeType,
    bodyType: q.version === 5 ? { sgx: 1, td10: 2, td15: 3 }[q.bodyType] : undefined,
    header: q.raw.subarray(0, HEADER_LEN),
    body: q.body,
    signature: q.signature,
    attestKey: q.attestKey,
    qeReport: q.qeReport,
    qeReportSignature: q.qeReportSignature,
    qeAuthData: q.qeAuthData,
    certType: q.certType,
    certData: q.certData,
  };
}

let seeds: Seed[] = [];
let real: Quote[] = [];

function prepare(): void {
  real = vectors(REAL).map((b) => parseQuote(b));
  if (real.length === 0) {
    // No vectors: a synthetic quote with random-looking parts still exercises every parser path.
    const z = (n: number, v = 0x11): Buffer => Buffer.alloc(n, v);
    real = [
      parseQuote(
        buildQuote({
          version: 3,
          akType: 2,
          teeType: 0,
          header: z(HEADER_LEN, 0),
          body: z(SGX_REPORT_LEN),
          signature: z(64),
          attestKey: z(64),
          qeReport: z(SGX_REPORT_LEN),
          qeReportSignature: z(64),
          qeAuthData: z(32),
          certType: CERT_PCK_CHAIN_PEM,
          certData: Buffer.from("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"),
        }).bytes,
      ),
    ];
  }
  seeds = [];
  for (const q of real) {
    seeds.push({ bytes: q.raw, fields: buildQuote(partsOf(q)).fields });
    // The same parts in every version and body type the parser knows.
    for (const [version, teeType, bodyType, len] of [
      [3, 0, undefined, SGX_REPORT_LEN],
      [4, 0, undefined, SGX_REPORT_LEN],
      [4, 0x81, undefined, TD10_REPORT_LEN],
      [5, 0, 1, SGX_REPORT_LEN],
      [5, 0x81, 2, TD10_REPORT_LEN],
      [5, 0x81, 3, TD15_REPORT_LEN],
    ] as const) {
      const body = Buffer.alloc(len);
      q.body.copy(body);
      seeds.push(buildQuote({ ...partsOf(q), version, teeType, bodyType, body }));
    }
  }
}

function arbitrary(): fc.Arbitrary<Buffer> {
  const base = real[0]!;
  // Built from scratch: random versions, TEE and body types (mostly consistent), auth data and certification data.
  const built = fc
    .record({
      version: fc.oneof(
        { weight: 9, arbitrary: fc.constantFrom(3, 4, 5) },
        { weight: 1, arbitrary: fc.nat(7) },
      ),
      tdx: fc.boolean(),
      td15: fc.boolean(),
      akType: fc.oneof({ weight: 9, arbitrary: fc.constant(2) }, { weight: 1, arbitrary: fc.nat(4) }),
      auth: fc.uint8Array({ maxLength: 80 }),
      certType: fc.oneof(
        { weight: 6, arbitrary: fc.constant(CERT_PCK_CHAIN_PEM) },
        { weight: 1, arbitrary: fc.nat(8) },
      ),
      certFrom: fc.nat(real.length - 1),
      certCut: fc.option(fc.nat(), { freq: 4 }),
      outerType: fc.oneof(
        { weight: 9, arbitrary: fc.constant(CERT_QE_REPORT) },
        { weight: 1, arbitrary: fc.nat(8) },
      ),
      trailing: fc.option(
        fc.oneof(
          fc.uint8Array({ maxLength: 8 }),
          fc.nat(100).map((n) => new Uint8Array(n)),
        ),
        {
          freq: 4,
        },
      ),
    })
    .map((r) => {
      const teeType = r.tdx ? 0x81 : 0;
      const bodyType = r.tdx ? (r.td15 ? 3 : 2) : 1;
      const len = !r.tdx ? SGX_REPORT_LEN : r.version === 5 && r.td15 ? TD15_REPORT_LEN : TD10_REPORT_LEN;
      let certData = real[r.certFrom]!.certData;
      if (r.certCut !== null) certData = certData.subarray(0, r.certCut % (certData.length + 1));
      return buildQuote({
        ...partsOf(base),
        version: r.version,
        akType: r.akType,
        teeType,
        bodyType,
        body: Buffer.alloc(len, 0x5a),
        outerType: r.outerType,
        qeAuthData: Buffer.from(r.auth),
        certType: r.certType,
        certData,
        trailing: r.trailing ? Buffer.from(r.trailing) : undefined,
      });
    });
  return fc.oneof(
    { weight: 3, arbitrary: mutated(seeds) },
    { weight: 2, arbitrary: built.chain((s) => mutated([s])) },
  );
}

function run(input: Buffer): void {
  const looks = looksLikeQuote(input);
  const q = parseQuote(input);
  property(looks, "parseQuote accepted what looksLikeQuote rejects");
  property(input.subarray(0, q.raw.length).equals(q.raw), "raw is not a prefix of the input");
  // Bytes after the quote are accepted (as dcap-qvl and go-tdx-guest do) but kept apart: never part of raw.
  property(
    input.subarray(q.raw.length).equals(q.extraBytes),
    "bytes after the quote are not exactly extraBytes",
  );
  const want = { sgx: SGX_REPORT_LEN, td10: TD10_REPORT_LEN, td15: TD15_REPORT_LEN }[q.bodyType];
  property(q.body.length === want, `body of ${q.body.length} bytes for ${q.bodyType}`);
  property(q.signedData.length === HEADER_LEN + (q.version === 5 ? 6 : 0) + want, "signedData length");
  // Round trip: the parts build the same bytes again.
  const again = buildQuote(partsOf(q)).bytes;
  property(again.equals(q.raw), "rebuilding the parsed parts does not give the quote back");
  if (q.bodyType === "sgx") sgxClaims(q.body);
  else tdxClaims(q.body, q.bodyType);
  sgxClaims(q.qeReport);
  property(quoteReportData(q).length === 64, "report data is not 64 bytes");
  if (q.certType === CERT_PCK_CHAIN_PEM) {
    const certs = Cert.fromPemBundle(q.certData);
    if (certs[0]) pckExtensions(certs[0]);
  }
}

export const quote: FuzzTarget = {
  name: "quote",
  description:
    "Intel DCAP quotes v3/v4/v5 (SGX, TD 1.0, TD 1.5) and their certification data (PCK chain PEM, SGX extensions)",
  modules: [
    "src/attest/intel/quote.ts",
    "src/attest/intel/pck.ts",
    "src/attest/x509.ts",
    "src/attest/der.ts",
  ],
  prepare,
  arbitrary,
  run,
  expected: (e) => e instanceof AttestError && (e.code === "malformed" || e.code === "chain_invalid"),
};
