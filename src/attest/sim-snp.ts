/**
 * A simulated AMD SEV-SNP platform, for development and tests on machines without SEV-SNP: an ARK → ASK → VCEK
 * hierarchy shaped like AMD's (names, VCEK TCB and hwID extensions) and ATTESTATION_REPORTs (version 3, Milan)
 * signed by the VCEK, so the very same AMD verification code checks them.
 *
 * INSECURE BY CONSTRUCTION. Whoever holds these keys can sign any measurement, and there is no hardware. The ARK is
 * trusted only when configured explicitly as a root (`--root D/ark.pem`, the gateway's `trust.simulatedRoots`);
 * evidence verified under it is marked `simulated: true`. Its subject says "(INSECURE)" in O and OU.
 *
 * Differences from AMD's: every key is ECDSA P-384 (AMD's ARK and ASK are RSA-4096 with RSASSA-PSS; generating RSA
 * keys would make each test's sim take seconds, and the chain check is algorithm-agnostic), and there is no KDS.
 */
import { x509 } from "./x509gen.js";
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign,
  webcrypto,
  type KeyObject,
} from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { SnpProduct } from "./claims.js";
import { derInt, derParse } from "./der.js";
import { SNP_REPORT_LEN, SNP_SIGNED_LEN } from "./amd/report.js";
import { buildCertTable, CERT_TABLE_GUID } from "./amd/certtable.js";
import { Cert } from "./x509.js";
import { writeSimFiles } from "./sim.js";

type CryptoKeyPair = webcrypto.CryptoKeyPair;

/** The VCEK extensions (AMD KDS specification) the verifier checks. */
const OID = {
  productName: "1.3.6.1.4.1.3704.1.2",
  blSPL: "1.3.6.1.4.1.3704.1.3.1",
  teeSPL: "1.3.6.1.4.1.3704.1.3.2",
  snpSPL: "1.3.6.1.4.1.3704.1.3.3",
  ucodeSPL: "1.3.6.1.4.1.3704.1.3.8",
  hwID: "1.3.6.1.4.1.3704.1.4",
} as const;

const ORG = "SENG simulated SEV-SNP (INSECURE)";
const DAY = 86400_000;
const ALG = { name: "ECDSA", namedCurve: "P-384", hash: "SHA-384" } as const;

/** The TCB the simulated platform runs (Milan layout: bootloader, TEE, SNP, microcode SPLs). */
export interface SimSnpTcb {
  bootloader: number;
  tee: number;
  snp: number;
  microcode: number;
}
const DEFAULT_TCB: SimSnpTcb = { bootloader: 3, tee: 0, snp: 8, microcode: 115 };

export interface SimSnpKeys {
  ark: KeyObject;
  ask: KeyObject;
  vcek: KeyObject;
}

/** A simulated SEV-SNP platform. Holds private keys: never log it. */
export interface SimSnp {
  readonly product: SnpProduct;
  /** The simulated AMD root. Trust it only by configuring it explicitly. */
  readonly ark: Cert;
  readonly ask: Cert;
  readonly vcek: Cert;
  readonly keys: SimSnpKeys;
  /** The chip's 64-byte CHIP_ID, as the VCEK's hwID extension states it. */
  readonly chipId: Buffer;
  readonly tcb: SimSnpTcb;
}

export interface SimSnpOptions {
  /** Start of all validity periods (default: now, less an hour for clock skew). */
  now?: Date;
  /** Certificate validity in days (default 3650). */
  validDays?: number;
  tcb?: SimSnpTcb;
  /** Default: random. */
  chipId?: Buffer;
}

const name = (cn: string): string => `CN=${cn}, OU=${ORG}, O=${ORG}`;

function serialHex(): string {
  const s = randomBytes(8);
  s[0] = (s[0]! & 0x7f) | 0x01;
  return s.toString("hex");
}

