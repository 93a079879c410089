/**
 * The simulated SGX TEE: its quotes parse and bind as real ones do, its PCK extension has Intel's DER structure, its
 * collateral is signed and shaped like PCS's, and an independent verifier (@phala/dcap-qvl, given the simulated
 * root) accepts what it issues.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, createPublicKey, generateKeyPairSync } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import dcap from "@phala/dcap-qvl";
import { derChildren, derInt, derOid, derParse, derValue, TAG, type Der } from "../../src/attest/der.js";
import { AttestError } from "../../src/attest/errors.js";
import {
  INTEL_QE_VENDOR_ID,
  parseQuote,
  quoteReportData,
  SGX,
  sgxClaims,
  sgxDebug,
} from "../../src/attest/intel/quote.js";
import {
  createSimTee,
  issueSimQuote,
  loadSimTee,
  reissueSimCollateral,
  revokePckCert,
  saveSimTee,
  SGX_EXTENSION_OID,
  SIM_FMSPC,
  SIM_QE,
  SIM_ROOT_SUBJECT,
  type SimTee,
} from "../../src/attest/sim.js";
import { Cert, parseCrl, verifyChain, verifySignature } from "../../src/attest/x509.js";
import { vector, vectorPath } from "../helpers/vectors.js";

const MRENCLAVE = "a1".repeat(32);
const MRSIGNER = "b2".repeat(32);
const NOW = new Date("2026-03-01T12:00:00.750Z");
const AT = new Date("2026-03-02T00:00:00Z");

let shared: Promise<SimTee> | undefined;
const sim = (): Promise<SimTee> => (shared ??= createSimTee({ now: NOW }));

/** Verifies with dcap-qvl, an independent implementation, trusting the simulated root. */
function qvl(
  s: SimTee,
  quote: Buffer,
  at = AT,
  collateral = s.collateral,
): { status: string; advisory_ids: string[] } {
  return dcap.QuoteVerifier.newWithRootCa(s.root.der).verify(
    quote,
    collateral,
    Math.floor(at.getTime() / 1000),
  );
}

function rawKey(raw: Buffer) {
  return createPublicKey({
    key: {
      kty: "EC",
      crv: "P-256",
      x: raw.subarray(0, 32).toString("base64url"),
      y: raw.subarray(32).toString("base64url"),
    },
    format: "jwk",
  });
}

test("sim quote parses with parseQuote and states the chosen claims", async () => {
  const s = await sim();
  const quote = issueSimQuote(s, {
    mrenclave: MRENCLAVE,
    mrsigner: MRSIGNER.toUpperCase(),
    isvprodid: 7,
    isvsvn: 65535,
    reportData: Buffer.from("hello"),
  });
  const q = parseQuote(quote);
  assert.equal(q.version, 3);
  assert.equal(q.akType, 2);
  assert.equal(q.teeType, 0);
  assert.equal(q.bodyType, "sgx");
  assert.equal(q.qeVendorId, INTEL_QE_VENDOR_ID);
  assert.equal(q.qeSvn, SIM_QE.isvsvn);
  assert.equal(q.pceSvn, s.platform.pcesvn);
  assert.equal(q.certType, 5);
  assert.equal(q.raw.length, quote.length);
  const c = sgxClaims(q.body);
  assert.equal(c.mrenclave, MRENCLAVE);
  assert.equal(c.mrsigner, MRSIGNER);
  assert.equal(c.isvprodid, 7);
  assert.equal(c.isvsvn, 65535);
  assert.equal(c.cpusvn, s.platform.cpusvn.toString("hex"));
  assert.equal(sgxDebug(q.body), false);
  assert.deepEqual(quoteReportData(q), Buffer.concat([Buffer.from("hello"), Buffer.alloc(59)]));
  // The certification data is the PEM chain: PCK leaf, platform CA, root.
  const chain = Cert.fromPemBundle(q.certData);
  assert.deepEqual(
    chain.map((x) => x.fingerprint),
    [s.pck, s.platformCa, s.root].map((x) => x.fingerprint),
  );
});

