/**
 * Intel DCAP verification against the real vectors in ../shared/attestation-vectors (MANIFEST.md gives the
 * expected verdicts), and forgeries of every field region of SGX v3 and TDX v4 quotes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  verifyEvidence,
  loadCollateral,
  collateralFromBundle,
  Cert,
  type Verdict,
} from "../../src/attest/index.js";
import { parseQuote } from "../../src/attest/intel/quote.js";
import { fields, vector, vectorPath } from "../helpers/vectors.js";

const SGX_AT = new Date("2025-07-19T10:01:17Z");
const TDX_AT = new Date("2025-07-01T00:00:00Z");
const sgxQuote = vector("intel/dcap-qvl/sgx_quote");
const tdxQuote = vector("intel/dcap-qvl/tdx_quote");
const sgxCol = () => loadCollateral([vectorPath("intel/dcap-qvl/sgx_quote_collateral.json")]);
const tdxCol = () => loadCollateral([vectorPath("intel/dcap-qvl/tdx_quote_collateral.json")]);
/** The TCB signing chain Intel serves with every TCB info (teekit's files come without it). */
const tcbChainPem = JSON.parse(readFileSync(vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"), "utf8"))
  .tcb_info_issuer_chain as string;

function expectRejected(v: Verdict, ...codes: string[]): void {
  assert.equal(
    v.verified,
    false,
    `expected rejection, got verified (${JSON.stringify(v.claims?.sgx?.mrenclave)})`,
  );
  assert.ok(codes.includes(v.code!), `expected ${codes.join("|")}, got ${v.code}: ${v.reason}`);
}

test("dcap-qvl SGX v3 quote: verified, ConfigurationAndSWHardeningNeeded, advisories", () => {
  const v = verifyEvidence(sgxQuote, { at: SGX_AT, collateral: sgxCol() });
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "ConfigurationAndSWHardeningNeeded");
  assert.deepEqual(v.advisoryIds, ["INTEL-SA-00289", "INTEL-SA-00615"]);
  const f = fields()["intel/dcap-qvl/sgx_quote"]!.report as Record<string, unknown>;
  assert.equal(v.claims!.tee, "sgx");
  assert.equal(v.claims!.sgx!.mrenclave, f.mrenclave);
  assert.equal(v.claims!.sgx!.mrsigner, f.mrsigner);
  assert.equal(v.claims!.sgx!.isvprodid, f.isvprodid);
  assert.equal(v.claims!.sgx!.isvsvn, f.isvsvn);
  assert.equal(v.claims!.debug, false);
  assert.equal(v.claims!.reportData, f.reportdata);
  assert.equal(Buffer.from(v.claims!.reportData, "hex").subarray(0, 13).toString(), "Hello, world!");
  assert.equal(v.claims!.platform.fmspc, "00a067110000");
  assert.equal(v.claims!.simulated, false);
});

test("dcap-qvl SGX quote: rejected once the collateral has expired", () => {
  const v = verifyEvidence(sgxQuote, { at: new Date("2025-08-01T00:00:00Z"), collateral: sgxCol() });
  expectRejected(v, "collateral_expired", "crl_expired");
});

test("dcap-qvl SGX quote: rejected before the collateral was issued", () => {
  const v = verifyEvidence(sgxQuote, { at: new Date("2025-06-01T00:00:00Z"), collateral: sgxCol() });
  expectRejected(v, "collateral_expired", "crl_expired");
});

test("SGX quote without collateral: signatures and chain only, tcbStatus null", () => {
  const v = verifyEvidence(sgxQuote, { at: SGX_AT });
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, null);
});

test("dcap-qvl TDX v4 quote (with 70 bytes of zero padding): verified, UpToDate, fields", () => {
  assert.equal(tdxQuote.length, 5006);
  const v = verifyEvidence(tdxQuote, { at: TDX_AT, collateral: tdxCol() });
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "UpToDate");
  assert.deepEqual(v.advisoryIds, []);
  const f = fields()["intel/dcap-qvl/tdx_quote"]!;
  const r = f.report as Record<string, string>;
  const t = v.claims!.tdx!;
  for (const k of [
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mrseam",
    "mrsignerseam",
    "xfam",
    "mrconfigid",
    "mrowner",
    "mrownerconfig",
  ] as const) {
    assert.equal(t[k], r[k], k);
  }
  assert.equal(t.tdAttributes, r.td_attributes);
  assert.equal(t.teeTcbSvn, r.tee_tcb_svn);
  assert.equal(t.seamAttributes, r.seam_attr);
  assert.equal(v.claims!.reportData, r.reportdata);
  assert.equal(t.septVeDisable, true);
  assert.equal(v.claims!.debug, false);
  assert.equal(v.claims!.platform.fmspc, "b0c06f000000");
});

