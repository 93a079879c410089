/**
 * Intel DCAP quote verification (SGX and TDX), offline, following Intel's published rules:
 *
 *   1. PCK chain → pinned root, with validity periods and, when given, root CA and PCK CRLs
 *   2. QE report signed by the PCK key
 *   3. QE REPORT_DATA = SHA-256(attestation key ‖ QE authentication data) ‖ zeros
 *   4. quote (header ‖ body) signed by the attestation key
 *   with collateral:
 *   5. TCB info and QE identity: signed (over their exact bytes) by the TCB Signing certificate of the PCK chain's
 *      own root, fresh
 *   6. TCB info matches the PCK's FMSPC and PCE-ID and the quote's TEE
 *   7. QE report matches the QE identity (MRSIGNER, ISVPRODID, masked MISCSELECT and ATTRIBUTES)
 *   8. TDX: module identity (MRSIGNERSEAM, SEAM attributes) by TEE_TCB_SVN[1]
 *   9. TCB levels for the platform, the TDX module and the QE, converged into one status with advisory IDs
 */
import { createHash, createPublicKey, type KeyObject } from "node:crypto";
import type { Claims, TcbStatus } from "../claims.js";
import { AttestError } from "../errors.js";
import { isZeroTail } from "../input.js";
import { Cert, check, isSignedBy, verifyChain, verifySignature, type Crl } from "../x509.js";
import { signedJsonOk, type Collateral, type SignedJson } from "./collateral.js";
import { pckExtensions } from "./pck.js";
import {
  CERT_PCK_CHAIN_PEM,
  INTEL_QE_VENDOR_ID,
  SGX,
  TD,
  quoteReportData,
  sgxClaims,
  sgxDebug,
  tdDebug,
  tdxClaims,
  type Quote,
} from "./quote.js";
import { converge, isvLevel, matchTcbLevels, unionAdvisories } from "./tcb.js";

export interface IntelVerifyOptions {
  at: Date;
  /** Trusted roots; the chain must end in one. */
  roots: readonly Cert[];
  /** Fingerprints of roots that stand for real hardware; anything else marks the claims simulated. */
  productionRoots: ReadonlySet<string>;
  collateral?: Collateral;
  /** The PCK certificate chain when the quote does not carry it (certification data types 1 to 4). */
  pckChain?: readonly Cert[];
}

export interface IntelResult {
  tcbStatus: TcbStatus | null;
  advisoryIds: string[];
  warnings: string[];
  simulated: boolean;
  /**
   * With collateral: whether a QE identity for this TEE was found and checked (false: the quoting enclave is
   * unverified, see Verdict.qeIdentityVerified). Undefined without collateral.
   */
  qeIdentityVerified?: boolean;
}

/** Claims of a parsed quote (before verification: logs want the measurement of rejected quotes too). */
export function quoteClaims(q: Quote): Claims {
  const reportData = quoteReportData(q).toString("hex");
  const format = { kind: "dcap-quote" as const, version: q.version, bodyType: q.bodyType };
  if (q.bodyType === "sgx") {
    return {
      tee: "sgx",
      simulated: false,
      debug: sgxDebug(q.body),
      reportData,
      sgx: sgxClaims(q.body),
      platform: {},
      format,
    };
  }
  return {
    tee: "tdx",
    simulated: false,
    debug: tdDebug(q.body),
    reportData,
    tdx: tdxClaims(q.body, q.bodyType),
    platform: {},
    format,
  };
}

// Attestation keys belong to a platform's quoting enclave and stay the same across its quotes: keep the parsed
// KeyObjects (parsing a point costs as much as a signature check). Bounded; cleared whole when full.
const akCache = new Map<string, KeyObject>();

function rawP256Key(raw: Buffer): KeyObject {
  const id = raw.toString("base64url");
  let key = akCache.get(id);
  if (!key) {
    try {
      // JWK import is about 1.6x faster than SPKI DER in Node 20's OpenSSL 3.
      const jwk = {
        kty: "EC",
        crv: "P-256",
        x: raw.subarray(0, 32).toString("base64url"),
        y: raw.subarray(32).toString("base64url"),
      };
      key = createPublicKey({ key: jwk, format: "jwk" });
    } catch {
      throw new AttestError("malformed", "attestation key is not a valid P-256 point");
    }
    if (akCache.size >= 4096) akCache.clear();
    akCache.set(id, key);
  }
  return key;
}

/** Forgets parsed attestation keys (benchmarks use it to measure a platform seen for the first time). */
export function clearKeyCache(): void {
  akCache.clear();
}

