/**
 * Intel DCAP collateral: TCB info (v2, v3), QE identity (v2), their issuer chains, and CRLs.
 *
 * Two input forms are read into one `Collateral`:
 *  - the JSON bundle of the dcap-qvl project (keys `tcb_info`, `tcb_info_signature`, `tcb_info_issuer_chain`,
 *    `qe_identity…`, `pck_crl_issuer_chain`, `root_ca_crl`, `pck_crl`);
 *  - a directory of raw Intel PCS responses: `{"tcbInfo":…,"signature":…}` and `{"enclaveIdentity":…,"signature":…}`
 *    bodies (any file names; several FMSPCs may sit side by side), PEM files with issuer chains, and CRLs in DER,
 *    PEM or hex.
 * Signatures are checked over the exact bytes of the `tcbInfo` / `enclaveIdentity` value as served; a file that was
 * pretty-printed after download is checked over its compact re-serialization instead (what Intel signed).
 * Loading only parses; signatures and freshness are checked by the verifier at the time of each verification, and
 * the results that depend only on bytes are memoized (see x509.ts and `signedJsonOk`).
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { TCB_STATUSES, type TcbStatus } from "../claims.js";
import { AttestError } from "../errors.js";
import { Cert, parseCrl, verifySignature, type Crl } from "../x509.js";

export interface TcbLevel {
  sgx: number[];
  pcesvn: number;
  /** TDX TCB components (TCB info v3 with id TDX). */
  tdx?: number[];
  status: TcbStatus;
  tcbDate: string;
  advisoryIds: string[];
}

export interface ModuleIdentity {
  id: string;
  mrsigner: Buffer;
  attributes: Buffer;
  attributesMask: Buffer;
  tcbLevels: { isvsvn: number; status: TcbStatus; advisoryIds: string[] }[];
}

/** A signed JSON document as served, with what we read from it. */
export interface SignedJson {
  /** The exact text of the signed value. */
  body: string;
  signature: Buffer;
  /** Certificates that came with this document (its issuer chain), if any. */
  chain: Cert[];
  issueDate: Date;
  nextUpdate: Date;
  version: number;
  id: string;
  source: string;
}

export interface TcbInfo extends SignedJson {
  fmspc: string;
  pceId: string;
  tcbEvaluationDataNumber: number;
  tcbLevels: TcbLevel[];
  tdxModule?: { mrsigner: Buffer; attributes: Buffer; attributesMask: Buffer };
  tdxModuleIdentities?: ModuleIdentity[];
}

export interface EnclaveIdentity extends SignedJson {
  tcbEvaluationDataNumber: number;
  miscselect: Buffer;
  miscselectMask: Buffer;
  attributes: Buffer;
  attributesMask: Buffer;
  mrsigner: Buffer;
  isvprodid: number;
  tcbLevels: { isvsvn: number; status: TcbStatus; advisoryIds: string[] }[];
}

/** Everything loaded from one or more collateral sources. */
export interface Collateral {
  tcbInfos: TcbInfo[];
  identities: EnclaveIdentity[];
  /** Issuer certificates (TCB signing, PCK CAs, roots) from chains and PEM files. */
  certs: Cert[];
  crls: Crl[];
  sources: string[];
}

function fail(source: string, msg: string): never {
  throw new AttestError("collateral_invalid", `${source}: ${msg}`);
}

/** Returns the exact source text of the value of top-level member `key` of the JSON object text `text`. */
export function rawJsonMember(text: string, key: string): string | undefined {
  const re = new RegExp(`"${key}"\\s*:\\s*`, "g");
  let depth = 0;
  let inStr = false;
  // Find the member at depth 1 only: a nested key of the same name must not match.
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (inStr) {
      if (ch === "\\") i++;
      else if (ch === '"') inStr = false;
      continue;
    }
    if (ch === '"') {
      if (depth === 1) {
        re.lastIndex = i;
        const m = re.exec(text);
        if (m && m.index === i) return scanValue(text, i + m[0].length);
      }
      inStr = true;
    } else if (ch === "{" || ch === "[") depth++;
    else if (ch === "}" || ch === "]") depth--;
  }
  return undefined;
}

