/**
 * Security review regressions: each test shows a fail-open (or fail-wrong) path that was found in src/attest and
 * pins the fixed behaviour. Real vectors where they show the problem; the simulated TEE where a forgery needs keys.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import { x509 } from "../../src/attest/x509gen.js";
import {
  collateralFromBundle,
  compileApps,
  loadCollateral,
  matchApp,
  mismatch,
  PolicyError,
  verifyEvidence,
  type Collateral,
  type Verdict,
} from "../../src/attest/index.js";
import { createSimTee, issueSimQuote, revokePckCert, type SimTee } from "../../src/attest/sim.js";
import { parseQuote, SGX } from "../../src/attest/intel/quote.js";
import { intelRoot } from "../../src/attest/intel/roots.js";
import { Cert, certCacheSizes, parseCrl, verifyChain } from "../../src/attest/x509.js";
import { AttestError } from "../../src/attest/errors.js";
import { vector, vectorPath } from "../helpers/vectors.js";

const NOW = new Date("2026-01-10T00:00:00Z");
const AT = new Date("2026-01-20T00:00:00Z");
const MR = "ab".repeat(32);
const SIGNER = "cd".repeat(32);
const SGX_AT = new Date("2025-07-19T10:01:17Z");

let shared: SimTee | undefined;
const sim = async (): Promise<SimTee> => (shared ??= await createSimTee({ now: NOW }));

const bundle = (rel: string): Record<string, string> =>
  JSON.parse(readFileSync(vectorPath(rel), "utf8")) as Record<string, string>;

function signJson(key: KeyObject, text: string): string {
  return sign("sha256", Buffer.from(text, "utf8"), { key, dsaEncoding: "ieee-p1363" }).toString("hex");
}

function verifySim(s: SimTee, quote: Buffer, collateral: Collateral): Verdict {
  return verifyEvidence(quote, { at: AT, collateral, extraRoots: [s.root] });
}

/**
 * What an attacker with root on a genuine SGX host can produce: the PCE signs the report of *any* enclave that has
 * the PROVISIONKEY attribute, so a rogue "quoting enclave" (not Intel's MRSIGNER) gets a valid PCK signature over a
 * report that binds the attacker's attestation key, and then signs quotes for any MRENCLAVE. Only the QE identity
 * check tells it from Intel's QE. Here the sim's PCK key stands in for the PCE.
 */
function rogueQeQuote(s: SimTee, quote: Buffer): Buffer {
  const q = parseQuote(quote);
  const off = q.qeReport.byteOffset - quote.byteOffset;
  const out = Buffer.from(quote);
  const report = Buffer.from(out.subarray(off, off + 384));
  report.fill(0x66, SGX.mrsigner, SGX.mrsigner + 32); // the attacker's signing key, not Intel's
  report.copy(out, off);
  sign("sha256", report, { key: s.keys.pck, dsaEncoding: "ieee-p1363" }).copy(out, off + 384);
  return out;
}

test("review: collateral without a QE identity does not let an unverified quoting enclave pass the policy", async () => {
  const s = await sim();
  const forged = rogueQeQuote(s, issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER }));
  const apps = compileApps([{ name: "bank", identities: [{ mrenclave: MR }] }]);

  // With Intel's QE identity in the collateral, the rogue QE is caught.
  const full = verifySim(s, forged, collateralFromBundle(s.collateral));
  assert.equal(full.code, "qe_identity_mismatch", full.reason);

  // Collateral with TCB info but no QE identity (e.g. a directory holding only PCS tcbInfo files).
  const partial = collateralFromBundle(s.collateral);
  partial.identities = [];
  const v = verifySim(s, forged, partial);
  assert.equal(v.verified, true, v.reason); // signatures and chain hold; the QE is simply not checked
  const r = matchApp(v, apps);
  assert.equal(r.matched, false, "a quote from an unverified quoting enclave must not match by default");
  assert.ok(!r.matched && r.reasons[0]!.includes("TCB status unknown"), JSON.stringify(r));
  assert.equal(v.qeIdentityVerified, false);

  // It is what "Unknown" stands for: an identity may still accept it explicitly.
  const lenient = compileApps([
    { name: "bank", identities: [{ mrenclave: MR, tcbStatuses: ["UpToDate", "Unknown"] }] },
  ]);
  assert.equal(matchApp(v, lenient).matched, true);

  // The honest path is unchanged: full collateral, QE identity checked, matched.
  const honest = verifySim(
    s,
    issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER }),
    collateralFromBundle(s.collateral),
  );
  assert.equal(honest.qeIdentityVerified, true);
  assert.equal(matchApp(honest, apps).matched, true);
});