test("sim quote: signatures and the QE report's binding of the attestation key hold", async () => {
  const s = await sim();
  const q = parseQuote(issueSimQuote(s, { mrenclave: MRENCLAVE, mrsigner: MRSIGNER }));
  assert.deepEqual(q.attestKey, s.attestKey);
  const qeRd = q.qeReport.subarray(SGX.reportdata, SGX.reportdata + 64);
  const expected = createHash("sha256")
    .update(Buffer.concat([q.attestKey, q.qeAuthData]))
    .digest();
  assert.deepEqual(qeRd.subarray(0, 32), expected);
  assert.deepEqual(qeRd.subarray(32), Buffer.alloc(32));
  assert.equal(q.qeAuthData.length, 32);
  assert.ok(
    verifySignature("sha256", q.qeReport, s.pck.publicKey, q.qeReportSignature, "ieee-p1363"),
    "QE report signed by PCK key",
  );
  assert.ok(
    verifySignature("sha256", q.signedData, rawKey(q.attestKey), q.signature, "ieee-p1363"),
    "quote signed by attestation key",
  );
  // The QE report is what the QE identity describes.
  const qe = sgxClaims(q.qeReport);
  const id = JSON.parse(s.collateral.qe_identity) as Record<string, string | number>;
  assert.equal(qe.mrsigner, String(id.mrsigner).toLowerCase());
  assert.equal(qe.isvprodid, id.isvprodid);
  assert.equal(qe.isvsvn, SIM_QE.isvsvn);
  const mask = Buffer.from(String(id.attributesMask), "hex");
  const masked = (b: Buffer) => Buffer.from(b.map((x, i) => x & mask[i]!));
  assert.deepEqual(
    masked(Buffer.from(qe.attributes, "hex")),
    masked(Buffer.from(String(id.attributes), "hex")),
  );
  assert.equal(qe.miscselect & Buffer.from(String(id.miscselectMask), "hex").readUInt32LE(), 0);
});

test("sim quote options: debug, attributes, report data bounds, bad measurements", async () => {
  const s = await sim();
  const base = { mrenclave: MRENCLAVE, mrsigner: MRSIGNER };
  const debug = parseQuote(issueSimQuote(s, { ...base, debug: true }));
  assert.equal(sgxDebug(debug.body), true);
  const attrs = Buffer.from("05000000000000001f00000000000000", "hex");
  assert.equal(
    sgxClaims(parseQuote(issueSimQuote(s, { ...base, attributes: attrs })).body).attributes,
    attrs.toString("hex"),
  );
  const both = parseQuote(issueSimQuote(s, { ...base, attributes: attrs, debug: true }));
  assert.equal(sgxClaims(both.body).attributes, "07000000000000001f00000000000000");
  assert.equal(attrs[0], 0x05, "the caller's buffer is not modified");
  const full = Buffer.alloc(64, 0xee);
  assert.deepEqual(quoteReportData(parseQuote(issueSimQuote(s, { ...base, reportData: full }))), full);
  assert.throws(() => issueSimQuote(s, { ...base, reportData: Buffer.alloc(65) }), RangeError);
  assert.throws(() => issueSimQuote(s, { ...base, mrenclave: "abc" }), TypeError);
  assert.throws(() => issueSimQuote(s, { ...base, isvsvn: 65536 }), RangeError);
  assert.throws(() => issueSimQuote(s, { ...base, attributes: Buffer.alloc(8) }), RangeError);
});

/** A tree of tags and OIDs: the DER structure without the values. */
function skeleton(d: Der): unknown {
  if (d.tag === TAG.OID) return derOid(d);
  if (d.tag & 0x20) return derChildren(d).map(skeleton);
  return d.tag;
}

