/**
 * SEV-SNP platform policy (issue 13, item 2): minimum TCB (per identity and site-wide) and the TCB status derived
 * from it, VMPL and migration-agent gating, and AMD CRLs for the ASK/ASVK through the collateral. Real vectors from
 * ../shared/attestation-vectors (MANIFEST.md) and reports signed by the simulated SNP platform (genuine signatures
 * over forged fields).
 */
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync, webcrypto, type KeyObject } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { x509 } from "../../src/attest/x509gen.js";
import type { Verdict } from "../../src/attest/claims.js";
import { loadCollateral, type Collateral } from "../../src/attest/intel/collateral.js";
import { compileApps, matchApp, PolicyError, type IdentitySpec } from "../../src/attest/policy.js";
import {
  createSimSnp,
  issueSimSnpReport,
  type SimSnp,
  type SimSnpReportClaims,
} from "../../src/attest/sim-snp.js";
import { verifyEvidence, type VerifyOptions } from "../../src/attest/verify.js";
import { Cert, checkCrl, parseCrl } from "../../src/attest/x509.js";
import { vector } from "../helpers/vectors.js";

const AT = new Date("2025-01-01T00:00:00Z");
/** report_milan.hex's REPORTED_TCB, equal to its VCEK's (MANIFEST.md). */
const MILAN_TCB = { bootloader: 3, tee: 0, snp: 8, microcode: 115 };
const MEASUREMENT = "5e".repeat(48);

const milanReport = (): Buffer => vector("amd/virtee-sev/report_milan.hex");
const milanVcek = (): Cert => Cert.from(vector("amd/virtee-sev/vcek_milan.der"));
const verifyMilan = (more: Partial<VerifyOptions> = {}): Verdict =>
  verifyEvidence(milanReport(), { at: AT, vcek: milanVcek(), ...more });

function match(v: Verdict, id: Omit<IdentitySpec, "measurement"> & { measurement?: string }) {
  return matchApp(
    v,
    compileApps([{ name: "cvm", identities: [{ measurement: v.claims!.snp!.measurement, ...id }] }]),
  );
}
const reasons = (r: ReturnType<typeof matchApp>): string => (r.matched ? "" : r.reasons.join("; "));