async function pairOf(key: KeyObject): Promise<CryptoKeyPair> {
  const subtle = webcrypto.subtle;
  return {
    privateKey: await subtle.importKey("pkcs8", key.export({ type: "pkcs8", format: "der" }), ALG, false, [
      "sign",
    ]),
    publicKey: await subtle.importKey(
      "spki",
      createPublicKey(key).export({ type: "spki", format: "der" }),
      ALG,
      true,
      ["verify"],
    ),
  };
}

const newKey = (): KeyObject => generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey;

/** A DER INTEGER for a small non-negative number (the SPL extensions' encoding). */
function derUint(n: number): Buffer {
  const bytes: number[] = [];
  do {
    bytes.unshift(n & 0xff);
    n = Math.floor(n / 256);
  } while (n > 0);
  if (bytes[0]! & 0x80) bytes.unshift(0);
  return Buffer.from([0x02, bytes.length, ...bytes]);
}

/** An IA5String, as AMD writes productName. */
function ia5(text: string): Buffer {
  const b = Buffer.from(text, "latin1");
  return Buffer.concat([Buffer.from([0x16, b.length]), b]);
}

interface Issue {
  subject: string;
  key: KeyObject;
  issuer?: { subject: string; key: KeyObject };
  ca: boolean;
  notBefore: Date;
  notAfter: Date;
  extra?: x509.Extension[];
}

async function issue(p: Issue): Promise<Cert> {
  const own = await pairOf(p.key);
  const signer = p.issuer ? await pairOf(p.issuer.key) : own;
  const usage = p.ca
    ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign
    : x509.KeyUsageFlags.digitalSignature;
  const c = await x509.X509CertificateGenerator.create({
    serialNumber: serialHex(),
    subject: p.subject,
    issuer: p.issuer?.subject ?? p.subject,
    notBefore: p.notBefore,
    notAfter: p.notAfter,
    publicKey: own.publicKey,
    signingKey: signer.privateKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(p.ca, p.ca ? (p.issuer ? 0 : 1) : undefined, true),
      new x509.KeyUsagesExtension(usage, true),
      ...(p.extra ?? []),
    ],
  });
  return Cert.fromDer(Buffer.from(c.rawData));
}

function vcekExtensions(product: SnpProduct, tcb: SimSnpTcb, chipId: Buffer): x509.Extension[] {
  return [
    new x509.Extension(OID.productName, false, ia5(`${product}-B0`)),
    new x509.Extension(OID.blSPL, false, derUint(tcb.bootloader)),
    new x509.Extension(OID.teeSPL, false, derUint(tcb.tee)),
    new x509.Extension(OID.snpSPL, false, derUint(tcb.snp)),
    new x509.Extension(OID.ucodeSPL, false, derUint(tcb.microcode)),
    // AMD stores the raw CHIP_ID as the extension value, without an inner DER wrapper.
    new x509.Extension(OID.hwID, false, chipId),
  ];
}

/** Creates a simulated Milan platform: ARK-Milan → SEV-Milan → SEV-VCEK, all marked INSECURE. */
export async function createSimSnp(opts: SimSnpOptions = {}): Promise<SimSnp> {
  const notBefore = new Date(Math.floor(((opts.now ?? new Date()).getTime() - 3600_000) / 1000) * 1000);
  const notAfter = new Date(notBefore.getTime() + (opts.validDays ?? 3650) * DAY);
  const product: SnpProduct = "Milan";
  const tcb = opts.tcb ?? DEFAULT_TCB;
  const chipId = opts.chipId ?? randomBytes(64);
  if (chipId.length !== 64) throw new RangeError("chipId must be 64 bytes");
  const keys: SimSnpKeys = { ark: newKey(), ask: newKey(), vcek: newKey() };
  const v = { notBefore, notAfter };
  const arkName = name(`ARK-${product}`);
  const askName = name(`SEV-${product}`);
  const ark = await issue({ subject: arkName, key: keys.ark, ca: true, ...v });
  const ask = await issue({
    subject: askName,
    key: keys.ask,
    issuer: { subject: arkName, key: keys.ark },
    ca: true,
    ...v,
  });
  const vcek = await issue({
    subject: name("SEV-VCEK"),
    key: keys.vcek,
    issuer: { subject: askName, key: keys.ask },
    ca: false,
    extra: vcekExtensions(product, tcb, chipId),
    ...v,
  });
  return { product, ark, ask, vcek, keys, chipId, tcb };
}