test("review: real teekit quote + TCB info only: UpToDate, but refused by a default identity (QE unverified)", () => {
  const at = new Date("2025-09-30T00:00:00Z");
  const col = loadCollateral([vectorPath("intel/teekit/tcbinfo/tcbInfo-sgx-90c06f000000.json")]);
  col.certs.push(
    ...Cert.fromPemBundle(bundle("intel/dcap-qvl/sgx_quote_collateral.json").tcb_info_issuer_chain!),
  );
  const v = verifyEvidence(vector("intel/teekit/sgx-chinenyeokafor.dat"), { at, collateral: col });
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "UpToDate");
  const r = matchApp(v, compileApps([{ name: "a", identities: [{ mrenclave: v.claims!.sgx!.mrenclave }] }]));
  assert.equal(r.matched, false, "matched although the quoting enclave was never checked");
  assert.equal(v.qeIdentityVerified, false);
});

test("review: CRLs given, but none from the PCK's issuer: rejected instead of silently skipping revocation", async () => {
  // Real vectors: the SGX quote's PCK is issued by the Processor CA; the TDX bundle's PCK CRL is the Platform CA's.
  const sgx = bundle("intel/dcap-qvl/sgx_quote_collateral.json");
  const tdx = bundle("intel/dcap-qvl/tdx_quote_collateral.json");
  const mixed = collateralFromBundle({
    ...sgx,
    pck_crl: tdx.pck_crl!,
    pck_crl_issuer_chain: tdx.pck_crl_issuer_chain!,
  });
  const v = verifyEvidence(vector("intel/dcap-qvl/sgx_quote"), { at: SGX_AT, collateral: mixed });
  assert.equal(v.verified, false, "PCK revocation was not checked, yet the quote was verified");
  assert.equal(v.code, "collateral_mismatch", v.reason);
  assert.match(v.reason!, /CRL/);

  // The complete bundle still verifies.
  const ok = verifyEvidence(vector("intel/dcap-qvl/sgx_quote"), {
    at: SGX_AT,
    collateral: collateralFromBundle(sgx),
  });
  assert.equal(ok.verified, true, ok.reason);

  // Sim: a revoked PCK passes when the collateral's CRLs happen not to include its issuer's.
  const s = await revokePckCert(await sim());
  const quote = issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER });
  assert.equal(verifySim(s, quote, collateralFromBundle(s.collateral)).code, "cert_revoked");
  const rootCrlOnly = collateralFromBundle(s.collateral);
  rootCrlOnly.crls = rootCrlOnly.crls.filter((c) => !c.issuerDer.equals(s.platformCa.subjectDer));
  const r = verifySim(s, quote, rootCrlOnly);
  assert.equal(r.verified, false, "a revoked PCK was accepted");
  assert.equal(r.code, "collateral_mismatch", r.reason);

  // Without any CRL the old behaviour stays: verified, with a warning.
  const noCrls = collateralFromBundle((await sim()).collateral);
  noCrls.crls = [];
  const w = verifySim(s, issueSimQuote(await sim(), { mrenclave: MR, mrsigner: SIGNER }), noCrls);
  assert.equal(w.verified, true, w.reason);
  assert.ok(w.warnings.some((x) => x.includes("no CRLs")));
});

