/**
 * One entry point for all evidence: detects the format (Intel DCAP quote or AMD SEV-SNP report), verifies it and
 * returns a Verdict. Never throws for bad evidence: every failure is a rejected Verdict with a stable code.
 */
import type { Claims, Verdict } from "./claims.js";
import { AttestError } from "./errors.js";
import { decodeEvidence } from "./input.js";
import { looksLikeQuote, parseQuote } from "./intel/quote.js";
import { intelRoot } from "./intel/roots.js";
import { quoteClaims, verifyQuote } from "./intel/verify.js";
import type { Collateral } from "./intel/collateral.js";
import { looksLikeSnpReport, parseSnpReport } from "./amd/report.js";
import { verifySnp } from "./amd/verify.js";
import { amdRoots, type AmdRoot } from "./amd/roots.js";
import {
  snpMinFor,
  snpTcbShortfall,
  type SnpMinTcbConfig,
  type SnpProduct,
  type TcbStatus,
} from "./claims.js";
import { Cert, isSignedBy } from "./x509.js";
import { extractEvidence, keyBindingOk, type RaTlsEvidence } from "./ratls.js";

export interface VerifyOptions {
  /** The time to verify at (certificate and collateral validity). Default: now. */
  at?: Date;
  /**
   * Collateral: Intel TCB info, QE identities, CRLs; AMD KDS CRLs (ARK-signed, revoking ASKs/ASVKs). Without it
   * Intel evidence gets only signature and chain checks (tcbStatus null) and no revocation is checked.
   */
  collateral?: Collateral;
  /**
   * SEV-SNP: the site-wide minimum TCB (gateway `trust.snpMinTcb`). With one for the report's product, a verified
   * report's tcbStatus is `UpToDate` when its REPORTED_TCB (which the VCEK certifies) meets it and `OutOfDate`
   * otherwise; without one it is null (Unknown to the identity policy).
   */
  snpMinTcb?: SnpMinTcbConfig;
  /**
   * Extra trusted roots, configured explicitly (a simulated TEE's root, a test root). Evidence that chains to one
   * of these is marked simulated. The built-in Intel and AMD roots are always trusted.
   */
  extraRoots?: readonly Cert[];
  /** AMD: the VCEK or VLEK certificate. */
  vcek?: Cert;
  /** Intel: the PCK chain for quotes that do not carry it; AMD: an ASK/ASVK (+ ARK) chain. */
  chain?: readonly Cert[];
  /**
   * RA-TLS: how far outside its notBefore..notAfter window a certificate may be, in seconds, to allow for clock
   * differences between the TEE and the verifier. Default {@link DEFAULT_CLOCK_SKEW_SECONDS}.
   */
  clockSkewSeconds?: number;
}

/** Default tolerance of an RA-TLS certificate's validity window (gateway key `trust.clockSkewSeconds`). */
export const DEFAULT_CLOCK_SKEW_SECONDS = 60;

/** Verifies evidence bytes (binary, hex or base64 text). */
export function verifyEvidence(input: Buffer | Uint8Array | string, opts: VerifyOptions = {}): Verdict {
  const at = opts.at ?? new Date();
  let claims: Claims | undefined;
  try {
    const buf = decodeEvidence(input);
    if (looksLikeQuote(buf)) {
      const q = parseQuote(buf);
      claims = quoteClaims(q);
      const roots = [intelRoot(), ...(opts.extraRoots ?? [])];
      const r = verifyQuote(q, claims, {
        at,
        roots,
        productionRoots: new Set([intelRoot().fingerprint]),
        collateral: withoutAmdCrls(opts.collateral, opts.extraRoots ?? []),
        pckChain: opts.chain,
      });
      return {
        verified: true,
        claims,
        tcbStatus: r.tcbStatus,
        advisoryIds: r.advisoryIds,
        warnings: r.warnings,
        ...(r.qeIdentityVerified === undefined ? {} : { qeIdentityVerified: r.qeIdentityVerified }),
      };
    }
    if (looksLikeSnpReport(buf)) {
      const report = parseSnpReport(buf);
      claims = report.claims; // unverified view, for logging a rejection
      const roots = [...amdRoots(), ...amdExtraRoots(opts.extraRoots ?? [])];
      const snpWarnings: string[] = [];
      claims = verifySnp(report, {
        at,
        vcek: opts.vcek,
        chain: opts.chain,
        roots,
        crls: opts.collateral?.crls ?? [],
        warnings: snpWarnings,
      });
      const snp = claims.snp!;
      const warnings = claims.simulated
        ? [
            `INSECURE: trusted through a non-AMD root (ARK-${snp.product} configured as an extra root): simulated or test TEE, no hardware protection`,
          ]
        : [];
      warnings.push(...snpWarnings);
      const min = snpMinFor(opts.snpMinTcb, snp.product);
      let tcbStatus: TcbStatus | null = null;
      if (min) {
        const short = snpTcbShortfall(snp.reportedTcb, min);
        tcbStatus = short.length ? "OutOfDate" : "UpToDate";
        if (short.length) warnings.push(`REPORTED_TCB is below the minimum TCB: ${short.join(", ")}`);
      }
      return { verified: true, claims, tcbStatus, advisoryIds: [], warnings };
    }
    throw new AttestError(
      "unsupported",
      "evidence is neither an Intel DCAP quote (v3-v5) nor an AMD SEV-SNP report (v2-v5)",
    );
  } catch (e) {
    if (!(e instanceof AttestError)) {
      // A bug, not bad evidence: still fail closed, but say so.
      return reject("internal", `internal error while verifying: ${(e as Error).message}`, claims);
    }
    return reject(e.code, e.message, claims, e.detail);
  }
}

