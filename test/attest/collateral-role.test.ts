/**
 * Intel collateral signer role (issue 13, item 1). TCB info and QE identity must be signed by the TCB Signing
 * certificate (CN "Intel SGX TCB Signing", not a CA) that the root of the quote's own PCK chain issued directly, as
 * Intel's QVL requires. Forgeries: collateral signed by a PCK leaf or a PCK CA (both chain to the trusted root), and
 * real production collateral rewritten and re-signed under a configured test root.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { sign, webcrypto, type KeyObject } from "node:crypto";
import { x509 } from "../../src/attest/x509gen.js";
import { collateralFromBundle, type Collateral } from "../../src/attest/intel/collateral.js";
import { createSimTee, issueSimQuote, type SimTee } from "../../src/attest/sim.js";
import { verifyEvidence, type VerifyOptions } from "../../src/attest/verify.js";
import { Cert, parseCrl } from "../../src/attest/x509.js";
import { vector, vectorPath } from "../helpers/vectors.js";

const NOW = new Date("2026-01-10T00:00:00Z");
const AT = new Date("2026-01-20T00:00:00Z");
const SGX_AT = new Date("2025-07-19T10:01:17Z");
const MR = { mrenclave: "a1".repeat(32), mrsigner: "b2".repeat(32) };

let shared: Promise<SimTee> | undefined;
const sim = (): Promise<SimTee> => (shared ??= createSimTee({ now: NOW }));

const signJson = (key: KeyObject, json: string): string =>
  sign("sha256", Buffer.from(json, "utf8"), { key, dsaEncoding: "ieee-p1363" }).toString("hex");

function expectRejected(v: ReturnType<typeof verifyEvidence>, code: string, re?: RegExp): void {
  assert.equal(v.verified, false, `forged collateral was accepted (status ${v.tcbStatus})`);
  assert.equal(v.code, code, v.reason);
  if (re) assert.match(v.reason!, re);
}

test("baseline: the sim's own collateral (signed by its TCB Signing certificate) verifies", async () => {
  const s = await sim();
  const v = verifyEvidence(issueSimQuote(s, MR), {
    at: AT,
    extraRoots: [s.root],
    collateral: collateralFromBundle(s.collateral),
  });
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "UpToDate");
});

test("TCB info and QE identity signed by a PCK leaf (which chains to the trusted root) are rejected", async () => {
  const s = await sim();
  const quote = issueSimQuote(s, MR);
  const c = s.collateral;
  // The PCK key signs; the PCK chain (leaf, platform CA, root) is offered as the issuer chain.
  const byPck = {
    ...c,
    tcb_info_issuer_chain: s.pckChainPem,
    tcb_info_signature: signJson(s.keys.pck, c.tcb_info),
    qe_identity_issuer_chain: s.pckChainPem,
    qe_identity_signature: signJson(s.keys.pck, c.qe_identity),
  };
  const v = verifyEvidence(quote, { at: AT, extraRoots: [s.root], collateral: collateralFromBundle(byPck) });
  expectRejected(v, "collateral_signature_invalid", /not a TCB Signing certificate/);
  // Only the QE identity forged: still rejected.
  const qeOnly = {
    ...c,
    qe_identity_issuer_chain: s.pckChainPem,
    qe_identity_signature: signJson(s.keys.pck, c.qe_identity),
  };
  expectRejected(
    verifyEvidence(quote, { at: AT, extraRoots: [s.root], collateral: collateralFromBundle(qeOnly) }),
    "collateral_signature_invalid",
    /QE identity/,
  );
});

test("TCB info signed by the PCK platform CA (a CA under the root) is rejected", async () => {
  const s = await sim();
  const c = s.collateral;
  const byCa = {
    ...c,
    tcb_info_issuer_chain: s.platformCa.toPem() + s.root.toPem(),
    tcb_info_signature: signJson(s.keys.platformCa, c.tcb_info),
  };
  const v = verifyEvidence(issueSimQuote(s, MR), {
    at: AT,
    extraRoots: [s.root],
    collateral: collateralFromBundle(byCa),
  });
  expectRejected(v, "collateral_signature_invalid", /not a TCB Signing certificate/);
});

// --- production collateral re-signed under a test root ---

const EC = { name: "ECDSA", namedCurve: "P-256" } as const;
const SIG = { name: "ECDSA", hash: "SHA-256" } as const;

/** A test root and a TCB signing certificate named exactly like Intel's, issued by it. */
async function lookalikeHierarchy(): Promise<{ root: Cert; signer: Cert; key: KeyObject; crl: Buffer }> {
  const gen = async () =>
    (await webcrypto.subtle.generateKey(EC, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const rootKeys = await gen();
  const signerKeys = await gen();
  const validity = {
    notBefore: new Date("2020-01-01T00:00:00Z"),
    notAfter: new Date("2040-01-01T00:00:00Z"),
  };
  const rootName = "CN=Intel SGX Root CA, O=Intel Corporation, L=Santa Clara, ST=CA, C=US";
  const root = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: rootName,
    keys: rootKeys,
    signingAlgorithm: SIG,
    extensions: [new x509.BasicConstraintsExtension(true, 1, true)],
    ...validity,
  });
  const signer = await x509.X509CertificateGenerator.create({
    serialNumber: "02",
    subject: "CN=Intel SGX TCB Signing, O=Intel Corporation, L=Santa Clara, ST=CA, C=US",
    issuer: root.subject,
    publicKey: signerKeys.publicKey,
    signingKey: rootKeys.privateKey,
    signingAlgorithm: SIG,
    extensions: [new x509.BasicConstraintsExtension(false, undefined, true)],
    ...validity,
  });
  const crl = await x509.X509CrlGenerator.create({
    issuer: root.subject,
    thisUpdate: validity.notBefore,
    nextUpdate: validity.notAfter,
    entries: [],
    signingKey: rootKeys.privateKey,
    signingAlgorithm: SIG,
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", signerKeys.privateKey));
  const { createPrivateKey } = await import("node:crypto");
  return {
    root: Cert.fromDer(Buffer.from(root.rawData)),
    signer: Cert.fromDer(Buffer.from(signer.rawData)),
    key: createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" }),
    crl: Buffer.from(crl.rawData),
  };
}

/** dcap-qvl's real SGX collateral with every TCB level rewritten to UpToDate, re-signed with `key`. */
function upgradedBundle(key: KeyObject, chainPem: string): Record<string, string> {
  const bundle = JSON.parse(readFileSync(vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"), "utf8"));
  const tcbInfo = (bundle.tcb_info as string).replace(/"tcbStatus":"[A-Za-z]+"/g, '"tcbStatus":"UpToDate"');
  assert.notEqual(tcbInfo, bundle.tcb_info);
  return {
    ...bundle,
    tcb_info: tcbInfo,
    tcb_info_signature: signJson(key, tcbInfo),
    tcb_info_issuer_chain: chainPem,
    qe_identity_signature: signJson(key, bundle.qe_identity),
    qe_identity_issuer_chain: chainPem,
  };
}

function withCrl(c: Collateral, crl: Buffer | string): Collateral {
  return { ...c, crls: [...c.crls, parseCrl(crl)] };
}

test("real production collateral re-signed by a configured sim root does not apply to a real quote", async () => {
  const s = await sim();
  const quote = vector("intel/dcap-qvl/sgx_quote");
  const real = verifyEvidence(quote, {
    at: SGX_AT,
    collateral: collateralFromBundle(
      JSON.parse(readFileSync(vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"), "utf8")),
    ),
  });
  assert.equal(real.tcbStatus, "ConfigurationAndSWHardeningNeeded");
  const forged = withCrl(
    collateralFromBundle(upgradedBundle(s.keys.tcbSigning, s.tcbSigning.toPem() + s.root.toPem())),
    s.collateral.root_ca_crl,
  );
  const opts: VerifyOptions = { at: SGX_AT, extraRoots: [s.root], collateral: forged };
  expectRejected(verifyEvidence(quote, opts), "collateral_signature_invalid");
});

test("a test root with a signer named exactly like Intel's cannot sign collateral for a real quote", async () => {
  const h = await lookalikeHierarchy();
  const quote = vector("intel/dcap-qvl/sgx_quote");
  const forged = withCrl(
    collateralFromBundle(upgradedBundle(h.key, h.signer.toPem() + h.root.toPem())),
    h.crl,
  );
  const v = verifyEvidence(quote, { at: SGX_AT, extraRoots: [h.root], collateral: forged });
  expectRejected(v, "collateral_signature_invalid", /root of the quote's PCK chain/);
  // The same collateral without the test root configured: its chain reaches no trusted root at all.
  assert.equal(verifyEvidence(quote, { at: SGX_AT, collateral: forged }).verified, false);
});

test("a sim quote does not take collateral signed under another configured root", async () => {
  const a = await sim();
  const b = await createSimTee({ now: NOW });
  const v = verifyEvidence(issueSimQuote(a, MR), {
    at: AT,
    extraRoots: [a.root, b.root],
    // Without CRLs: both sims name their roots alike, so their CRLs would collide by issuer name.
    collateral: { ...collateralFromBundle(b.collateral), crls: [] },
  });
  expectRejected(v, "collateral_signature_invalid", /root of the quote's PCK chain/);
});
