/**
 * Certificates, chains and CRLs for evidence verification.
 *
 * Node's X509Certificate checks signatures (ECDSA, RSA-PSS); the TBS fields that Node does not expose
 * (extensions, validity as dates, the raw serial) come from our DER reader. Results that depend only on bytes
 * (a parsed certificate, "A's signature verifies under B's key", a parsed and verified CRL) are memoized by the exact
 * DER, so a platform that attests again costs no repeated chain work; validity periods are always checked against
 * the time of the verification.
 */
import {
  constants,
  createHash,
  createPublicKey,
  verify as cryptoVerify,
  X509Certificate,
  type KeyObject,
} from "node:crypto";
import { AttestError, type RejectCode } from "./errors.js";
import {
  derBytes,
  derChild,
  derChildren,
  derInt,
  derIntBytes,
  derOid,
  derParse,
  derTime,
  derValue,
  expectTag,
  TAG,
  type Der,
} from "./der.js";

/** One X.509 extension as found in the certificate. */
export interface Extension {
  readonly critical: boolean;
  /** The contents of the extnValue OCTET STRING. */
  readonly value: Buffer;
}

/** A parsed certificate: Node's object for crypto, and our view of the TBS. */
export class Cert {
  readonly x509: X509Certificate;
  readonly der: Buffer;
  /** Lowercase hex SHA-256 of the DER: the cache key and the pinning fingerprint. */
  readonly fingerprint: string;
  readonly serial: Buffer;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly issuerDer: Buffer;
  readonly subjectDer: Buffer;
  readonly extensions: ReadonlyMap<string, Extension>;
  private key: KeyObject | undefined;

  private constructor(der: Buffer, fingerprint: string) {
    this.der = der;
    this.fingerprint = fingerprint;
    try {
      // Always hand Node a PEM wrapping of exactly these bytes: given a raw buffer, Node parses the first PEM block
      // it finds *inside* it, and an attacker can embed another certificate's PEM in an extension.
      this.x509 = new X509Certificate(
        `-----BEGIN CERTIFICATE-----\n${der.toString("base64")}\n-----END CERTIFICATE-----\n`,
      );
    } catch (e) {
      throw new AttestError("malformed", `certificate cannot be parsed: ${(e as Error).message}`);
    }
    const cert = derParse(der);
    const tbs = derChild(cert, 0, TAG.SEQUENCE);
    const f = derChildren(tbs);
    let i = 0;
    if (f[0]?.tag === 0xa0) i = 1; // [0] version
    const take = (): Der => {
      const d = f[i++];
      if (!d) throw new AttestError("malformed", "certificate: TBS too short");
      return d;
    };
    this.serial = derIntBytes(take());
    take(); // signature algorithm
    this.issuerDer = derBytes(expectTag(take(), TAG.SEQUENCE, "issuer"));
    const validity = expectTag(take(), TAG.SEQUENCE, "validity");
    this.notBefore = derTime(derChild(validity, 0));
    this.notAfter = derTime(derChild(validity, 1));
    this.subjectDer = derBytes(expectTag(take(), TAG.SEQUENCE, "subject"));
    const exts = new Map<string, Extension>();
    for (; i < f.length; i++) {
      if (f[i]!.tag !== 0xa3) continue;
      for (const e of derChildren(derChild(f[i]!, 0, TAG.SEQUENCE))) {
        const parts = derChildren(e);
        const oid = derOid(parts[0]!);
        const critical = parts.length === 3 && parts[1]!.tag === TAG.BOOLEAN && derValue(parts[1]!)[0] !== 0;
        const value = derValue(expectTag(parts[parts.length - 1]!, TAG.OCTET_STRING, "extnValue"));
        exts.set(oid, { critical, value });
      }
    }
    this.extensions = exts;
  }

  get publicKey(): KeyObject {
    return (this.key ??= this.x509.publicKey);
  }

  /** The SubjectPublicKeyInfo DER (what RA-TLS binds in REPORT_DATA). */
  get spki(): Buffer {
    return this.publicKey.export({ type: "spki", format: "der" });
  }

  private static readonly cache = new Map<string, Cert>();

  static clearCache(): void {
    Cert.cache.clear();
  }

  static cacheSize(): number {
    return Cert.cache.size;
  }

