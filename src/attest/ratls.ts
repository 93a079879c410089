/**
 * RA-TLS: a TLS key bound to TEE evidence carried in an extension of its (self-signed) X.509 certificate.
 *
 * Two encodings are in use; Gramine >= 1.8 writes both into every certificate, each with its own quote:
 *
 * - `gramine-legacy`: the extension value is the raw SGX quote, and REPORT_DATA[0..32] = SHA-256(SubjectPublicKeyInfo
 *   DER). Gramine's encoder passes the complete OID TLV `06 09 2A 86 48 86 F8 4D 8A 39 06` as the OID *content*, so
 *   the certificate really says 0.6.9.42.840.113741.1337.6; we also accept the intended 1.2.840.113741.1337.6.
 * - `tcg-dice`: OID 2.23.133.5.4.9 (tcg-dice-tagged-evidence), value = CBOR
 *     60000([ bstr quote, bstr claims ])           tag 60000 = IANA "Intel TEE quote" (SGX or TDX ECDSA quote)
 *     claims = map { "pubkey-hash": bstr(CBOR [ hash-alg-id, bstr H(SPKI DER) ]), ? "nonce": bstr }
 *   with hash-alg-id from the IANA Named Information registry (1 = SHA-256, 7 = SHA-384, 8 = SHA-512), and the
 *   quote's REPORT_DATA[0..32] = SHA-256(claims bytes): the quote binds the claims, the claims bind the key.
 *
 * AMD SEV-SNP evidence (no IANA CBOR tag exists for it) uses the same DICE layout under a SENG tag, and carries its
 * endorsement certificates, which the report does not contain, in the interoperable RA-TLS endorsements extension:
 *     2.23.133.5.4.9  = 1397641298([ bstr report, bstr claims ])      tag 0x534E5052 "SNPR", SENG-defined
 *     2.23.133.5.4.2  = 1397641298([ bstr VCEK-or-VLEK, ? bstr ASK-or-ASVK, ? bstr ARK ])   DER, leaf first
 *   with REPORT_DATA[0..32] = SHA-256(claims bytes) as for Intel. The endorsements are untrusted transport: the
 *   verifier checks them up to a built-in or explicitly configured ARK, never trusting an ARK because it is here.
 *
 * Sources: CCC-Attestation/interoperable-ra-tls (docs/Interoperable-RA-TLS-cert-edvidence-formats.md,
 * docs/Interoperable-RA-TLS-SGX-TDX-evidence-formats.md); Gramine tools/sgx/ra-tls/ra_tls_attest.c and
 * ra_tls_verify_common.c (v1.8+); the IANA CBOR tag registry (60000-60002, Intel TEE evidence).
 *
 * Like Gramine, we prefer the DICE extension when both are present and never fall back to the legacy one when the
 * DICE extension exists but is bad (fail closed). The key is read from the certificate's own DER ({@link certSpki}),
 * never from Node's X509Certificate, which parses the first PEM block it finds inside DER bytes: every RA-TLS
 * certificate carries a quote with a PEM chain, and an attacker can add the PEM of any certificate.
 */
import { x509 } from "./x509gen.js";
import { createHash, KeyObject, randomBytes, sign, timingSafeEqual, webcrypto } from "node:crypto";
import { CborTag, cborDecode, cborEncode, type CborValue } from "./cbor.js";
import { derBytes, derChild, derChildren, derParse, TAG } from "./der.js";
import { AttestError, need } from "./errors.js";
import { looksLikeQuote, parseQuote, quoteReportData } from "./intel/quote.js";
import { looksLikeSnpReport, parseSnpReport, type SnpSigningKey } from "./amd/report.js";
import { Cert } from "./x509.js";

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