test("evidence encodings: hex, 0x-hex, base64 and binary give the same verdict", () => {
  const col = sgxCol();
  for (const enc of [
    sgxQuote,
    sgxQuote.toString("hex"),
    "0x" + sgxQuote.toString("hex"),
    sgxQuote.toString("base64"),
    sgxQuote.toString("base64").replace(/(.{76})/g, "$1\n"),
  ]) {
    const v = verifyEvidence(enc, { at: SGX_AT, collateral: col });
    assert.equal(v.verified, true, v.reason);
    assert.equal(v.tcbStatus, "ConfigurationAndSWHardeningNeeded");
  }
});

test("Intel QVL sample: rejected against the production root", () => {
  const dir = vectorPath("intel/intel-qvl-sample");
  const chain = [
    ...Cert.fromPemBundle(readFileSync(`${dir}/pckCert.pem`)),
    ...Cert.fromPemBundle(readFileSync(`${dir}/pckSignChain.pem`)),
  ];
  const v = verifyEvidence(vector("intel/intel-qvl-sample/quote.dat"), {
    at: TDX_AT,
    collateral: loadCollateral([dir]),
    chain,
  });
  expectRejected(v, "untrusted_root");
});

test("Intel QVL sample: verified, UpToDate, simulated when its synthetic root is configured", () => {
  const dir = vectorPath("intel/intel-qvl-sample");
  const chain = [
    ...Cert.fromPemBundle(readFileSync(`${dir}/pckCert.pem`)),
    ...Cert.fromPemBundle(readFileSync(`${dir}/pckSignChain.pem`)),
  ];
  const root = Cert.from(readFileSync(`${dir}/trustedRootCaCert.pem`));
  const v = verifyEvidence(vector("intel/intel-qvl-sample/quote.dat"), {
    at: TDX_AT,
    collateral: loadCollateral([dir]),
    chain,
    extraRoots: [root],
  });
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "UpToDate");
  assert.equal(v.claims!.simulated, true);
  assert.ok(v.warnings.some((w) => w.includes("INSECURE")));
  assert.equal(v.claims!.sgx!.mrenclave, "00".repeat(32));
  assert.equal(v.claims!.sgx!.miscselect, 0);
});

test("Intel QVL sample: a quote without its PCK chain is rejected with a clear reason", () => {
  const v = verifyEvidence(vector("intel/intel-qvl-sample/quote.dat"), { at: TDX_AT });
  expectRejected(v, "chain_invalid");
  assert.match(v.reason!, /--chain/);
});

const teekitCases = [
  {
    file: "sgx-chinenyeokafor.dat",
    tcb: "tcbInfo-sgx-90c06f000000.json",
    status: "UpToDate",
    mr: ["mrenclave", "0696ab235b2d339e68a4303cb64cde005bb8cdf2448bed742ac8ea8339bd0cb7"],
  },
  {
    file: "sgx-occlum.dat",
    tcb: "tcbInfo-sgx-30606a000000.json",
    status: "OutOfDate",
    mr: ["mrenclave", "9c90fd81f6e9fe64b46b14f0623523a52d6a5678482988c408f6adffe6301e2c"],
  },
  {
    file: "tdx-v4-edgeless.dat",
    tcb: "tcbInfo-tdx-00806f050000.json",
    status: "OutOfDate",
    mr: ["mrtd", ""],
  },
] as const;