  /** Parses (or returns the cached parse of) a DER certificate. */
  static fromDer(der: Buffer): Cert {
    const fp = createHash("sha256").update(der).digest("hex");
    let c = Cert.cache.get(fp);
    if (!c) {
      c = new Cert(Buffer.from(der), fp);
      if (Cert.cache.size > 10_000) Cert.cache.clear();
      Cert.cache.set(fp, c);
    }
    return c;
  }

  /**
   * Parses a DER certificate without caching it: for certificates seen once (a tunnel's RA-TLS certificate), where
   * a cache would only hold memory.
   */
  static parseOnce(der: Buffer): Cert {
    return new Cert(Buffer.from(der), createHash("sha256").update(der).digest("hex"));
  }

  /** Parses every certificate of a PEM bundle, in order. */
  static fromPemBundle(pem: string | Buffer): Cert[] {
    const text = typeof pem === "string" ? pem : pem.toString("latin1");
    const re = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/g;
    const out: Cert[] = [];
    for (const m of text.matchAll(re))
      out.push(Cert.fromDer(Buffer.from(m[1]!.replace(/\s+/g, ""), "base64")));
    return out;
  }

  /** PEM or DER, one certificate. */
  static from(data: Buffer | string): Cert {
    const buf = typeof data === "string" ? Buffer.from(data, "latin1") : data;
    if (buf[0] === 0x30) return Cert.fromDer(buf);
    const certs = Cert.fromPemBundle(buf);
    if (certs.length !== 1)
      throw new AttestError("malformed", `expected one certificate, found ${certs.length}`);
    return certs[0]!;
  }

  toPem(): string {
    return this.x509.toString();
  }

  isValidAt(at: Date): boolean {
    return this.notBefore.getTime() <= at.getTime() && at.getTime() <= this.notAfter.getTime();
  }

  get subject(): string {
    return this.x509.subject.replace(/\n/g, ", ");
  }
}

const signedBy = new Map<string, boolean>();

/** Forgets every memoized parse and signature check (benchmarks use it to measure a first-seen platform). */
export function clearCertCaches(): void {
  Cert.clearCache();
  signedBy.clear();
  crlVerified.clear();
}

/** Sizes of the memo tables (tests check that attacker input cannot grow them without bound). */
export function certCacheSizes(): { certs: number; signedBy: number; crlVerified: number } {
  return { certs: Cert.cacheSize(), signedBy: signedBy.size, crlVerified: crlVerified.size };
}

/** Whether `child`'s signature verifies under `issuer`'s key and names it as issuer (memoized by both DERs). */
export function isSignedBy(child: Cert, issuer: Cert): boolean {
  const key = child.fingerprint + issuer.fingerprint;
  let ok = signedBy.get(key);
  if (ok === undefined) {
    ok = child.issuerDer.equals(issuer.subjectDer) && safeVerify(() => child.x509.verify(issuer.publicKey));
    if (signedBy.size > 20_000) signedBy.clear();
    signedBy.set(key, ok);
  }
  return ok;
}

function safeVerify(f: () => boolean): boolean {
  try {
    return f();
  } catch {
    return false;
  }
}

/** A parsed certificate revocation list. */
export interface Crl {
  readonly der: Buffer;
  readonly fingerprint: string;
  readonly issuerDer: Buffer;
  readonly thisUpdate: Date;
  readonly nextUpdate: Date | undefined;
  /** Revoked serial numbers as lowercase hex of the magnitude bytes. */
  readonly revoked: ReadonlySet<string>;
  readonly tbs: Buffer;
  readonly sigAlgOid: string;
  /** RSASSA-PSS only: the hash and salt length from the algorithm's parameters (AMD KDS CRLs). */
  readonly pss?: { hash: string; saltLength: number };
  readonly signature: Buffer;
}

const crlCache = new Map<string, Crl>();

