/**
 * Verification of AMD SEV-SNP reports: the endorsement key (VCEK, or VLEK for cloud-provisioned hosts) must chain
 * to a built-in ARK through an ASK (VCEK) or ASVK (VLEK), sign the report, and agree with it on the TCB and chip.
 * Certificate parsing and signature checks are memoized in x509.ts; validity periods are checked at `at` every time.
 */
import type { Claims, SnpProduct, SnpTcb } from "../claims.js";
import { derInt, derParse, derValue } from "../der.js";
import { AttestError } from "../errors.js";
import { Cert, check, checkCrl, isSignedBy, verifyChain, verifySignature, type Crl } from "../x509.js";
import { decodeTcb, snpClaims, type SnpReport } from "./report.js";
import { amdRoots, type AmdRoot } from "./roots.js";

/** AMD's VCEK/VLEK certificate extensions (KDS specification). */
const OID = {
  productName: "1.3.6.1.4.1.3704.1.2",
  blSPL: "1.3.6.1.4.1.3704.1.3.1",
  teeSPL: "1.3.6.1.4.1.3704.1.3.2",
  snpSPL: "1.3.6.1.4.1.3704.1.3.3",
  ucodeSPL: "1.3.6.1.4.1.3704.1.3.8",
  fmcSPL: "1.3.6.1.4.1.3704.1.3.9",
  hwID: "1.3.6.1.4.1.3704.1.4",
} as const;

/** A verified endorsement chain. */
export interface AmdChain {
  /** The product whose ARK the chain ends in. */
  readonly product: SnpProduct;
  /** What the leaf is, from its subject name (SEV-VCEK or SEV-VLEK). */
  readonly kind: "vcek" | "vlek";
  /** The ASK (for a VCEK) or ASVK (for a VLEK) that signed the leaf. */
  readonly issuer: Cert;
  readonly ark: Cert;
}

/** Options of {@link verifySnp}. */
export interface SnpVerifyOptions {
  /** The time at which every certificate must be valid. */
  at: Date;
  /** The VCEK or VLEK that signed the report. */
  vcek?: Cert;
  /**
   * Optional ASK or ASVK, with or without its ARK (as AMD KDS serves them). An ARK here must be one of the built-in
   * ones; an ASK/ASVK must be signed by one. Without it the built-in ASKs are used (a VLEK always needs its ASVK).
   */
  chain?: readonly Cert[];
  /**
   * The trusted ARKs (and their ASKs). Default: the built-in AMD roots. Claims verified through an ARK that is not
   * built in are marked `simulated`.
   */
  roots?: readonly AmdRoot[];
  /**
   * CRLs from the collateral. Those an ARK issued (AMD KDS `/vcek/v1/{product}/crl`) are checked against the
   * ASK/ASVK; once any ARK's CRL is given, the chain's own ARK must have one too.
   */
  crls?: readonly Crl[];
  /** Receives non-fatal observations (e.g. that revocation was not checked). */
  warnings?: string[];
}

/**
 * Verifies an SEV-SNP report: endorsement chain, report signature, VCEK TCB and chip id. Returns the claims, or
 * throws an AttestError (`vcek_missing`, `untrusted_root`, `chain_invalid`, `cert_expired`,
 * `report_signature_invalid`, `vcek_tcb_mismatch`, `chip_id_mismatch`).
 */
export function verifySnp(report: SnpReport, opts: SnpVerifyOptions): Claims {
  if (!opts.vcek)
    throw new AttestError("vcek_missing", "no VCEK or VLEK certificate was supplied for the SNP report");
  const roots = opts.roots ?? amdRoots();
  const chain = verifyAmdChain(opts.vcek, opts, roots);
  checkAmdRevocation(chain, opts.crls ?? [], roots, opts.at, opts.warnings);
  const claims = checkSnpReport(report, opts.vcek, chain);
  if (!amdRoots().some((r) => r.ark === chain.ark)) claims.simulated = true;
  return claims;
}

/**
 * Verifies `leaf` (a VCEK or VLEK) up to a trusted ARK at `opts.at` and tells which product it belongs to.
 * `roots` are AMD's built-in certificates; tests pass their own to exercise paths no public vector covers.
 */