for (const c of teekitCases) {
  test(`teekit ${c.file}: signatures and chain verify; with its TCB info: ${c.status}`, () => {
    const at = new Date("2025-09-30T00:00:00Z");
    const plain = verifyEvidence(vector(`intel/teekit/${c.file}`), { at });
    assert.equal(plain.verified, true, plain.reason);
    assert.equal(plain.tcbStatus, null);
    const col = loadCollateral([vectorPath(`intel/teekit/tcbinfo/${c.tcb}`)]);
    col.certs.push(...Cert.fromPemBundle(tcbChainPem));
    const v = verifyEvidence(vector(`intel/teekit/${c.file}`), { at, collateral: col });
    assert.equal(v.verified, true, v.reason);
    assert.equal(v.tcbStatus, c.status);
    const expected = (fields()[`intel/teekit/${c.file}`]!.report as Record<string, string>)[c.mr[0]];
    const claims = v.claims!;
    assert.equal(c.mr[0] === "mrtd" ? claims.tdx!.mrtd : claims.sgx!.mrenclave, expected);
  });
}

test("teekit occlum quote: MRSIGNER, ISVPRODID 4000, ISVSVN 5000", () => {
  const v = verifyEvidence(vector("intel/teekit/sgx-occlum.dat"), { at: new Date("2025-09-30T00:00:00Z") });
  assert.equal(v.claims!.sgx!.mrsigner, "6d5ead54bfbe9494e1cd9042bb7c25d74c597d4700e332b1b3168a60712c1e02");
  assert.equal(v.claims!.sgx!.isvprodid, 4000);
  assert.equal(v.claims!.sgx!.isvsvn, 5000);
});

test("TCB info for another TEE or FMSPC is a collateral mismatch", () => {
  const v = verifyEvidence(sgxQuote, { at: SGX_AT, collateral: tdxCol() });
  expectRejected(v, "collateral_mismatch");
});