export const OID_TCG_DICE_TAGGED_EVIDENCE = "2.23.133.5.4.9";
/** What Gramine's legacy extension OID decodes as (see above). */
export const OID_GRAMINE_LEGACY = "0.6.9.42.840.113741.1337.6";
/** The OID Gramine meant to write. */
export const OID_GRAMINE_LEGACY_INTENDED = "1.2.840.113741.1337.6";
/** IANA CBOR tag: attestation evidence with an Intel TEE (SGX/TDX ECDSA) quote. */
export const CBOR_TAG_INTEL_TEE_QUOTE = 60000;

/**
 * SENG's CBOR tag for SEV-SNP evidence ("SNPR"; not IANA-registered: no tag is registered for SNP reports). Verifiers
 * that do not know it reject the certificate as unsupported evidence, which is the safe outcome.
 */
export const CBOR_TAG_SENG_SNP_REPORT = 0x534e5052;
/** tcg-dice-endorsement-manifest: the interoperable RA-TLS extension for endorsements of the evidence. */
export const OID_TCG_DICE_ENDORSEMENT_MANIFEST = "2.23.133.5.4.2";
/** A VCEK/VLEK plus its ASK/ASVK and ARK: anything longer is not an AMD chain. */
const MAX_ENDORSEMENTS = 3;

export type RaTlsFormat = "gramine-legacy" | "tcg-dice";
/** What the evidence is, from its CBOR tag (legacy certificates hold Intel quotes). */
export type RaTlsEvidenceKind = "intel" | "sev-snp";

/** The hash algorithms a `pubkey-hash` claim may use (IANA Named Information ids). */
const HASHES: Record<number, { name: string; len: number }> = {
  1: { name: "sha256", len: 32 },
  7: { name: "sha384", len: 48 },
  8: { name: "sha512", len: 64 },
};

export interface RaTlsEvidence {
  /** The extension's OID as found in the certificate. */
  oid: string;
  format: RaTlsFormat;
  kind: RaTlsEvidenceKind;
  /** The quote or report. */
  evidence: Buffer;
  /** SEV-SNP: the endorsement certificates (DER, VCEK or VLEK first), unverified. */
  endorsements?: Buffer[];
  /** `tcg-dice` only: the claims bytes whose SHA-256 REPORT_DATA must carry, and what they say. */
  claims?: { raw: Buffer; pubkeyHash: { alg: number; value: Buffer }; nonce?: Buffer };
}

/**
 * Extracts the evidence of an RA-TLS certificate (the DICE extension first, then the legacy one).
 * Throws AttestError `no_evidence` without either extension and `malformed` when the extension cannot be decoded.
 * Nothing is verified here: verify the quote, then {@link keyBindingOk}.
 */
export function extractEvidence(cert: Cert): RaTlsEvidence {
  const dice = cert.extensions.get(OID_TCG_DICE_TAGGED_EVIDENCE);
  if (dice) {
    try {
      const ev = decodeDice(dice.value);
      const end = cert.extensions.get(OID_TCG_DICE_ENDORSEMENT_MANIFEST);
      if (end) ev.endorsements = decodeEndorsements(end.value, ev.kind);
      return ev;
    } catch (e) {
      if (e instanceof AttestError && e.code === "malformed") throw e;
      throw new AttestError("malformed", `RA-TLS DICE evidence: ${(e as Error).message}`);
    }
  }
  for (const oid of [OID_GRAMINE_LEGACY, OID_GRAMINE_LEGACY_INTENDED]) {
    const ext = cert.extensions.get(oid);
    if (!ext) continue;
    if (ext.value.length === 0)
      throw new AttestError("malformed", "RA-TLS legacy evidence extension is empty");
    return { oid, format: "gramine-legacy", kind: "intel", evidence: ext.value };
  }
  throw new AttestError(
    "no_evidence",
    `certificate ${cert.fingerprint} carries no RA-TLS evidence extension`,
  );
}

function malformed(msg: string): never {
  throw new AttestError("malformed", `RA-TLS DICE evidence: ${msg}`);
}

