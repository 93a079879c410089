/**
 * A simulated SGX TEE, for development and tests on machines without TEEs: it issues DCAP v3 quotes and the full
 * collateral (PCK chain, CRLs, TCB info, QE identity) that the very same Intel verification code checks.
 *
 * INSECURE BY CONSTRUCTION. Whoever holds the simulated keys can issue any measurement, and there is no hardware.
 * Its root ("SENG Simulated SGX Root CA (INSECURE)") is trusted only when configured explicitly as a root; it is never
 * a default, so a verifier configured with Intel's production root rejects everything made here (`untrusted_root`).
 * Every claim verified under a non-Intel root is marked `simulated: true` and logged as insecure by the verifier.
 *
 * Layout and encodings mirror Intel's: the PCK certificate carries the SGX extension (1.2.840.113741.1.13.1) with the
 * same DER structure as a real PCK certificate; TCB info (v3) and QE identity (v2) are JSON signed with ECDSA P-256
 * SHA-256 (raw r‖s) over the exact UTF-8 bytes of the JSON text; the collateral bundle uses dcap-qvl's JSON keys.
 */
import { x509 } from "./x509gen.js";
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  webcrypto,
  type KeyObject,
} from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { derChildren, derOid, derParse, derValue, derInt } from "./der.js";
import { HEADER_LEN, INTEL_QE_VENDOR_ID, SGX, SGX_REPORT_LEN, CERT_PCK_CHAIN_PEM } from "./intel/quote.js";
import { Cert, parseCrl } from "./x509.js";

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

/** The made-up FMSPC of the simulated platform (not a real Intel platform family). */
export const SIM_FMSPC = "00906ED50000";
export const SIM_PCE_ID = "0000";
export const SIM_ROOT_SUBJECT = "CN=SENG Simulated SGX Root CA (INSECURE),O=SENG simulated TEE";
/** tcbEvaluationDataNumber of the simulated TCB info and QE identity. */
export const SIM_TCB_EVALUATION_DATA_NUMBER = 1;
export { OID_SGX_EXTENSIONS as SGX_EXTENSION_OID } from "./intel/pck.js";
import { OID_SGX_EXTENSIONS as SGX_EXTENSION_OID } from "./intel/pck.js";

const ORG = "SENG simulated TEE";
const sha256 = (data: Buffer | string): Buffer => createHash("sha256").update(data).digest();

/** The simulated Quoting Enclave: its report carries these values and the QE identity describes them. */
export const SIM_QE = {
  mrenclave: sha256("SENG simulated QE").toString("hex"),
  mrsigner: sha256("SENG simulated QE signer").toString("hex"),
  isvprodid: 1,
  isvsvn: 8,
  miscselect: 0,
  /** Flags INIT|MODE64BIT|PROVISIONKEY, XFRM x87|SSE: the identity masks out MODE64BIT and XFRM, as Intel's does. */
  attributes: "15000000000000000300000000000000",
} as const;

/** The platform TCB levels the simulated TCB info lists, and which one the simulated PCK certificate states. */
export type SimPlatformTcb = "UpToDate" | "OutOfDate" | "TcbLevelNotFound";

interface Level {
  components: number[];
  pcesvn: number;
  /** Listed levels only. */
  tcbDate?: string;
  advisoryIDs?: string[];
}
const pad16 = (a: number[]): number[] => [...a, ...new Array<number>(16 - a.length).fill(0)];
const LEVELS: Record<SimPlatformTcb, Level> = {
  UpToDate: { components: pad16([5, 5, 2, 2, 255, 1, 3]), pcesvn: 13, tcbDate: "2025-01-15T00:00:00Z" },
  OutOfDate: {
    components: pad16([3, 3, 2, 2, 255, 1, 0]),
    pcesvn: 11,
    tcbDate: "2023-02-15T00:00:00Z",
    advisoryIDs: ["SENG-SIM-SA-00001"],
  },
  // Not listed, and below every listed level: a verifier finds no TCB level for it.
  TcbLevelNotFound: { components: pad16([1, 1, 1, 1, 1, 1, 0]), pcesvn: 5 },
};

