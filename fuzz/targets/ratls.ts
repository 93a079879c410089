/**
 * RA-TLS certificate extensions: a certificate is parsed (Node's X509Certificate plus our DER view of the TBS) and
 * its evidence extracted (TCG DICE tagged evidence, the endorsements manifest, Gramine's legacy extension), then the
 * evidence parsed and the key binding computed. Inputs: certificates rebuilt from a real certificate with fuzzed
 * extensions (DICE CBOR structures with mutated tags, arrays, claims and hashes; legacy quotes; endorsements), and
 * raw mutations of those certificates.
 */
import fc from "fast-check";
import { CborTag, cborEncode, type CborValue } from "../../src/attest/cbor.js";
import { AttestError } from "../../src/attest/errors.js";
import { parseQuote, quoteReportData, looksLikeQuote } from "../../src/attest/intel/quote.js";
import { looksLikeSnpReport, parseSnpReport } from "../../src/attest/amd/report.js";
import {
  certSpki,
  CBOR_TAG_INTEL_TEE_QUOTE,
  CBOR_TAG_SENG_SNP_REPORT,
  extractEvidence,
  keyBindingOk,
  OID_GRAMINE_LEGACY_INTENDED,
  OID_TCG_DICE_ENDORSEMENT_MANIFEST,
  OID_TCG_DICE_TAGGED_EVIDENCE,
} from "../../src/attest/ratls.js";
import { Cert } from "../../src/attest/x509.js";
import { property, type FuzzTarget } from "../lib/engine.js";
import { derFields, mutated } from "../lib/mutate.js";
import { extensionDer, oidDer, withExtensions } from "../lib/der-build.js";
import { vectors } from "../lib/seeds.js";
import { webcrypto } from "node:crypto";
import { x509 } from "../../src/attest/x509gen.js";

// Gramine's mis-encoded legacy OID: the complete OID TLV as the OID's content.
const GRAMINE_LEGACY_OID = Buffer.from("060b06092a864886f84d8a3906", "hex");

let template: Buffer;
let evidence: Buffer[] = [];
let endorsementCerts: Buffer[] = [];

async function prepare(): Promise<void> {
  // The shape every input is rebuilt from: a self-signed P-256 certificate like the runtime makes.
  const keys = await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
  const made = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=SENG RA-TLS fuzz",
    notBefore: new Date("2025-01-01T00:00:00Z"),
    notAfter: new Date("2035-01-01T00:00:00Z"),
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
  });
  template = Buffer.from(made.rawData);
  evidence = [
    ...vectors(["intel/dcap-qvl/sgx_quote", "intel/dcap-qvl/tdx_quote", "amd/go-sev-guest/attestation.bin"]),
    Buffer.alloc(64, 1),
    Buffer.alloc(0),
  ];
  endorsementCerts = vectors(["amd/go-sev-guest/vcek.der", "amd/virtee-sev/vcek_milan.der"]);
  if (endorsementCerts.length === 0) endorsementCerts = [Buffer.alloc(10, 0x30)];
}

const hashEntry = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .constantFrom([1, 32], [7, 48], [8, 64])
      .map(([alg, len]) => cborEncode([alg!, Buffer.alloc(len!, 9)])),
  },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.nat(10), fc.nat(70)).map(([a, l]) => cborEncode([a, Buffer.alloc(l)])),
  },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 10 }).map((u) => Buffer.from(u)) },
);

const claimsArb = fc
  .record({
    hash: fc.option(hashEntry, { freq: 8 }),
    nonce: fc.option(
      fc.oneof(
        fc.uint8Array({ maxLength: 32 }).map((u): CborValue => Buffer.from(u)),
        fc.constant<CborValue>("nonce"),
      ),
      {
        freq: 3,
      },
    ),
    extra: fc.option(fc.tuple(fc.oneof(fc.string({ maxLength: 6 }), fc.nat(5)), fc.nat(100)), { freq: 4 }),
  })
  .map(({ hash, nonce, extra }) => {
    const m = new Map<string | number, CborValue>();
    if (hash) m.set("pubkey-hash", hash);
    if (nonce !== null) m.set("nonce", nonce);
    if (extra && !m.has(extra[0])) m.set(extra[0], extra[1]);
    return cborEncode(m);
  });