/** What a simulated report states. */
export interface SimSnpReportClaims {
  /** MEASUREMENT: 48 bytes, hex. */
  measurement: string;
  /** HOST_DATA: 32 bytes, hex (default zeros). */
  hostData?: string;
  /** REPORT_DATA: at most 64 bytes; zero padded. */
  reportData?: Buffer;
  /** Sets the guest policy's DEBUG bit (19). */
  debug?: boolean;
  /** Guest policy; default 0x30000 (SMT allowed, reserved bit 17). `debug` is ORed in. */
  policy?: bigint;
  vmpl?: number;
  guestSvn?: number;
}

const MILAN_CPUID = { family: 0x19, model: 0x01, stepping: 0x01 };

function tcbBytes(t: SimSnpTcb): Buffer {
  const b = Buffer.alloc(8);
  b[0] = t.bootloader;
  b[1] = t.tee;
  b[6] = t.snp;
  b[7] = t.microcode;
  return b;
}

function hexField(v: string | undefined, len: number, what: string): Buffer {
  if (v === undefined) return Buffer.alloc(len);
  if (!new RegExp(`^[0-9a-fA-F]{${len * 2}}$`).test(v))
    throw new TypeError(`${what} must be ${len} bytes of hex`);
  return Buffer.from(v, "hex");
}

/** Issues a version 3 ATTESTATION_REPORT signed by the sim's VCEK (synchronous). */
export function issueSimSnpReport(sim: SimSnp, claims: SimSnpReportClaims): Buffer {
  const reportData = claims.reportData ?? Buffer.alloc(0);
  if (reportData.length > 64)
    throw new RangeError(`reportData has ${reportData.length} bytes, at most 64 fit`);
  let policy = claims.policy ?? 0x30000n;
  if (claims.debug) policy |= 1n << 19n;
  const r = Buffer.alloc(SNP_REPORT_LEN);
  const tcb = tcbBytes(sim.tcb);
  r.writeUInt32LE(3, 0x00); // version
  r.writeUInt32LE(claims.guestSvn ?? 0, 0x04);
  r.writeBigUInt64LE(policy, 0x08);
  r.writeUInt32LE(claims.vmpl ?? 0, 0x30);
  r.writeUInt32LE(1, 0x34); // ECDSA P-384 with SHA-384
  tcb.copy(r, 0x38); // CURRENT_TCB
  r.writeBigUInt64LE(1n, 0x40); // PLATFORM_INFO: SMT enabled
  r.writeUInt32LE(0, 0x48); // KEY_INFO: signed by the VCEK, chip key not masked
  reportData.copy(r, 0x50);
  hexField(claims.measurement, 48, "measurement").copy(r, 0x90);
  hexField(claims.hostData, 32, "hostData").copy(r, 0xc0);
  randomBytes(32).copy(r, 0x140); // REPORT_ID
  tcb.copy(r, 0x180); // REPORTED_TCB
  r[0x188] = MILAN_CPUID.family;
  r[0x189] = MILAN_CPUID.model;
  r[0x18a] = MILAN_CPUID.stepping;
  sim.chipId.copy(r, 0x1a0);
  tcb.copy(r, 0x1e0); // COMMITTED_TCB
  r.set([0, 55, 1], 0x1e8); // CURRENT build, minor, major (1.55)
  r.set([0, 55, 1], 0x1ec);
  tcb.copy(r, 0x1f0); // LAUNCH_TCB
  const sig = sign("sha384", r.subarray(0, SNP_SIGNED_LEN), {
    key: sim.keys.vcek,
    dsaEncoding: "ieee-p1363",
  });
  // R and S: 72-byte little-endian fields whose low 48 bytes hold the P-384 values.
  Buffer.from(sig.subarray(0, 48)).reverse().copy(r, 0x2a0);
  Buffer.from(sig.subarray(48)).reverse().copy(r, 0x2e8);
  return r;
}

