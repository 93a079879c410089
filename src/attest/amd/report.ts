/**
 * AMD SEV-SNP ATTESTATION_REPORT, versions 2 to 5, as laid out in AMD's "SEV Secure Nested Paging Firmware ABI
 * Specification" (rev 1.55 to 1.57). All integers are little-endian.
 *
 *   0x000 signed body (0x2A0 bytes) | 0x2A0 signature R (72) | 0x2E8 signature S (72) | 0x330 reserved to 0x4A0
 *
 * Parsing checks structure only; signatures, chains and TCB agreement are in verify.ts. Reserved bytes inside the
 * signed body are left to the signature (later firmware may define them); unsigned bytes after it must be zero so
 * that a report has exactly one encoding.
 */
import type { Claims, SnpClaims, SnpProduct, SnpTcb } from "../claims.js";
import { AttestError, need } from "../errors.js";
import { isZeroTail } from "../input.js";

/** Size of an ATTESTATION_REPORT. */
export const SNP_REPORT_LEN = 0x4a0;
/** The report signature covers bytes 0x000 to 0x29F. */
export const SNP_SIGNED_LEN = 0x2a0;
const SIG_R = 0x2a0;
const SIG_S = 0x2e8;
const SIG_END = 0x330;
/** R and S are 72-byte little-endian fields; a P-384 value fills the low 48 bytes. */
const P384_LEN = 48;
const SIG_ECDSA_P384_SHA384 = 1;

/** Who signed the report: KEY_INFO bits 4:2 (0 = VCEK, 1 = VLEK, 7 = none). */
export type SnpSigningKey = "vcek" | "vlek" | "none";

/** A structurally valid report. Byte fields are views of `raw`, which the parser copied from its input. */
export interface SnpReport {
  /** The 1184 report bytes, without trailing padding. */
  readonly raw: Buffer;
  readonly version: number;
  readonly guestSvn: number;
  readonly policy: bigint;
  readonly abiMajor: number;
  readonly abiMinor: number;
  readonly policySmt: boolean;
  readonly policyMigrateMa: boolean;
  readonly policyDebug: boolean;
  readonly policySingleSocket: boolean;
  readonly familyId: Buffer;
  readonly imageId: Buffer;
  readonly vmpl: number;
  readonly sigAlgo: number;
  readonly platformInfo: bigint;
  readonly keyInfo: number;
  readonly authorKeyEn: boolean;
  readonly maskChipKey: boolean;
  readonly signingKey: SnpSigningKey;
  readonly reportData: Buffer;
  readonly measurement: Buffer;
  readonly hostData: Buffer;
  readonly idKeyDigest: Buffer;
  readonly authorKeyDigest: Buffer;
  readonly reportId: Buffer;
  readonly reportIdMa: Buffer;
  readonly chipId: Buffer;
  /** TCB_VERSION fields, 8 raw bytes each: their layout depends on the product (see {@link decodeTcb}). */
  readonly currentTcb: Buffer;
  readonly reportedTcb: Buffer;
  readonly committedTcb: Buffer;
  readonly launchTcb: Buffer;
  /** Version 3 and later: CPUID family (combined), model (combined) and stepping of the chip. */
  readonly cpuid?: { readonly family: number; readonly model: number; readonly stepping: number };
  /** The product named by the CPUID fields; undefined before version 3 or for models this parser does not know. */
  readonly product?: SnpProduct;
  readonly currentVersion: FirmwareVersion;
  readonly committedVersion: FirmwareVersion;
  /** Version 5 and later. */
  readonly launchMitVector?: bigint;
  readonly currentMitVector?: bigint;
  /** The bytes the signature covers (0x000 to 0x29F). */
  readonly signedData: Buffer;
  /** r‖s, 48 bytes each, big-endian: what `crypto.verify` takes with `dsaEncoding: "ieee-p1363"`. */
  readonly signature: Buffer;
  /**
   * Unverified claims, for logging rejected evidence. Before version 3 the product is a guess from the CHIP_ID
   * layout (Turin's is 8 bytes) and Genoa shows as Milan (same TCB layout); `verifySnp` returns the claims with the
   * product its chain established.
   */
  readonly claims: Claims;
}

export interface FirmwareVersion {
  readonly major: number;
  readonly minor: number;
  readonly build: number;
}

