/**
 * Intel DCAP quotes: version 3 (SGX), version 4 (TDX, TD 1.0 body) and version 5 (SGX, TD 1.0 or TD 1.5 body),
 * with ECDSA-256-with-P-256 attestation keys. Layouts from Intel's "SGX ECDSA Quote Library API" and
 * "TDX DCAP Quoting Library API" documents.
 *
 *   header (48) | [v5: body type (2) | body size (4)] | body | signature data length (4) | signature data
 *
 * Parsing never trusts a length field: every read is bounds-checked and any inconsistency is `malformed`.
 */
import type { SgxClaims, TdxClaims } from "../claims.js";
import { need } from "../errors.js";

export const INTEL_QE_VENDOR_ID = "939a7233f79c4ca9940a0db3957f0607";
export const HEADER_LEN = 48;
export const SGX_REPORT_LEN = 384;
export const TD10_REPORT_LEN = 584;
export const TD15_REPORT_LEN = 648;
const TEE_SGX = 0x00;
const TEE_TDX = 0x81;
/** Certification data types (Intel's names). */
export const CERT_PCK_CHAIN_PEM = 5;
export const CERT_QE_REPORT = 6;

export type BodyType = "sgx" | "td10" | "td15";

export interface Quote {
  /** The quote without trailing bytes. */
  readonly raw: Buffer;
  /**
   * Bytes after the quote's end (after the signature data the length field delimits): padding, or data a transport
   * appended. The signature does not cover them and nothing reads them; the verifier warns when they are not all
   * zero (go-tdx-guest keeps them apart as "extra bytes", dcap-qvl ignores them).
   */
  readonly extraBytes: Buffer;
  readonly version: 3 | 4 | 5;
  readonly akType: number;
  readonly teeType: number;
  readonly qeSvn: number;
  readonly pceSvn: number;
  readonly qeVendorId: string;
  readonly userData: Buffer;
  readonly bodyType: BodyType;
  readonly body: Buffer;
  /** The bytes the attestation key signs: header through body. */
  readonly signedData: Buffer;
  readonly signature: Buffer;
  /** Raw 64-byte P-256 public key (x‖y). */
  readonly attestKey: Buffer;
  readonly qeReport: Buffer;
  readonly qeReportSignature: Buffer;
  readonly qeAuthData: Buffer;
  /** Certification data inside the QE report certification data (5 = PCK chain in PEM). */
  readonly certType: number;
  readonly certData: Buffer;
}