function decodeDice(value: Buffer): RaTlsEvidence {
  const top = cborDecode(value);
  if (!(top instanceof CborTag)) malformed("not a CBOR tag");
  const kind = tagKind(top.tag);
  const arr = top.value;
  if (!Array.isArray(arr) || arr.length !== 2) malformed("expected [quote, claims]");
  const [quote, raw] = arr;
  if (!Buffer.isBuffer(quote) || quote.length === 0) malformed("quote is not a non-empty byte string");
  if (!Buffer.isBuffer(raw) || raw.length === 0) malformed("claims are not a non-empty byte string");
  const map = cborDecode(raw);
  if (!(map instanceof Map)) malformed("claims are not a CBOR map");
  let pubkeyHash: { alg: number; value: Buffer } | undefined;
  let nonce: Buffer | undefined;
  for (const [k, v] of map) {
    if (typeof k !== "string") malformed("claim names must be text");
    if (k === "pubkey-hash") {
      if (!Buffer.isBuffer(v)) malformed("pubkey-hash is not a byte string");
      const entry: CborValue = cborDecode(v);
      if (!Array.isArray(entry) || entry.length !== 2) malformed("pubkey-hash is not [alg, hash]");
      const [alg, hash] = entry;
      if (typeof alg !== "number" || !HASHES[alg])
        malformed(`unsupported pubkey-hash algorithm ${String(alg)}`);
      if (!Buffer.isBuffer(hash) || hash.length !== HASHES[alg]!.len)
        malformed("pubkey-hash has the wrong length");
      pubkeyHash = { alg, value: hash };
    } else if (k === "nonce") {
      if (!Buffer.isBuffer(v)) malformed("nonce is not a byte string");
      nonce = v;
    }
    // Other claims are ignored, as the interoperable RA-TLS spec allows.
  }
  if (!pubkeyHash) malformed("the required pubkey-hash claim is missing");
  return {
    oid: OID_TCG_DICE_TAGGED_EVIDENCE,
    format: "tcg-dice",
    kind,
    evidence: quote,
    claims: { raw, pubkeyHash, ...(nonce ? { nonce } : {}) },
  };
}

function tagKind(tag: number): RaTlsEvidenceKind {
  if (tag === CBOR_TAG_INTEL_TEE_QUOTE) return "intel";
  if (tag === CBOR_TAG_SENG_SNP_REPORT) return "sev-snp";
  return malformed(
    `unsupported CBOR tag ${tag} (known: 60000, Intel TEE quote; ${CBOR_TAG_SENG_SNP_REPORT}, SENG SEV-SNP report)`,
  );
}

/** The endorsements extension: the evidence's tag around a list of 1-3 DER certificates. */
function decodeEndorsements(value: Buffer, kind: RaTlsEvidenceKind): Buffer[] {
  const top = cborDecode(value);
  if (!(top instanceof CborTag)) malformed("endorsements are not a CBOR tag");
  if (tagKind(top.tag) !== kind)
    malformed("endorsements are tagged for another kind of evidence than the evidence");
  if (kind !== "sev-snp") malformed("endorsements are only defined for SEV-SNP evidence");
  const list = top.value;
  if (!Array.isArray(list) || list.length === 0 || list.length > MAX_ENDORSEMENTS)
    malformed(`endorsements must be a list of 1 to ${MAX_ENDORSEMENTS} certificates`);
  return list.map((c) => {
    if (!Buffer.isBuffer(c) || c.length === 0) malformed("an endorsement is not a non-empty byte string");
    return c;
  });
}

function sha(alg: string, data: Buffer): Buffer {
  return createHash(alg).update(data).digest();
}

/**
 * The certificate's SubjectPublicKeyInfo DER, read from the DER itself. Not `cert.spki`: Node's X509Certificate
 * parses the first PEM block it finds *inside* a DER buffer, and RA-TLS certificates carry quotes whose
 * certification data is a PEM chain, so Node's view of such a certificate is another certificate (whose key an
 * attacker could choose by embedding its PEM).
 */