/** A cheap sniff for dispatchers: a small version number and signature algorithm 1. {@link parseSnpReport} decides. */
export function looksLikeSnpReport(buf: Buffer): boolean {
  if (buf.length < 0x38) return false;
  const v = buf.readUInt32LE(0);
  return v >= 1 && v <= 31 && buf.readUInt32LE(0x34) === SIG_ECDSA_P384_SHA384;
}

/** The product a CPUID family/model belongs to (AMD's family 19h and 1Ah model ranges). */
export function productFromCpuid(family: number, model: number): SnpProduct | undefined {
  if (family === 0x19 && model <= 0x0f) return "Milan";
  if (family === 0x19 && ((model >= 0x10 && model <= 0x1f) || (model >= 0xa0 && model <= 0xaf)))
    return "Genoa";
  if (family === 0x1a && model <= 0x11) return "Turin";
  return undefined;
}

/**
 * Parses an ATTESTATION_REPORT. Trailing zero bytes are tolerated (reports often arrive in a padded buffer).
 * Throws `malformed` for a wrong size or an impossible field and `unsupported` for report versions other than 2 to 5
 * and signature algorithms other than ECDSA P-384 with SHA-384.
 */
export function parseSnpReport(input: Buffer): SnpReport {
  need(input.length >= SNP_REPORT_LEN, `SNP report truncated: ${input.length} bytes, need ${SNP_REPORT_LEN}`);
  need(
    isZeroTail(input, SNP_REPORT_LEN),
    `SNP report is followed by ${input.length - SNP_REPORT_LEN} bytes that are not zero padding`,
  );
  const r = Buffer.from(input.subarray(0, SNP_REPORT_LEN));
  const version = r.readUInt32LE(0x00);
  if (version < 2 || version > 5) {
    throw new AttestError(
      "unsupported",
      `SNP report version ${version} is not supported (versions 2 to 5 are)`,
    );
  }
  const sigAlgo = r.readUInt32LE(0x34);
  if (sigAlgo !== SIG_ECDSA_P384_SHA384) {
    throw new AttestError(
      "unsupported",
      `SNP report signature algorithm ${sigAlgo} is not supported (1, ECDSA P-384)`,
    );
  }
  const policy = r.readBigUInt64LE(0x08);
  const bit = (n: number): boolean => ((policy >> BigInt(n)) & 1n) === 1n;
  need(bit(17), "SNP report policy bit 17 (reserved, must be 1) is 0");

  const keyInfo = r.readUInt32LE(0x48);
  need(keyInfo >>> 5 === 0, `SNP report KEY_INFO 0x${keyInfo.toString(16)} sets reserved bits 31:5`);
  const keySel = (keyInfo >>> 2) & 7;
  const signingKey = keySel === 0 ? "vcek" : keySel === 1 ? "vlek" : keySel === 7 ? "none" : undefined;
  need(signingKey, `SNP report SIGNING_KEY ${keySel} is reserved`);

  // The signature area is not signed: only the low 48 bytes of R and S may be set, the rest must be zero.
  need(
    isZero(r, SIG_R + P384_LEN, SIG_S) && isZero(r, SIG_S + P384_LEN, SIG_END),
    "SNP report signature R or S has non-zero bytes above 48",
  );
  need(
    isZero(r, SIG_END, SNP_REPORT_LEN),
    "SNP report has non-zero bytes in the reserved area after the signature",
  );

  let cpuid: SnpReport["cpuid"];
  if (version >= 3) cpuid = { family: r[0x188]!, model: r[0x189]!, stepping: r[0x18a]! };
  const fw = (o: number): FirmwareVersion => ({ build: r[o]!, minor: r[o + 1]!, major: r[o + 2]! });
  const at = (o: number, n: number): Buffer => r.subarray(o, o + n);
  const report: Omit<SnpReport, "claims"> = {
    raw: r,
    version,
    guestSvn: r.readUInt32LE(0x04),
    policy,
    abiMinor: Number(policy & 0xffn),
    abiMajor: Number((policy >> 8n) & 0xffn),
    policySmt: bit(16),
    policyMigrateMa: bit(18),
    policyDebug: bit(19),
    policySingleSocket: bit(20),
    familyId: at(0x10, 16),
    imageId: at(0x20, 16),
    vmpl: r.readUInt32LE(0x30),
    sigAlgo,
    currentTcb: at(0x38, 8),
    platformInfo: r.readBigUInt64LE(0x40),
    keyInfo,
    authorKeyEn: (keyInfo & 1) !== 0,
    maskChipKey: (keyInfo & 2) !== 0,
    signingKey,
    reportData: at(0x50, 64),
    measurement: at(0x90, 48),
    hostData: at(0xc0, 32),
    idKeyDigest: at(0xe0, 48),
    authorKeyDigest: at(0x110, 48),
    reportId: at(0x140, 32),
    reportIdMa: at(0x160, 32),
    reportedTcb: at(0x180, 8),
    cpuid,
    product: cpuid && productFromCpuid(cpuid.family, cpuid.model),
    chipId: at(0x1a0, 64),
    committedTcb: at(0x1e0, 8),
    currentVersion: fw(0x1e8),
    committedVersion: fw(0x1ec),
    launchTcb: at(0x1f0, 8),
    launchMitVector: version >= 5 ? r.readBigUInt64LE(0x1f8) : undefined,
    currentMitVector: version >= 5 ? r.readBigUInt64LE(0x200) : undefined,
    signedData: r.subarray(0, SNP_SIGNED_LEN),
    signature: Buffer.concat([bigEndian(r, SIG_R), bigEndian(r, SIG_S)]),
  };
  const chipTail = report.chipId.subarray(8);
  const guess =
    report.product ?? (chipTail.every((b) => b === 0) && !isZero(r, 0x1a0, 0x1a8) ? "Turin" : "Milan");
  return { ...report, claims: snpClaims(report, guess, signingKey === "vlek" ? "vlek" : "vcek") };
}