/** dcap-qvl's JSON collateral bundle (same keys as its sample `sgx_quote_collateral.json`). */
export interface SimCollateral {
  /** Platform CA then root, PEM. */
  pck_crl_issuer_chain: string;
  /** Hex DER. */
  root_ca_crl: string;
  /** Hex DER, issued by the platform CA. */
  pck_crl: string;
  /** TCB signing certificate then root, PEM. */
  tcb_info_issuer_chain: string;
  /** The exact signed JSON text of the TCB info body. */
  tcb_info: string;
  /** Hex of the 64-byte r‖s signature. */
  tcb_info_signature: string;
  qe_identity_issuer_chain: string;
  qe_identity: string;
  qe_identity_signature: string;
}

export interface SimKeys {
  root: KeyObject;
  platformCa: KeyObject;
  tcbSigning: KeyObject;
  pck: KeyObject;
  /** The QE's attestation key: signs quotes. */
  attestation: KeyObject;
}

/** A simulated SGX platform with its CA hierarchy and current collateral. Holds private keys: never log it. */
export interface SimTee {
  /** The simulated root CA. Trust it only by configuring it explicitly. */
  readonly root: Cert;
  readonly platformCa: Cert;
  readonly tcbSigning: Cert;
  readonly pck: Cert;
  readonly keys: SimKeys;
  /** PEM of PCK leaf, platform CA and root: the quote's certification data (type 5). */
  readonly pckChainPem: string;
  /** Raw x‖y (64 bytes) of the attestation key, as quotes carry it. */
  readonly attestKey: Buffer;
  /** What the PCK certificate's SGX extension states. */
  readonly platform: { fmspc: string; pceId: string; ppid: Buffer; cpusvn: Buffer; pcesvn: number };
  readonly collateral: SimCollateral;
}

export interface SimTeeOptions {
  /** Start of all validity periods (default: now, truncated to whole seconds). */
  now?: Date;
  /** Certificate validity, from `now` (default 3650). */
  validDays?: number;
  /** Validity of TCB info, QE identity and both CRLs, from `now` (default 30). */
  collateralDays?: number;
  /** Which TCB info level the platform (PCK certificate) is at (default UpToDate). */
  platformTcb?: SimPlatformTcb;
}

const DAY = 86400_000;
const EC = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIGNING = { name: "ECDSA", hash: "SHA-256" } as const;

// --- DER writing (only what the SGX extension needs) ---

function tlv(tag: number, body: Buffer): Buffer {
  const n = body.length;
  const len = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...len]), body]);
}
const seq = (...items: Buffer[]): Buffer => tlv(0x30, Buffer.concat(items));
const octets = (b: Buffer): Buffer => tlv(0x04, b);
function derIntOf(n: number): Buffer {
  const bytes: number[] = [];
  do {
    bytes.unshift(n & 0xff);
    n = Math.floor(n / 256);
  } while (n > 0);
  if (bytes[0]! & 0x80) bytes.unshift(0); // keep it positive, as Intel does (255 = 02 02 00 FF)
  return tlv(0x02, Buffer.from(bytes));
}
function oidOf(dotted: string): Buffer {
  const arcs = dotted.split(".").map(Number);
  const out: number[] = [];
  for (const arc of [arcs[0]! * 40 + arcs[1]!, ...arcs.slice(2)]) {
    const b = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) b.unshift((v & 0x7f) | 0x80);
    out.push(...b);
  }
  return tlv(0x06, Buffer.from(out));
}