test("PCK certificate: Intel's SGX extension round-trips through der.ts, with a real PCK certificate's structure", async () => {
  const s = await sim();
  const ext = s.pck.extensions.get(SGX_EXTENSION_OID);
  assert.ok(ext && !ext.critical);
  const fields = derChildren(derParse(ext.value));
  const byOid = new Map(fields.map((f) => [derOid(derChildren(f)[0]!), derChildren(f)[1]!]));
  assert.deepEqual(
    [...byOid.keys()],
    [1, 2, 3, 4, 5].map((n) => `${SGX_EXTENSION_OID}.${n}`),
  );
  const get = (n: string) => byOid.get(`${SGX_EXTENSION_OID}.${n}`)!;
  assert.equal(get("1").tag, TAG.OCTET_STRING);
  assert.deepEqual(derValue(get("1")), s.platform.ppid);
  assert.equal(derValue(get("1")).length, 16);
  const tcb = derChildren(get("2")).map((f) => [derOid(derChildren(f)[0]!), derChildren(f)[1]!] as const);
  assert.equal(tcb.length, 18);
  tcb.slice(0, 16).forEach(([oid, v], i) => {
    assert.equal(oid, `${SGX_EXTENSION_OID}.2.${i + 1}`);
    assert.equal(derInt(v), s.platform.cpusvn[i], `CPUSVN component ${i + 1}`);
  });
  assert.equal(tcb[16]![0], `${SGX_EXTENSION_OID}.2.17`);
  assert.equal(derInt(tcb[16]![1]), s.platform.pcesvn);
  assert.equal(tcb[17]![0], `${SGX_EXTENSION_OID}.2.18`);
  assert.deepEqual(derValue(tcb[17]![1]), s.platform.cpusvn);
  assert.equal(derValue(get("3")).toString("hex"), "0000");
  assert.equal(derValue(get("4")).toString("hex").toUpperCase(), SIM_FMSPC);
  assert.equal(get("5").tag, TAG.ENUMERATED);
  assert.deepEqual(derValue(get("5")), Buffer.from([0]));
  // Same tags and OIDs, in the same order, as the PCK certificate of a real quote.
  const realPck = Cert.fromPemBundle(parseQuote(vector("intel/dcap-qvl/sgx_quote")).certData)[0]!;
  const real = realPck.extensions.get(SGX_EXTENSION_OID)!;
  assert.deepEqual(skeleton(derParse(ext.value)), skeleton(derParse(real.value)));
});

test("certificates: names, CA flags, chain and CRLs verify under the simulated root only", async () => {
  const s = await sim();
  assert.equal(s.root.subject, SIM_ROOT_SUBJECT.replace(",", ", "));
  assert.ok(s.root.subjectDer.includes(Buffer.from([0x0c])), "UTF8String names");
  assert.equal(s.root.x509.ca, true);
  assert.equal(s.platformCa.x509.ca, true);
  assert.equal(s.tcbSigning.x509.ca, false);
  assert.equal(s.pck.x509.ca, false);
  assert.match(s.platformCa.subject, /CN=SENG Simulated PCK Platform CA/);
  assert.match(s.tcbSigning.subject, /CN=SENG Simulated TCB Signing/);
  assert.match(s.pck.subject, /CN=SENG Simulated PCK Certificate/);
  assert.deepEqual(s.pck.notBefore, new Date("2026-03-01T12:00:00Z"));
  assert.deepEqual(s.pck.notAfter, new Date(Date.parse("2026-03-01T12:00:00Z") + 3650 * 86400_000));
  const crls = [parseCrl(s.collateral.root_ca_crl), parseCrl(s.collateral.pck_crl)];
  assert.equal(
    verifyChain([s.pck, s.platformCa], { roots: [s.root], at: AT, crls, what: "PCK chain" }),
    s.root,
  );
  assert.equal(verifyChain([s.tcbSigning], { roots: [s.root], at: AT, crls, what: "TCB chain" }), s.root);
  assert.equal(crls[0]!.revoked.size + crls[1]!.revoked.size, 0);
  const intel = Cert.from(readFileSync(vectorPath("intel/Intel_SGX_Root_CA.pem")));
  assert.throws(
    () => verifyChain([s.pck, s.platformCa, s.root], { roots: [intel], at: AT, what: "PCK chain" }),
    (e: unknown) => e instanceof AttestError && e.code === "untrusted_root",
  );
});