function isZero(buf: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (buf[i] !== 0) return false;
  return true;
}

/** The low 48 bytes of a 72-byte little-endian field, as big-endian. */
function bigEndian(r: Buffer, offset: number): Buffer {
  return Buffer.from(r.subarray(offset, offset + P384_LEN)).reverse();
}

/**
 * Splits a TCB_VERSION into its SPLs. Milan and Genoa: [0] bootloader, [1] TEE, [6] SNP, [7] microcode.
 * Turin: [0] FMC, [1] bootloader, [2] TEE, [3] SNP, [7] microcode.
 */
export function decodeTcb(b: Buffer, product: SnpProduct): SnpTcb {
  const raw = b.toString("hex");
  if (product === "Turin")
    return { fmc: b[0]!, bootloader: b[1]!, tee: b[2]!, snp: b[3]!, microcode: b[7]!, raw };
  return { bootloader: b[0]!, tee: b[1]!, snp: b[6]!, microcode: b[7]!, raw };
}

const u64hex = (v: bigint): string => v.toString(16).padStart(16, "0");

/**
 * The normalized claims of a report whose signature and endorsement chain have been verified. `product` and
 * `signingKey` are what the verified chain established.
 */
export function snpClaims(
  r: Omit<SnpReport, "claims">,
  product: SnpProduct,
  signingKey: "vcek" | "vlek",
): Claims {
  const snp: SnpClaims = {
    version: r.version,
    product,
    measurement: r.measurement.toString("hex"),
    policy: u64hex(r.policy),
    policyDebug: r.policyDebug,
    policyMigrateMa: r.policyMigrateMa,
    policySmt: r.policySmt,
    policySingleSocket: r.policySingleSocket,
    vmpl: r.vmpl,
    guestSvn: r.guestSvn,
    hostData: r.hostData.toString("hex"),
    familyId: r.familyId.toString("hex"),
    imageId: r.imageId.toString("hex"),
    idKeyDigest: r.idKeyDigest.toString("hex"),
    authorKeyDigest: r.authorKeyDigest.toString("hex"),
    reportId: r.reportId.toString("hex"),
    chipId: r.chipId.toString("hex"),
    signingKey,
    currentTcb: decodeTcb(r.currentTcb, product),
    reportedTcb: decodeTcb(r.reportedTcb, product),
    committedTcb: decodeTcb(r.committedTcb, product),
    launchTcb: decodeTcb(r.launchTcb, product),
    platformInfo: u64hex(r.platformInfo),
  };
  return {
    tee: "sev-snp",
    simulated: false,
    debug: r.policyDebug,
    reportData: r.reportData.toString("hex"),
    snp,
    platform: { chipId: snp.chipId },
    format: { kind: "snp-report", version: r.version },
  };
}