/** Intel's SGX extension value: SEQUENCE OF SEQUENCE { OID, value } (PPID, TCB, PCE-ID, FMSPC, SGX type). */
export function sgxExtensionValue(p: SimTee["platform"], components: number[]): Buffer {
  const field = (arc: string, value: Buffer): Buffer => seq(oidOf(`${SGX_EXTENSION_OID}.${arc}`), value);
  const tcb = seq(
    ...components.map((svn, i) => field(`2.${i + 1}`, derIntOf(svn))),
    field("2.17", derIntOf(p.pcesvn)),
    field("2.18", octets(p.cpusvn)),
  );
  return seq(
    field("1", octets(p.ppid)),
    field("2", tcb),
    field("3", octets(Buffer.from(p.pceId, "hex"))),
    field("4", octets(Buffer.from(p.fmspc, "hex"))),
    field("5", tlv(0x0a, Buffer.from([0]))), // SGX type: Standard
  );
}

/** Reads back what the sim needs from a PCK certificate's SGX extension. */
function readPlatform(pck: Cert): SimTee["platform"] {
  const ext = pck.extensions.get(SGX_EXTENSION_OID);
  if (!ext) throw new Error("simulated PCK certificate has no SGX extension");
  const fields = new Map(
    derChildren(derParse(ext.value)).map((f) => [derOid(derChildren(f)[0]!), derChildren(f)[1]!]),
  );
  const tcb = new Map(
    derChildren(fields.get(`${SGX_EXTENSION_OID}.2`)!).map((f) => [
      derOid(derChildren(f)[0]!),
      derChildren(f)[1]!,
    ]),
  );
  return {
    ppid: Buffer.from(derValue(fields.get(`${SGX_EXTENSION_OID}.1`)!)),
    pceId: derValue(fields.get(`${SGX_EXTENSION_OID}.3`)!)
      .toString("hex")
      .toUpperCase(),
    fmspc: derValue(fields.get(`${SGX_EXTENSION_OID}.4`)!)
      .toString("hex")
      .toUpperCase(),
    pcesvn: derInt(tcb.get(`${SGX_EXTENSION_OID}.2.17`)!),
    cpusvn: Buffer.from(derValue(tcb.get(`${SGX_EXTENSION_OID}.2.18`)!)),
  };
}

// --- keys and certificates ---

const newKey = (): KeyObject => generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey;

async function cryptoKeys(priv: KeyObject): Promise<CryptoKeyPair> {
  const subtle = webcrypto.subtle;
  const pkcs8 = priv.export({ type: "pkcs8", format: "der" });
  const spki = createPublicKey(priv).export({ type: "spki", format: "der" });
  return {
    privateKey: (await subtle.importKey("pkcs8", pkcs8, EC, false, ["sign"])) as CryptoKey,
    publicKey: (await subtle.importKey("spki", spki, EC, true, ["verify"])) as CryptoKey,
  };
}

/** UTF8String names, as Intel's certificates use. */
const simName = (cn: string): x509.Name =>
  new x509.Name([{ CN: [{ utf8String: cn }] }, { O: [{ utf8String: ORG }] }]);

function serialHex(): string {
  const s = randomBytes(16);
  s[0] = (s[0]! & 0x7f) | 0x01; // positive, no leading zero byte
  return s.toString("hex");
}

interface IssueParams {
  subject: x509.Name;
  key: KeyObject;
  /** Omit for self-signed. */
  issuer?: { name: x509.Name; key: KeyObject };
  /** Path length for a CA; undefined for an end entity. */
  caPathLen?: number;
  notBefore: Date;
  notAfter: Date;
  extra?: x509.Extension[];
}