export function verifyAmdChain(
  leaf: Cert,
  opts: { at: Date; chain?: readonly Cert[] },
  roots: readonly AmdRoot[] = amdRoots(),
): AmdChain {
  // Built-in ARKs and configured ones are compared by DER below; a certificate's own ARK is never trusted.
  const leafCn = commonName(leaf.x509.subject);
  const kind = leafCn === "SEV-VCEK" ? "vcek" : leafCn === "SEV-VLEK" ? "vlek" : undefined;
  check(
    kind !== undefined,
    "chain_invalid",
    `endorsement key certificate is "${leafCn}", not SEV-VCEK or SEV-VLEK`,
  );
  const KIND = kind.toUpperCase();
  check(
    leaf.publicKey.asymmetricKeyDetails?.namedCurve === "secp384r1",
    "chain_invalid",
    `${KIND} key is not an ECDSA P-384 key`,
  );

  const arks = roots.map((r) => r.ark);
  const extra = (opts.chain ?? []).filter((c) => !c.der.equals(leaf.der));
  const givenArks = extra.filter(selfIssued);
  const givenCas = extra.filter((c) => !selfIssued(c));
  for (const a of givenArks) {
    check(
      arks.some((r) => r.der.equals(a.der)),
      "untrusted_root",
      `${KIND} chain ends in "${a.subject}", which is not a built-in AMD ARK`,
    );
  }
  check(
    givenArks.length <= 1 && givenCas.length <= 1,
    "chain_invalid",
    `${KIND} chain has ${extra.length} certificates besides the ${KIND}; expected an ASK or ASVK and an ARK`,
  );
  // Only VCEKs have built-in issuers: an ASVK must come with the chain.
  const issuer =
    givenCas[0] ?? (kind === "vcek" ? roots.find((r) => r.ask && isSignedBy(leaf, r.ask))?.ask : undefined);
  if (!issuer) {
    throw kind === "vlek"
      ? new AttestError(
          "chain_invalid",
          "VLEK chain lacks the ASVK (SEV-VLEK-<product>) that signed the VLEK",
        )
      : new AttestError(
          "untrusted_root",
          `VCEK issued by "${commonName(leaf.x509.issuer)}" is not signed by any built-in AMD ASK`,
        );
  }
  const ark = verifyChain([leaf, issuer, ...givenArks], { roots: arks, at: opts.at, what: `${KIND} chain` });
  const product = roots.find((r) => r.ark === ark)!.product;

  // The ASK signs VCEKs and the ASVK signs VLEKs; the names keep the two roles apart.
  const issuerCn = commonName(issuer.x509.subject);
  check(
    kind === "vcek" ? issuerCn === `SEV-${product}` : issuerCn.includes("SEV-VLEK"),
    "chain_invalid",
    `${KIND} is signed by "${issuerCn}", which is not the ${kind === "vcek" ? "ASK" : "ASVK"} of ${product}`,
  );
  const name = leaf.extensions.get(OID.productName);
  if (name) {
    const text = derValue(derParse(name.value)).toString("latin1");
    check(
      text.startsWith(product),
      "chain_invalid",
      `${KIND} is for product "${text}" but chains to ARK-${product}`,
    );
  }
  return { product, kind, issuer, ark };
}

/**
 * Revocation of the ASK/ASVK by its ARK's CRL (AMD KDS; VCEKs and VLEKs have no CRL). As with Intel's PCK chain:
 * when any ARK's CRL is supplied, the chain's own ARK must have supplied one, or the chain cannot be checked and is
 * refused (`collateral_mismatch`); with no AMD CRL at all, revocation is not checked and a warning says so. A CRL
 * that is not signed by the ARK is `crl_invalid`, an outdated one `crl_expired`, a listed ASK `cert_revoked`.
 */
export function checkAmdRevocation(
  chain: AmdChain,
  crls: readonly Crl[],
  roots: readonly AmdRoot[],
  at: Date,
  warnings?: string[],
): void {
  const amdCrls = crls.filter((c) => roots.some((r) => c.issuerDer.equals(r.ark.subjectDer)));
  const own = amdCrls.filter((c) => c.issuerDer.equals(chain.ark.subjectDer));
  const what = chain.kind === "vcek" ? "ASK" : "ASVK";
  if (own.length === 0) {
    check(
      amdCrls.length === 0,
      "collateral_mismatch",
      `the collateral has AMD CRLs but none from ARK-${chain.product}, so the ${what} cannot be checked for revocation`,
    );
    warnings?.push(`no AMD CRL given: ${what} revocation not checked`);
    return;
  }
  for (const crl of own) {
    checkCrl(crl, chain.ark, at, `CRL of ARK-${chain.product}`);
    check(
      !crl.revoked.has(chain.issuer.serial.toString("hex")),
      "cert_revoked",
      `${what} "${chain.issuer.subject}" (serial ${chain.issuer.serial.toString("hex")}) is revoked by ARK-${chain.product}'s CRL`,
    );
  }
}