describe("minimum TCB and SNP TCB status (real Milan report)", () => {
  test("no minimum anywhere: tcbStatus null, and the identity refuses it as Unknown", () => {
    const v = verifyMilan();
    assert.equal(v.verified, true, v.reason);
    assert.equal(v.tcbStatus, null);
    const r = match(v, {});
    assert.equal(r.matched, false, "a genuine VCEK alone must not admit firmware of any age");
    assert.match(reasons(r), /no SEV-SNP minimum TCB/);
    assert.equal(
      match(v, { tcbStatuses: ["UpToDate", "Unknown"] }).matched,
      true,
      "Unknown only when listed",
    );
  });

  test("site-wide minimum: met is UpToDate; one SPL higher than the VCEK's is OutOfDate, refused", () => {
    const ok = verifyMilan({ snpMinTcb: MILAN_TCB });
    assert.equal(ok.tcbStatus, "UpToDate");
    assert.equal(match(ok, {}).matched, true);
    for (const k of ["bootloader", "tee", "snp", "microcode"] as const) {
      const v = verifyMilan({ snpMinTcb: { ...MILAN_TCB, [k]: MILAN_TCB[k] + 1 } });
      assert.equal(v.verified, true, "the evidence itself is genuine");
      assert.equal(v.tcbStatus, "OutOfDate", k);
      assert.ok(
        v.warnings.some((w) => w.includes(`${k} ${MILAN_TCB[k]} < ${MILAN_TCB[k] + 1}`)),
        v.warnings.join(),
      );
      const r = match(v, {});
      assert.equal(r.matched, false, k);
      assert.match(
        reasons(r),
        /TCB status OutOfDate is not accepted \(REPORTED_TCB below trust\.snpMinTcb\)/,
      );
      assert.equal(match(v, { tcbStatuses: ["UpToDate", "OutOfDate"] }).matched, true, "explicit opt-in");
    }
  });

  test("a per-product site minimum applies to its product only", () => {
    assert.equal(verifyMilan({ snpMinTcb: { Milan: MILAN_TCB } }).tcbStatus, "UpToDate");
    assert.equal(verifyMilan({ snpMinTcb: { Milan: { microcode: 200 } } }).tcbStatus, "OutOfDate");
    assert.equal(verifyMilan({ snpMinTcb: { Genoa: { microcode: 200 } } }).tcbStatus, null);
  });

  test("an identity's minTcb overrides the site-wide one, both ways", () => {
    const strictSite = verifyMilan({ snpMinTcb: { microcode: 200 } });
    assert.equal(match(strictSite, { minTcb: MILAN_TCB }).matched, true);
    const laxSite = verifyMilan({ snpMinTcb: { bootloader: 0 } });
    const r = match(laxSite, { minTcb: { ...MILAN_TCB, snp: 9 } });
    assert.equal(r.matched, false);
    assert.match(reasons(r), /below the identity's minTcb: snp 8 < 9/);
  });
});

describe("simulated platform: old firmware, VMPL, migration agent", () => {
  let sim: SimSnp;
  let old: SimSnp;
  before(async () => {
    sim = await createSimSnp({ now: AT });
    // Old, vulnerable firmware: its VCEK is genuine (the chip derives one for every TCB), just for an old TCB.
    old = await createSimSnp({ now: AT, tcb: { bootloader: 2, tee: 0, snp: 6, microcode: 100 } });
  });
  const verifySim = (
    s: SimSnp,
    claims: Partial<SimSnpReportClaims> = {},
    more: Partial<VerifyOptions> = {},
  ) =>
    verifyEvidence(issueSimSnpReport(s, { measurement: MEASUREMENT, ...claims }), {
      at: AT,
      vcek: s.vcek,
      extraRoots: [s.ark, s.ask],
      ...more,
    });
  const SIM_TCB = { bootloader: 3, tee: 0, snp: 8, microcode: 115 };

  test("old firmware with a genuine VCEK verifies but no identity with a minimum accepts it", () => {
    const v = verifySim(old);
    assert.equal(v.verified, true, v.reason);
    const r = match(v, { minTcb: SIM_TCB });
    assert.equal(r.matched, false);
    assert.match(reasons(r), /bootloader 2 < 3, snp 6 < 8, microcode 100 < 115/);
    assert.equal(verifySim(old, {}, { snpMinTcb: SIM_TCB }).tcbStatus, "OutOfDate");
    assert.equal(match(verifySim(sim), { minTcb: SIM_TCB }).matched, true, "current firmware passes");
  });

  test("old firmware cannot claim a newer REPORTED_TCB: its VCEK certifies the old one", () => {
    const lying = { ...old, tcb: SIM_TCB }; // same keys and VCEK, newer TCB written into the report
    const v = verifySim(lying);
    assert.equal(v.verified, false);
    assert.equal(v.code, "vcek_tcb_mismatch", v.reason);
  });

  test("VMPL above maxVmpl (default 0) is refused", () => {
    const v = verifySim(sim, { vmpl: 2 });
    assert.equal(v.verified, true, v.reason);
    assert.equal(v.claims!.snp!.vmpl, 2);
    const r = match(v, { minTcb: SIM_TCB });
    assert.equal(r.matched, false);
    assert.match(reasons(r), /VMPL 2 is above maxVmpl 0/);
    assert.equal(match(v, { minTcb: SIM_TCB, maxVmpl: 1 }).matched, false);
    assert.equal(match(v, { minTcb: SIM_TCB, maxVmpl: 2 }).matched, true);
    assert.equal(match(verifySim(sim, { vmpl: 0 }), { minTcb: SIM_TCB }).matched, true);
  });

  test("a guest policy that allows a migration agent is refused unless allowMigrationAgent", () => {
    const v = verifySim(sim, { policy: 0x30000n | (1n << 18n) });
    assert.equal(v.verified, true, v.reason);
    assert.equal(v.claims!.snp!.policyMigrateMa, true);
    const r = match(v, { minTcb: SIM_TCB });
    assert.equal(r.matched, false);
    assert.match(reasons(r), /migration agent/);
    assert.equal(match(v, { minTcb: SIM_TCB, allowMigrationAgent: true }).matched, true);
  });

  test("identity keys are checked: SNP-only keys elsewhere, ranges, unknown SPLs", () => {
    const bad: [IdentitySpec, RegExp][] = [
      [
        { mrenclave: "ab".repeat(32), maxVmpl: 1 },
        /identities\[0\]\.maxVmpl: maxVmpl only applies to a measurement/,
      ],
      [{ mrtd: "ab".repeat(48), minTcb: { snp: 1 } }, /identities\[0\]\.minTcb: /],
      [{ measurement: MEASUREMENT, maxVmpl: 4 }, /maxVmpl: expected an integer 0-3/],
      [{ measurement: MEASUREMENT, minTcb: {} }, /minTcb: expected at least one/],
      [{ measurement: MEASUREMENT, minTcb: { ucode: 1 } as never }, /minTcb\.ucode: unknown TCB component/],
      [{ measurement: MEASUREMENT, minTcb: { snp: 256 } }, /minTcb\.snp: expected an integer 0-255/],
      [
        { measurement: MEASUREMENT, allowMigrationAgent: "yes" as never },
        /allowMigrationAgent: expected true or false/,
      ],
    ];
    for (const [id, re] of bad) {
      assert.throws(
        () => compileApps([{ name: "a", identities: [id] }]),
        (e: unknown) => e instanceof PolicyError && re.test(e.message),
        re.source,
      );
    }
  });
});

// --- AMD CRLs ---

const P384 = { name: "ECDSA", namedCurve: "P-384", hash: "SHA-384" } as const;

async function cryptoPair(key: KeyObject): Promise<webcrypto.CryptoKeyPair> {
  const { createPublicKey } = await import("node:crypto");
  return {
    privateKey: await webcrypto.subtle.importKey(
      "pkcs8",
      key.export({ type: "pkcs8", format: "der" }),
      P384,
      false,
      ["sign"],
    ),
    publicKey: await webcrypto.subtle.importKey(
      "spki",
      createPublicKey(key).export({ type: "spki", format: "der" }),
      P384,
      true,
      ["verify"],
    ),
  };
}

/** A CRL issued under `ark`'s name, signed by `key` (the ARK's own, or a forger's). */
async function crlOf(
  ark: Cert,
  key: KeyObject,
  revoked: Cert[],
  thisUpdate = new Date(AT.getTime() - 86400_000),
  nextUpdate = new Date(AT.getTime() + 30 * 86400_000),
): Promise<Buffer> {
  const crl = await x509.X509CrlGenerator.create({
    issuer: new x509.Name(ark.subjectDer),
    thisUpdate,
    nextUpdate,
    entries: revoked.map((c) => ({ serialNumber: c.serial.toString("hex"), revocationDate: thisUpdate })),
    signingKey: (await cryptoPair(key)).privateKey,
    signingAlgorithm: P384,
  });
  return Buffer.from(crl.rawData);
}

const collateralOf = (...crls: Buffer[]): Collateral => ({
  tcbInfos: [],
  identities: [],
  certs: [],
  crls: crls.map((c) => parseCrl(c)),
  sources: ["test"],
});

describe("AMD CRLs for the ASK/ASVK", () => {
  let sim: SimSnp;
  before(async () => {
    sim = await createSimSnp({ now: AT });
  });
  const verifyWith = (collateral?: Collateral) =>
    verifyEvidence(issueSimSnpReport(sim, { measurement: MEASUREMENT }), {
      at: AT,
      vcek: sim.vcek,
      extraRoots: [sim.ark, sim.ask],
      collateral,
    });

  test("without an AMD CRL the verdict says revocation was not checked", () => {
    const v = verifyWith();
    assert.equal(v.verified, true, v.reason);
    assert.ok(
      v.warnings.some((w) => /no AMD CRL given: ASK revocation not checked/.test(w)),
      v.warnings.join(),
    );
  });

  test("a KDS-style CRL loaded from a collateral directory: clean passes, listing the ASK is cert_revoked", async () => {
    const dir = mkdtempSync(join(tmpdir(), "seng-amd-crl-"));
    try {
      writeFileSync(join(dir, "milan.crl"), await crlOf(sim.ark, sim.keys.ark, []));
      const clean = verifyWith(loadCollateral([dir]));
      assert.equal(clean.verified, true, clean.reason);
      assert.ok(!clean.warnings.some((w) => w.includes("AMD CRL")), clean.warnings.join());
      writeFileSync(join(dir, "milan.crl"), await crlOf(sim.ark, sim.keys.ark, [sim.ask]));
      const revoked = verifyWith(loadCollateral([dir]));
      assert.equal(revoked.verified, false);
      assert.equal(revoked.code, "cert_revoked", revoked.reason);
      assert.match(revoked.reason!, /ASK .* is revoked by ARK-Milan's CRL/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a CRL under the ARK's name but not signed by it is crl_invalid; an outdated one crl_expired", async () => {
    const forger = generateKeyPairSync("ec", { namedCurve: "P-384" }).privateKey;
    assert.equal(verifyWith(collateralOf(await crlOf(sim.ark, forger, []))).code, "crl_invalid");
    const stale = await crlOf(sim.ark, sim.keys.ark, [], new Date("2024-01-01"), new Date("2024-02-01"));
    assert.equal(verifyWith(collateralOf(stale)).code, "crl_expired");
  });

  test("AMD CRLs that do not cover this chain's ARK: collateral_mismatch, not an unchecked pass", async () => {
    // The sim ARK's CRL, while verifying the real Milan report (whose chain ends in AMD's ARK-Milan).
    const v = verifyEvidence(milanReport(), {
      at: AT,
      vcek: milanVcek(),
      extraRoots: [sim.ark],
      collateral: collateralOf(await crlOf(sim.ark, sim.keys.ark, [])),
    });
    assert.equal(v.verified, false);
    assert.equal(v.code, "collateral_mismatch", v.reason);
    assert.match(v.reason!, /none from ARK-Milan/);
  });

  test("RSASSA-PSS CRLs (as AMD's ARKs sign them: SHA-384, salt 48) verify; a flipped bit does not", async () => {
    const alg = {
      name: "RSA-PSS",
      hash: "SHA-384",
      saltLength: 48,
      publicExponent: new Uint8Array([1, 0, 1]),
      modulusLength: 2048,
    } as const;
    const keys = (await webcrypto.subtle.generateKey(alg, true, [
      "sign",
      "verify",
    ])) as webcrypto.CryptoKeyPair;
    const ark = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: "01",
      name: "CN=ARK-Test",
      notBefore: new Date("2020-01-01"),
      notAfter: new Date("2040-01-01"),
      keys,
      signingAlgorithm: alg,
      extensions: [new x509.BasicConstraintsExtension(true, 1, true)],
    });
    const crl = await x509.X509CrlGenerator.create({
      issuer: ark.subject,
      thisUpdate: new Date("2024-12-01"),
      nextUpdate: new Date("2025-02-01"),
      entries: [{ serialNumber: "0a", revocationDate: new Date("2024-12-01") }],
      signingKey: keys.privateKey,
      signingAlgorithm: alg,
    });
    const der = Buffer.from(crl.rawData);
    const parsed = parseCrl(der);
    assert.deepEqual(parsed.pss, { hash: "sha384", saltLength: 48 });
    const arkCert = Cert.fromDer(Buffer.from(ark.rawData));
    checkCrl(parsed, arkCert, AT, "test CRL");
    const bad = Buffer.from(der);
    bad[bad.length - 3]! ^= 0x01;
    assert.throws(() => checkCrl(parseCrl(bad), arkCert, AT, "test CRL"), /not signed by/);
  });
});

test("one collateral for both vendors: an AMD CRL does not make Intel evidence require Intel CRLs", async () => {
  const { createSimTee, issueSimQuote } = await import("../../src/attest/sim.js");
  const { collateralFromBundle } = await import("../../src/attest/intel/collateral.js");
  const sgx = await createSimTee({ now: AT });
  const snp = await createSimSnp({ now: AT });
  const intelOnly = { ...collateralFromBundle(sgx.collateral), crls: [] };
  const mixed: Collateral = { ...intelOnly, crls: [parseCrl(await crlOf(snp.ark, snp.keys.ark, []))] };
  const quote = issueSimQuote(sgx, { mrenclave: "a1".repeat(32), mrsigner: "b2".repeat(32) });
  const at = new Date(AT.getTime() + 86400_000);
  const v = verifyEvidence(quote, { at, extraRoots: [sgx.root, snp.ark], collateral: mixed });
  assert.equal(v.verified, true, v.reason);
  assert.ok(
    v.warnings.some((w) => w.includes("no CRLs given")),
    v.warnings.join(),
  );
});