class Reader {
  constructor(
    readonly buf: Buffer,
    public pos = 0,
  ) {}
  take(n: number, what: string): Buffer {
    need(
      this.pos + n <= this.buf.length,
      `quote truncated: ${what} needs ${n} bytes at offset ${this.pos}, have ${this.buf.length - this.pos}`,
    );
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  u16(what: string): number {
    return this.take(2, what).readUInt16LE(0);
  }
  u32(what: string): number {
    return this.take(4, what).readUInt32LE(0);
  }
}

/** Whether the bytes look like a DCAP quote (version 3 to 5 and ECDSA key type 2 or 3). */
export function looksLikeQuote(buf: Buffer): boolean {
  if (buf.length < HEADER_LEN) return false;
  const v = buf.readUInt16LE(0);
  const ak = buf.readUInt16LE(2);
  return v >= 3 && v <= 5 && (ak === 2 || ak === 3);
}

/**
 * Parses a DCAP quote. Bytes after its end are kept apart in `extraBytes` (not covered by the signature); a length
 * field that points past the end of the input is malformed.
 */
export function parseQuote(input: Buffer): Quote {
  const r = new Reader(input);
  const header = r.take(HEADER_LEN, "header");
  const version = header.readUInt16LE(0);
  need(
    version === 3 || version === 4 || version === 5,
    `unsupported quote version ${version} (expected 3, 4 or 5)`,
  );
  const akType = header.readUInt16LE(2);
  need(
    akType === 2,
    `unsupported attestation key type ${akType} (only ECDSA-256-with-P-256 is defined for DCAP)`,
  );
  const teeType = header.readUInt32LE(4);
  need(teeType === TEE_SGX || teeType === TEE_TDX, `unknown TEE type 0x${teeType.toString(16)}`);

  let bodyType: BodyType;
  let bodyLen: number;
  if (version === 3) {
    need(teeType === TEE_SGX, "a version 3 quote must be SGX");
    bodyType = "sgx";
    bodyLen = SGX_REPORT_LEN;
  } else if (version === 4) {
    bodyType = teeType === TEE_TDX ? "td10" : "sgx";
    bodyLen = teeType === TEE_TDX ? TD10_REPORT_LEN : SGX_REPORT_LEN;
  } else {
    const t = r.u16("body type");
    const size = r.u32("body size");
    const types: Record<number, [BodyType, number]> = {
      1: ["sgx", SGX_REPORT_LEN],
      2: ["td10", TD10_REPORT_LEN],
      3: ["td15", TD15_REPORT_LEN],
    };
    const bt = types[t];
    need(bt, `unknown v5 body type ${t}`);
    [bodyType, bodyLen] = bt;
    need(size === bodyLen, `v5 body size ${size} does not match body type ${t} (${bodyLen})`);
    need((bodyType === "sgx") === (teeType === TEE_SGX), "v5 body type does not match the header's TEE type");
  }
  const body = r.take(bodyLen, "report body");
  const signedData = input.subarray(0, r.pos);
  const sigLen = r.u32("signature data length");
  const sigStart = r.pos;
  const sigData = new Reader(r.take(sigLen, "signature data"));
  const end = r.pos;

  const signature = sigData.take(64, "quote signature");
  const attestKey = sigData.take(64, "attestation key");
  let qe: Reader = sigData;
  if (version >= 4) {
    const outerType = sigData.u16("certification data type");
    need(
      outerType === CERT_QE_REPORT,
      `certification data type ${outerType} where 6 (QE report) is required`,
    );
    const outerSize = sigData.u32("certification data size");
    qe = new Reader(sigData.take(outerSize, "QE report certification data"));
    need(sigData.pos === sigData.buf.length, "bytes after the certification data");
  }
  const qeReport = qe.take(SGX_REPORT_LEN, "QE report");
  const qeReportSignature = qe.take(64, "QE report signature");
  const authLen = qe.u16("QE authentication data size");
  const qeAuthData = qe.take(authLen, "QE authentication data");
  const certType = qe.u16("PCK certification data type");
  const certSize = qe.u32("PCK certification data size");
  const certData = qe.take(certSize, "PCK certification data");
  need(qe.pos === qe.buf.length, `${qe.buf.length - qe.pos} bytes after the PCK certification data`);
  void sigStart;

  return {
    raw: input.subarray(0, end),
    extraBytes: input.subarray(end),
    version,
    akType,
    teeType,
    qeSvn: header.readUInt16LE(8),
    pceSvn: header.readUInt16LE(10),
    qeVendorId: header.subarray(12, 28).toString("hex"),
    userData: header.subarray(28, 48),
    bodyType,
    body,
    signedData,
    signature,
    attestKey,
    qeReport,
    qeReportSignature,
    qeAuthData,
    certType,
    certData,
  };
}

const hex = (b: Buffer, s: number, n: number): string => b.toString("hex", s, s + n);

/** Offsets in an SGX report body (also the QE report). */
export const SGX = {
  cpusvn: 0,
  miscselect: 16,
  isvextprodid: 32,
  attributes: 48,
  mrenclave: 64,
  mrsigner: 128,
  configid: 192,
  isvprodid: 256,
  isvsvn: 258,
  configsvn: 260,
  isvfamilyid: 304,
  reportdata: 320,
} as const;

/** SGX ATTRIBUTES.DEBUG (bit 1 of the flags). */
export function sgxDebug(report: Buffer): boolean {
  return (report[SGX.attributes]! & 0x02) !== 0;
}

export function sgxClaims(report: Buffer): SgxClaims {
  return {
    mrenclave: hex(report, SGX.mrenclave, 32),
    mrsigner: hex(report, SGX.mrsigner, 32),
    isvprodid: report.readUInt16LE(SGX.isvprodid),
    isvsvn: report.readUInt16LE(SGX.isvsvn),
    attributes: hex(report, SGX.attributes, 16),
    miscselect: report.readUInt32LE(SGX.miscselect),
    cpusvn: hex(report, SGX.cpusvn, 16),
    configid: hex(report, SGX.configid, 64),
    configsvn: report.readUInt16LE(SGX.configsvn),
    isvextprodid: hex(report, SGX.isvextprodid, 16),
    isvfamilyid: hex(report, SGX.isvfamilyid, 16),
  };
}

/** Offsets in a TD report body (1.0; 1.5 appends TEE_TCB_SVN2 and MRSERVICETD). */
export const TD = {
  teeTcbSvn: 0,
  mrseam: 16,
  mrsignerseam: 64,
  seamAttributes: 112,
  tdAttributes: 120,
  xfam: 128,
  mrtd: 136,
  mrconfigid: 184,
  mrowner: 232,
  mrownerconfig: 280,
  rtmr0: 328,
  reportdata: 520,
  teeTcbSvn2: 584,
  mrservicetd: 600,
} as const;

/** TDATTRIBUTES.DEBUG is bit 0; SEPT_VE_DISABLE is bit 28. */
export function tdDebug(body: Buffer): boolean {
  return (body[TD.tdAttributes]! & 0x01) !== 0;
}

export function tdxClaims(body: Buffer, bodyType: BodyType): TdxClaims {
  const c: TdxClaims = {
    mrtd: hex(body, TD.mrtd, 48),
    rtmr0: hex(body, TD.rtmr0, 48),
    rtmr1: hex(body, TD.rtmr0 + 48, 48),
    rtmr2: hex(body, TD.rtmr0 + 96, 48),
    rtmr3: hex(body, TD.rtmr0 + 144, 48),
    mrseam: hex(body, TD.mrseam, 48),
    mrsignerseam: hex(body, TD.mrsignerseam, 48),
    seamAttributes: hex(body, TD.seamAttributes, 8),
    tdAttributes: hex(body, TD.tdAttributes, 8),
    septVeDisable: (body[TD.tdAttributes + 3]! & 0x10) !== 0,
    xfam: hex(body, TD.xfam, 8),
    mrconfigid: hex(body, TD.mrconfigid, 48),
    mrowner: hex(body, TD.mrowner, 48),
    mrownerconfig: hex(body, TD.mrownerconfig, 48),
    teeTcbSvn: hex(body, TD.teeTcbSvn, 16),
  };
  if (bodyType === "td15") {
    c.teeTcbSvn2 = hex(body, TD.teeTcbSvn2, 16);
    c.mrservicetd = hex(body, TD.mrservicetd, 48);
  }
  return c;
}

/** REPORT_DATA of the quote's body. */
export function quoteReportData(q: Quote): Buffer {
  return q.bodyType === "sgx"
    ? q.body.subarray(SGX.reportdata, SGX.reportdata + 64)
    : q.body.subarray(TD.reportdata, TD.reportdata + 64);
}