/**
 * The sim's certificate table, as configfs-tsm's `auxblob` gives it: VCEK, ASK and ARK entries (DER). `omit`
 * leaves entries out (tests of hosts that provide fewer certificates).
 */
export function simSnpCertTable(sim: SimSnp, omit: readonly ("vcek" | "ask" | "ark")[] = []): Buffer {
  const all = [
    { guid: CERT_TABLE_GUID.vcek, data: sim.vcek.der, kind: "vcek" },
    { guid: CERT_TABLE_GUID.ask, data: sim.ask.der, kind: "ask" },
    { guid: CERT_TABLE_GUID.ark, data: sim.ark.der, kind: "ark" },
  ] as const;
  return buildCertTable(all.filter((e) => !omit.includes(e.kind)));
}

// --- files ---

const FILES = { ark: "ark.pem", ask: "ask.pem", vcek: "vcek.pem" } as const;
const KEY_FILES: Record<keyof SimSnpKeys, string> = {
  ark: "ark-key.pem",
  ask: "ask-key.pem",
  vcek: "vcek-key.pem",
};

/**
 * Writes the sim to `dir`: ark.pem (the root to configure explicitly), ask.pem, vcek.pem and the private keys as
 * PKCS#8 PEM (*-key.pem, mode 0600). Refuses to replace an existing sim unless `overwrite` is set.
 */
export function saveSimSnp(sim: SimSnp, dir: string, opts: { overwrite?: boolean } = {}): void {
  writeSimFiles(dir, "a simulated SEV-SNP platform", sim.keys, KEY_FILES, opts.overwrite, {
    [FILES.ark]: sim.ark.toPem(),
    [FILES.ask]: sim.ask.toPem(),
    [FILES.vcek]: sim.vcek.toPem(),
  });
}

/** Whether `dir` holds a simulated SEV-SNP platform (as opposed to a simulated SGX one). */
export function isSimSnpDir(dir: string): boolean {
  return existsSync(join(dir, FILES.vcek)) && existsSync(join(dir, KEY_FILES.vcek));
}

/** Reads a sim written by {@link saveSimSnp}, checking that every key belongs to its certificate. */
export function loadSimSnp(dir: string): SimSnp {
  const read = (f: string): string => readFileSync(join(dir, f), "utf8");
  const keys = {} as SimSnpKeys;
  for (const [k, file] of Object.entries(KEY_FILES) as [keyof SimSnpKeys, string][])
    keys[k] = createPrivateKey(read(file));
  const ark = Cert.from(read(FILES.ark));
  const ask = Cert.from(read(FILES.ask));
  const vcek = Cert.from(read(FILES.vcek));
  for (const [k, cert] of [
    ["ark", ark],
    ["ask", ask],
    ["vcek", vcek],
  ] as const) {
    if (!createPublicKey(keys[k]).export({ type: "spki", format: "der" }).equals(cert.spki))
      throw new Error(`${dir}: ${KEY_FILES[k]} does not belong to ${FILES[k]}`);
  }
  const spl = (oid: string): number => {
    const e = vcek.extensions.get(oid);
    if (!e) throw new Error(`${dir}: ${FILES.vcek} lacks extension ${oid}`);
    return derInt(derParse(e.value));
  };
  const chipId = vcek.extensions.get(OID.hwID)?.value;
  if (chipId?.length !== 64) throw new Error(`${dir}: ${FILES.vcek} lacks a 64-byte hwID`);
  return {
    product: "Milan",
    ark,
    ask,
    vcek,
    keys,
    chipId: Buffer.from(chipId),
    tcb: {
      bootloader: spl(OID.blSPL),
      tee: spl(OID.teeSPL),
      snp: spl(OID.snpSPL),
      microcode: spl(OID.ucodeSPL),
    },
  };
}