test("review: with several TCB infos / QE identities for the platform, the newest evaluation decides", async () => {
  const s = await sim();
  const quote = issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER });

  // A TCB recovery: evaluation 2 says the platform's level is now OutOfDate. Evaluation 1 is still inside its
  // validity window, and it comes first (e.g. files loaded in name order).
  const info = JSON.parse(s.collateral.tcb_info) as {
    tcbEvaluationDataNumber: number;
    tcbLevels: { tcbStatus: string }[];
  };
  info.tcbEvaluationDataNumber = 2;
  info.tcbLevels[0]!.tcbStatus = "OutOfDate";
  const newer = JSON.stringify(info);
  const col = collateralFromBundle(s.collateral);
  col.tcbInfos.push(
    ...collateralFromBundle({
      ...s.collateral,
      tcb_info: newer,
      tcb_info_signature: signJson(s.keys.tcbSigning, newer),
    }).tcbInfos,
  );
  assert.equal(col.tcbInfos.length, 2);
  const v = verifySim(s, quote, col);
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "OutOfDate", "the older TCB info was used");
  // Same answer in the other order.
  col.tcbInfos.reverse();
  assert.equal(verifySim(s, quote, col).tcbStatus, "OutOfDate");

  // Same for the QE identity: evaluation 2 moves the QE's ISVSVN 8 to OutOfDate.
  const qe = JSON.parse(s.collateral.qe_identity) as {
    tcbEvaluationDataNumber: number;
    tcbLevels: { tcb: { isvsvn: number }; tcbDate: string; tcbStatus: string }[];
  };
  qe.tcbEvaluationDataNumber = 2;
  qe.tcbLevels = [
    { tcb: { isvsvn: 9 }, tcbDate: "2025-06-01T00:00:00Z", tcbStatus: "UpToDate" },
    { tcb: { isvsvn: 8 }, tcbDate: "2025-01-15T00:00:00Z", tcbStatus: "OutOfDate" },
  ];
  const newerQe = JSON.stringify(qe);
  const col2 = collateralFromBundle(s.collateral);
  col2.identities.push(
    ...collateralFromBundle({
      ...s.collateral,
      qe_identity: newerQe,
      qe_identity_signature: signJson(s.keys.tcbSigning, newerQe),
    }).identities,
  );
  const q = verifySim(s, quote, col2);
  assert.equal(q.verified, true, q.reason);
  assert.equal(q.tcbStatus, "OutOfDate", "the older QE identity was used");
});

test("review: a QE level that is neither UpToDate nor Revoked counts as OutOfDate (Intel's QVL)", async () => {
  const s = await sim();
  const qe = JSON.parse(s.collateral.qe_identity) as { tcbLevels: { tcbStatus: string }[] };
  qe.tcbLevels[0]!.tcbStatus = "SWHardeningNeeded";
  const text = JSON.stringify(qe);
  const col = collateralFromBundle({
    ...s.collateral,
    qe_identity: text,
    qe_identity_signature: signJson(s.keys.tcbSigning, text),
  });
  const v = verifySim(s, issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER }), col);
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "OutOfDate");
});

test("review: CRLs are only checked against issuers whose own signature chain verified", async () => {
  // An attacker's chain: leaf ← fake CA named like Intel's Processor CA ← the real Processor CA (Intel-signed, so
  // the chain "ends" under the root). Every distinct fake CA used to cost a CRL signature check and a memo entry.
  const sgx = bundle("intel/dcap-qvl/sgx_quote_collateral.json");
  const crls = [parseCrl(sgx.root_ca_crl!), parseCrl(sgx.pck_crl!)];
  const realCa = Cert.fromPemBundle(parseQuote(vector("intel/dcap-qvl/sgx_quote")).certData)[1]!;
  assert.match(realCa.subject, /Processor CA/);

  const key = async () => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const wc = (k: KeyObject, priv: boolean) =>
      globalThis.crypto.subtle.importKey(
        priv ? "pkcs8" : "spki",
        k.export({ type: priv ? "pkcs8" : "spki", format: "der" }),
        { name: "ECDSA", namedCurve: "P-256" },
        true,
        priv ? ["sign"] : ["verify"],
      );
    return { privateKey: await wc(privateKey, true), publicKey: await wc(publicKey, false) };
  };
  const before = certCacheSizes().crlVerified;
  for (let i = 0; i < 3; i++) {
    const fakeKeys = await key();
    const leafKeys = await key();
    const name = new x509.Name(realCa.subjectDer);
    const notBefore = new Date("2025-01-01T00:00:00Z");
    const notAfter = new Date("2026-01-01T00:00:00Z");
    const fake = await x509.X509CertificateGenerator.create({
      serialNumber: "01",
      subject: name,
      issuer: new x509.Name(intelRoot().subjectDer),
      notBefore,
      notAfter,
      publicKey: fakeKeys.publicKey,
      signingKey: fakeKeys.privateKey,
      signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
      extensions: [new x509.BasicConstraintsExtension(true, 0, true)],
    });
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: "02",
      subject: "CN=Intel SGX PCK Certificate",
      issuer: name,
      notBefore,
      notAfter,
      publicKey: leafKeys.publicKey,
      signingKey: fakeKeys.privateKey,
      signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    });
    const chain = [Cert.fromDer(Buffer.from(leaf.rawData)), Cert.fromDer(Buffer.from(fake.rawData)), realCa];
    assert.throws(
      () => verifyChain(chain, { roots: [intelRoot()], at: SGX_AT, crls, what: "PCK chain" }),
      (e: unknown) => e instanceof AttestError && e.code === "chain_invalid",
    );
  }
  assert.equal(certCacheSizes().crlVerified, before, "unverified issuers reached the CRL memo");
});