async function issueCert(p: IssueParams): Promise<Cert> {
  const own = await cryptoKeys(p.key);
  const issuerKeys = p.issuer ? await cryptoKeys(p.issuer.key) : own;
  const ca = p.caPathLen !== undefined;
  const usage = ca
    ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign
    : x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.nonRepudiation;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialHex(),
    subject: p.subject,
    issuer: p.issuer?.name ?? p.subject,
    notBefore: p.notBefore,
    notAfter: p.notAfter,
    publicKey: own.publicKey,
    signingKey: issuerKeys.privateKey,
    signingAlgorithm: SIGNING,
    extensions: [
      await x509.AuthorityKeyIdentifierExtension.create(issuerKeys.publicKey),
      await x509.SubjectKeyIdentifierExtension.create(own.publicKey),
      new x509.KeyUsagesExtension(usage, true),
      new x509.BasicConstraintsExtension(ca, p.caPathLen, true),
      ...(p.extra ?? []),
    ],
  });
  return Cert.fromDer(Buffer.from(cert.rawData));
}

async function issueCrl(
  issuer: Cert,
  key: KeyObject,
  thisUpdate: Date,
  nextUpdate: Date,
  revoked: Cert[],
): Promise<Buffer> {
  const crl = await x509.X509CrlGenerator.create({
    // The issuer's subject DER as is, so the CRL's issuer matches it byte for byte.
    issuer: new x509.Name(issuer.subjectDer),
    thisUpdate,
    nextUpdate,
    entries: revoked.map((c) => ({ serialNumber: c.serial.toString("hex"), revocationDate: thisUpdate })),
    signingKey: (await cryptoKeys(key)).privateKey,
    signingAlgorithm: SIGNING,
  });
  return Buffer.from(crl.rawData);
}

// --- collateral ---

/** Intel's date format: ISO 8601 in whole seconds. */
const isoSeconds = (d: Date): string => d.toISOString().replace(/\.\d{3}Z$/, "Z");
const wholeSeconds = (d: Date): Date => new Date(Math.floor(d.getTime() / 1000) * 1000);

/** Signs JSON text as Intel's PCS does: ECDSA P-256 SHA-256, raw r‖s, over the exact UTF-8 bytes. */
function signJson(key: KeyObject, json: string): string {
  return sign("sha256", Buffer.from(json, "utf8"), { key, dsaEncoding: "ieee-p1363" }).toString("hex");
}

function tcbInfoJson(issueDate: Date, nextUpdate: Date): string {
  const levels = (["UpToDate", "OutOfDate"] as const).map((status) => {
    const l = LEVELS[status];
    return {
      tcb: { sgxtcbcomponents: l.components.map((svn) => ({ svn })), pcesvn: l.pcesvn },
      tcbDate: l.tcbDate,
      tcbStatus: status,
      ...(l.advisoryIDs ? { advisoryIDs: l.advisoryIDs } : {}),
    };
  });
  return JSON.stringify({
    id: "SGX",
    version: 3,
    issueDate: isoSeconds(issueDate),
    nextUpdate: isoSeconds(nextUpdate),
    fmspc: SIM_FMSPC,
    pceId: SIM_PCE_ID,
    tcbType: 0,
    tcbEvaluationDataNumber: SIM_TCB_EVALUATION_DATA_NUMBER,
    tcbLevels: levels,
  });
}

function qeIdentityJson(issueDate: Date, nextUpdate: Date): string {
  return JSON.stringify({
    id: "QE",
    version: 2,
    issueDate: isoSeconds(issueDate),
    nextUpdate: isoSeconds(nextUpdate),
    tcbEvaluationDataNumber: SIM_TCB_EVALUATION_DATA_NUMBER,
    miscselect: "00000000",
    miscselectMask: "FFFFFFFF",
    attributes: "11000000000000000000000000000000",
    attributesMask: "FBFFFFFFFFFFFFFF0000000000000000",
    mrsigner: SIM_QE.mrsigner.toUpperCase(),
    isvprodid: SIM_QE.isvprodid,
    tcbLevels: [{ tcb: { isvsvn: SIM_QE.isvsvn }, tcbDate: "2025-01-15T00:00:00Z", tcbStatus: "UpToDate" }],
  });
}