export function certSpki(cert: Cert): Buffer {
  const tbs = derChildren(derChild(derParse(cert.der), 0, TAG.SEQUENCE));
  const spki = tbs[(tbs[0]?.tag === 0xa0 ? 1 : 0) + 5]; // [version] serial sigAlg issuer validity subject spki
  need(spki?.tag === TAG.SEQUENCE, "certificate has no SubjectPublicKeyInfo");
  return derBytes(spki);
}

function sameBytes(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Whether the verified quote's `reportData` binds the certificate's key.
 * - `gramine-legacy`: REPORT_DATA[0..32] == SHA-256(SPKI DER).
 * - `tcg-dice`: REPORT_DATA[0..32] == SHA-256(claims bytes) and the `pubkey-hash` claim == H(SPKI DER).
 *
 * `ev` must be the evidence whose quote gave `reportData`; by default it is extracted from `cert` again (same
 * preference as {@link extractEvidence}). Never throws: anything unreadable is simply not a binding.
 */
export function keyBindingOk(cert: Cert, reportData: Buffer, ev?: RaTlsEvidence): boolean {
  try {
    const e = ev ?? extractEvidence(cert);
    if (reportData.length < 32) return false;
    const bound = reportData.subarray(0, 32);
    const spki = certSpki(cert);
    if (e.format === "gramine-legacy") return sameBytes(bound, sha("sha256", spki));
    const c = e.claims;
    if (!c) return false;
    const h = HASHES[c.pubkeyHash.alg];
    if (!h) return false;
    // Both checks always run, so timing does not tell which one failed.
    const claimsOk = sameBytes(bound, sha("sha256", c.raw));
    const keyOk = sameBytes(c.pubkeyHash.value, sha(h.name, spki));
    return claimsOk && keyOk;
  } catch {
    return false;
  }
}

/** The claims a `tcg-dice` certificate carries for a key: { "pubkey-hash": [1, SHA-256(SPKI)] }. */
function diceClaims(spkiDer: Buffer): Buffer {
  return cborEncode(new Map([["pubkey-hash", cborEncode([1, sha("sha256", spkiDer)])]]));
}

/**
 * The 64-byte REPORT_DATA to request a quote with, so that it binds the key with this SPKI (DER) in `format`:
 * SHA-256(SPKI) (`gramine-legacy`) or SHA-256(DICE claims) (`tcg-dice`, the default), then 32 zero bytes.
 */
export function raTlsReportData(spkiDer: Buffer, format: RaTlsFormat = "tcg-dice"): Buffer {
  const h = sha("sha256", format === "tcg-dice" ? diceClaims(spkiDer) : spkiDer);
  return Buffer.concat([h, Buffer.alloc(32)]);
}

export interface NodeKeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

export interface RaTlsCertOptions {
  /** The TLS key pair: ECDSA P-256, as WebCrypto keys or node KeyObjects. */
  keys: CryptoKeyPair | NodeKeyPair;
  /** An Intel quote or AMD SEV-SNP report whose REPORT_DATA is `raTlsReportData(spki, format)`. */
  evidence: Buffer;
  /**
   * SEV-SNP: the report's endorsement certificates (DER), VCEK or VLEK first, then optionally the ASK/ASVK and ARK,
   * as the host's certificate table gives them (see amd/certtable.ts). Required for a report.
   */
  endorsements?: readonly Buffer[];
  /** Default `tcg-dice`: the standardized, self-describing encoding (see {@link createRaTlsCert}). */
  format?: RaTlsFormat;
  /** Subject (and issuer) name; default `CN=SENG RA-TLS`. */
  subject?: string;
  /** Default: one hour ago (clock skew). */
  notBefore?: Date;
  /** Default: one year after notBefore. */
  notAfter?: Date;
}

const EC = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGNING = { name: "ECDSA", hash: "SHA-256" } as const;

async function toCryptoKeys(keys: CryptoKeyPair | NodeKeyPair): Promise<CryptoKeyPair> {
  const p256 = new TypeError("RA-TLS keys must be ECDSA P-256");
  if (!(keys.privateKey instanceof KeyObject)) {
    const alg = keys.privateKey.algorithm as webcrypto.EcKeyAlgorithm;
    if (alg.name !== "ECDSA" || alg.namedCurve !== "P-256") throw p256;
    return keys as CryptoKeyPair;
  }
  const { privateKey, publicKey } = keys as NodeKeyPair;
  if (privateKey.asymmetricKeyType !== "ec" || privateKey.asymmetricKeyDetails?.namedCurve !== "prime256v1")
    throw p256;
  const pkcs8 = privateKey.export({ type: "pkcs8", format: "der" });
  const spki = publicKey.export({ type: "spki", format: "der" });
  return {
    privateKey: (await webcrypto.subtle.importKey("pkcs8", pkcs8, EC, false, ["sign"])) as CryptoKey,
    publicKey: (await webcrypto.subtle.importKey("spki", spki, EC, true, ["verify"])) as CryptoKey,
  };
}

/**
 * Creates a self-signed RA-TLS certificate for `keys` carrying `evidence` (an Intel quote).
 *
 * The default format is `tcg-dice`: it is the standardized encoding (TCG DICE OID + IANA-registered CBOR tag, so a
 * verifier knows what kind of evidence it holds and TDX quotes fit the same extension), Gramine verifiers prefer it,
 * and Gramine marks the legacy OID for deprecation. Use `gramine-legacy` only for peers that read nothing else.
 *
 * Throws AttestError `malformed` when `evidence` is not a quote and `key_binding_invalid` when its REPORT_DATA does
 * not bind these keys in `format`: a certificate that can never verify is a bug to report at once.
 */
export async function createRaTlsCert(opts: RaTlsCertOptions): Promise<{ cert: Cert; pem: string }> {
  const format = opts.format ?? "tcg-dice";
  const cn = /^CN=([^,+=\\]+)$/.exec(opts.subject ?? "CN=SENG RA-TLS")?.[1];
  // The runtime's path (node:crypto keys, a plain CN): DER built here and signed synchronously, in well under a
  // millisecond; WebCrypto and the generator take 15-30 ms at start, on the way to the app's first byte.
  if (opts.keys.privateKey instanceof KeyObject && cn !== undefined) return selfSignedRaTls(opts, format, cn);
  const keys = await toCryptoKeys(opts.keys);
  const spki = Buffer.from(await webcrypto.subtle.exportKey("spki", keys.publicKey));
  const exts = evidenceExtensions(opts, spki, format);
  const { notBefore, notAfter, serial } = certDefaults(opts);
  const generated = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial.toString("hex"),
    name: opts.subject ?? "CN=SENG RA-TLS",
    notBefore,
    notAfter,
    keys,
    signingAlgorithm: SIGNING,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      // Non-critical, as Gramine writes it: TLS stacks must not reject the certificate for an unknown extension.
      ...exts.map(([oid, value]) => new x509.Extension(oid, false, value)),
    ],
  });
  // PEM from the generator: Cert.toPem() goes through Node's parse, which sees the quote's embedded PCK chain.
  return { cert: Cert.fromDer(Buffer.from(generated.rawData)), pem: generated.toString("pem") };
}