function scanValue(text: string, start: number): string | undefined {
  let depth = 0;
  let inStr = false;
  for (let i = start; i < text.length; i++) {
    const ch = text[i];
    if (inStr) {
      if (ch === "\\") i++;
      else if (ch === '"') inStr = false;
      continue;
    }
    if (ch === '"') inStr = true;
    else if (ch === "{" || ch === "[") depth++;
    else if (ch === "}" || ch === "]") {
      depth--;
      if (depth === 0) return text.slice(start, i + 1);
    }
  }
  return undefined;
}

const STATUSES = new Set<string>(TCB_STATUSES.filter((s) => s !== "TcbLevelNotFound"));

type Json = Record<string, unknown>;

function obj(v: unknown, source: string, what: string): Json {
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(source, `${what} must be an object`);
  return v as Json;
}
function num(v: unknown, source: string, what: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0)
    fail(source, `${what} must be a non-negative integer`);
  return v;
}
function str(v: unknown, source: string, what: string): string {
  if (typeof v !== "string") fail(source, `${what} must be a string`);
  return v;
}
function hexField(v: unknown, bytes: number, source: string, what: string): Buffer {
  const s = str(v, source, what);
  if (!/^[0-9a-fA-F]*$/.test(s) || s.length !== bytes * 2)
    fail(source, `${what} must be ${bytes} bytes of hex`);
  return Buffer.from(s, "hex");
}
function date(v: unknown, source: string, what: string): Date {
  const d = new Date(str(v, source, what));
  if (Number.isNaN(d.getTime())) fail(source, `${what} is not a date`);
  return d;
}
function status(v: unknown, source: string, what: string): TcbStatus {
  const s = str(v, source, what);
  if (!STATUSES.has(s)) fail(source, `${what}: unknown TCB status ${JSON.stringify(s)}`);
  return s as TcbStatus;
}
function advisories(v: unknown, source: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string"))
    fail(source, "advisoryIDs must be a list of strings");
  return v as string[];
}
function sigHex(v: unknown, source: string): Buffer {
  const s = str(v, source, "signature");
  if (!/^[0-9a-fA-F]{128}$/.test(s)) fail(source, "signature must be 64 bytes of hex (r‖s)");
  return Buffer.from(s, "hex");
}

function components(tcb: Json, key: string, source: string): number[] | undefined {
  const v = tcb[key];
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length !== 16) fail(source, `${key} must list 16 components`);
  return v.map((c, i) => num(obj(c, source, `${key}[${i}]`).svn, source, `${key}[${i}].svn`));
}