/** Dates and revocations of a collateral set. Every field defaults to what the sim's current collateral has. */
export interface SimCollateralOptions {
  /** TCB info and QE identity issueDate. */
  issueDate?: Date;
  /** TCB info and QE identity nextUpdate. */
  nextUpdate?: Date;
  /** thisUpdate of both CRLs (default: issueDate when that is given). */
  crlThisUpdate?: Date;
  /** nextUpdate of both CRLs (default: nextUpdate when that is given). */
  crlNextUpdate?: Date;
  /** Whether the PCK CRL lists the PCK certificate. */
  pckRevoked?: boolean;
}

type Hierarchy = Omit<SimTee, "collateral">;

async function buildCollateral(
  h: Hierarchy,
  o: Required<Omit<SimCollateralOptions, "pckRevoked">> & { pckRevoked: boolean },
): Promise<SimCollateral> {
  const tcbInfo = tcbInfoJson(o.issueDate, o.nextUpdate);
  const qeIdentity = qeIdentityJson(o.issueDate, o.nextUpdate);
  const tcbChain = h.tcbSigning.toPem() + h.root.toPem();
  const rootCrl = await issueCrl(h.root, h.keys.root, o.crlThisUpdate, o.crlNextUpdate, []);
  const pckCrl = await issueCrl(
    h.platformCa,
    h.keys.platformCa,
    o.crlThisUpdate,
    o.crlNextUpdate,
    o.pckRevoked ? [h.pck] : [],
  );
  return {
    pck_crl_issuer_chain: h.platformCa.toPem() + h.root.toPem(),
    root_ca_crl: rootCrl.toString("hex"),
    pck_crl: pckCrl.toString("hex"),
    tcb_info_issuer_chain: tcbChain,
    tcb_info: tcbInfo,
    tcb_info_signature: signJson(h.keys.tcbSigning, tcbInfo),
    qe_identity_issuer_chain: tcbChain,
    qe_identity: qeIdentity,
    qe_identity_signature: signJson(h.keys.tcbSigning, qeIdentity),
  };
}

/** Raw x‖y of a P-256 key. */
function rawPublicKey(key: KeyObject): Buffer {
  const jwk = createPublicKey(key).export({ format: "jwk" });
  return Buffer.concat([Buffer.from(jwk.x!, "base64url"), Buffer.from(jwk.y!, "base64url")]);
}

/** Creates a simulated SGX platform: CA hierarchy, PCK certificate, attestation key and fresh collateral. */
export async function createSimTee(opts: SimTeeOptions = {}): Promise<SimTee> {
  const now = wholeSeconds(opts.now ?? new Date());
  const notAfter = new Date(now.getTime() + (opts.validDays ?? 3650) * DAY);
  const level = LEVELS[opts.platformTcb ?? "UpToDate"];
  const keys: SimKeys = {
    root: newKey(),
    platformCa: newKey(),
    tcbSigning: newKey(),
    pck: newKey(),
    attestation: newKey(),
  };
  const platform = {
    fmspc: SIM_FMSPC,
    pceId: SIM_PCE_ID,
    ppid: randomBytes(16),
    cpusvn: Buffer.from(level.components),
    pcesvn: level.pcesvn,
  };
  const validity = { notBefore: now, notAfter };
  const rootName = simName("SENG Simulated SGX Root CA (INSECURE)");
  const platformName = simName("SENG Simulated PCK Platform CA");
  const root = await issueCert({ subject: rootName, key: keys.root, caPathLen: 1, ...validity });
  const platformCa = await issueCert({
    subject: platformName,
    key: keys.platformCa,
    issuer: { name: rootName, key: keys.root },
    caPathLen: 0,
    ...validity,
  });
  const tcbSigning = await issueCert({
    subject: simName("SENG Simulated TCB Signing"),
    key: keys.tcbSigning,
    issuer: { name: rootName, key: keys.root },
    ...validity,
  });
  const pck = await issueCert({
    subject: simName("SENG Simulated PCK Certificate"),
    key: keys.pck,
    issuer: { name: platformName, key: keys.platformCa },
    extra: [new x509.Extension(SGX_EXTENSION_OID, false, sgxExtensionValue(platform, level.components))],
    ...validity,
  });
  const h: Hierarchy = {
    root,
    platformCa,
    tcbSigning,
    pck,
    keys,
    pckChainPem: pck.toPem() + platformCa.toPem() + root.toPem(),
    attestKey: rawPublicKey(keys.attestation),
    platform,
  };
  const until = new Date(now.getTime() + (opts.collateralDays ?? 30) * DAY);
  const collateral = await buildCollateral(h, {
    issueDate: now,
    nextUpdate: until,
    crlThisUpdate: now,
    crlNextUpdate: until,
    pckRevoked: false,
  });
  return { ...h, collateral };
}