/**
 * Checks what a certificate is about to carry for an SNP report: 1-3 DER certificates, the first a VCEK or VLEK as
 * the report's SIGNING_KEY needs. Nothing is verified (the verifier does that); this catches a wrong or missing
 * certificate table at the attester, where it can be reported, instead of at every gateway.
 */
function checkEndorsements(signingKey: SnpSigningKey, certs: readonly Buffer[]): Buffer[] {
  if (signingKey === "none")
    throw new AttestError("report_signature_invalid", "the SNP report is not signed");
  const want = signingKey === "vcek" ? "SEV-VCEK" : "SEV-VLEK";
  if (certs.length === 0)
    throw new AttestError(
      "vcek_missing",
      `an SNP report needs its ${want} certificate in the RA-TLS certificate`,
    );
  if (certs.length > MAX_ENDORSEMENTS)
    throw new AttestError(
      "malformed",
      `at most ${MAX_ENDORSEMENTS} endorsement certificates (leaf, ASK, ARK)`,
    );
  let leaf: Cert;
  try {
    certs.forEach((c) => Cert.fromDer(c));
    leaf = Cert.fromDer(certs[0]!);
  } catch (e) {
    throw new AttestError("malformed", `endorsement certificate: ${(e as Error).message}`);
  }
  if (!new RegExp(`^CN=${want}$`, "m").test(leaf.x509.subject)) {
    throw new AttestError(
      "vcek_missing",
      `the report is signed by a ${signingKey.toUpperCase()}, but the first endorsement is "${leaf.subject}"`,
    );
  }
  return [...certs];
}

