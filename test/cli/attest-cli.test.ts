/** `seng attest verify` and `seng attest sim` as a user runs them: exit codes, JSON keys, one-line errors. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, vectorPath } from "../helpers/vectors.js";

function seng(...args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, ["--import", "tsx", join(ROOT, "src/cli/main.ts"), ...args], {
    cwd: ROOT,
    encoding: "utf8",
  });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

function noStack(err: string): void {
  assert.doesNotMatch(err, /\n\s+at /, "no stack trace for the user");
}

test("verify --json: the dcap-qvl SGX quote with its collateral", () => {
  const r = seng(
    "attest",
    "verify",
    vectorPath("intel/dcap-qvl/sgx_quote"),
    "--collateral",
    vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"),
    "--at",
    "2025-07-19T10:01:17Z",
    "--json",
  );
  assert.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out);
  assert.equal(j.verified, true);
  assert.equal(j.tee, "sgx");
  assert.equal(j.tcbStatus, "ConfigurationAndSWHardeningNeeded");
  assert.deepEqual(j.advisoryIds, ["INTEL-SA-00289", "INTEL-SA-00615"]);
  assert.equal(j.mrenclave, "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb");
  assert.equal(j.mrsigner, "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6");
  assert.equal(j.isvprodid, 0);
  assert.equal(j.isvsvn, 0);
  assert.equal(j.debug, false);
  assert.match(j.reportData, /^48656c6c6f2c20776f726c6421(00)+$/);
});

test("verify: without collateral, tcbStatus null; expired collateral exits 1 with a reason", () => {
  const plain = seng(
    "attest",
    "verify",
    vectorPath("intel/dcap-qvl/sgx_quote"),
    "--at",
    "2025-07-19T10:01:17Z",
    "--json",
  );
  assert.equal(plain.code, 0, plain.err);
  assert.equal(JSON.parse(plain.out).tcbStatus, null);
  const late = seng(
    "attest",
    "verify",
    vectorPath("intel/dcap-qvl/sgx_quote"),
    "--collateral",
    vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"),
    "--at",
    "2025-08-01T00:00:00Z",
    "--json",
  );
  assert.equal(late.code, 1);
  const j = JSON.parse(late.out);
  assert.equal(j.verified, false);
  assert.match(j.reason, /not valid at 2025-08-01/);
});

test("verify: TDX and SNP JSON keys", () => {
  const tdx = seng(
    "attest",
    "verify",
    vectorPath("intel/dcap-qvl/tdx_quote"),
    "--collateral",
    vectorPath("intel/dcap-qvl/tdx_quote_collateral.json"),
    "--at",
    "2025-07-01T00:00:00Z",
    "--json",
  );
  assert.equal(tdx.code, 0, tdx.err);
  const t = JSON.parse(tdx.out);
  assert.equal(t.tee, "tdx");
  assert.equal(t.tcbStatus, "UpToDate");
  for (const k of ["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"]) assert.match(t[k], /^[0-9a-f]{96}$/, k);
  const snp = seng(
    "attest",
    "verify",
    vectorPath("amd/virtee-sev/report_milan.hex"),
    "--vcek",
    vectorPath("amd/virtee-sev/vcek_milan.der"),
    "--at",
    "2025-01-01T00:00:00Z",
    "--json",
  );
  assert.equal(snp.code, 0, snp.err);
  const s = JSON.parse(snp.out);
  assert.equal(s.tee, "sev-snp");
  assert.equal(
    s.measurement,
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
  );
  assert.equal(BigInt("0x" + s.policy), 0x30000n);
  assert.equal(s.tcbStatus, null);
  const nov = seng("attest", "verify", vectorPath("amd/virtee-sev/report_milan.hex"), "--json");
  assert.equal(nov.code, 1);
  assert.equal(JSON.parse(nov.out).code, "vcek_missing");
});

test("bad usage and unreadable input exit 2 with one line", () => {
  for (const args of [
    ["attest", "verify", "/nonexistent/quote"],
    ["attest", "verify", vectorPath("intel/dcap-qvl/sgx_quote"), "--at", "yesterday"],
    ["attest", "verify", vectorPath("intel/dcap-qvl/sgx_quote"), "--collateral", "/nonexistent"],
    [
      "attest",
      "verify",
      vectorPath("intel/dcap-qvl/sgx_quote"),
      "--vcek",
      vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"),
    ],
    ["attest", "verify"],
    ["attest", "frobnicate"],
  ]) {
    const r = seng(...args);
    assert.equal(r.code, 2, `${args.join(" ")}: exit ${r.code} ${r.err}`);
    assert.ok(r.err.trim().length > 0);
    noStack(r.err);
  }
});

test("garbage evidence is a clean rejection (exit 1)", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-cli-"));
  try {
    writeFileSync(join(dir, "g"), Buffer.alloc(3000, 7));
    const r = seng("attest", "verify", join(dir, "g"), "--json");
    assert.equal(r.code, 1);
    assert.equal(JSON.parse(r.out).verified, false);
    noStack(r.err);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("sim: init, quote, verify only with the sim root configured", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-sim-"));
  try {
    const sim = join(dir, "sim");
    assert.equal(seng("attest", "sim", "init", "--dir", sim).code, 0);
    const mr = "ab".repeat(32);
    for (const format of ["binary", "hex", "base64"]) {
      const q = join(dir, `q.${format}`);
      const made = seng(
        "attest",
        "sim",
        "quote",
        "--dir",
        sim,
        "--mrenclave",
        mr,
        "--isvsvn",
        "4",
        "--report-data",
        "c0ffee",
        "--format",
        format,
        "--out",
        q,
      );
      assert.equal(made.code, 0, made.err);
      const ok = seng(
        "attest",
        "verify",
        q,
        "--root",
        join(sim, "root.pem"),
        "--collateral",
        join(sim, "collateral.json"),
        "--json",
      );
      assert.equal(ok.code, 0, ok.err + ok.out);
      const j = JSON.parse(ok.out);
      assert.deepEqual(
        [j.verified, j.simulated, j.tcbStatus, j.mrenclave, j.isvsvn],
        [true, true, "UpToDate", mr, 4],
      );
      assert.match(j.reportData, /^c0ffee(00)+$/);
      assert.match(ok.err, /INSECURE/);
    }
    const untrusted = seng("attest", "verify", join(dir, "q.binary"), "--json");
    assert.equal(untrusted.code, 1);
    assert.equal(JSON.parse(untrusted.out).code, "untrusted_root");
    const bad = seng("attest", "sim", "quote", "--dir", sim, "--mrenclave", "xyz", "--out", join(dir, "x"));
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--mrenclave: expected 32 bytes of hex/);
    assert.ok(readFileSync(join(sim, "root.pem"), "utf8").includes("BEGIN CERTIFICATE"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a binary quote (which carries PEM inside) is evidence, and --root may come last", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-sim-"));
  try {
    const sim = join(dir, "sim");
    assert.equal(seng("attest", "sim", "init", "--dir", sim).code, 0);
    const again = seng("attest", "sim", "init", "--dir", sim);
    assert.equal(again.code, 2, "init refuses to replace an existing simulated TEE");
    noStack(again.err);
    assert.equal(seng("attest", "sim", "init", "--dir", sim, "--force").code, 0);
    const q = join(dir, "q");
    assert.equal(
      seng("attest", "sim", "quote", "--dir", sim, "--mrenclave", "cd".repeat(32), "--out", q).code,
      0,
    );
    const r = seng(
      "attest",
      "verify",
      "--collateral",
      join(sim, "collateral.json"),
      q,
      "--root",
      join(sim, "root.pem"),
    );
    assert.equal(r.code, 0, r.err + r.out);
    assert.match(r.out, /^verified/);
    assert.match(r.out, /SIMULATED/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