/**
 * Returns the sim with newly issued collateral: other dates (expiry tests), or a PCK CRL that revokes the PCK
 * certificate. Unset options keep the current collateral's values.
 */
export async function reissueSimCollateral(sim: SimTee, opts: SimCollateralOptions = {}): Promise<SimTee> {
  const cur = JSON.parse(sim.collateral.tcb_info) as { issueDate: string; nextUpdate: string };
  const crl = parseCrl(sim.collateral.pck_crl);
  const issueDate = wholeSeconds(opts.issueDate ?? new Date(cur.issueDate));
  const nextUpdate = wholeSeconds(opts.nextUpdate ?? new Date(cur.nextUpdate));
  const collateral = await buildCollateral(sim, {
    issueDate,
    nextUpdate,
    crlThisUpdate: wholeSeconds(opts.crlThisUpdate ?? (opts.issueDate ? issueDate : crl.thisUpdate)),
    crlNextUpdate: wholeSeconds(
      opts.crlNextUpdate ?? (opts.nextUpdate ? nextUpdate : (crl.nextUpdate ?? nextUpdate)),
    ),
    pckRevoked: opts.pckRevoked ?? crl.revoked.has(sim.pck.serial.toString("hex")),
  });
  return { ...sim, collateral };
}

/** Returns the sim with a PCK CRL that lists its PCK certificate (same dates as the current collateral). */
export function revokePckCert(sim: SimTee): Promise<SimTee> {
  return reissueSimCollateral(sim, { pckRevoked: true });
}

// --- quotes ---

export interface SimQuoteClaims {
  /** 32 bytes, hex. */
  mrenclave: string;
  /** 32 bytes, hex. */
  mrsigner: string;
  isvprodid?: number;
  isvsvn?: number;
  /** At most 64 bytes; zero padded. */
  reportData?: Buffer;
  /** Sets ATTRIBUTES.DEBUG. */
  debug?: boolean;
  /** 16 bytes (flags then XFRM); default INIT|MODE64BIT with XFRM x87|SSE. `debug` is ORed in. */
  attributes?: Buffer;
}

const DEFAULT_ATTRIBUTES = "05000000000000000300000000000000";
/** Intel's QE fills 32 bytes of authentication data; any content is allowed. */
const QE_AUTH_DATA = Buffer.from(Array.from({ length: 32 }, (_, i) => i));

function hex32(v: string, what: string): Buffer {
  if (!/^[0-9a-fA-F]{64}$/.test(v)) throw new TypeError(`${what} must be 32 bytes of hex`);
  return Buffer.from(v, "hex");
}

function u16(v: number | undefined, what: string): number {
  const n = v ?? 0;
  if (!Number.isInteger(n) || n < 0 || n > 0xffff)
    throw new RangeError(`${what} must be an integer from 0 to 65535`);
  return n;
}