/**
 * The evidence extensions (OID, value) for `format`: an Intel quote in the TCG DICE tagged-evidence extension (or
 * Gramine's legacy one); an SEV-SNP report there under SENG's tag, with its VCEK/VLEK (and ASK/ARK) in the DICE
 * endorsement manifest. Throws when the evidence does not bind `spki` in `format`.
 */
function evidenceExtensions(opts: RaTlsCertOptions, spki: Buffer, format: RaTlsFormat): [string, Buffer][] {
  const snp = !looksLikeQuote(opts.evidence) && looksLikeSnpReport(opts.evidence);
  if (!snp && opts.endorsements?.length)
    throw new AttestError("unsupported", "endorsements are only carried for SEV-SNP reports");
  if (snp && format !== "tcg-dice") {
    throw new AttestError(
      "unsupported",
      "SEV-SNP reports travel only in the tcg-dice format (the Gramine legacy extension is defined for SGX quotes)",
    );
  }
  const report = snp ? parseSnpReport(opts.evidence) : undefined;
  const bound = (report ? report.reportData : quoteReportData(parseQuote(opts.evidence))).subarray(0, 32);
  if (!bound.equals(raTlsReportData(spki, format).subarray(0, 32))) {
    throw new AttestError(
      "key_binding_invalid",
      `the ${report ? "report" : "quote"}'s REPORT_DATA does not bind this key in the ${format} format (request it with raTlsReportData(spki, "${format}"))`,
    );
  }
  if (report) {
    const certs = checkEndorsements(report.signingKey, opts.endorsements ?? []);
    const value = (v: CborValue): Buffer => cborEncode(new CborTag(CBOR_TAG_SENG_SNP_REPORT, v));
    return [
      [OID_TCG_DICE_TAGGED_EVIDENCE, value([report.raw, diceClaims(spki)])],
      [OID_TCG_DICE_ENDORSEMENT_MANIFEST, value(certs)],
    ];
  }
  return format === "tcg-dice"
    ? [
        [
          OID_TCG_DICE_TAGGED_EVIDENCE,
          cborEncode(new CborTag(CBOR_TAG_INTEL_TEE_QUOTE, [opts.evidence, diceClaims(spki)])),
        ],
      ]
    : [[OID_GRAMINE_LEGACY, opts.evidence]];
}

function certDefaults(opts: RaTlsCertOptions): { notBefore: Date; notAfter: Date; serial: Buffer } {
  const notBefore = opts.notBefore ?? new Date(Date.now() - 3600_000);
  const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + 365 * 86400_000);
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01; // positive and without a leading zero byte
  return { notBefore, notAfter, serial };
}

// ---- DER encoding of the self-signed certificate (the same structure as the generator's) ----------------------------

function tlv(tag: number, ...parts: Buffer[]): Buffer {
  const body = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  const n = body.length;
  const len =
    n < 0x80
      ? [n]
      : n < 0x100
        ? [0x81, n]
        : n < 0x10000
          ? [0x82, n >> 8, n & 0xff]
          : [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...len]), body]);
}

