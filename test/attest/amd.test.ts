/**
 * AMD SEV-SNP: report parsing, built-in roots, chain and report verification against the shared vectors
 * (MANIFEST.md, FIELDS.json), plus forgeries made from them and from a throwaway AMD-like hierarchy.
 */
import assert from "node:assert/strict";
import { createHash, KeyObject, sign, webcrypto } from "node:crypto";
import { describe, test } from "node:test";
import { x509 } from "../../src/attest/x509gen.js";
import type { Claims, SnpTcb } from "../../src/attest/claims.js";
import { AttestError } from "../../src/attest/errors.js";
import { decodeEvidence } from "../../src/attest/input.js";
import { Cert, verifyChain } from "../../src/attest/x509.js";
import {
  decodeTcb,
  looksLikeSnpReport,
  parseSnpReport,
  productFromCpuid,
  SNP_REPORT_LEN,
  type SnpReport,
} from "../../src/attest/amd/report.js";
import { amdRoots, type AmdRoot, type BuiltinAmdRoot } from "../../src/attest/amd/roots.js";
import {
  checkChipId,
  checkSnpReport,
  checkVcekTcb,
  verifyAmdChain,
  verifySnp,
} from "../../src/attest/amd/verify.js";
import { fields, vector } from "../helpers/vectors.js";

/** Inside the validity of all three vector VCEKs (Milan 2023–2030, go-sev-guest 2022–2029, Turin 2024–2031). */
const AT = new Date("2025-01-01T00:00:00Z");

const milanBytes = decodeEvidence(vector("amd/virtee-sev/report_milan.hex"));
const milanVcek = Cert.from(vector("amd/virtee-sev/vcek_milan.der"));
const goBytes = vector("amd/go-sev-guest/attestation.bin");
const goVcek = Cert.from(vector("amd/go-sev-guest/vcek.der"));
const turinVcek = Cert.from(vector("amd/virtee-sev/vcek_turin.der"));
const root = (p: string): BuiltinAmdRoot => amdRoots().find((r) => r.product === p)!;

/** The rejection code of `f`, or "ok"; anything thrown that is not an AttestError fails the test. */
function codeOf(f: () => unknown): string {
  try {
    f();
    return "ok";
  } catch (e) {
    if (e instanceof AttestError) return e.code;
    throw e;
  }
}

const verifyBytes = (buf: Buffer, vcek = milanVcek, at = AT): Claims =>
  verifySnp(parseSnpReport(buf), { at, vcek });

function withByte(buf: Buffer, offset: number, xor: number): Buffer {
  const b = Buffer.from(buf);
  b[offset]! ^= xor;
  return b;
}

/** Signs bytes 0x000–0x29F with `key` and stores r and s as AMD's 72-byte little-endian fields. */
function resign(buf: Buffer, key: KeyObject): Buffer {
  const b = Buffer.from(buf);
  const sig = sign("sha384", b.subarray(0, 0x2a0), { key, dsaEncoding: "ieee-p1363" });
  b.fill(0, 0x2a0, 0x330);
  Buffer.from(sig.subarray(0, 48)).reverse().copy(b, 0x2a0);
  Buffer.from(sig.subarray(48)).reverse().copy(b, 0x2e8);
  return b;
}

/** FIELDS.json's view of a report: its key names and encodings. */
function fieldsView(r: SnpReport, c: Claims): Record<string, unknown> {
  const s = c.snp!;
  const tcb = (t: SnpTcb): Record<string, number> => ({
    bl: t.bootloader,
    snp: t.snp,
    tee: t.tee,
    ucode: t.microcode,
  });
  const bmm = (v: SnpReport["currentVersion"]): number[] => [v.build, v.minor, v.major];
  return {
    abi_major: r.abiMajor,
    abi_minor: r.abiMinor,
    author_key_digest: s.authorKeyDigest,
    chip_id: s.chipId,
    committed_bmm: bmm(r.committedVersion),
    committed_tcb: tcb(s.committedTcb),
    cpuid_fam_mod_step: r.raw.subarray(0x188, 0x18b).toString("hex"),
    current_build_minor_major: bmm(r.currentVersion),
    current_tcb: tcb(s.currentTcb),
    family_id: s.familyId,
    guest_svn: s.guestSvn,
    host_data: s.hostData,
    id_key_digest: s.idKeyDigest,
    image_id: s.imageId,
    key_info: `0x${r.keyInfo.toString(16)}`,
    launch_tcb: tcb(s.launchTcb),
    measurement: s.measurement,
    platform_info: `0x${BigInt(`0x${s.platformInfo}`).toString(16)}`,
    policy: `0x${BigInt(`0x${s.policy}`).toString(16)}`,
    policy_debug: s.policyDebug,
    policy_migrate_ma: s.policyMigrateMa,
    policy_smt: s.policySmt,
    report_data: c.reportData,
    report_id: s.reportId,
    reported_tcb: tcb(s.reportedTcb),
    reported_tcb_raw: s.reportedTcb.raw,
    sig_algo: r.sigAlgo,
    signing_key: { vcek: 0, vlek: 1, none: 7 }[r.signingKey],
    version: s.version,
    vmpl: s.vmpl,
  };
}