test("collateral: dcap-qvl's bundle format, PCS-shaped JSON signed over its exact text", async () => {
  const s = await sim();
  const sample = JSON.parse(
    readFileSync(vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"), "utf8"),
  ) as object;
  assert.deepEqual(Object.keys(s.collateral).sort(), Object.keys(sample).sort());
  const c = s.collateral;
  for (const [json, sig] of [
    [c.tcb_info, c.tcb_info_signature],
    [c.qe_identity, c.qe_identity_signature],
  ] as const) {
    assert.equal(sig.length, 128);
    assert.ok(
      verifySignature(
        "sha256",
        Buffer.from(json, "utf8"),
        s.tcbSigning.publicKey,
        Buffer.from(sig, "hex"),
        "ieee-p1363",
      ),
    );
  }
  assert.deepEqual(
    Cert.fromPemBundle(c.tcb_info_issuer_chain).map((x) => x.fingerprint),
    [s.tcbSigning.fingerprint, s.root.fingerprint],
  );
  assert.equal(c.qe_identity_issuer_chain, c.tcb_info_issuer_chain);
  assert.deepEqual(
    Cert.fromPemBundle(c.pck_crl_issuer_chain).map((x) => x.fingerprint),
    [s.platformCa.fingerprint, s.root.fingerprint],
  );
  assert.deepEqual(parseCrl(c.pck_crl).issuerDer, s.platformCa.subjectDer);
  assert.deepEqual(parseCrl(c.root_ca_crl).issuerDer, s.root.subjectDer);

  const tcb = JSON.parse(c.tcb_info);
  assert.deepEqual(Object.keys(tcb), Object.keys(JSON.parse((sample as { tcb_info: string }).tcb_info)));
  assert.equal(tcb.id, "SGX");
  assert.equal(tcb.version, 3);
  assert.equal(tcb.fmspc, SIM_FMSPC);
  assert.equal(tcb.pceId, "0000");
  assert.equal(tcb.tcbType, 0);
  assert.equal(tcb.issueDate, "2026-03-01T12:00:00Z");
  assert.equal(tcb.nextUpdate, "2026-03-31T12:00:00Z");
  assert.deepEqual(
    tcb.tcbLevels.map((l: { tcbStatus: string }) => l.tcbStatus),
    ["UpToDate", "OutOfDate"],
  );
  const top = tcb.tcbLevels[0];
  assert.deepEqual(
    top.tcb.sgxtcbcomponents.map((x: { svn: number }) => x.svn),
    [...s.platform.cpusvn],
  );
  assert.equal(top.tcb.pcesvn, s.platform.pcesvn);
  assert.ok(tcb.tcbLevels[1].advisoryIDs.length > 0);

  const qe = JSON.parse(c.qe_identity);
  assert.deepEqual(Object.keys(qe), Object.keys(JSON.parse((sample as { qe_identity: string }).qe_identity)));
  assert.equal(qe.id, "QE");
  assert.equal(qe.version, 2);
  assert.equal(qe.mrsigner, SIM_QE.mrsigner.toUpperCase());
  assert.deepEqual(qe.tcbLevels, [
    { tcb: { isvsvn: SIM_QE.isvsvn }, tcbDate: "2025-01-15T00:00:00Z", tcbStatus: "UpToDate" },
  ]);
  for (const k of ["miscselect", "miscselectMask", "attributes", "attributesMask", "mrsigner"])
    assert.match(qe[k], /^[0-9A-F]+$/);
});

test("dcap-qvl (independent verifier) accepts sim quotes and sees each platform TCB level", async () => {
  const s = await sim();
  const quote = issueSimQuote(s, { mrenclave: MRENCLAVE, mrsigner: MRSIGNER, reportData: Buffer.from("x") });
  const r = qvl(s, quote);
  assert.equal(r.status, "UpToDate");
  assert.deepEqual(r.advisory_ids, []);
  const old = await createSimTee({ now: NOW, platformTcb: "OutOfDate" });
  const o = qvl(old, issueSimQuote(old, { mrenclave: MRENCLAVE, mrsigner: MRSIGNER }));
  assert.equal(o.status, "OutOfDate");
  assert.deepEqual(o.advisory_ids, ["SENG-SIM-SA-00001"]);
  const none = await createSimTee({ now: NOW, platformTcb: "TcbLevelNotFound" });
  assert.throws(
    () => qvl(none, issueSimQuote(none, { mrenclave: MRENCLAVE, mrsigner: MRSIGNER })),
    /No matching TCB level/,
  );
  // Another sim's root does not verify this one's quotes.
  assert.throws(() => qvl(old, quote, AT, s.collateral));
});

test("revokePckCert: the new PCK CRL lists the PCK serial, and verifiers reject", async () => {
  const s = await sim();
  const r = await revokePckCert(s);
  const crl = parseCrl(r.collateral.pck_crl);
  assert.deepEqual([...crl.revoked], [s.pck.serial.toString("hex")]);
  assert.deepEqual(crl.thisUpdate, parseCrl(s.collateral.pck_crl).thisUpdate);
  assert.equal(r.collateral.tcb_info, s.collateral.tcb_info);
  assert.throws(
    () => verifyChain([r.pck, r.platformCa], { roots: [r.root], at: AT, crls: [crl], what: "PCK chain" }),
    (e: unknown) => e instanceof AttestError && e.code === "cert_revoked",
  );
  assert.throws(() => qvl(r, issueSimQuote(r, { mrenclave: MRENCLAVE, mrsigner: MRSIGNER })), /revoked/);
  // Reissuing keeps the revocation unless told otherwise.
  assert.equal(parseCrl((await reissueSimCollateral(r, {})).collateral.pck_crl).revoked.size, 1);
  assert.equal(
    parseCrl((await reissueSimCollateral(r, { pckRevoked: false })).collateral.pck_crl).revoked.size,
    0,
  );
});

test("reissueSimCollateral: custom dates for TCB info, QE identity and CRLs", async () => {
  const s = await sim();
  const issueDate = new Date("2026-01-01T00:00:00.999Z");
  const nextUpdate = new Date("2026-02-01T00:00:00Z");
  const expired = await reissueSimCollateral(s, { issueDate, nextUpdate });
  const tcb = JSON.parse(expired.collateral.tcb_info);
  const qe = JSON.parse(expired.collateral.qe_identity);
  assert.deepEqual([tcb.issueDate, tcb.nextUpdate], ["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"]);
  assert.deepEqual([qe.issueDate, qe.nextUpdate], ["2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"]);
  const crl = parseCrl(expired.collateral.pck_crl);
  assert.deepEqual([crl.thisUpdate, crl.nextUpdate], [new Date("2026-01-01T00:00:00Z"), nextUpdate]);
  const quote = issueSimQuote(s, { mrenclave: MRENCLAVE, mrsigner: MRSIGNER });
  assert.throws(() => qvl(expired, quote), /expired/);
  // CRL dates can differ from the JSON collateral's, to test each expiry alone.
  const crlOnly = await reissueSimCollateral(s, { crlNextUpdate: new Date("2026-03-01T18:00:00Z") });
  assert.equal(crlOnly.collateral.tcb_info, s.collateral.tcb_info);
  assert.deepEqual(parseCrl(crlOnly.collateral.root_ca_crl).nextUpdate, new Date("2026-03-01T18:00:00Z"));
  assert.equal(qvl(crlOnly, quote).status, "UpToDate");
});

test("saveSimTee / loadSimTee: files, key modes, and a loaded sim that issues verifiable quotes", async () => {
  const s = await sim();
  const dir = mkdtempSync(join(tmpdir(), "seng-sim-"));
  try {
    const d = join(dir, "tee");
    saveSimTee(s, d);
    assert.deepEqual(readdirSync(d).sort(), [
      "attestation-key.pem",
      "collateral.json",
      "pck-chain.pem",
      "pck-key.pem",
      "platform-ca-key.pem",
      "root-key.pem",
      "root.pem",
      "tcb-signing-key.pem",
    ]);
    for (const f of readdirSync(d).filter((f) => f.endsWith("-key.pem"))) {
      assert.equal(statSync(join(d, f)).mode & 0o777, 0o600, f);
      assert.match(readFileSync(join(d, f), "utf8"), /^-----BEGIN PRIVATE KEY-----/);
    }
    assert.equal(Cert.from(readFileSync(join(d, "root.pem"))).fingerprint, s.root.fingerprint);
    assert.throws(() => saveSimTee(s, d), /exists/);

    const l = loadSimTee(d);
    assert.deepEqual(l.collateral, s.collateral);
    assert.equal(l.pckChainPem, s.pckChainPem);
    assert.deepEqual(l.attestKey, s.attestKey);
    assert.deepEqual(l.platform, s.platform);
    for (const k of ["root", "platformCa", "tcbSigning", "pck"] as const)
      assert.equal(l[k].fingerprint, s[k].fingerprint);
    const quote = issueSimQuote(l, { mrenclave: MRENCLAVE, mrsigner: MRSIGNER });
    assert.equal(
      qvl(s, quote).status,
      "UpToDate",
      "a quote from the loaded sim verifies under the original root",
    );

    // A revoked sim can replace the files when asked to.
    saveSimTee(await revokePckCert(l), d, { overwrite: true });
    assert.equal(parseCrl(loadSimTee(d).collateral.pck_crl).revoked.size, 1);

    // A key that does not belong to its certificate is refused.
    writeFileSync(
      join(d, "pck-key.pem"),
      generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" }),
    );
    assert.throws(() => loadSimTee(d), /pck-key\.pem does not belong/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("each sim has its own keys and hierarchy", async () => {
  const [a, b] = await Promise.all([createSimTee(), createSimTee()]);
  assert.notDeepEqual(a.attestKey, b.attestKey);
  assert.notEqual(a.root.fingerprint, b.root.fingerprint);
  assert.notDeepEqual(a.platform.ppid, b.platform.ppid);
  assert.ok(Math.abs(a.root.notBefore.getTime() - Date.now()) < 60_000, "default now is the current time");
});
