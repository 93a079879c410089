/** Attesters against fake interfaces that behave like Gramine's /dev/attestation and Linux configfs-tsm. */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../helpers/vectors.js";
import { collateralFromBundle, verifyRaTlsCert } from "../../src/attest/index.js";
import { createSimTee, issueSimQuote, saveSimTee, type SimTee } from "../../src/attest/sim.js";
import { createSimSnp, issueSimSnpReport, saveSimSnp, type SimSnp } from "../../src/attest/sim-snp.js";
import { certSpki, extractEvidence, raTlsReportData } from "../../src/attest/ratls.js";
import { matchApp } from "../../src/attest/policy.js";
import { Cert } from "../../src/attest/x509.js";
import {
  AttesterError,
  detectAttester,
  evidenceIsDebug,
  GramineAttester,
  makeIdentity,
  TsmAttester,
} from "../../src/runtime/attesters.js";

const dir = mkdtempSync(join(tmpdir(), "seng-attesters-"));
const children: ChildProcess[] = [];
let sim: SimTee;
const MR = "a1".repeat(32);

after(() => {
  for (const c of children) c.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

async function fake(...args: string[]): Promise<void> {
  sim ??= await (async () => {
    const s = await createSimTee();
    saveSimTee(s, join(dir, "sim"));
    return s;
  })();
  const c = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/helpers/fake-tee.ts"), ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(c);
  await new Promise<void>((resolve, reject) => {
    c.stdout!.once("data", () => resolve());
    c.once("exit", (code) => reject(new Error(`fake-tee exited ${code}`)));
  });
}

function verify(certPem: string) {
  return verifyRaTlsCert(Cert.from(certPem), {
    collateral: collateralFromBundle(sim.collateral),
    extraRoots: [sim.root],
  });
}

test("gramine: the RA-TLS identity carries a quote over the fresh key, and verifies", async () => {
  const g = join(dir, "gramine");
  await fake("gramine", g, join(dir, "sim"), MR);
  const id = await makeIdentity(new GramineAttester(g));
  assert.equal(id.provider, "sgx-dcap");
  const v = verify(id.certPem);
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.claims!.sgx!.mrenclave, MR);
  // A second identity gets a second, different key and quote.
  const id2 = await makeIdentity(new GramineAttester(g));
  assert.notEqual(id2.certPem, id.certPem);
  assert.equal(verify(id2.certPem).verified, true);
});

test("gramine: an enclave without DCAP attestation is refused with what to change", () => {
  const g = join(dir, "gramine-none");
  rmSync(g, { recursive: true, force: true });
  mkdirSync(g, { recursive: true });
  writeFileSync(join(g, "attestation_type"), "none\n");
  assert.throws(
    () => new GramineAttester(g),
    (e: unknown) => e instanceof AttesterError && /sgx\.remote_attestation = "dcap"/.test(e.message),
  );
  assert.throws(
    () => new GramineAttester(join(dir, "absent")),
    (e: unknown) => e instanceof AttesterError && /cannot read/.test(e.message),
  );
});

test("tsm: inblob → outblob through a report entry, provider reported", async () => {
  const root = join(dir, "tsm");
  await fake("tsm", root, "e1", join(dir, "sim"), MR);
  const id = await makeIdentity(new TsmAttester(root, "e1"));
  assert.equal(id.provider, "tdx_guest");
  assert.equal(verify(id.certPem).verified, true);
});

test("tsm: a concurrent writer (generation changed) is detected", async () => {
  const root = join(dir, "tsm-racy");
  await fake("tsm", root, "e1", join(dir, "sim"), MR, "racy");
  assert.throws(
    () => new TsmAttester(root, "e1").attest(Buffer.alloc(64)),
    (e: unknown) => e instanceof AttesterError && /written concurrently/.test(e.message),
  );
});

test("tsm and auto detection: clear errors where there is no TEE", () => {
  assert.throws(
    () => new TsmAttester(join(dir, "nope")),
    (e: unknown) => e instanceof AttesterError && /configfs/.test(e.message),
  );
  if (!existsSync("/dev/attestation") && !existsSync("/sys/kernel/config/tsm/report")) {
    assert.throws(
      () => detectAttester("auto"),
      (e: unknown) => e instanceof AttesterError && /no TEE found/.test(e.message),
    );
  }
  assert.throws(() => detectAttester("sim"), /no simulated TEE directory/);
});

let snp: SimSnp | undefined;
const MEASUREMENT = "5e".repeat(48);

async function fakeSnp(root: string, aux?: string): Promise<SimSnp> {
  snp ??= await (async () => {
    const s = await createSimSnp();
    saveSimSnp(s, join(dir, "sim-snp"));
    return s;
  })();
  const c = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      join(ROOT, "test/helpers/fake-tee.ts"),
      "tsm-snp",
      root,
      "e1",
      join(dir, "sim-snp"),
      MEASUREMENT,
      ...(aux ? [aux] : []),
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  children.push(c);
  await new Promise<void>((resolve, reject) => {
    c.stdout!.once("data", () => resolve());
    c.once("exit", (code) => reject(new Error(`fake-tee exited ${code}`)));
  });
  return snp;
}

test("tsm (sev_guest): the VCEK from the auxblob travels in the RA-TLS certificate, which verifies under the sim ARK", async () => {
  const s = await fakeSnp(join(dir, "tsm-snp"));
  const id = await makeIdentity(new TsmAttester(join(dir, "tsm-snp"), "e1"));
  assert.equal(id.provider, "sev_guest");
  const cert = Cert.from(id.certPem);
  const ev = extractEvidence(cert);
  assert.equal(ev.kind, "sev-snp");
  assert.ok(ev.endorsements![0]!.equals(s.vcek.der), "the VCEK comes first");
  // REPORT_DATA binds the fresh key.
  const spki = certSpki(cert);
  assert.ok(ev.evidence.subarray(0x50, 0x90).equals(raTlsReportData(spki)));
  const v = verifyRaTlsCert(cert, { extraRoots: [s.ark] });
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.claims!.snp!.measurement, MEASUREMENT);
  assert.equal(
    matchApp(v, [
      {
        name: "vm",
        identities: [{ measurement: MEASUREMENT, hostData: "d4".repeat(32), minTcb: { snp: 8 } }],
      },
    ]).matched,
    true,
  );
  assert.equal(verifyRaTlsCert(cert).code, "untrusted_root", "not without the simulated ARK configured");
});