describe("built-in AMD roots", () => {
  test("pin the MANIFEST fingerprints, self-sign, and sign their ASKs", () => {
    const want = {
      Milan: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
      Genoa: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
      Turin: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    };
    assert.deepEqual(
      amdRoots().map((r) => [r.product, r.ark.fingerprint]),
      Object.entries(want),
    );
    for (const { product, ark, ask } of amdRoots()) {
      assert.equal(ark.x509.subject.split("\n").at(-1), `CN=ARK-${product}`);
      assert.equal(ask.x509.subject.split("\n").at(-1), `CN=SEV-${product}`);
      assert.ok(ark.x509.verify(ark.publicKey), "ARK self-signature (RSA-PSS SHA-384)");
      assert.ok(ask.x509.verify(ark.publicKey), "ASK signed by ARK");
      assert.ok(!ask.x509.verify(ask.publicKey));
      const pem = vector(`amd/roots/${product.toLowerCase()}_ark.pem`);
      assert.ok(Cert.from(pem).der.equals(ark.der), "same bytes as the vector");
    }
  });
});

describe("vectors verify as MANIFEST.md says", () => {
  for (const [path, bytes, vcek] of [
    ["amd/virtee-sev/report_milan.hex", milanBytes, milanVcek],
    ["amd/go-sev-guest/attestation.bin", goBytes, goVcek],
  ] as const) {
    test(`${path}: verifies and every FIELDS.json value matches`, () => {
      const expected = fields()[path]!;
      const file = createHash("sha256").update(vector(path)).digest("hex");
      assert.equal(file, expected.file_sha256, "vector file unchanged");
      assert.ok(looksLikeSnpReport(bytes));
      const report = parseSnpReport(bytes);
      const claims = verifySnp(report, { at: AT, vcek });
      assert.deepEqual(fieldsView(report, claims), expected.snp);
      assert.equal(
        expected.vcek,
        path.includes("virtee") ? "virtee-sev/vcek_milan.der" : "go-sev-guest/vcek.der",
      );
    });
  }

  test("report_milan.hex: claims", () => {
    const c = verifyBytes(milanBytes);
    assert.equal(c.tee, "sev-snp");
    assert.equal(c.simulated, false);
    assert.equal(c.debug, false);
    assert.deepEqual(c.format, { kind: "snp-report", version: 2 });
    assert.equal(c.platform.chipId, c.snp!.chipId);
    assert.equal(c.snp!.product, "Milan");
    assert.equal(c.snp!.signingKey, "vcek");
    assert.equal(c.snp!.policy, "0000000000030000");
    assert.equal(c.snp!.platformInfo, "0000000000000001");
    assert.equal(
      c.snp!.measurement,
      "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
    );
    assert.deepEqual(c.snp!.reportedTcb, {
      bootloader: 3,
      tee: 0,
      snp: 8,
      microcode: 115,
      raw: "0300000000000873",
    });
    assert.match(c.reportData, /^[0-9a-f]{128}$/);
    // The unverified claims a parse offers for logs agree, product included (a full CHIP_ID is not Turin's).
    assert.deepEqual(parseSnpReport(milanBytes).claims, c);
  });

  test("report_milan.hex verifies with cert_chain_milan and with the go-sev-guest ASK+ARK bundle", () => {
    for (const chain of ["amd/virtee-sev/cert_chain_milan", "amd/go-sev-guest/ask_ark_milan.pem"]) {
      const c = verifySnp(parseSnpReport(milanBytes), {
        at: AT,
        vcek: milanVcek,
        chain: Cert.fromPemBundle(vector(chain)),
      });
      assert.equal(c.snp!.product, "Milan");
    }
  });

  test("report_milan.hex with byte 21 xor 0x80 fails [source test]", () => {
    assert.equal(
      codeOf(() => verifyBytes(withByte(milanBytes, 21, 0x80))),
      "report_signature_invalid",
    );
  });

  test("go-sev-guest attestation.bin: verifies, policy allows DEBUG", () => {
    const c = verifySnp(parseSnpReport(goBytes), {
      at: AT,
      vcek: goVcek,
      chain: Cert.fromPemBundle(vector("amd/go-sev-guest/ask_ark_milan.pem")),
    });
    assert.equal(c.debug, true);
    assert.equal(c.snp!.policyDebug, true);
    assert.equal(c.reportData, "0102030405".padEnd(128, "0"));
  });

  test("Turin VCEK + cert_chain_turin verifies; 8-byte hwID and fmcSPL", () => {
    const chain = Cert.fromPemBundle(vector("amd/virtee-sev/cert_chain_turin"));
    assert.equal(
      verifyChain([turinVcek, ...chain], { roots: amdRoots().map((r) => r.ark), at: AT, what: "VCEK" }),
      root("Turin").ark,
    );
    for (const opts of [{ at: AT, chain }, { at: AT }]) {
      const c = verifyAmdChain(turinVcek, opts);
      assert.equal(c.product, "Turin");
      assert.equal(c.kind, "vcek");
      assert.equal(c.issuer, root("Turin").ask);
    }
    assert.ok(turinVcek.extensions.has("1.3.6.1.4.1.3704.1.3.9"), "fmcSPL");
    assert.equal(turinVcek.extensions.get("1.3.6.1.4.1.3704.1.4")!.value.length, 8);
    assert.ok(!milanVcek.extensions.has("1.3.6.1.4.1.3704.1.3.9"));
    // This VCEK's TCB: fmc 0, bootloader 0, tee 0, snp 0, microcode 9 (Turin byte layout).
    const tcb = decodeTcb(Buffer.from("0000000000000009", "hex"), "Turin");
    checkVcekTcb(turinVcek, tcb);
    assert.equal(
      codeOf(() => checkVcekTcb(turinVcek, { ...tcb, fmc: 1 })),
      "vcek_tcb_mismatch",
    );
    assert.equal(
      codeOf(() => checkVcekTcb(turinVcek, decodeTcb(Buffer.from("0100000000000009", "hex"), "Turin"))),
      "vcek_tcb_mismatch",
    );
  });
});