function parseTcbInfo(body: string, signature: Buffer, chain: Cert[], source: string): TcbInfo {
  let j: Json;
  try {
    j = obj(JSON.parse(body), source, "tcbInfo");
  } catch (e) {
    if (e instanceof AttestError) throw e;
    return fail(source, "tcbInfo is not JSON");
  }
  const version = num(j.version, source, "tcbInfo.version");
  if (version !== 2 && version !== 3)
    fail(source, `unsupported tcbInfo version ${version} (expected 2 or 3)`);
  const id = version === 3 ? str(j.id, source, "tcbInfo.id") : "SGX";
  if (id !== "SGX" && id !== "TDX") fail(source, `unknown tcbInfo id ${JSON.stringify(id)}`);
  if (!Array.isArray(j.tcbLevels) || j.tcbLevels.length === 0)
    fail(source, "tcbInfo.tcbLevels must be a non-empty list");
  const tcbLevels = j.tcbLevels.map((l0: unknown, i: number): TcbLevel => {
    const l = obj(l0, source, `tcbLevels[${i}]`);
    const tcb = obj(l.tcb, source, `tcbLevels[${i}].tcb`);
    let sgx: number[];
    let tdx: number[] | undefined;
    if (version === 2) {
      sgx = [];
      for (let k = 1; k <= 16; k++) {
        const key = `sgxtcbcomp${String(k).padStart(2, "0")}svn`;
        sgx.push(num(tcb[key], source, `tcbLevels[${i}].tcb.${key}`));
      }
    } else {
      sgx =
        components(tcb, "sgxtcbcomponents", source) ?? fail(source, `tcbLevels[${i}] lacks sgxtcbcomponents`);
      tdx = components(tcb, "tdxtcbcomponents", source);
      if (id === "TDX" && !tdx) fail(source, `tcbLevels[${i}] lacks tdxtcbcomponents`);
    }
    return {
      sgx,
      tdx,
      pcesvn: num(tcb.pcesvn, source, `tcbLevels[${i}].tcb.pcesvn`),
      status: status(l.tcbStatus, source, `tcbLevels[${i}].tcbStatus`),
      tcbDate: str(l.tcbDate ?? "", source, "tcbDate"),
      advisoryIds: advisories(l.advisoryIDs, source),
    };
  });
  const info: TcbInfo = {
    body,
    signature,
    chain,
    source,
    version,
    id,
    issueDate: date(j.issueDate, source, "tcbInfo.issueDate"),
    nextUpdate: date(j.nextUpdate, source, "tcbInfo.nextUpdate"),
    fmspc: hexField(j.fmspc, 6, source, "tcbInfo.fmspc").toString("hex"),
    pceId: hexField(j.pceId, 2, source, "tcbInfo.pceId").toString("hex"),
    tcbEvaluationDataNumber: num(j.tcbEvaluationDataNumber ?? 0, source, "tcbEvaluationDataNumber"),
    tcbLevels,
  };
  if (j.tdxModule !== undefined) {
    const m = obj(j.tdxModule, source, "tdxModule");
    info.tdxModule = {
      mrsigner: hexField(m.mrsigner, 48, source, "tdxModule.mrsigner"),
      attributes: hexField(m.attributes, 8, source, "tdxModule.attributes"),
      attributesMask: hexField(m.attributesMask, 8, source, "tdxModule.attributesMask"),
    };
  }
  if (j.tdxModuleIdentities !== undefined) {
    if (!Array.isArray(j.tdxModuleIdentities)) fail(source, "tdxModuleIdentities must be a list");
    info.tdxModuleIdentities = j.tdxModuleIdentities.map((m0: unknown, i: number) => {
      const m = obj(m0, source, `tdxModuleIdentities[${i}]`);
      return {
        id: str(m.id, source, `tdxModuleIdentities[${i}].id`),
        mrsigner: hexField(m.mrsigner, 48, source, `tdxModuleIdentities[${i}].mrsigner`),
        attributes: hexField(m.attributes, 8, source, `tdxModuleIdentities[${i}].attributes`),
        attributesMask: hexField(m.attributesMask, 8, source, `tdxModuleIdentities[${i}].attributesMask`),
        tcbLevels: isvLevels(m.tcbLevels, source, `tdxModuleIdentities[${i}].tcbLevels`),
      };
    });
  }
  return info;
}

function isvLevels(v: unknown, source: string, what: string): EnclaveIdentity["tcbLevels"] {
  if (!Array.isArray(v) || v.length === 0) fail(source, `${what} must be a non-empty list`);
  return v.map((l0: unknown, i: number) => {
    const l = obj(l0, source, `${what}[${i}]`);
    return {
      isvsvn: num(obj(l.tcb, source, `${what}[${i}].tcb`).isvsvn, source, `${what}[${i}].tcb.isvsvn`),
      status: status(l.tcbStatus, source, `${what}[${i}].tcbStatus`),
      advisoryIds: advisories(l.advisoryIDs, source),
    };
  });
}