function oidDer(oid: string): Buffer {
  const arcs = oid.split(".").map(Number);
  const out = [40 * arcs[0]! + arcs[1]!];
  for (const arc of arcs.slice(2)) {
    const b = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) b.unshift((v & 0x7f) | 0x80);
    out.push(...b);
  }
  return tlv(TAG.OID, Buffer.from(out));
}

/** UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5), whole seconds. */
function timeDer(d: Date): Buffer {
  const iso = d.toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
  const digits = iso.slice(0, 19).replace(/[-T:]/g, "") + "Z";
  const year = d.getUTCFullYear();
  return year >= 1950 && year < 2050
    ? tlv(0x17, Buffer.from(digits.slice(2), "latin1"))
    : tlv(0x18, Buffer.from(digits, "latin1"));
}

function nameDer(cn: string): Buffer {
  // PrintableString when the value allows it (as the generator writes it), UTF8String otherwise.
  const printable = /^[A-Za-z0-9 '()+,\-./:=?]*$/.test(cn);
  const value = tlv(printable ? 0x13 : 0x0c, Buffer.from(cn, printable ? "latin1" : "utf8"));
  return tlv(TAG.SEQUENCE, tlv(0x31, tlv(TAG.SEQUENCE, oidDer("2.5.4.3"), value)));
}

const ECDSA_SHA256 = tlv(TAG.SEQUENCE, oidDer("1.2.840.10045.4.3.2"));
const TRUE = Buffer.from([0x01, 0x01, 0xff]);

function extensionDer(oid: string, critical: boolean, value: Buffer): Buffer {
  return tlv(TAG.SEQUENCE, oidDer(oid), ...(critical ? [TRUE] : []), tlv(TAG.OCTET_STRING, value));
}

function selfSignedRaTls(
  opts: RaTlsCertOptions,
  format: RaTlsFormat,
  cn: string,
): { cert: Cert; pem: string } {
  const { privateKey, publicKey } = opts.keys as NodeKeyPair;
  if (privateKey.asymmetricKeyType !== "ec" || privateKey.asymmetricKeyDetails?.namedCurve !== "prime256v1")
    throw new TypeError("RA-TLS keys must be ECDSA P-256");
  const spki = publicKey.export({ type: "spki", format: "der" });
  const exts = evidenceExtensions(opts, spki, format);
  const { notBefore, notAfter, serial } = certDefaults(opts);
  const name = nameDer(cn);
  const tbs = tlv(
    TAG.SEQUENCE,
    tlv(0xa0, Buffer.from([0x02, 0x01, 0x02])), // v3
    tlv(TAG.INTEGER, serial),
    ECDSA_SHA256,
    name,
    tlv(TAG.SEQUENCE, timeDer(notBefore), timeDer(notAfter)),
    name,
    spki,
    tlv(
      0xa3,
      tlv(
        TAG.SEQUENCE,
        extensionDer("2.5.29.19", true, tlv(TAG.SEQUENCE)), // basicConstraints: not a CA
        extensionDer("2.5.29.15", true, Buffer.from([0x03, 0x02, 0x07, 0x80])), // keyUsage: digitalSignature
        // Non-critical, as Gramine writes it: TLS stacks must not reject the certificate for an unknown extension.
        ...exts.map(([oid, value]) => extensionDer(oid, false, value)),
      ),
    ),
  );
  const signature = sign("sha256", tbs, privateKey); // DER ECDSA-Sig-Value
  const der = tlv(TAG.SEQUENCE, tbs, ECDSA_SHA256, tlv(TAG.BIT_STRING, Buffer.from([0]), signature));
  const b64 = der.toString("base64").replace(/.{64}/g, "$&\n");
  const pem = `-----BEGIN CERTIFICATE-----\n${b64}${b64.endsWith("\n") ? "" : "\n"}-----END CERTIFICATE-----`;
  return { cert: Cert.fromDer(der), pem };
}