/** Parses a DER CRL (hex text and PEM are accepted too, as PCS and bundles serve them). */
export function parseCrl(input: Buffer | string): Crl {
  let der: Buffer;
  if (typeof input === "string") {
    const t = input.trim();
    if (/^-----BEGIN X509 CRL-----/.test(t))
      der = Buffer.from(t.replace(/-----[^-]+-----|\s+/g, ""), "base64");
    else if (/^[0-9a-fA-F]+$/.test(t) && t.length % 2 === 0) der = Buffer.from(t, "hex");
    else throw new AttestError("crl_invalid", "CRL is neither DER, hex nor PEM");
  } else der = input;
  const fp = createHash("sha256").update(der).digest("hex");
  const hit = crlCache.get(fp);
  if (hit) return hit;
  let crl: Crl;
  try {
    const top = derParse(der);
    const tbs = derChild(top, 0, TAG.SEQUENCE);
    const alg = derChild(top, 1, TAG.SEQUENCE);
    const sig = derValue(derChild(top, 2, TAG.BIT_STRING)).subarray(1);
    const f = derChildren(tbs);
    let i = f[0]?.tag === TAG.INTEGER ? 1 : 0; // version
    i++; // signature algorithm
    const issuer = f[i++]!;
    const thisUpdate = derTime(f[i++]!);
    let nextUpdate: Date | undefined;
    if (f[i] && (f[i]!.tag === TAG.UTC_TIME || f[i]!.tag === TAG.GENERALIZED_TIME))
      nextUpdate = derTime(f[i++]!);
    const sigAlgOid = derOid(derChild(alg, 0));
    const pss = sigAlgOid === RSA_PSS ? pssParams(derChildren(alg)[1]) : undefined;
    const revoked = new Set<string>();
    if (f[i] && f[i]!.tag === TAG.SEQUENCE) {
      for (const entry of derChildren(f[i]!)) revoked.add(derIntBytes(derChild(entry, 0)).toString("hex"));
    }
    crl = {
      der,
      fingerprint: fp,
      issuerDer: derBytes(issuer),
      thisUpdate,
      nextUpdate,
      revoked,
      tbs: derBytes(tbs),
      sigAlgOid,
      ...(pss ? { pss } : {}),
      signature: sig,
    };
  } catch (e) {
    throw new AttestError("crl_invalid", `CRL cannot be parsed: ${(e as Error).message}`);
  }
  if (crlCache.size > 1000) crlCache.clear();
  crlCache.set(fp, crl);
  return crl;
}

const SIG_HASH: Record<string, string> = {
  "1.2.840.10045.4.3.2": "sha256",
  "1.2.840.10045.4.3.3": "sha384",
  "1.2.840.10045.4.3.4": "sha512",
  "1.2.840.113549.1.1.11": "sha256", // sha256WithRSAEncryption
  "1.2.840.113549.1.1.12": "sha384",
  "1.2.840.113549.1.1.13": "sha512",
};

/** RSASSA-PSS (RFC 4055), as AMD's ARKs sign their CRLs: SHA-384, salt 48. */
const RSA_PSS = "1.2.840.113549.1.1.10";
const PSS_HASH: Record<string, string> = {
  "2.16.840.1.101.3.4.2.1": "sha256",
  "2.16.840.1.101.3.4.2.2": "sha384",
  "2.16.840.1.101.3.4.2.3": "sha512",
};

/** RSASSA-PSS-params: [0] hashAlgorithm (default SHA-1, refused), [2] saltLength (default 20). */
function pssParams(params: Der | undefined): { hash: string; saltLength: number } {
  let hash: string | undefined;
  let saltLength = 20;
  for (const p of params && params.tag === TAG.SEQUENCE ? derChildren(params) : []) {
    if (p.tag === 0xa0) hash = PSS_HASH[derOid(derChild(derChild(p, 0, TAG.SEQUENCE), 0))];
    else if (p.tag === 0xa2) saltLength = derInt(derChild(p, 0));
  }
  // "" never verifies: an unknown or SHA-1 hash makes the CRL's signature invalid rather than guessed.
  return { hash: hash ?? "", saltLength };
}

const crlVerified = new Map<string, boolean>();

/** Checks a CRL's signature (by `issuer`) and freshness at `at`; throws `crl_invalid` / `crl_expired`. */
export function checkCrl(crl: Crl, issuer: Cert, at: Date, what: string): void {
  const key = crl.fingerprint + issuer.fingerprint;
  let ok = crlVerified.get(key);
  if (ok === undefined) {
    const hash = crl.pss ? crl.pss.hash || undefined : SIG_HASH[crl.sigAlgOid];
    const pss = crl.pss;
    ok =
      hash !== undefined &&
      crl.issuerDer.equals(issuer.subjectDer) &&
      safeVerify(() =>
        pss
          ? cryptoVerify(
              hash,
              crl.tbs,
              { key: issuer.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: pss.saltLength },
              crl.signature,
            )
          : cryptoVerify(hash, crl.tbs, issuer.publicKey, crl.signature),
      );
    if (crlVerified.size > 20_000) crlVerified.clear();
    crlVerified.set(key, ok);
  }
  if (!ok) throw new AttestError("crl_invalid", `${what} is not signed by ${issuer.subject}`);
  if (at < crl.thisUpdate || (crl.nextUpdate && at > crl.nextUpdate)) {
    throw new AttestError(
      "crl_expired",
      `${what} is not valid at ${at.toISOString()} (thisUpdate ${crl.thisUpdate.toISOString()}, nextUpdate ${crl.nextUpdate?.toISOString() ?? "none"})`,
    );
  }
}