function pckChainOf(q: Quote, opts: IntelVerifyOptions): Cert[] {
  if (q.certType === CERT_PCK_CHAIN_PEM) {
    const chain = Cert.fromPemBundle(q.certData);
    check(chain.length > 0, "chain_invalid", "quote's PCK certificate chain holds no certificate");
    return chain;
  }
  check(
    !!opts.pckChain?.length,
    "chain_invalid",
    `quote carries no PCK certificate (certification data type ${q.certType}): supply the PCK chain (--chain)`,
  );
  return [...opts.pckChain!];
}

/** Subject CN of Intel's TCB Signing certificate (Intel's QVL: TCBSigningChain), issued directly by the root. */
export const TCB_SIGNING_CN = "Intel SGX TCB Signing";
/** The simulated TEE's TCB signing certificate (src/attest/sim.ts): accepted under a configured root only. */
export const SIM_TCB_SIGNING_CN = "SENG Simulated TCB Signing";

function nameAttr(name: string, key: string): string | undefined {
  return new RegExp(`^${key}=(.*)$`, "m").exec(name)?.[1];
}

/**
 * Verifies a signed collateral document as Intel's QVL does: the signer must be a TCB Signing certificate (by its
 * subject, not a CA) issued directly by `root`, the very root the PCK chain ended in, valid and not revoked; its
 * signature must cover the exact bytes; and the document must be fresh. Any other certificate that chains to a
 * trusted root (a PCK leaf, a PCK CA, a configured test root's signer) cannot vouch for TCB levels or QE identities,
 * and collateral under one root never applies to evidence under another (a test root cannot sign production
 * collateral, so it cannot lift a real, out-of-date platform to UpToDate).
 */
function checkSigned(
  doc: SignedJson,
  what: string,
  col: Collateral,
  opts: IntelVerifyOptions,
  crls: readonly Crl[],
  root: Cert,
): void {
  const pool = [...doc.chain, ...col.certs];
  const signer = doc.chain[0] ?? pool.find((c) => signedJsonOk(doc, c));
  check(
    !!signer,
    "collateral_signature_invalid",
    `${what} (${doc.source}): no signing certificate in the collateral verifies its signature`,
  );
  check(
    signedJsonOk(doc, signer!),
    "collateral_signature_invalid",
    `${what} (${doc.source}): signature does not verify`,
  );
  const production = opts.productionRoots.has(root.fingerprint);
  const cn = nameAttr(signer!.x509.subject, "CN");
  const roleOk =
    !signer!.x509.ca &&
    (production
      ? cn === TCB_SIGNING_CN && nameAttr(signer!.x509.subject, "O") === "Intel Corporation"
      : cn === TCB_SIGNING_CN || cn === SIM_TCB_SIGNING_CN);
  check(
    roleOk,
    "collateral_signature_invalid",
    `${what} (${doc.source}) is signed by "${signer!.subject}", which is not a TCB Signing certificate (CN=${TCB_SIGNING_CN})`,
  );
  check(
    isSignedBy(signer!, root),
    "collateral_signature_invalid",
    `${what} (${doc.source}): its TCB Signing certificate is not issued by "${root.subject}", the root of the quote's PCK chain (collateral must come from the quote's own root)`,
  );
  verifyChain([signer!], {
    roots: [root],
    at: opts.at,
    crls,
    requireCrls: crls.length > 0,
    what: `${what} signing chain`,
  });
  check(
    opts.at >= doc.issueDate && opts.at <= doc.nextUpdate,
    "collateral_expired",
    `${what} (${doc.source}) is not valid at ${opts.at.toISOString()} (issued ${doc.issueDate.toISOString()}, next update ${doc.nextUpdate.toISOString()})`,
  );
}

/**
 * The newest of several signed documents for the same platform and TEE (a collateral directory may hold an older
 * TCB info or QE identity next to the current one, both still inside their validity window): the highest
 * tcbEvaluationDataNumber, then the latest issueDate, among those valid at `at` (all of them when none is, so that
 * the rejection says "expired"). Load order must not decide, or a platform demoted by a TCB recovery would keep its
 * old status.
 */
function newest<T extends SignedJson & { tcbEvaluationDataNumber: number }>(
  docs: readonly T[],
  at: Date,
): T | undefined {
  const current = docs.filter((d) => at >= d.issueDate && at <= d.nextUpdate);
  let best: T | undefined;
  for (const d of current.length ? current : docs) {
    if (
      !best ||
      d.tcbEvaluationDataNumber > best.tcbEvaluationDataNumber ||
      (d.tcbEvaluationDataNumber === best.tcbEvaluationDataNumber && d.issueDate > best.issueDate)
    )
      best = d;
  }
  return best;
}