function certArbitrary(): fc.Arbitrary<Buffer> {
  const tag = fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(CBOR_TAG_INTEL_TEE_QUOTE, CBOR_TAG_SENG_SNP_REPORT) },
    { weight: 1, arbitrary: fc.nat(70000) },
  );
  const dice = fc
    .record({
      tag,
      ev: fc.nat(evidence.length - 1).map((i) => evidence[i]!),
      claims: claimsArb,
      shape: fc.nat(9),
    })
    .map(({ tag, ev, claims, shape }) => {
      const arr: CborValue =
        shape === 0
          ? [ev]
          : shape === 1
            ? [ev, claims, claims]
            : shape === 2
              ? new Map([[1, ev]])
              : [ev, claims];
      return cborEncode(shape === 3 ? arr : new CborTag(tag, arr));
    });
  const endorsements = fc.record({ tag, n: fc.nat(4), bad: fc.boolean() }).map(({ tag, n, bad }) =>
    cborEncode(
      new CborTag(
        tag,
        Array.from({ length: n }, (_, i): CborValue =>
          bad && i === 0 ? "x" : endorsementCerts[i % endorsementCerts.length]!,
        ),
      ),
    ),
  );
  const ext = fc
    .record({
      which: fc.constantFrom("dice", "dice", "dice+end", "legacy", "legacy-intended", "none"),
      dice: dice.chain((b) => mutated([{ bytes: b }])),
      end: endorsements,
      legacy: fc.nat(evidence.length - 1).map((i) => evidence[i]!),
      critical: fc.boolean(),
    })
    .map((r) => {
      const exts: Buffer[] = [extensionDer({ oid: oidDer("2.5.29.19"), value: Buffer.from("3000", "hex") })];
      if (r.which.startsWith("dice"))
        exts.push(
          extensionDer({ oid: oidDer(OID_TCG_DICE_TAGGED_EVIDENCE), critical: r.critical, value: r.dice }),
        );
      if (r.which === "dice+end")
        exts.push(extensionDer({ oid: oidDer(OID_TCG_DICE_ENDORSEMENT_MANIFEST), value: r.end }));
      if (r.which === "legacy") exts.push(extensionDer({ oid: GRAMINE_LEGACY_OID, value: r.legacy }));
      if (r.which === "legacy-intended")
        exts.push(extensionDer({ oid: oidDer(OID_GRAMINE_LEGACY_INTENDED), value: r.legacy }));
      return withExtensions(template, exts);
    });
  return fc.oneof(
    { weight: 4, arbitrary: ext },
    { weight: 1, arbitrary: ext.chain((b) => mutated([{ bytes: b, fields: derFields(b) }])) },
  );
}

function run(input: Buffer): void {
  const cert = Cert.parseOnce(input);
  certSpki(cert);
  let ev;
  try {
    ev = extractEvidence(cert);
  } finally {
    // keyBindingOk never throws, whatever the certificate holds.
    property(
      typeof keyBindingOk(cert, Buffer.alloc(64)) === "boolean",
      "keyBindingOk did not return a boolean",
    );
  }
  property(ev.evidence.length > 0, "empty evidence extracted");
  if (ev.format === "tcg-dice") {
    property(
      ev.claims !== undefined && ev.claims.pubkeyHash.value.length >= 32,
      "DICE evidence without pubkey-hash",
    );
  }
  if (ev.kind === "intel" && looksLikeQuote(ev.evidence)) {
    const q = parseQuote(ev.evidence);
    property(
      typeof keyBindingOk(cert, quoteReportData(q), ev) === "boolean",
      "keyBindingOk did not return a boolean",
    );
  } else if (ev.kind === "sev-snp" && looksLikeSnpReport(ev.evidence)) {
    parseSnpReport(ev.evidence);
  }
  if (ev.endorsements)
    property(ev.endorsements.length >= 1 && ev.endorsements.length <= 3, "1 to 3 endorsements");
}

export const ratls: FuzzTarget = {
  name: "ratls",
  description:
    "RA-TLS certificates: X.509 parse, DICE/legacy evidence and endorsement extensions, key binding",
  modules: ["src/attest/ratls.ts", "src/attest/x509.ts", "src/attest/cbor.ts", "src/attest/der.ts"],
  prepare,
  arbitrary: certArbitrary,
  run,
  expected: (e) =>
    e instanceof AttestError &&
    (e.code === "malformed" || e.code === "no_evidence" || e.code === "unsupported"),
};