function parseIdentity(body: string, signature: Buffer, chain: Cert[], source: string): EnclaveIdentity {
  let j: Json;
  try {
    j = obj(JSON.parse(body), source, "enclaveIdentity");
  } catch (e) {
    if (e instanceof AttestError) throw e;
    return fail(source, "enclaveIdentity is not JSON");
  }
  const version = num(j.version, source, "enclaveIdentity.version");
  if (version !== 2) fail(source, `unsupported enclave identity version ${version} (expected 2)`);
  return {
    body,
    signature,
    chain,
    source,
    version,
    id: str(j.id, source, "enclaveIdentity.id"),
    issueDate: date(j.issueDate, source, "enclaveIdentity.issueDate"),
    nextUpdate: date(j.nextUpdate, source, "enclaveIdentity.nextUpdate"),
    tcbEvaluationDataNumber: num(j.tcbEvaluationDataNumber ?? 0, source, "tcbEvaluationDataNumber"),
    miscselect: hexField(j.miscselect, 4, source, "miscselect"),
    miscselectMask: hexField(j.miscselectMask, 4, source, "miscselectMask"),
    attributes: hexField(j.attributes, 16, source, "attributes"),
    attributesMask: hexField(j.attributesMask, 16, source, "attributesMask"),
    mrsigner: hexField(j.mrsigner, 32, source, "mrsigner"),
    isvprodid: num(j.isvprodid, source, "isvprodid"),
    tcbLevels: isvLevels(j.tcbLevels, source, "enclaveIdentity.tcbLevels"),
  };
}