test("review: TCB and QE levels are walked highest first (Intel's order), not in document order", async () => {
  const s = await sim();
  const quote = issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER });
  // The platform (at the sim's top level) also satisfies a lower level that an out-of-order document lists first.
  const info = JSON.parse(s.collateral.tcb_info) as { tcbLevels: { tcbStatus: string }[] };
  info.tcbLevels[0]!.tcbStatus = "SWHardeningNeeded"; // the platform's own (highest) level
  info.tcbLevels[1]!.tcbStatus = "UpToDate"; // a lower level
  info.tcbLevels.reverse();
  const text = JSON.stringify(info);
  const col = collateralFromBundle({
    ...s.collateral,
    tcb_info: text,
    tcb_info_signature: signJson(s.keys.tcbSigning, text),
  });
  const v = verifySim(s, quote, col);
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "SWHardeningNeeded", "a lower level listed first decided the status");

  // QE identity levels listed lowest first: the QE's ISVSVN 8 must select the isvsvn-8 level.
  const qe = JSON.parse(s.collateral.qe_identity) as {
    tcbLevels: { tcb: { isvsvn: number }; tcbDate: string; tcbStatus: string }[];
  };
  qe.tcbLevels = [
    { tcb: { isvsvn: 1 }, tcbDate: "2024-01-01T00:00:00Z", tcbStatus: "UpToDate" },
    { tcb: { isvsvn: 8 }, tcbDate: "2025-01-15T00:00:00Z", tcbStatus: "OutOfDate" },
  ];
  const qeText = JSON.stringify(qe);
  const col2 = collateralFromBundle({
    ...s.collateral,
    qe_identity: qeText,
    qe_identity_signature: signJson(s.keys.tcbSigning, qeText),
  });
  const q = verifySim(s, quote, col2);
  assert.equal(q.verified, true, q.reason);
  assert.equal(q.tcbStatus, "OutOfDate", "the QE level was taken in document order");
});

test("review: allowDebug must be literally true; a non-boolean in an app list is refused, never truthy", async () => {
  const s = await sim();
  const v = verifySim(
    s,
    issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER, debug: true }),
    collateralFromBundle(s.collateral),
  );
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.claims!.debug, true);
  // App lists that did not come through the gateway's YAML schema (JSON, another caller of compileApps).
  const sneaky = { mrenclave: MR, allowDebug: "false" as unknown as boolean };
  assert.throws(
    () => compileApps([{ name: "a", identities: [sneaky] }]),
    (e: unknown) => e instanceof PolicyError && /allowDebug/.test(e.message),
  );
  assert.match(mismatch(sneaky, v.claims!, v.tcbStatus) ?? "matched", /debug TEE/);
  assert.equal(mismatch({ mrenclave: MR, allowDebug: true }, v.claims!, v.tcbStatus), undefined);
});
