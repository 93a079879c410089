/**
 * Normalized claims: what verified evidence says about the TEE, independent of the evidence format.
 * Measurements are lowercase hex strings so that configs, logs and JSON compare them as text.
 */

export type TeeType = "sgx" | "tdx" | "sev-snp";

/** Intel's TCB status names, as in TCB info, plus our name for "no level matched" (which is always rejected). */
export type TcbStatus =
  | "UpToDate"
  | "SWHardeningNeeded"
  | "ConfigurationNeeded"
  | "ConfigurationAndSWHardeningNeeded"
  | "OutOfDate"
  | "OutOfDateConfigurationNeeded"
  | "Revoked"
  | "TcbLevelNotFound";

export const TCB_STATUSES: readonly TcbStatus[] = [
  "UpToDate",
  "SWHardeningNeeded",
  "ConfigurationNeeded",
  "ConfigurationAndSWHardeningNeeded",
  "OutOfDate",
  "OutOfDateConfigurationNeeded",
  "Revoked",
  "TcbLevelNotFound",
];

export interface SgxClaims {
  mrenclave: string;
  mrsigner: string;
  isvprodid: number;
  isvsvn: number;
  /** 16 bytes hex, as in the report (flags then XFRM, little-endian). */
  attributes: string;
  miscselect: number;
  cpusvn: string;
  configid: string;
  configsvn: number;
  isvextprodid: string;
  isvfamilyid: string;
}

export interface TdxClaims {
  mrtd: string;
  rtmr0: string;
  rtmr1: string;
  rtmr2: string;
  rtmr3: string;
  mrseam: string;
  mrsignerseam: string;
  seamAttributes: string;
  /** 8 bytes hex as in the report. */
  tdAttributes: string;
  septVeDisable: boolean;
  xfam: string;
  mrconfigid: string;
  mrowner: string;
  mrownerconfig: string;
  teeTcbSvn: string;
  /** TD 1.5 bodies only. */
  teeTcbSvn2?: string;
  mrservicetd?: string;
}

/** An AMD TCB version split into its component SPLs. `fmc` exists on Turin and later. */
export interface SnpTcb {
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
  fmc?: number;
  /** The 8 bytes as they stand in the report (little-endian), as 16 hex digits. */
  raw: string;
}

export type SnpProduct = "Milan" | "Genoa" | "Turin";

/** A minimum SEV-SNP TCB: each SPL named must be at least this (unnamed ones are not checked). */
export interface SnpMinTcb {
  bootloader?: number;
  tee?: number;
  snp?: number;
  microcode?: number;
  /** Turin and later only; ignored for products without an FMC SPL. */
  fmc?: number;
}

/** A site-wide minimum: one for every product, or one per product (a product not listed has no minimum). */
export type SnpMinTcbConfig = SnpMinTcb | Partial<Record<SnpProduct, SnpMinTcb>>;

export const SNP_PRODUCTS: readonly SnpProduct[] = ["Milan", "Genoa", "Turin"];
export const SNP_TCB_FIELDS = ["bootloader", "tee", "snp", "microcode", "fmc"] as const;

/** The minimum of `config` that applies to `product`, if any. */
export function snpMinFor(config: SnpMinTcbConfig | undefined, product: SnpProduct): SnpMinTcb | undefined {
  if (!config) return undefined;
  if (SNP_PRODUCTS.some((p) => p in config))
    return (config as Partial<Record<SnpProduct, SnpMinTcb>>)[product];
  return config as SnpMinTcb;
}

/**
 * The SPLs of `tcb` below `min`, as "name have < want" strings (empty when `tcb` meets the minimum). The TCB to
 * pass is REPORTED_TCB: the one the VCEK is derived for and certifies, so old firmware cannot claim a newer one.
 */
export function snpTcbShortfall(tcb: SnpTcb, min: SnpMinTcb): string[] {
  const out: string[] = [];
  for (const k of SNP_TCB_FIELDS) {
    const want = min[k];
    if (want === undefined) continue;
    const have = tcb[k];
    if (have === undefined) continue; // fmc on a product without one
    if (have < want) out.push(`${k} ${have} < ${want}`);
  }
  return out;
}

export interface SnpClaims {
  version: number;
  product: SnpProduct;
  measurement: string;
  /** The guest policy as 16 hex digits. */
  policy: string;
  policyDebug: boolean;
  policyMigrateMa: boolean;
  policySmt: boolean;
  policySingleSocket: boolean;
  vmpl: number;
  guestSvn: number;
  hostData: string;
  familyId: string;
  imageId: string;
  idKeyDigest: string;
  authorKeyDigest: string;
  reportId: string;
  chipId: string;
  /** 0 = VCEK, 1 = VLEK. */
  signingKey: "vcek" | "vlek";
  currentTcb: SnpTcb;
  reportedTcb: SnpTcb;
  committedTcb: SnpTcb;
  launchTcb: SnpTcb;
  platformInfo: string;
}

/** Everything a verified piece of evidence states. Exactly one of `sgx`, `tdx`, `snp` is set, matching `tee`. */
export interface Claims {
  tee: TeeType;
  /** Produced by the simulated TEE: no hardware protection at all. Never trust in production. */
  simulated: boolean;
  debug: boolean;
  /** 64 bytes, lowercase hex. */
  reportData: string;
  sgx?: SgxClaims;
  tdx?: TdxClaims;
  snp?: SnpClaims;
  /** Platform identifiers: FMSPC (Intel) or CHIP_ID (AMD), PCE id. */
  platform: { fmspc?: string; pceid?: string; chipId?: string };
  /** Quote format details (Intel) or report version (AMD). */
  format:
    | { kind: "dcap-quote"; version: number; bodyType: "sgx" | "td10" | "td15" }
    | { kind: "snp-report"; version: number };
}

/** The measurement that names the app: MRENCLAVE, MRTD or the SNP launch MEASUREMENT. */
export function primaryMeasurement(c: Claims): string {
  return c.sgx?.mrenclave ?? c.tdx?.mrtd ?? c.snp?.measurement ?? "";
}

/** The outcome of verifying one piece of evidence. */
export interface Verdict {
  verified: boolean;
  /** Set when verified is false: a stable code and a one-line explanation. */
  code?: string;
  reason?: string;
  /** Present whenever the evidence could be parsed (even when rejected: logs want the measurement). */
  claims?: Claims;
  /**
   * Intel: from TCB info; null when no TCB collateral was given (signatures and chains only). SEV-SNP: UpToDate or
   * OutOfDate against the configured minimum TCB (VerifyOptions.snpMinTcb); null without one.
   */
  tcbStatus: TcbStatus | null;
  advisoryIds: string[];
  /** Extra non-fatal observations (e.g. "simulated TEE: not secure"). */
  warnings: string[];
  /**
   * Intel evidence verified with collateral: whether the quoting enclave was checked against a QE identity. `false`
   * when the collateral held none for this TEE: then nothing shows the QE is Intel's (the PCE certifies any enclave
   * with the PROVISIONKEY attribute, so a host's root can run its own "QE" and sign quotes for any measurement), and
   * the identity policy treats the TCB status as Unknown. Absent for AMD evidence and without collateral.
   */
  qeIdentityVerified?: boolean;
}