/**
 * The configured extra roots that can anchor AMD chains: self-signed certificates named like an ARK
 * ("CN=ARK-Milan", "-Genoa", "-Turin"), each with the ASK ("CN=SEV-<product>") found among the extra roots and
 * signed by it, if any (otherwise the evidence must bring its ASK).
 */
export function amdExtraRoots(extra: readonly Cert[]): AmdRoot[] {
  const cn = (c: Cert): string => /^CN=(.*)$/m.exec(c.x509.subject)?.[1] ?? "";
  const out: AmdRoot[] = [];
  for (const ark of extra) {
    const m = /^ARK-(Milan|Genoa|Turin)$/.exec(cn(ark));
    if (!m || !ark.issuerDer.equals(ark.subjectDer)) continue;
    const product = m[1] as SnpProduct;
    const ask = extra.find((c) => c !== ark && cn(c) === `SEV-${product}` && isSignedBy(c, ark));
    out.push(ask ? { product, ark, ask } : { product, ark });
  }
  return out;
}

/**
 * The collateral without the CRLs AMD's ARKs issued: one collateral directory may serve both vendors, and Intel's
 * rule "any CRL given → every certificate must be covered" must not count an AMD CRL as an Intel one.
 */
function withoutAmdCrls(col: Collateral | undefined, extra: readonly Cert[]): Collateral | undefined {
  if (!col || col.crls.length === 0) return col;
  const arks = [...amdRoots(), ...amdExtraRoots(extra)].map((r) => r.ark.subjectDer);
  const crls = col.crls.filter((c) => !arks.some((a) => c.issuerDer.equals(a)));
  return crls.length === col.crls.length ? col : { ...col, crls };
}

function reject(
  code: string,
  reason: string,
  claims: Claims | undefined,
  detail: AttestError["detail"] = {},
): Verdict {
  return {
    verified: false,
    code,
    reason,
    claims,
    tcbStatus: detail.tcbStatus ?? null,
    advisoryIds: detail.advisoryIds ?? [],
    warnings: [],
  };
}

/**
 * Verifies an RA-TLS certificate: extracts the evidence from its extension, verifies it, and checks that
 * REPORT_DATA binds the certificate's public key. A certificate whose evidence belongs to another key is rejected
 * with `key_binding_invalid` even when the evidence itself is genuine.
 */
export function verifyRaTlsCert(cert: Cert, opts: VerifyOptions = {}): Verdict {
  // The certificate's validity window, checked first (it costs nothing): evidence stays genuine forever, so a
  // certificate kept past its notAfter (a leaked key, an old build) or dated ahead must not be accepted on it.
  const at = opts.at ?? new Date();
  const skew = (opts.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS) * 1000;
  if (at.getTime() > cert.notAfter.getTime() + skew) {
    return reject(
      "ratls_cert_expired",
      `RA-TLS certificate expired at ${cert.notAfter.toISOString()} (now ${at.toISOString()}, allowed clock skew ${skew / 1000} s)`,
      undefined,
    );
  }
  if (at.getTime() < cert.notBefore.getTime() - skew) {
    return reject(
      "ratls_cert_not_yet_valid",
      `RA-TLS certificate is not valid before ${cert.notBefore.toISOString()} (now ${at.toISOString()}, allowed clock skew ${skew / 1000} s)`,
      undefined,
    );
  }
  let ev: RaTlsEvidence;
  let endorsed: Pick<VerifyOptions, "vcek" | "chain"> = {};
  try {
    ev = extractEvidence(cert);
    if (ev.endorsements) {
      const [vcek, ...chain] = ev.endorsements.map((der) => {
        try {
          return Cert.fromDer(der);
        } catch (e) {
          throw new AttestError("malformed", `RA-TLS endorsement certificate: ${(e as Error).message}`);
        }
      });
      // The certificate's own endorsements replace any given in opts: they belong to this evidence.
      endorsed = { vcek, chain };
    }
  } catch (e) {
    if (e instanceof AttestError) return reject(e.code, e.message, undefined);
    throw e;
  }
  const v = verifyEvidence(ev.evidence, { ...opts, ...endorsed });
  if (!v.verified || !v.claims) return v;
  // The tag says what the evidence is; evidence of another kind under it is not what was signed for.
  if ((v.claims.tee === "sev-snp") !== (ev.kind === "sev-snp")) {
    return reject(
      "malformed",
      `RA-TLS evidence is ${v.claims.tee} but its extension is tagged as ${ev.kind} evidence`,
      v.claims,
    );
  }
  if (!keyBindingOk(cert, Buffer.from(v.claims.reportData, "hex"), ev)) {
    return {
      ...reject(
        "key_binding_invalid",
        "REPORT_DATA does not bind this certificate's public key (SHA-256 of its SubjectPublicKeyInfo)",
        v.claims,
      ),
      tcbStatus: v.tcbStatus,
      advisoryIds: v.advisoryIds,
    };
  }
  return v;
}