/**
 * Checks a report against an endorsement key whose chain {@link verifyAmdChain} verified: signing key type,
 * CPUID product, signature, TCB and chip id. Returns the report's claims.
 */
export function checkSnpReport(report: SnpReport, leaf: Cert, chain: AmdChain): Claims {
  const KIND = chain.kind.toUpperCase();
  check(
    report.signingKey !== "none",
    "report_signature_invalid",
    "SNP report is not signed (SIGNING_KEY = none)",
  );
  check(
    report.signingKey === chain.kind,
    "vcek_missing",
    `SNP report is signed by a ${report.signingKey.toUpperCase()}, but the certificate supplied is a ${KIND}`,
  );
  check(
    verifySignature("sha384", report.signedData, leaf.publicKey, report.signature, "ieee-p1363"),
    "report_signature_invalid",
    `SNP report signature does not verify with the ${KIND} (${leaf.fingerprint.slice(0, 16)}…)`,
  );
  check(
    report.product === undefined || report.product === chain.product,
    "chain_invalid",
    `SNP report's CPUID names a ${report.product} chip but the ${KIND} chains to ARK-${chain.product}`,
  );
  checkVcekTcb(leaf, decodeTcb(report.reportedTcb, chain.product));
  if (chain.kind === "vcek") checkChipId(leaf, report, chain.product);
  return snpClaims(report, chain.product, chain.kind);
}

/**
 * Checks that the VCEK/VLEK was issued for `tcb` (the report's REPORTED_TCB): each SPL extension must equal the
 * report's value, the FMC one included when `tcb.fmc` is set (Turin). Throws `vcek_tcb_mismatch`.
 */
export function checkVcekTcb(leaf: Cert, tcb: SnpTcb): void {
  const want: [string, string, number | undefined][] = [
    ["blSPL", OID.blSPL, tcb.bootloader],
    ["teeSPL", OID.teeSPL, tcb.tee],
    ["snpSPL", OID.snpSPL, tcb.snp],
    ["ucodeSPL", OID.ucodeSPL, tcb.microcode],
    ["fmcSPL", OID.fmcSPL, tcb.fmc],
  ];
  for (const [name, oid, value] of want) {
    if (value === undefined) continue;
    const ext = leaf.extensions.get(oid);
    check(ext !== undefined, "vcek_tcb_mismatch", `endorsement key certificate has no ${name} extension`);
    const got = derInt(derParse(ext.value));
    check(
      got === value,
      "vcek_tcb_mismatch",
      `endorsement key certificate ${name} is ${got}, REPORTED_TCB says ${value}`,
    );
  }
}

/**
 * Checks that a VCEK's hwID extension names the report's CHIP_ID (64 bytes; Turin: the first 8). A VCEK report
 * with a masked CHIP_ID cannot be bound to its chip and is rejected. Throws `chip_id_mismatch`.
 */
export function checkChipId(vcek: Cert, report: SnpReport, product: SnpProduct): void {
  check(
    !report.maskChipKey && report.chipId.some((b) => b !== 0),
    "chip_id_mismatch",
    "SNP report's CHIP_ID is masked (MASK_CHIP_KEY), so it cannot be matched to its VCEK",
  );
  const hwid = vcek.extensions.get(OID.hwID)?.value;
  const len = product === "Turin" ? 8 : 64;
  check(
    hwid !== undefined && hwid.length === len && hwid.equals(report.chipId.subarray(0, len)),
    "chip_id_mismatch",
    `VCEK hwID ${hwid ? hwid.toString("hex") : "(absent)"} does not match the report's CHIP_ID`,
  );
}

function selfIssued(c: Cert): boolean {
  return c.issuerDer.equals(c.subjectDer);
}

/** The CN of a name as Node prints it (one attribute per line). */
function commonName(name: string): string {
  return /^CN=(.*)$/m.exec(name)?.[1] ?? "";
}