function report(f: {
  cpusvn: Buffer;
  miscselect: number;
  attributes: Buffer;
  mrenclave: Buffer;
  mrsigner: Buffer;
  isvprodid: number;
  isvsvn: number;
  reportData: Buffer;
}): Buffer {
  const r = Buffer.alloc(SGX_REPORT_LEN);
  f.cpusvn.copy(r, SGX.cpusvn);
  r.writeUInt32LE(f.miscselect, SGX.miscselect);
  f.attributes.copy(r, SGX.attributes);
  f.mrenclave.copy(r, SGX.mrenclave);
  f.mrsigner.copy(r, SGX.mrsigner);
  r.writeUInt16LE(f.isvprodid, SGX.isvprodid);
  r.writeUInt16LE(f.isvsvn, SGX.isvsvn);
  f.reportData.copy(r, SGX.reportdata);
  return r;
}

const p1363 = (key: KeyObject, data: Buffer): Buffer =>
  sign("sha256", data, { key, dsaEncoding: "ieee-p1363" });

function u16le(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(n);
  return b;
}
function u32le(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

/** Issues an SGX DCAP v3 quote for an enclave with these claims (synchronous). */
export function issueSimQuote(sim: SimTee, claims: SimQuoteClaims): Buffer {
  const reportData = claims.reportData ?? Buffer.alloc(0);
  if (reportData.length > 64)
    throw new RangeError(`reportData has ${reportData.length} bytes, at most 64 fit`);
  const attributes = Buffer.from(claims.attributes ?? Buffer.from(DEFAULT_ATTRIBUTES, "hex"));
  if (attributes.length !== 16) throw new RangeError("attributes must be 16 bytes");
  if (claims.debug) attributes[0]! |= 0x02;

  const header = Buffer.alloc(HEADER_LEN);
  header.writeUInt16LE(3, 0); // version
  header.writeUInt16LE(2, 2); // ECDSA-256-with-P-256
  header.writeUInt32LE(0, 4); // TEE type SGX
  header.writeUInt16LE(SIM_QE.isvsvn, 8);
  header.writeUInt16LE(sim.platform.pcesvn, 10);
  Buffer.from(INTEL_QE_VENDOR_ID, "hex").copy(header, 12);
  // user data (20 bytes): zeros

  const body = report({
    cpusvn: sim.platform.cpusvn,
    miscselect: 0,
    attributes,
    mrenclave: hex32(claims.mrenclave, "mrenclave"),
    mrsigner: hex32(claims.mrsigner, "mrsigner"),
    isvprodid: u16(claims.isvprodid, "isvprodid"),
    isvsvn: u16(claims.isvsvn, "isvsvn"),
    reportData: Buffer.concat([reportData, Buffer.alloc(64 - reportData.length)]),
  });

  // The QE report binds the attestation key: REPORT_DATA = SHA-256(attestKey ‖ QE auth data) ‖ 32 zero bytes.
  const qeReport = report({
    cpusvn: sim.platform.cpusvn,
    miscselect: SIM_QE.miscselect,
    attributes: Buffer.from(SIM_QE.attributes, "hex"),
    mrenclave: Buffer.from(SIM_QE.mrenclave, "hex"),
    mrsigner: Buffer.from(SIM_QE.mrsigner, "hex"),
    isvprodid: SIM_QE.isvprodid,
    isvsvn: SIM_QE.isvsvn,
    reportData: Buffer.concat([sha256(Buffer.concat([sim.attestKey, QE_AUTH_DATA])), Buffer.alloc(32)]),
  });

  const certData = Buffer.from(sim.pckChainPem, "latin1");
  const signedData = Buffer.concat([header, body]);
  const sigData = Buffer.concat([
    p1363(sim.keys.attestation, signedData),
    sim.attestKey,
    qeReport,
    p1363(sim.keys.pck, qeReport),
    u16le(QE_AUTH_DATA.length),
    QE_AUTH_DATA,
    u16le(CERT_PCK_CHAIN_PEM),
    u32le(certData.length),
    certData,
  ]);
  return Buffer.concat([signedData, u32le(sigData.length), sigData]);
}

// --- files ---

const FILES = {
  root: "root.pem",
  chain: "pck-chain.pem",
  collateral: "collateral.json",
} as const;
const KEY_FILES: Record<keyof SimKeys, string> = {
  root: "root-key.pem",
  platformCa: "platform-ca-key.pem",
  tcbSigning: "tcb-signing-key.pem",
  pck: "pck-key.pem",
  attestation: "attestation-key.pem",
};

/**
 * Writes the sim to `dir`: root.pem (the root to configure explicitly), pck-chain.pem (PCK leaf, platform CA, root),
 * collateral.json (dcap-qvl bundle) and the private keys as PKCS#8 PEM (*-key.pem, mode 0600). Refuses to replace
 * an existing sim unless `overwrite` is set.
 */
export function saveSimTee(sim: SimTee, dir: string, opts: { overwrite?: boolean } = {}): void {
  writeSimFiles(dir, "a simulated TEE", sim.keys, KEY_FILES, opts.overwrite, {
    [FILES.root]: sim.root.toPem(),
    [FILES.chain]: sim.pckChainPem,
    [FILES.collateral]: JSON.stringify(sim.collateral, null, 2) + "\n",
  });
}

/**
 * Writes a simulated platform's files into `dir` (made 0700): its private keys as PKCS#8 PEM with mode 0600, then the
 * public files. Refuses, naming the file and `what`, to replace an existing one unless `overwrite` is set.
 */
export function writeSimFiles<K extends string>(
  dir: string,
  what: string,
  keys: Record<K, KeyObject>,
  keyFiles: Record<K, string>,
  overwrite: boolean | undefined,
  files: Record<string, string>,
): void {
  if (!overwrite) {
    for (const f of [...Object.keys(files), ...Object.values<string>(keyFiles)]) {
      if (existsSync(join(dir, f))) throw new Error(`${join(dir, f)} exists: ${what} is already there`);
    }
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (const [name, file] of Object.entries(keyFiles) as [K, string][]) {
    const path = join(dir, file);
    writeFileSync(path, keys[name].export({ type: "pkcs8", format: "pem" }), { mode: 0o600 });
    chmodSync(path, 0o600); // the mode option only applies to new files
  }
  for (const [f, text] of Object.entries(files)) writeFileSync(join(dir, f), text);
}

/** Reads a sim written by {@link saveSimTee}, checking that every key belongs to its certificate. */
export function loadSimTee(dir: string): SimTee {
  const read = (f: string): string => readFileSync(join(dir, f), "utf8");
  const keys = {} as SimKeys;
  for (const [name, file] of Object.entries(KEY_FILES) as [keyof SimKeys, string][])
    keys[name] = createPrivateKey(read(file));
  const chain = Cert.fromPemBundle(read(FILES.chain));
  const root = Cert.from(read(FILES.root));
  const collateral = JSON.parse(read(FILES.collateral)) as SimCollateral;
  const [pck, platformCa, chainRoot] = chain;
  const tcbSigning = Cert.fromPemBundle(collateral.tcb_info_issuer_chain)[0];
  if (chain.length !== 3 || !pck || !platformCa || !chainRoot?.der.equals(root.der) || !tcbSigning) {
    throw new Error(`${dir}: pck-chain.pem must hold the PCK, platform CA and root certificates`);
  }
  const spki = (k: KeyObject): Buffer => createPublicKey(k).export({ type: "spki", format: "der" });
  const pairs: [keyof SimKeys, Cert][] = [
    ["root", root],
    ["platformCa", platformCa],
    ["tcbSigning", tcbSigning],
    ["pck", pck],
  ];
  for (const [name, cert] of pairs) {
    if (!spki(keys[name]).equals(cert.spki))
      throw new Error(`${dir}: ${KEY_FILES[name]} does not belong to its certificate`);
  }
  return {
    root,
    platformCa,
    tcbSigning,
    pck,
    keys,
    pckChainPem: pck.toPem() + platformCa.toPem() + root.toPem(),
    attestKey: rawPublicKey(keys.attestation),
    platform: readPlatform(pck),
    collateral,
  };
}
