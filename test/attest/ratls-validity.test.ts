/**
 * RA-TLS certificate validity window (issue 13, item 3): genuine evidence in a certificate past its notAfter, or
 * before its notBefore, must not verify (and so never reaches the policy or a lease), within a configurable clock
 * skew.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { webcrypto } from "node:crypto";
import { collateralFromBundle } from "../../src/attest/intel/collateral.js";
import { matchApp } from "../../src/attest/policy.js";
import { createRaTlsCert, raTlsReportData } from "../../src/attest/ratls.js";
import { createSimTee, issueSimQuote, type SimTee } from "../../src/attest/sim.js";
import { DEFAULT_CLOCK_SKEW_SECONDS, verifyRaTlsCert, type VerifyOptions } from "../../src/attest/verify.js";
import { revocationReason } from "../../src/gateway/reload.js";

type KeyPair = webcrypto.CryptoKeyPair;
const MR = "c3".repeat(32);
const NOT_BEFORE = new Date("2026-03-01T00:00:00Z");
const NOT_AFTER = new Date("2026-03-02T00:00:00Z");
const APPS = [{ name: "app", identities: [{ mrenclave: MR }] }];

let shared: Promise<SimTee> | undefined;
const sim = (): Promise<SimTee> =>
  (shared ??= createSimTee({ now: new Date("2026-02-01T00:00:00Z"), collateralDays: 90 }));

async function certFor(notBefore: Date, notAfter: Date) {
  const keys = (await webcrypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ])) as KeyPair;
  const spki = Buffer.from(await webcrypto.subtle.exportKey("spki", keys.publicKey));
  const s = await sim();
  const quote = issueSimQuote(s, {
    mrenclave: MR,
    mrsigner: "d4".repeat(32),
    reportData: raTlsReportData(spki),
  });
  return (await createRaTlsCert({ keys, evidence: quote, notBefore, notAfter })).cert;
}

async function opts(at: Date, more: Partial<VerifyOptions> = {}): Promise<VerifyOptions> {
  const s = await sim();
  return { at, extraRoots: [s.root], collateral: collateralFromBundle(s.collateral), ...more };
}

const sec = (d: Date, s: number): Date => new Date(d.getTime() + s * 1000);

test("inside its validity window the certificate verifies and matches its app", async () => {
  const cert = await certFor(NOT_BEFORE, NOT_AFTER);
  const v = verifyRaTlsCert(cert, await opts(sec(NOT_BEFORE, 3600)));
  assert.equal(v.verified, true, v.reason);
  assert.equal(matchApp(v, APPS).matched, true);
});

test("past notAfter (beyond the skew): ratls_cert_expired, and no app match", async () => {
  const cert = await certFor(NOT_BEFORE, NOT_AFTER);
  const v = verifyRaTlsCert(cert, await opts(sec(NOT_AFTER, DEFAULT_CLOCK_SKEW_SECONDS + 1)));
  assert.equal(v.verified, false);
  assert.equal(v.code, "ratls_cert_expired", v.reason);
  assert.match(v.reason!, /expired at 2026-03-02T00:00:00.000Z/);
  assert.equal(matchApp(v, APPS).matched, false);
  // Within the default skew of 60 s it is still accepted (clock differences), and the skew is configurable.
  assert.equal(verifyRaTlsCert(cert, await opts(sec(NOT_AFTER, 59))).verified, true);
  const strict = verifyRaTlsCert(cert, await opts(sec(NOT_AFTER, 1), { clockSkewSeconds: 0 }));
  assert.equal(strict.code, "ratls_cert_expired");
  assert.equal(
    verifyRaTlsCert(cert, await opts(sec(NOT_AFTER, 600), { clockSkewSeconds: 900 })).verified,
    true,
  );
});

test("before notBefore (beyond the skew): ratls_cert_not_yet_valid", async () => {
  const cert = await certFor(NOT_BEFORE, NOT_AFTER);
  const v = verifyRaTlsCert(cert, await opts(sec(NOT_BEFORE, -(DEFAULT_CLOCK_SKEW_SECONDS + 1))));
  assert.equal(v.verified, false);
  assert.equal(v.code, "ratls_cert_not_yet_valid", v.reason);
  assert.equal(matchApp(v, APPS).matched, false);
  assert.equal(verifyRaTlsCert(cert, await opts(sec(NOT_BEFORE, -59))).verified, true);
  assert.equal(
    verifyRaTlsCert(cert, await opts(sec(NOT_BEFORE, -1), { clockSkewSeconds: 0 })).code,
    "ratls_cert_not_yet_valid",
  );
});

test("a reload re-verification revokes a tunnel whose certificate has expired since", async () => {
  const cert = await certFor(NOT_BEFORE, NOT_AFTER);
  assert.equal(revocationReason(cert.der, "app", APPS as never, await opts(sec(NOT_BEFORE, 10))), undefined);
  const why = revocationReason(cert.der, "app", APPS as never, await opts(sec(NOT_AFTER, 3600)));
  assert.match(why ?? "", /ratls_cert_expired/);
});
