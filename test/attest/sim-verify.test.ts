/**
 * The simulated TEE through the real verification path: our Intel verifier, identity policy and RA-TLS binding.
 * Cases the shared vectors cannot give: a PCK revoked by a CRL, collateral expiry windows, debug enclaves, SVNs below
 * a minimum, unknown or unmatched TCB levels, and evidence moved to another key.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { x509 } from "../../src/attest/x509gen.js";
import { generateKeyPairSync, sign, webcrypto, type KeyObject } from "node:crypto";
import {
  collateralFromBundle,
  compileApps,
  matchApp,
  verifyEvidence,
  verifyRaTlsCert,
  type Verdict,
} from "../../src/attest/index.js";
import {
  createSimTee,
  issueSimQuote,
  reissueSimCollateral,
  revokePckCert,
  type SimTee,
} from "../../src/attest/sim.js";
import { createRaTlsCert, extractEvidence, raTlsReportData } from "../../src/attest/ratls.js";
import { Cert } from "../../src/attest/x509.js";

const NOW = new Date("2026-01-10T00:00:00Z");
const AT = new Date("2026-01-20T00:00:00Z");
const MR = "ab".repeat(32);
const SIGNER = "cd".repeat(32);
let shared: SimTee | undefined;
const sim = async () => (shared ??= await createSimTee({ now: NOW }));

function verify(s: SimTee, quote: Buffer, at = AT, trust = true): Verdict {
  return verifyEvidence(quote, {
    at,
    collateral: collateralFromBundle(s.collateral),
    extraRoots: trust ? [s.root] : [],
  });
}

test("sim quote verifies through the sim root: UpToDate, marked simulated and INSECURE", async () => {
  const s = await sim();
  const v = verify(s, issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER, isvprodid: 3, isvsvn: 9 }));
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "UpToDate");
  assert.equal(v.claims!.simulated, true);
  assert.ok(v.warnings.some((w) => w.startsWith("INSECURE")));
  assert.deepEqual([v.claims!.sgx!.mrenclave, v.claims!.sgx!.isvprodid, v.claims!.sgx!.isvsvn], [MR, 3, 9]);
});

test("the sim root is not trusted unless configured", async () => {
  const s = await sim();
  const v = verify(s, issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER }), AT, false);
  assert.equal(v.code, "untrusted_root");
});

test("a PCK certificate revoked by the PCK CRL is rejected", async () => {
  const r = await revokePckCert(await sim());
  const v = verify(r, issueSimQuote(r, { mrenclave: MR, mrsigner: SIGNER }));
  assert.equal(v.code, "cert_revoked", v.reason);
});

test("collateral: expired and not-yet-valid TCB info / QE identity are rejected", async () => {
  const s = await sim();
  const crl = {
    crlThisUpdate: new Date("2026-01-01T00:00:00Z"),
    crlNextUpdate: new Date("2026-12-31T00:00:00Z"),
  };
  const old = await reissueSimCollateral(s, {
    issueDate: new Date("2026-01-01T00:00:00Z"),
    nextUpdate: new Date("2026-01-15T00:00:00Z"),
    ...crl,
  });
  assert.equal(
    verify(old, issueSimQuote(old, { mrenclave: MR, mrsigner: SIGNER })).code,
    "collateral_expired",
  );
  const future = await reissueSimCollateral(s, {
    issueDate: new Date("2026-02-01T00:00:00Z"),
    nextUpdate: new Date("2026-03-01T00:00:00Z"),
    ...crl,
  });
  assert.equal(
    verify(future, issueSimQuote(future, { mrenclave: MR, mrsigner: SIGNER })).code,
    "collateral_expired",
  );
  const staleCrl = await reissueSimCollateral(s, {
    crlThisUpdate: new Date("2026-01-01T00:00:00Z"),
    crlNextUpdate: new Date("2026-01-15T00:00:00Z"),
  });
  assert.equal(
    verify(staleCrl, issueSimQuote(staleCrl, { mrenclave: MR, mrsigner: SIGNER })).code,
    "crl_expired",
  );
});

test("platform TCB levels: OutOfDate with its advisories; no matching level is rejected", async () => {
  const out = await createSimTee({ now: NOW, platformTcb: "OutOfDate" });
  const v = verify(out, issueSimQuote(out, { mrenclave: MR, mrsigner: SIGNER }));
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "OutOfDate");
  assert.ok(v.advisoryIds.length > 0);
  const none = await createSimTee({ now: NOW, platformTcb: "TcbLevelNotFound" });
  const n = verify(none, issueSimQuote(none, { mrenclave: MR, mrsigner: SIGNER }));
  assert.equal(n.code, "tcb_level_not_found");
  assert.equal(n.tcbStatus, "TcbLevelNotFound");
});

test("QE identity re-signed for another QE: qe_identity_mismatch", async () => {
  const s = await sim();
  const qe = JSON.parse(s.collateral.qe_identity) as Record<string, unknown>;
  qe.mrsigner = "EE".repeat(32);
  const body = JSON.stringify(qe);
  const sig = sign("sha256", Buffer.from(body), { key: s.keys.tcbSigning, dsaEncoding: "ieee-p1363" });
  const col = collateralFromBundle({
    ...s.collateral,
    qe_identity: body,
    qe_identity_signature: sig.toString("hex"),
  });
  const v = verifyEvidence(issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER }), {
    at: AT,
    collateral: col,
    extraRoots: [s.root],
  });
  assert.equal(v.code, "qe_identity_mismatch", v.reason);
});

test("policy over sim evidence: debug refused, SVN below minimum refused, tampered build unknown", async () => {
  const s = await sim();
  const apps = compileApps([
    { name: "browser", identities: [{ mrenclave: MR }] },
    { name: "mail", identities: [{ mrsigner: SIGNER, isvprodid: 5, minIsvsvn: 4 }] },
  ]);
  const ok = matchApp(verify(s, issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER })), apps);
  assert.equal(ok.matched && ok.app, "browser");
  const dbg = matchApp(verify(s, issueSimQuote(s, { mrenclave: MR, mrsigner: SIGNER, debug: true })), apps);
  assert.ok(!dbg.matched && dbg.reasons[0]!.includes("debug"));
  const low = matchApp(
    verify(s, issueSimQuote(s, { mrenclave: "01".repeat(32), mrsigner: SIGNER, isvprodid: 5, isvsvn: 3 })),
    apps,
  );
  assert.ok(!low.matched && low.reasons[1]!.includes("below the minimum 4"));
  const mail = matchApp(
    verify(s, issueSimQuote(s, { mrenclave: "01".repeat(32), mrsigner: SIGNER, isvprodid: 5, isvsvn: 4 })),
    apps,
  );
  assert.equal(mail.matched && mail.app, "mail");
  const tampered = matchApp(
    verify(s, issueSimQuote(s, { mrenclave: "02".repeat(32), mrsigner: "03".repeat(32) })),
    apps,
  );
  assert.equal(tampered.matched, false);
});

for (const format of ["tcg-dice", "gramine-legacy"] as const) {
  test(`RA-TLS (${format}): bound key verifies; evidence moved to another key is key_binding_invalid`, async () => {
    const s = await sim();
    const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const spki = keys.publicKey.export({ type: "spki", format: "der" });
    const quote = issueSimQuote(s, {
      mrenclave: MR,
      mrsigner: SIGNER,
      reportData: raTlsReportData(spki, format),
    });
    const { cert } = await createRaTlsCert({ keys, evidence: quote, format, notBefore: NOW });
    const opts = { at: AT, collateral: collateralFromBundle(s.collateral), extraRoots: [s.root] };
    const v = verifyRaTlsCert(cert, opts);
    assert.equal(v.verified, true, v.reason);
    assert.equal(v.claims!.sgx!.mrenclave, MR);

    // The honest certificate's evidence extension, copied into a certificate for an attacker's key.
    const ext = extractEvidence(cert);
    const attacker = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const forged = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: "01",
      name: "CN=attacker",
      notBefore: NOW,
      notAfter: new Date("2027-01-01T00:00:00Z"),
      keys: {
        publicKey: await toWeb(attacker.publicKey, "verify"),
        privateKey: await toWeb(attacker.privateKey, "sign"),
      },
      signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
      extensions: [new x509.Extension(ext.oid, false, cert.extensions.get(ext.oid)!.value)],
    });
    const moved = verifyRaTlsCert(Cert.fromDer(Buffer.from(forged.rawData)), opts);
    assert.equal(moved.verified, false);
    assert.equal(moved.code, "key_binding_invalid", moved.reason);
    assert.equal(moved.claims!.sgx!.mrenclave, MR, "the rejection still reports whose evidence it was");
  });
}

function toWeb(k: KeyObject, use: "sign" | "verify"): Promise<webcrypto.CryptoKey> {
  return webcrypto.subtle.importKey(
    use === "sign" ? "pkcs8" : "spki",
    k.export({ type: use === "sign" ? "pkcs8" : "spki", format: "der" }),
    { name: "ECDSA", namedCurve: "P-256" },
    true,
    [use],
  );
}