describe("forged and damaged reports", () => {
  // Every field of the version 5 layout, reserved areas and the signature included; together they cover all bytes.
  const regions: [string, number, number][] = [
    ["version", 0x00, 0x04],
    ["guest_svn", 0x04, 0x08],
    ["policy", 0x08, 0x10],
    ["family_id", 0x10, 0x20],
    ["image_id", 0x20, 0x30],
    ["vmpl", 0x30, 0x34],
    ["signature_algo", 0x34, 0x38],
    ["current_tcb", 0x38, 0x40],
    ["platform_info", 0x40, 0x48],
    ["key_info", 0x48, 0x4c],
    ["reserved 0x4c", 0x4c, 0x50],
    ["report_data", 0x50, 0x90],
    ["measurement", 0x90, 0xc0],
    ["host_data", 0xc0, 0xe0],
    ["id_key_digest", 0xe0, 0x110],
    ["author_key_digest", 0x110, 0x140],
    ["report_id", 0x140, 0x160],
    ["report_id_ma", 0x160, 0x180],
    ["reported_tcb", 0x180, 0x188],
    ["cpuid fam/mod/step", 0x188, 0x18b],
    ["reserved 0x18b", 0x18b, 0x1a0],
    ["chip_id", 0x1a0, 0x1e0],
    ["committed_tcb", 0x1e0, 0x1e8],
    ["current build/minor/major", 0x1e8, 0x1ec],
    ["committed build/minor/major", 0x1ec, 0x1f0],
    ["launch_tcb", 0x1f0, 0x1f8],
    ["launch_mit_vector", 0x1f8, 0x200],
    ["current_mit_vector", 0x200, 0x208],
    ["reserved 0x208", 0x208, 0x2a0],
    ["signature R", 0x2a0, 0x2d0],
    ["signature R upper 24 bytes", 0x2d0, 0x2e8],
    ["signature S", 0x2e8, 0x318],
    ["signature S upper 24 bytes", 0x318, 0x330],
    ["signature reserved", 0x330, 0x4a0],
  ];

  test("the regions tile the whole report", () => {
    regions.forEach(([, start], i) => assert.equal(start, i === 0 ? 0 : regions[i - 1]![2]));
    assert.equal(regions.at(-1)![2], SNP_REPORT_LEN);
  });

  for (const [name, start, end] of regions) {
    test(`every byte of ${name} (0x${start.toString(16)}–0x${(end - 1).toString(16)}), flipped, is rejected`, () => {
      const unsigned = start >= 0x2a0 && !(name === "signature R" || name === "signature S");
      const allowed = unsigned
        ? ["malformed"]
        : name === "version" || name === "signature_algo"
          ? ["report_signature_invalid", "unsupported"]
          : ["report_signature_invalid", "malformed"];
      for (let i = start; i < end; i++) {
        for (const xor of [0x01, 0x80]) {
          const code = codeOf(() => verifyBytes(withByte(milanBytes, i, xor)));
          assert.ok(allowed.includes(code), `byte 0x${i.toString(16)} xor 0x${xor.toString(16)}: ${code}`);
        }
      }
    });
  }

  test("a report with REPORTED_TCB changed fails its signature; a mismatching TCB fails the VCEK check", () => {
    const b = Buffer.from(milanBytes);
    b[0x186] = 9; // snp SPL 8 -> 9
    assert.equal(
      codeOf(() => verifyBytes(b)),
      "report_signature_invalid",
    );
    const tcb = decodeTcb(parseSnpReport(milanBytes).reportedTcb, "Milan");
    checkVcekTcb(milanVcek, tcb);
    for (const k of ["bootloader", "tee", "snp", "microcode"] as const) {
      assert.equal(
        codeOf(() => checkVcekTcb(milanVcek, { ...tcb, [k]: tcb[k] + 1 })),
        "vcek_tcb_mismatch",
        k,
      );
    }
    // Read with the Turin layout, Milan bytes name other SPLs (and an FMC the VCEK has no extension for).
    assert.equal(
      codeOf(() => checkVcekTcb(milanVcek, decodeTcb(parseSnpReport(milanBytes).reportedTcb, "Turin"))),
      "vcek_tcb_mismatch",
    );
  });

  test("the chip id check rejects another chip's VCEK and masked chip ids", () => {
    const report = parseSnpReport(milanBytes);
    checkChipId(milanVcek, report, "Milan");
    assert.equal(
      codeOf(() => checkChipId(goVcek, report, "Milan")),
      "chip_id_mismatch",
    );
    assert.equal(
      codeOf(() => checkChipId(milanVcek, report, "Turin")),
      "chip_id_mismatch",
      "Turin wants 8 bytes",
    );
    const masked = Buffer.from(milanBytes);
    masked[0x48] = 0x02; // MASK_CHIP_KEY
    assert.equal(
      codeOf(() => checkChipId(milanVcek, parseSnpReport(masked), "Milan")),
      "chip_id_mismatch",
    );
  });

  test("the wrong VCEK (go-sev-guest's, for the virtee report) fails the signature", () => {
    assert.equal(
      codeOf(() => verifyBytes(milanBytes, goVcek)),
      "report_signature_invalid",
    );
    assert.equal(
      codeOf(() => verifyBytes(goBytes, milanVcek)),
      "report_signature_invalid",
    );
  });

  test("a VCEK outside its validity is rejected", () => {
    assert.equal(
      codeOf(() => verifyBytes(milanBytes, milanVcek, new Date("2031-01-01T00:00:00Z"))),
      "cert_expired",
    );
    assert.equal(
      codeOf(() => verifyBytes(milanBytes, milanVcek, new Date("2023-04-03T00:00:00Z"))),
      "cert_expired",
    );
  });

  test("no VCEK: vcek_missing", () => {
    assert.equal(
      codeOf(() => verifySnp(parseSnpReport(milanBytes), { at: AT })),
      "vcek_missing",
    );
  });

  test("a chain of the wrong product is rejected", () => {
    const genoa = [root("Genoa").ask, root("Genoa").ark];
    assert.equal(
      codeOf(() => verifySnp(parseSnpReport(milanBytes), { at: AT, vcek: milanVcek, chain: genoa })),
      "chain_invalid",
    );
    assert.equal(
      codeOf(() =>
        verifyChain([milanVcek, root("Genoa").ask], {
          roots: amdRoots().map((r) => r.ark),
          at: AT,
          what: "VCEK",
        }),
      ),
      "chain_invalid",
    );
    // The right ASK with another product's ARK.
    const mixed = [root("Milan").ask, root("Genoa").ark];
    assert.equal(
      codeOf(() => verifySnp(parseSnpReport(milanBytes), { at: AT, vcek: milanVcek, chain: mixed })),
      "chain_invalid",
    );
    assert.equal(
      codeOf(() => verifyAmdChain(turinVcek, { at: AT, chain: [root("Milan").ask] })),
      "chain_invalid",
    );
  });

  test("a chain of too many certificates, or a leaf that is no VCEK, is rejected", () => {
    const { ask, ark } = root("Milan");
    assert.equal(
      codeOf(() => verifyAmdChain(milanVcek, { at: AT, chain: [ask, root("Genoa").ask, ark] })),
      "chain_invalid",
    );
    assert.equal(
      codeOf(() => verifyAmdChain(ask, { at: AT })),
      "chain_invalid",
    );
    // The leaf itself in the chain is tolerated (some tools send VCEK, ASK, ARK).
    assert.equal(verifyAmdChain(milanVcek, { at: AT, chain: [milanVcek, ask, ark] }).product, "Milan");
  });

  test("truncated reports are malformed", () => {
    for (let n = 0; n < SNP_REPORT_LEN; n += 37) {
      assert.equal(
        codeOf(() => parseSnpReport(milanBytes.subarray(0, n))),
        "malformed",
        `length ${n}`,
      );
    }
    assert.equal(
      codeOf(() => parseSnpReport(milanBytes.subarray(0, SNP_REPORT_LEN - 1))),
      "malformed",
    );
  });

  test("trailing zero padding is accepted, anything else after the report is not", () => {
    for (const pad of [1, 16, 4096]) {
      const c = verifyBytes(Buffer.concat([milanBytes, Buffer.alloc(pad)]));
      assert.equal(c.snp!.product, "Milan");
    }
    const tail = Buffer.alloc(64);
    tail[63] = 1;
    assert.equal(
      codeOf(() => parseSnpReport(Buffer.concat([milanBytes, tail]))),
      "malformed",
    );
    assert.throws(() => parseSnpReport(Buffer.concat([milanBytes, tail])), /not zero padding/);
  });

  test("versions 1 and 6, and signature algorithms other than 1, are unsupported", () => {
    for (const v of [0, 1, 6, 0x100]) {
      const b = Buffer.from(milanBytes);
      b.writeUInt32LE(v, 0);
      assert.equal(
        codeOf(() => parseSnpReport(b)),
        "unsupported",
        `version ${v}`,
      );
    }
    for (const a of [0, 2]) {
      const b = Buffer.from(milanBytes);
      b.writeUInt32LE(a, 0x34);
      assert.equal(
        codeOf(() => parseSnpReport(b)),
        "unsupported",
        `algorithm ${a}`,
      );
    }
  });

  test("impossible fields are malformed", () => {
    const cases: [string, (b: Buffer) => void, RegExp][] = [
      ["policy bit 17 clear", (b) => (b[0x0a] = 0x01), /bit 17/],
      ["KEY_INFO reserved bit", (b) => (b[0x48] = 0x20), /reserved bits/],
      ["SIGNING_KEY 3", (b) => (b[0x48] = 3 << 2), /SIGNING_KEY 3/],
      ["R above 48 bytes", (b) => (b[0x2a0 + 48] = 1), /above 48/],
      ["S above 48 bytes", (b) => (b[0x2e8 + 71] = 1), /above 48/],
      ["after the signature", (b) => (b[0x49f] = 1), /reserved area/],
    ];
    for (const [what, change, message] of cases) {
      const b = Buffer.from(milanBytes);
      change(b);
      assert.throws(
        () => parseSnpReport(b),
        (e) => e instanceof AttestError && e.code === "malformed" && message.test(e.message),
        what,
      );
    }
  });

  test("versions 3 to 5: CPUID names the product, version 5 adds mitigation vectors", () => {
    const b = Buffer.from(milanBytes);
    b.writeUInt32LE(5, 0);
    b.set([0x19, 0x11, 0x01], 0x188); // Genoa B1
    b.writeBigUInt64LE(0x5n, 0x1f8);
    b.writeBigUInt64LE(0x7n, 0x200);
    const r = parseSnpReport(b);
    assert.deepEqual(r.cpuid, { family: 0x19, model: 0x11, stepping: 1 });
    assert.equal(r.product, "Genoa");
    assert.equal(r.launchMitVector, 5n);
    assert.equal(r.currentMitVector, 7n);
    assert.equal(parseSnpReport(milanBytes).launchMitVector, undefined);
    b.writeUInt32LE(3, 0);
    assert.equal(parseSnpReport(b).launchMitVector, undefined);
    assert.equal(parseSnpReport(b).product, "Genoa");
    assert.equal(
      codeOf(() => verifyBytes(b)),
      "report_signature_invalid",
    );
  });

  test("CPUID product table", () => {
    const cases: [number, number, string | undefined][] = [
      [0x19, 0x01, "Milan"],
      [0x19, 0x11, "Genoa"],
      [0x19, 0xa0, "Genoa"],
      [0x1a, 0x02, "Turin"],
      [0x1a, 0x11, "Turin"],
      [0x19, 0x21, undefined],
      [0x1a, 0x50, undefined],
      [0x17, 0x01, undefined],
    ];
    for (const [f, m, p] of cases)
      assert.equal(productFromCpuid(f, m), p, `${f.toString(16)}/${m.toString(16)}`);
  });

  test("looksLikeSnpReport tells reports from DCAP quotes and junk", () => {
    assert.ok(looksLikeSnpReport(goBytes));
    assert.ok(!looksLikeSnpReport(vector("intel/dcap-qvl/sgx_quote")));
    assert.ok(!looksLikeSnpReport(vector("intel/dcap-qvl/tdx_quote")));
    assert.ok(!looksLikeSnpReport(Buffer.alloc(0)));
    assert.ok(!looksLikeSnpReport(Buffer.alloc(SNP_REPORT_LEN)));
  });

  test("fuzz: 2000 seeded mutations throw only AttestError, and every real change is rejected", () => {
    let seed = 0x5e9c0de;
    const rnd = (n: number): number => {
      // mulberry32
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return (((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * n;
    };
    const pick = (n: number): number => Math.floor(rnd(n));
    const codes = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      let b = Buffer.from(i % 2 ? milanBytes : goBytes);
      const vcek = i % 2 ? milanVcek : goVcek;
      const original = Buffer.from(b);
      switch (pick(5)) {
        case 0: // a few bit flips
          for (let k = 1 + pick(4); k > 0; k--) b[pick(b.length)]! ^= 1 << pick(8);
          break;
        case 1: // a random byte somewhere in the signed part
          b[pick(0x2a0)] = pick(256);
          break;
        case 2: // truncate
          b = b.subarray(0, pick(b.length));
          break;
        case 3: // append bytes, zero or not
          b = Buffer.concat([
            b,
            Buffer.from(Array.from({ length: 1 + pick(64) }, () => (pick(4) ? 0 : pick(256)))),
          ]);
          break;
        default: // overwrite a run
          b.fill(pick(256), pick(b.length), pick(b.length));
      }
      const code = codeOf(() => verifySnp(parseSnpReport(b), { at: AT, vcek }));
      const same =
        b.length >= SNP_REPORT_LEN &&
        b.subarray(0, SNP_REPORT_LEN).equals(original) &&
        b.subarray(SNP_REPORT_LEN).every((x) => x === 0);
      assert.equal(code === "ok", same, `mutation ${i}: ${code}`);
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    assert.ok(
      (codes.get("report_signature_invalid") ?? 0) > 100 && (codes.get("malformed") ?? 0) > 100,
      JSON.stringify([...codes]),
    );
  });
});

/**
 * A throwaway AMD-like hierarchy (P-384 throughout, for speed): ARK-Milan → SEV-Milan → SEV-VCEK carrying the real
 * Milan VCEK's extensions, and an ASVK SEV-VLEK-Milan → SEV-VLEK. It shows that a self-consistent chain is refused
 * unless its ARK is built in, and it exercises the VLEK paths that no public vector covers.
 */
describe("a fake AMD hierarchy", async () => {
  const alg = { name: "ECDSA", namedCurve: "P-384", hash: "SHA-384" };
  const validity = {
    notBefore: new Date("2024-01-01T00:00:00Z"),
    notAfter: new Date("2030-01-01T00:00:00Z"),
  };
  type Fake = { cert: Cert; keys: webcrypto.CryptoKeyPair; name: string };
  const newKeys = (): Promise<webcrypto.CryptoKeyPair> =>
    webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]) as Promise<webcrypto.CryptoKeyPair>;
  const toCert = (c: x509.X509Certificate): Cert => Cert.fromDer(Buffer.from(c.rawData));
  const caExt = (): x509.Extension[] => [new x509.BasicConstraintsExtension(true, undefined, true)];

  async function ark(): Promise<Fake> {
    const keys = await newKeys();
    const name = "CN=ARK-Milan";
    const c = await x509.X509CertificateGenerator.createSelfSigned({
      name,
      keys,
      signingAlgorithm: alg,
      extensions: caExt(),
      ...validity,
    });
    return { cert: toCert(c), keys, name };
  }
  async function issue(issuer: Fake, name: string, extensions: x509.Extension[]): Promise<Fake> {
    const keys = await newKeys();
    const c = await x509.X509CertificateGenerator.create({
      subject: name,
      issuer: issuer.name,
      publicKey: keys.publicKey,
      signingKey: issuer.keys.privateKey,
      signingAlgorithm: alg,
      extensions,
      ...validity,
    });
    return { cert: toCert(c), keys, name };
  }
  /** The real Milan VCEK's extensions, minus `skip`, with some values replaced. */
  const copyExts = (skip: string[] = [], replace: Record<string, Buffer> = {}): x509.Extension[] =>
    [...milanVcek.extensions]
      .filter(([oid]) => !skip.includes(oid))
      .map(([oid, e]) => new x509.Extension(oid, e.critical, replace[oid] ?? e.value));

  const fakeArk = await ark();
  const fakeAsk = await issue(fakeArk, "CN=SEV-Milan", caExt());
  const fakeVcek = await issue(fakeAsk, "CN=SEV-VCEK", copyExts());
  const fakeAsvk = await issue(fakeArk, "CN=SEV-VLEK-Milan", caExt());
  const fakeVlek = await issue(fakeAsvk, "CN=SEV-VLEK", copyExts(["1.3.6.1.4.1.3704.1.4"]));
  const fakeRoots: AmdRoot[] = [{ product: "Milan", ark: fakeArk.cert, ask: fakeAsk.cert }];
  const keyOf = (f: Fake): KeyObject => KeyObject.from(f.keys.privateKey as unknown as webcrypto.CryptoKey);
  const forged = resign(milanBytes, keyOf(fakeVcek));

  test("the forgery is consistent: it verifies when its ARK is trusted", () => {
    const chain = verifyAmdChain(fakeVcek.cert, { at: AT }, fakeRoots);
    assert.equal(checkSnpReport(parseSnpReport(forged), fakeVcek.cert, chain).snp!.product, "Milan");
  });

  test("but not against the built-in ARKs", () => {
    const report = parseSnpReport(forged);
    const vcek = fakeVcek.cert;
    assert.equal(
      codeOf(() => verifySnp(report, { at: AT, vcek })),
      "untrusted_root",
    );
    assert.equal(
      codeOf(() => verifySnp(report, { at: AT, vcek, chain: [fakeAsk.cert, fakeArk.cert] })),
      "untrusted_root",
    );
    assert.equal(
      codeOf(() => verifySnp(report, { at: AT, vcek, chain: [fakeAsk.cert] })),
      "untrusted_root",
    );
    assert.equal(
      codeOf(() => verifySnp(report, { at: AT, vcek, chain: [fakeAsk.cert, root("Milan").ark] })),
      "chain_invalid",
    );
    // The real VCEK with a fake ARK appended.
    const chain = [root("Milan").ask, fakeArk.cert];
    assert.equal(
      codeOf(() => verifySnp(parseSnpReport(milanBytes), { at: AT, vcek: milanVcek, chain })),
      "untrusted_root",
    );
  });

  test("a VCEK whose SPLs or hwID differ from the report is rejected", async () => {
    const cases: [string, Buffer, string][] = [
      ["1.3.6.1.4.1.3704.1.3.3", Buffer.from([2, 1, 9]), "vcek_tcb_mismatch"], // snpSPL 9, report says 8
      ["1.3.6.1.4.1.3704.1.3.8", Buffer.from([2, 2, 0, 0xd1]), "vcek_tcb_mismatch"], // ucodeSPL 209
      ["1.3.6.1.4.1.3704.1.4", Buffer.alloc(64, 0xee), "chip_id_mismatch"], // hwID of another chip
    ];
    for (const [oid, value, code] of cases) {
      const vcek = await issue(fakeAsk, "CN=SEV-VCEK", copyExts([], { [oid]: value }));
      const chain = verifyAmdChain(vcek.cert, { at: AT }, fakeRoots);
      assert.equal(
        codeOf(() => checkSnpReport(parseSnpReport(resign(milanBytes, keyOf(vcek))), vcek.cert, chain)),
        code,
        oid,
      );
    }
    const noTcb = await issue(fakeAsk, "CN=SEV-VCEK", copyExts(["1.3.6.1.4.1.3704.1.3.1"]));
    const chain = verifyAmdChain(noTcb.cert, { at: AT }, fakeRoots);
    assert.throws(
      () => checkSnpReport(parseSnpReport(resign(milanBytes, keyOf(noTcb))), noTcb.cert, chain),
      /no blSPL/,
    );
  });

  test("a VCEK-signed report with MASK_CHIP_KEY is rejected", () => {
    const b = Buffer.from(milanBytes);
    b[0x48] = 0x02;
    b.fill(0, 0x1a0, 0x1e0);
    const chain = verifyAmdChain(fakeVcek.cert, { at: AT }, fakeRoots);
    assert.equal(
      codeOf(() => checkSnpReport(parseSnpReport(resign(b, keyOf(fakeVcek))), fakeVcek.cert, chain)),
      "chip_id_mismatch",
    );
  });

  test("a CPUID product that disagrees with the chain is rejected", () => {
    const b = Buffer.from(milanBytes);
    b.writeUInt32LE(3, 0);
    b.set([0x19, 0x11, 0x01], 0x188); // Genoa
    const chain = verifyAmdChain(fakeVcek.cert, { at: AT }, fakeRoots);
    assert.equal(
      codeOf(() => checkSnpReport(parseSnpReport(resign(b, keyOf(fakeVcek))), fakeVcek.cert, chain)),
      "chain_invalid",
    );
    b.set([0x19, 0x01, 0x01], 0x188); // Milan
    assert.equal(
      checkSnpReport(parseSnpReport(resign(b, keyOf(fakeVcek))), fakeVcek.cert, chain).snp!.version,
      3,
    );
  });

  test("VLEK: accepted through its ASVK without hwID, even with a masked chip id", () => {
    const b = Buffer.from(milanBytes);
    b[0x48] = (1 << 2) | 0x02; // SIGNING_KEY = VLEK, MASK_CHIP_KEY
    b.fill(0, 0x1a0, 0x1e0);
    const report = parseSnpReport(resign(b, keyOf(fakeVlek)));
    const chain = verifyAmdChain(fakeVlek.cert, { at: AT, chain: [fakeAsvk.cert, fakeArk.cert] }, fakeRoots);
    assert.equal(chain.kind, "vlek");
    const c = checkSnpReport(report, fakeVlek.cert, chain);
    assert.equal(c.snp!.signingKey, "vlek");
    assert.equal(c.snp!.chipId, "0".repeat(128));
  });

  test("VLEK: the report's SIGNING_KEY must name the certificate's kind", () => {
    const vlekChain = verifyAmdChain(fakeVlek.cert, { at: AT, chain: [fakeAsvk.cert] }, fakeRoots);
    const vcekReport = parseSnpReport(resign(milanBytes, keyOf(fakeVlek)));
    assert.equal(
      codeOf(() => checkSnpReport(vcekReport, fakeVlek.cert, vlekChain)),
      "vcek_missing",
    );
    const b = Buffer.from(milanBytes);
    b[0x48] = 1 << 2;
    const vcekChain = verifyAmdChain(fakeVcek.cert, { at: AT }, fakeRoots);
    assert.equal(
      codeOf(() => checkSnpReport(parseSnpReport(resign(b, keyOf(fakeVcek))), fakeVcek.cert, vcekChain)),
      "vcek_missing",
    );
    b[0x48] = 7 << 2; // SIGNING_KEY = none
    assert.equal(
      codeOf(() => checkSnpReport(parseSnpReport(b), fakeVcek.cert, vcekChain)),
      "report_signature_invalid",
    );
  });

  test("VLEK: needs its ASVK, which must be an ASVK signed by a built-in ARK", async () => {
    assert.equal(
      codeOf(() => verifyAmdChain(fakeVlek.cert, { at: AT }, fakeRoots)),
      "chain_invalid",
    );
    // An ASK signs no VLEK and an ASVK no VCEK, even when the signatures are good.
    const vcekByAsvk = await issue(fakeAsvk, "CN=SEV-VCEK", copyExts());
    const vlekByAsk = await issue(fakeAsk, "CN=SEV-VLEK", copyExts());
    assert.throws(
      () => verifyAmdChain(vcekByAsvk.cert, { at: AT, chain: [fakeAsvk.cert] }, fakeRoots),
      /not the ASK/,
    );
    assert.throws(
      () => verifyAmdChain(vlekByAsk.cert, { at: AT, chain: [fakeAsk.cert] }, fakeRoots),
      /not the ASVK/,
    );
    // Against the built-in roots, the fake ASVK is refused whether or not its ARK comes along.
    assert.equal(
      codeOf(() => verifyAmdChain(fakeVlek.cert, { at: AT, chain: [fakeAsvk.cert] })),
      "untrusted_root",
    );
    assert.equal(
      codeOf(() => verifyAmdChain(fakeVlek.cert, { at: AT, chain: [fakeAsvk.cert, root("Milan").ark] })),
      "chain_invalid",
    );
  });
});