for (const [aux, message] of [
  ["no-vcek", /no VCEK/],
  ["no-terminator", /no terminating zero entry/],
  ["none", /no certificate table/],
] as const) {
  test(`tsm (sev_guest): an auxblob with ${aux} is refused with a clear message`, async () => {
    const root = join(dir, `tsm-snp-${aux}`);
    await fakeSnp(root, aux);
    await assert.rejects(
      makeIdentity(new TsmAttester(root, "e1")),
      (e: unknown) => e instanceof AttesterError && message.test(e.message),
    );
  });
}

test("a debug TEE is read from the evidence (SGX ATTRIBUTES.DEBUG, SNP policy DEBUG); unreadable evidence is not debug", async () => {
  const sgx = await createSimTee();
  const snp = await createSimSnp();
  const quote = (debug: boolean) => issueSimQuote(sgx, { mrenclave: MR, mrsigner: MR, debug });
  const report = (debug: boolean) => issueSimSnpReport(snp, { measurement: "5e".repeat(48), debug });
  assert.equal(evidenceIsDebug(quote(true)), true);
  assert.equal(evidenceIsDebug(quote(false)), false);
  assert.equal(evidenceIsDebug(report(true)), true);
  assert.equal(evidenceIsDebug(report(false)), false);
  // The debugger guard depends on it: what cannot be read keeps the debugger out.
  assert.equal(evidenceIsDebug(quote(true).subarray(0, 100)), false);
  assert.equal(evidenceIsDebug(Buffer.alloc(2000, 0xff)), false);
});