export interface ChainOptions {
  /** Trusted roots: the chain must end in one of these (compared by DER), or in a certificate one of them signed. */
  roots: readonly Cert[];
  at: Date;
  /** CRLs to apply, matched to each certificate's issuer by name and checked for signature and freshness. */
  crls?: readonly Crl[];
  /**
   * Every non-root certificate must have a CRL from its issuer among `crls` (throws `collateral_mismatch`
   * otherwise): when CRLs are supplied, a certificate whose issuer's CRL is missing must not pass unchecked.
   */
  requireCrls?: boolean;
  /** What the chain is, for messages ("PCK chain", "VCEK chain"). */
  what: string;
}

/**
 * Verifies `chain` (leaf first, optionally ending in the root) up to a trusted root at time `at`.
 * Returns the root it ended in. Every certificate's validity period, each signature, CA flags of issuers and, when
 * CRLs are given, revocation of each non-root certificate are checked. CRLs are only looked at once the whole path
 * has verified, so a CRL is never checked against (or memoized with) an issuer that is not itself trusted.
 */
export function verifyChain(chain: readonly Cert[], opts: ChainOptions): Cert {
  if (chain.length === 0) throw new AttestError("chain_invalid", `${opts.what} is empty`);
  const path = [...chain];
  const last = path[path.length - 1]!;
  let root = opts.roots.find((r) => r.der.equals(last.der));
  if (!root) {
    root = opts.roots.find((r) => isSignedBy(last, r));
    if (!root) {
      throw new AttestError(
        "untrusted_root",
        `${opts.what} does not end in a trusted root (ends in ${last.subject})`,
      );
    }
    path.push(root);
  }
  for (let i = 0; i < path.length; i++) {
    const c = path[i]!;
    if (!c.isValidAt(opts.at)) {
      throw new AttestError(
        "cert_expired",
        `${opts.what}: certificate "${c.subject}" is not valid at ${opts.at.toISOString()} (valid ${c.notBefore.toISOString()} to ${c.notAfter.toISOString()})`,
      );
    }
    const issuer = path[i + 1] ?? root;
    if (i < path.length - 1 || c !== root) {
      if (i + 1 < path.length && !issuer.x509.ca) {
        throw new AttestError("chain_invalid", `${opts.what}: issuer "${issuer.subject}" is not a CA`);
      }
      if (!isSignedBy(c, issuer)) {
        throw new AttestError(
          "chain_invalid",
          `${opts.what}: "${c.subject}" is not signed by "${issuer.subject}"`,
        );
      }
    }
  }
  for (let i = 0; i < path.length; i++) {
    const c = path[i]!;
    if (c === root || c.der.equals(root.der)) continue;
    const issuer = path[i + 1] ?? root;
    let covered = false;
    for (const crl of opts.crls ?? []) {
      if (!crl.issuerDer.equals(issuer.subjectDer)) continue;
      covered = true;
      checkCrl(crl, issuer, opts.at, `CRL of "${issuer.subject}"`);
      if (crl.revoked.has(c.serial.toString("hex"))) {
        throw new AttestError(
          "cert_revoked",
          `${opts.what}: "${c.subject}" (serial ${c.serial.toString("hex")}) is revoked`,
        );
      }
    }
    if (opts.requireCrls && !covered) {
      throw new AttestError(
        "collateral_mismatch",
        `${opts.what}: the collateral has CRLs but none from "${issuer.subject}", so "${c.subject}" cannot be checked for revocation`,
      );
    }
  }
  return root;
}

/** A stable exception-free signature check, for quote and report signatures. */
export function verifySignature(
  alg: string,
  data: Buffer,
  key: KeyObject | Parameters<typeof createPublicKey>[0],
  sig: Buffer,
  encoding: "der" | "ieee-p1363",
): boolean {
  return safeVerify(() => cryptoVerify(alg, data, { key: key as KeyObject, dsaEncoding: encoding }, sig));
}

/** Throws `code` with `message` unless `ok`. */
export function check(ok: boolean, code: RejectCode, message: string): asserts ok {
  if (!ok) throw new AttestError(code, message);
}