test("tampered collateral: TCB info text, its signature, QE identity text", () => {
  const bundle = JSON.parse(readFileSync(vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"), "utf8"));
  const variants = [
    { ...bundle, tcb_info: bundle.tcb_info.replace('"OutOfDate"', '"UpToDate"') },
    { ...bundle, tcb_info_signature: "00" + bundle.tcb_info_signature.slice(2) },
    { ...bundle, qe_identity: bundle.qe_identity.replace('"isvprodid":1', '"isvprodid":2') },
    { ...bundle, qe_identity_signature: bundle.qe_identity_signature.slice(0, -2) + "00" },
  ];
  for (const b of variants) {
    const v = verifyEvidence(sgxQuote, { at: SGX_AT, collateral: collateralFromBundle(b) });
    expectRejected(v, "collateral_signature_invalid");
  }
});

test("collateral signed by a chain that does not reach the root is rejected", () => {
  const bundle = JSON.parse(readFileSync(vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"), "utf8"));
  const quoteChain = parseQuote(sgxQuote).certData.toString();
  // The PCK chain's leaf is a real Intel certificate, but not the TCB signing certificate.
  const v = verifyEvidence(sgxQuote, {
    at: SGX_AT,
    collateral: collateralFromBundle({ ...bundle, tcb_info_issuer_chain: quoteChain }),
  });
  expectRejected(v, "collateral_signature_invalid");
});

test("a CRL that revokes nothing relevant passes; a CRL not signed by its issuer is rejected", () => {
  const bundle = JSON.parse(readFileSync(vectorPath("intel/dcap-qvl/sgx_quote_collateral.json"), "utf8"));
  const crl = Buffer.from(bundle.pck_crl, "hex");
  crl[crl.length - 5]! ^= 0x01; // inside the signature
  const v = verifyEvidence(sgxQuote, {
    at: SGX_AT,
    collateral: collateralFromBundle({ ...bundle, pck_crl: crl.toString("hex") }),
  });
  expectRejected(v, "crl_invalid");
});

/** Field regions of a quote: [name, start, length, expected codes]. */
function regions(quote: Buffer): [string, number, number, string[]][] {
  const q = parseQuote(quote);
  const sig = ["quote_signature_invalid"];
  const out: [string, number, number, string[]][] = [
    ["header.version", 0, 2, ["malformed", "unsupported"]],
    ["header.akType", 2, 2, ["malformed", "unsupported"]],
    ["header.teeType", 4, 4, ["malformed", "unsupported", "quote_signature_invalid"]],
    ["header.qeSvn", 8, 2, sig],
    ["header.pceSvn", 10, 2, sig],
    ["header.qeVendorId", 12, 16, ["unsupported"]],
    ["header.userData", 28, 20, sig],
  ];
  if (q.bodyType === "sgx") {
    const b = 48;
    for (const [n, s, l] of [
      ["cpusvn", 0, 16],
      ["miscselect", 16, 4],
      ["reserved1", 20, 12],
      ["isvextprodid", 32, 16],
      ["attributes", 48, 16],
      ["mrenclave", 64, 32],
      ["reserved2", 96, 32],
      ["mrsigner", 128, 32],
      ["reserved3", 160, 32],
      ["configid", 192, 64],
      ["isvprodid", 256, 2],
      ["isvsvn", 258, 2],
      ["configsvn", 260, 2],
      ["reserved4", 262, 42],
      ["isvfamilyid", 304, 16],
      ["reportdata", 320, 64],
    ] as const)
      out.push([`body.${n}`, b + s, l, sig]);
  } else {
    const b = 48;
    for (const [n, s, l] of [
      ["teeTcbSvn", 0, 16],
      ["mrseam", 16, 48],
      ["mrsignerseam", 64, 48],
      ["seamAttributes", 112, 8],
      ["tdAttributes", 120, 8],
      ["xfam", 128, 8],
      ["mrtd", 136, 48],
      ["mrconfigid", 184, 48],
      ["mrowner", 232, 48],
      ["mrownerconfig", 280, 48],
      ["rtmr0", 328, 48],
      ["rtmr1", 376, 48],
      ["rtmr2", 424, 48],
      ["rtmr3", 472, 48],
      ["reportdata", 520, 64],
    ] as const)
      out.push([`body.${n}`, b + s, l, sig]);
  }
  let p = q.signedData.length;
  out.push(["signatureDataLength", p, 4, ["malformed"]]);
  p += 4;
  out.push(["quoteSignature", p, 64, sig]);
  p += 64;
  out.push(["attestationKey", p, 64, ["attestation_key_binding_invalid"]]);
  p += 64;
  if (q.version >= 4) {
    out.push(["certDataType(6)", p, 2, ["malformed"]]);
    out.push(["certDataSize", p + 2, 4, ["malformed"]]);
    p += 6;
  }
  out.push(["qeReport", p, 384, ["qe_report_signature_invalid"]]);
  out.push(["qeReport.reportData", p + 320, 64, ["qe_report_signature_invalid"]]);
  p += 384;
  out.push(["qeReportSignature", p, 64, ["qe_report_signature_invalid"]]);
  p += 64;
  out.push(["qeAuthDataSize", p, 2, ["malformed"]]);
  p += 2;
  if (q.qeAuthData.length)
    out.push(["qeAuthData", p, q.qeAuthData.length, ["attestation_key_binding_invalid"]]);
  p += q.qeAuthData.length;
  out.push(["pckCertDataType", p, 2, ["chain_invalid", "malformed"]]);
  out.push(["pckCertDataSize", p + 2, 4, ["malformed"]]);
  p += 6;
  // Inside the PEM text: the base64 of a certificate's signed part or its signature.
  out.push([
    "pckCertData.leafBody",
    p + 300,
    1,
    ["chain_invalid", "malformed", "qe_report_signature_invalid"],
  ]);
  out.push(["pckCertData.leafSignature", p + 800, 1, ["chain_invalid", "malformed"]]);
  out.push(["pckCertData.intermediate", p + 1500, 1, ["chain_invalid", "malformed", "untrusted_root"]]);
  return out;
}

for (const [name, quote, at, col] of [
  ["SGX v3", sgxQuote, SGX_AT, sgxCol],
  ["TDX v4", tdxQuote, TDX_AT, tdxCol],
] as const) {
  test(`${name}: a flipped byte in every field region is rejected with its specific reason`, () => {
    const collateral = col();
    assert.equal(verifyEvidence(quote, { at, collateral }).verified, true);
    for (const [region, start, len, codes] of regions(quote)) {
      for (const off of new Set([start, start + (len >> 1), start + len - 1])) {
        const forged = Buffer.from(quote);
        forged[off]! ^= region.startsWith("pckCertData") ? 0x01 : 0x80;
        const v = verifyEvidence(forged, { at, collateral });
        assert.equal(v.verified, false, `${region} @${off}: forged quote was verified`);
        assert.ok(
          codes.includes(v.code!),
          `${region} @${off}: expected ${codes.join("|")}, got ${v.code}: ${v.reason}`,
        );
      }
    }
  });
}

test("truncated quotes of every length are malformed, never a crash", () => {
  for (let n = 0; n < sgxQuote.length; n += 7) {
    const v = verifyEvidence(sgxQuote.subarray(0, n), { at: SGX_AT });
    assert.equal(v.verified, false);
    assert.ok(["malformed", "unsupported"].includes(v.code!), `length ${n}: ${v.code} ${v.reason}`);
  }
});

test("bytes after the quote's end: zeros are silent padding, anything else is ignored with a warning", () => {
  const padded = verifyEvidence(Buffer.concat([sgxQuote, Buffer.alloc(100)]), { at: SGX_AT });
  assert.equal(padded.verified, true, padded.reason);
  assert.ok(!padded.warnings.some((w) => w.includes("after the quote")), padded.warnings.join("; "));
  const extra = verifyEvidence(Buffer.concat([sgxQuote, Buffer.from([0, 0, 1])]), { at: SGX_AT });
  assert.equal(extra.verified, true, extra.reason);
  assert.ok(extra.warnings.some((w) => /3 bytes after the quote's end were ignored/.test(w)));
});

test("a real production TDX v4 quote with bytes appended verifies, with a warning and the same claims", () => {
  const q = parseQuote(tdxQuote);
  const appended = Buffer.concat([q.raw, Buffer.from("appended by a transport, not signed")]);
  const good = verifyEvidence(tdxQuote, { at: TDX_AT, collateral: tdxCol() });
  const v = verifyEvidence(appended, { at: TDX_AT, collateral: tdxCol() });
  assert.equal(v.verified, true, v.reason);
  assert.equal(v.tcbStatus, "UpToDate");
  assert.deepEqual(v.claims, good.claims);
  assert.ok(
    v.warnings.some((w) => /35 bytes after the quote's end were ignored/.test(w)),
    v.warnings.join("; "),
  );
  assert.equal(parseQuote(appended).extraBytes.toString(), "appended by a transport, not signed");
});

test("a length field that points past the end of the quote is still malformed", () => {
  const q = parseQuote(tdxQuote);
  const sigLenAt = 48 + 584; // TDX v4: header, TD 1.0 body, then the signature data length
  for (const input of [q.raw, Buffer.concat([q.raw, Buffer.alloc(16, 0xee)])]) {
    const forged = Buffer.from(input);
    forged.writeUInt32LE(forged.readUInt32LE(sigLenAt) + 64, sigLenAt);
    expectRejected(verifyEvidence(forged, { at: TDX_AT, collateral: tdxCol() }), "malformed");
    const huge = Buffer.from(input);
    huge.writeUInt32LE(0xffffffff, sigLenAt);
    expectRejected(verifyEvidence(huge, { at: TDX_AT, collateral: tdxCol() }), "malformed");
  }
});

test("fuzz: 3000 random mutations never crash and never verify with other claims", () => {
  let seed = 0x5e6a;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const collateral = sgxCol();
  const original = verifyEvidence(sgxQuote, { at: SGX_AT, collateral }).claims!;
  for (let i = 0; i < 3000; i++) {
    let m = Buffer.from(sgxQuote);
    const kind = rnd(4);
    if (kind === 0) for (let k = 0; k <= rnd(4); k++) m[rnd(m.length)] = rnd(256);
    else if (kind === 1) m = m.subarray(0, rnd(m.length));
    else if (kind === 2) {
      const at = rnd(m.length);
      m = Buffer.concat([m.subarray(0, at), Buffer.from([rnd(256)]), m.subarray(at)]);
    } else m.writeUInt32LE(rnd(0x7fffffff), rnd(m.length - 4));
    const v = verifyEvidence(m, { at: SGX_AT, collateral });
    assert.notEqual(v.code, "internal", `mutation ${i}: internal error ${v.reason}`);
    if (v.verified) assert.deepEqual(v.claims, original, `mutation ${i} verified with different claims`);
  }
});

test("garbage and empty input are rejected cleanly", () => {
  for (const g of [
    Buffer.alloc(0),
    Buffer.from("hello world"),
    Buffer.from("zz"),
    Buffer.alloc(5000, 0xff),
    Buffer.from("0xabc"),
  ]) {
    const v = verifyEvidence(g);
    assert.equal(v.verified, false);
    assert.ok(["malformed", "unsupported"].includes(v.code!), `${v.code}: ${v.reason}`);
  }
});