function masked(value: Buffer, mask: Buffer): Buffer {
  const out = Buffer.alloc(value.length);
  for (let i = 0; i < value.length; i++) out[i] = value[i]! & mask[i]!;
  return out;
}

/**
 * Verifies a parsed quote. Throws AttestError on any failure (fail closed); on success returns the TCB status
 * (null without collateral), advisory IDs and warnings. `claims.platform` is filled in from the PCK certificate.
 */
export function verifyQuote(q: Quote, claims: Claims, opts: IntelVerifyOptions): IntelResult {
  const warnings: string[] = [];
  check(q.qeVendorId === INTEL_QE_VENDOR_ID, "unsupported", `QE vendor ${q.qeVendorId} is not Intel's`);

  // 1. PCK chain.
  const chain = pckChainOf(q, opts);
  const crls = opts.collateral?.crls ?? [];
  // When CRLs are supplied, each certificate of the chain must be covered by its issuer's CRL (Intel's QVL requires
  // the PCK CRL of the PCK's own issuer): a CRL of the other PCK CA must not let a revoked PCK through unchecked.
  const requireCrls = crls.length > 0;
  const root = verifyChain(chain, { roots: opts.roots, at: opts.at, crls, requireCrls, what: "PCK chain" });
  const pck = chain[0]!;
  const ext = pckExtensions(pck);
  claims.platform = { fmspc: ext.fmspc, pceid: ext.pceid };
  const simulated = !opts.productionRoots.has(root.fingerprint);
  if (simulated) {
    claims.simulated = true;
    warnings.push(
      `INSECURE: trusted through a non-Intel root ("${root.subject}"): simulated or test TEE, no hardware protection`,
    );
  }
  if (crls.length === 0) warnings.push("no CRLs given: PCK certificate revocation not checked");
  if (!isZeroTail(q.extraBytes, 0)) {
    warnings.push(
      `${q.extraBytes.length} bytes after the quote's end were ignored (not covered by its signature)`,
    );
  }

  // 2-4. QE report, its binding of the attestation key, the quote signature.
  check(
    verifySignature("sha256", q.qeReport, pck.publicKey, q.qeReportSignature, "ieee-p1363"),
    "qe_report_signature_invalid",
    "QE report signature does not verify with the PCK certificate's key",
  );
  const binding = createHash("sha256").update(q.attestKey).update(q.qeAuthData).digest();
  const qeReportData = q.qeReport.subarray(SGX.reportdata, SGX.reportdata + 64);
  check(
    binding.equals(qeReportData.subarray(0, 32)) && qeReportData.subarray(32).every((b) => b === 0),
    "attestation_key_binding_invalid",
    "QE report data does not bind the attestation key (SHA-256 of key ‖ QE authentication data)",
  );
  check(
    verifySignature("sha256", q.signedData, rawP256Key(q.attestKey), q.signature, "ieee-p1363"),
    "quote_signature_invalid",
    "quote signature does not verify with the attestation key",
  );

  const col = opts.collateral;
  if (!col) return { tcbStatus: null, advisoryIds: [], warnings, simulated };

  // 5-6. TCB info.
  const isTdx = q.bodyType !== "sgx";
  const tcbId = isTdx ? "TDX" : "SGX";
  const info = newest(
    col.tcbInfos.filter((t) => t.fmspc === ext.fmspc && t.id === tcbId && (!isTdx || t.version >= 3)),
    opts.at,
  );
  check(
    !!info,
    "collateral_mismatch",
    `collateral has no ${tcbId} TCB info for FMSPC ${ext.fmspc} (has: ${col.tcbInfos.map((t) => `${t.id}/${t.fmspc}`).join(", ") || "none"})`,
  );
  checkSigned(info!, "TCB info", col, opts, crls, root);
  check(
    info!.pceId === ext.pceid,
    "collateral_mismatch",
    `TCB info PCE-ID ${info!.pceId} differs from the PCK's ${ext.pceid}`,
  );

  // 7. QE identity.
  const qeId = isTdx ? "TD_QE" : "QE";
  const identity = newest(
    col.identities.filter((i) => i.id === qeId),
    opts.at,
  );
  let qeStatus: TcbStatus | undefined;
  let qeAdvisories: string[] = [];
  if (!identity) {
    warnings.push(`no ${qeId} identity in the collateral: the quoting enclave's identity was not checked`);
  } else {
    checkSigned(identity, "QE identity", col, opts, crls, root);
    const r = q.qeReport;
    check(
      r.subarray(SGX.mrsigner, SGX.mrsigner + 32).equals(identity.mrsigner),
      "qe_identity_mismatch",
      "QE MRSIGNER differs from the QE identity",
    );
    check(
      r.readUInt16LE(SGX.isvprodid) === identity.isvprodid,
      "qe_identity_mismatch",
      "QE ISVPRODID differs from the QE identity",
    );
    check(
      masked(r.subarray(SGX.miscselect, SGX.miscselect + 4), identity.miscselectMask).equals(
        identity.miscselect,
      ),
      "qe_identity_mismatch",
      "QE MISCSELECT (masked) differs from the QE identity",
    );
    check(
      masked(r.subarray(SGX.attributes, SGX.attributes + 16), identity.attributesMask).equals(
        identity.attributes,
      ),
      "qe_identity_mismatch",
      "QE ATTRIBUTES (masked) differ from the QE identity",
    );
    const level = isvLevel(identity.tcbLevels, r.readUInt16LE(SGX.isvsvn));
    // Intel's QVL (EnclaveReportVerifier): a QE level is UpToDate, Revoked, or else OutOfDate.
    qeStatus = !level
      ? "TcbLevelNotFound"
      : level.status === "UpToDate" || level.status === "Revoked"
        ? level.status
        : "OutOfDate";
    qeAdvisories = level && level.status !== "UpToDate" ? level.advisoryIds : [];
  }

  // 8. TDX module identity.
  const teeTcbSvn = isTdx ? q.body.subarray(TD.teeTcbSvn, TD.teeTcbSvn + 16) : undefined;
  let moduleStatus: TcbStatus | undefined;
  let moduleAdvisories: string[] = [];
  if (isTdx) {
    const version = teeTcbSvn![1]!;
    let signer = info!.tdxModule?.mrsigner;
    let attributes = info!.tdxModule?.attributes;
    let moduleId;
    if (version > 0) {
      const name = `TDX_${version.toString(16).padStart(2, "0").toUpperCase()}`;
      moduleId = info!.tdxModuleIdentities?.find((m) => m.id.toUpperCase() === name);
      check(!!moduleId, "tdx_module_mismatch", `TCB info has no TDX module identity ${name}`);
      signer = moduleId!.mrsigner;
      attributes = moduleId!.attributes;
    }
    check(!!signer && !!attributes, "collateral_invalid", "TDX TCB info lacks the tdxModule description");
    check(
      q.body.subarray(TD.mrsignerseam, TD.mrsignerseam + 48).equals(signer!),
      "tdx_module_mismatch",
      "MRSIGNERSEAM differs from the TDX module identity",
    );
    const seamAttr = q.body.subarray(TD.seamAttributes, TD.seamAttributes + 8);
    check(
      seamAttr.every((b) => b === 0) && seamAttr.equals(attributes!),
      "tdx_module_mismatch",
      "SEAM attributes are not zero and equal to the TDX module identity's",
    );
    if (moduleId) {
      const level = isvLevel(moduleId.tcbLevels, teeTcbSvn![0]!);
      moduleStatus = level?.status ?? "TcbLevelNotFound";
      moduleAdvisories = level?.advisoryIds ?? [];
    }
  }

  // 9. TCB levels and the combined status.
  const levels = matchTcbLevels(info!, ext.cpusvnComponents, ext.pcesvn, teeTcbSvn);
  const platform = isTdx ? levels.tdx : levels.sgx;
  let status: TcbStatus = platform?.status ?? "TcbLevelNotFound";
  if (moduleStatus && status !== "TcbLevelNotFound") status = converge(status, moduleStatus);
  if (qeStatus && status !== "TcbLevelNotFound") status = converge(status, qeStatus);
  const advisoryIds = unionAdvisories(platform?.advisoryIds, moduleAdvisories, qeAdvisories);
  if (status === "TcbLevelNotFound") {
    throw new AttestError(
      "tcb_level_not_found",
      `no TCB level of ${info!.source} matches this platform (FMSPC ${ext.fmspc})`,
      {
        tcbStatus: status,
      },
    );
  }
  if (status === "Revoked") {
    throw new AttestError("tcb_revoked", "the platform's TCB level is revoked", {
      tcbStatus: status,
      advisoryIds,
    });
  }
  return { tcbStatus: status, advisoryIds, warnings, simulated, qeIdentityVerified: !!identity };
}