/** Parses a PCS response body (`{"tcbInfo"|"enclaveIdentity"|"qeIdentity": …, "signature": …}`). */
function parsePcsBody(text: string, source: string, into: Collateral): boolean {
  let j: Json;
  try {
    j = JSON.parse(text) as Json;
  } catch {
    return false;
  }
  if (typeof j !== "object" || j === null) return false;
  for (const key of ["tcbInfo", "enclaveIdentity", "qeIdentity"]) {
    if (!(key in j)) continue;
    let body = rawJsonMember(text, key) ?? fail(source, `cannot locate ${key}`);
    // A pretty-printed file is not what Intel signed: Intel serves compact JSON, which JSON.stringify reproduces.
    if (/^\{\s*\n/.test(body)) body = JSON.stringify(j[key]);
    const sig = sigHex(j.signature, source);
    if (key === "tcbInfo") into.tcbInfos.push(parseTcbInfo(body, sig, [], source));
    else into.identities.push(parseIdentity(body, sig, [], source));
    return true;
  }
  return false;
}

function pemChain(v: unknown, source: string, what: string): Cert[] {
  const certs = Cert.fromPemBundle(str(v, source, what));
  if (certs.length === 0) fail(source, `${what} holds no certificate`);
  return certs;
}

/** Parses dcap-qvl's JSON collateral bundle. */
export function parseBundle(text: string, source: string): Collateral {
  let j: Json;
  try {
    j = obj(JSON.parse(text), source, "collateral bundle");
  } catch (e) {
    if (e instanceof AttestError) throw e;
    return fail(source, "not JSON");
  }
  const tcbChain = pemChain(j.tcb_info_issuer_chain, source, "tcb_info_issuer_chain");
  const qeChain = pemChain(j.qe_identity_issuer_chain, source, "qe_identity_issuer_chain");
  const c: Collateral = {
    tcbInfos: [
      parseTcbInfo(
        str(j.tcb_info, source, "tcb_info"),
        sigHex(j.tcb_info_signature, source),
        tcbChain,
        source,
      ),
    ],
    identities: [
      parseIdentity(
        str(j.qe_identity, source, "qe_identity"),
        sigHex(j.qe_identity_signature, source),
        qeChain,
        source,
      ),
    ],
    certs: [...tcbChain, ...qeChain],
    crls: [],
    sources: [source],
  };
  if (j.pck_crl_issuer_chain !== undefined)
    c.certs.push(...pemChain(j.pck_crl_issuer_chain, source, "pck_crl_issuer_chain"));
  for (const key of ["root_ca_crl", "pck_crl"]) {
    if (j[key] === undefined) continue;
    try {
      c.crls.push(parseCrl(str(j[key], source, key)));
    } catch (e) {
      fail(source, `${key}: ${(e as Error).message}`);
    }
  }
  return c;
}

function emptyCollateral(): Collateral {
  return { tcbInfos: [], identities: [], certs: [], crls: [], sources: [] };
}

/** Adds one file of any supported kind to `into`. Returns false when the file is of no known kind. */
function addFile(path: string, into: Collateral): boolean {
  const data = readFileSync(path);
  const text = data.toString("utf8");
  const t = text.trimStart();
  if (t.startsWith("{")) {
    if (/"tcb_info"\s*:/.test(text)) {
      merge(into, parseBundle(text, path));
      return true;
    }
    return parsePcsBody(text, path, into);
  }
  if (t.startsWith("-----BEGIN CERTIFICATE-----")) {
    into.certs.push(...Cert.fromPemBundle(text));
    return true;
  }
  if (t.startsWith("-----BEGIN X509 CRL-----") || (data[0] === 0x30 && /\.(der|crl)$/i.test(path))) {
    try {
      into.crls.push(parseCrl(t.startsWith("-----") ? text : data));
    } catch (e) {
      fail(path, (e as Error).message);
    }
    return true;
  }
  if (data[0] === 0x30) {
    try {
      into.certs.push(Cert.fromDer(data));
      return true;
    } catch {
      return false;
    }
  }
  return false;
}

function merge(into: Collateral, from: Collateral): void {
  into.tcbInfos.push(...from.tcbInfos);
  into.identities.push(...from.identities);
  into.certs.push(...from.certs);
  into.crls.push(...from.crls);
  into.sources.push(...from.sources);
}

const loaded = new Map<string, { key: string; collateral: Collateral }>();

/**
 * Loads collateral from files and directories (merged). Parsed collateral is cached per path and reused while the
 * files' sizes and modification times stay the same.
 */
export function loadCollateral(paths: readonly string[]): Collateral {
  const out = emptyCollateral();
  for (const p of paths) {
    let st;
    try {
      st = statSync(p);
    } catch {
      throw new AttestError("collateral_invalid", `${p}: cannot read collateral (no such file or directory)`);
    }
    const files = st.isDirectory()
      ? readdirSync(p)
          .sort()
          .map((f) => join(p, f))
          .filter((f) => statSync(f).isFile())
      : [p];
    const key = files.map((f) => `${f}:${statSync(f).size}:${statSync(f).mtimeMs}`).join("|");
    let hit = loaded.get(p);
    if (!hit || hit.key !== key) {
      const c = emptyCollateral();
      let known = 0;
      for (const f of files) if (addFile(f, c)) known++;
      if (known === 0)
        throw new AttestError(
          "collateral_invalid",
          `${p}: no collateral found (expected PCS JSON, PEM or CRL files, or a dcap-qvl bundle)`,
        );
      c.sources.push(p);
      hit = { key, collateral: c };
      loaded.set(p, hit);
    }
    merge(out, hit.collateral);
  }
  return out;
}

/** Builds collateral from in-memory parts (used by the simulated TEE and tests). */
export function collateralFromBundle(bundle: object, source = "bundle"): Collateral {
  return parseBundle(JSON.stringify(bundle), source);
}

const jsonSigOk = new WeakMap<SignedJson, Map<string, boolean>>();

/** Whether `doc`'s signature verifies under `signer` (ECDSA P-256 SHA-256, r‖s), memoized per document and signer. */
export function signedJsonOk(doc: SignedJson, signer: Cert): boolean {
  let bySigner = jsonSigOk.get(doc);
  if (!bySigner) jsonSigOk.set(doc, (bySigner = new Map()));
  let ok = bySigner.get(signer.fingerprint);
  if (ok === undefined) {
    ok = verifySignature(
      "sha256",
      Buffer.from(doc.body, "utf8"),
      signer.publicKey,
      doc.signature,
      "ieee-p1363",
    );
    bySigner.set(signer.fingerprint, ok);
  }
  return ok;
}
