/** Identity policy: which app verified claims belong to, and exactly why not. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Cert,
  compileApps,
  matchApp,
  PolicyError,
  verifyEvidence,
  loadCollateral,
  type Verdict,
  type Claims,
} from "../../src/attest/index.js";
import { vector, vectorPath } from "../helpers/vectors.js";

const MR_A = "aa".repeat(32);
const MR_B = "bb".repeat(32);
const SIGNER = "5e".repeat(32);

function sgxVerdict(
  o: Partial<{
    mrenclave: string;
    mrsigner: string;
    isvprodid: number;
    isvsvn: number;
    debug: boolean;
    tcb: Verdict["tcbStatus"];
  }> = {},
): Verdict {
  const claims: Claims = {
    tee: "sgx",
    simulated: false,
    debug: o.debug ?? false,
    reportData: "00".repeat(64),
    sgx: {
      mrenclave: o.mrenclave ?? MR_A,
      mrsigner: o.mrsigner ?? SIGNER,
      isvprodid: o.isvprodid ?? 7,
      isvsvn: o.isvsvn ?? 3,
      attributes: "",
      miscselect: 0,
      cpusvn: "",
      configid: "",
      configsvn: 0,
      isvextprodid: "",
      isvfamilyid: "",
    },
    platform: {},
    format: { kind: "dcap-quote", version: 3, bodyType: "sgx" },
  };
  return {
    verified: true,
    claims,
    tcbStatus: o.tcb === undefined ? "UpToDate" : o.tcb,
    advisoryIds: [],
    warnings: [],
  };
}

const apps = compileApps([
  { name: "browser", identities: [{ mrenclave: MR_A.toUpperCase() }] },
  { name: "mail", identities: [{ mrsigner: SIGNER, isvprodid: 7, minIsvsvn: 3 }] },
]);

test("MRENCLAVE identity matches exactly (config hex is case-insensitive)", () => {
  const r = matchApp(sgxVerdict(), apps);
  assert.deepEqual(r.matched && [r.app, r.identity], ["browser", 0]);
});

test("MRSIGNER + ISVPRODID + minimum ISVSVN", () => {
  const r = matchApp(sgxVerdict({ mrenclave: MR_B }), apps);
  assert.equal(r.matched && r.app, "mail");
  const low = matchApp(sgxVerdict({ mrenclave: MR_B, isvsvn: 2 }), apps);
  assert.equal(low.matched, false);
  assert.ok(
    !low.matched && low.reasons.some((x) => x.includes("ISVSVN 2 is below the minimum 3")),
    JSON.stringify(low),
  );
  const otherProduct = matchApp(sgxVerdict({ mrenclave: MR_B, isvprodid: 8 }), apps);
  assert.ok(!otherProduct.matched && otherProduct.reasons.some((x) => x.includes("ISVPRODID 8 is not 7")));
});

test("an unknown measurement gets a reason for every identity", () => {
  const r = matchApp(sgxVerdict({ mrenclave: MR_B, mrsigner: "11".repeat(32) }), apps);
  assert.equal(r.matched, false);
  assert.equal(!r.matched && r.reasons.length, 2);
  assert.ok(!r.matched && r.reasons[0]!.startsWith("browser[0]: MRENCLAVE"));
});

test("debug TEEs are refused unless the identity allows them", () => {
  const r = matchApp(sgxVerdict({ debug: true }), apps);
  assert.ok(!r.matched && r.reasons[0]!.includes("debug TEE"));
  const allowing = compileApps([{ name: "dev", identities: [{ mrenclave: MR_A, allowDebug: true }] }]);
  assert.equal(matchApp(sgxVerdict({ debug: true }), allowing).matched, true);
});

test("TCB status: default accepts UpToDate and SWHardeningNeeded only", () => {
  assert.equal(matchApp(sgxVerdict({ tcb: "SWHardeningNeeded" }), apps).matched, true);
  for (const s of [
    "OutOfDate",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDateConfigurationNeeded",
  ] as const) {
    const r = matchApp(sgxVerdict({ tcb: s }), apps);
    assert.ok(!r.matched && r.reasons[0]!.includes(`TCB status ${s} is not accepted`), s);
  }
  const none = matchApp(sgxVerdict({ tcb: null }), apps);
  assert.ok(!none.matched && none.reasons[0]!.includes("TCB status unknown"));
  const lenient = compileApps([
    { name: "x", identities: [{ mrenclave: MR_A, tcbStatuses: ["OutOfDate", "Unknown"] }] },
  ]);
  assert.equal(matchApp(sgxVerdict({ tcb: "OutOfDate" }), lenient).matched, true);
  assert.equal(matchApp(sgxVerdict({ tcb: null }), lenient).matched, true);
  assert.equal(matchApp(sgxVerdict({ tcb: "UpToDate" }), lenient).matched, false);
});

test("unverified evidence never matches", () => {
  const v = { ...sgxVerdict(), verified: false, reason: "quote signature does not verify" };
  const r = matchApp(v, apps);
  assert.ok(!r.matched && r.reasons[0]!.includes("not verified"));
});

test("real SGX vector: matched by MRENCLAVE only if its TCB status is accepted", () => {
  const v = verifyEvidence(vector("intel/dcap-qvl/sgx_quote"), {
    at: new Date("2025-07-19T10:01:17Z"),
    collateral: loadCollateral([vectorPath("intel/dcap-qvl/sgx_quote_collateral.json")]),
  });
  const mr = v.claims!.sgx!.mrenclave;
  const strict = compileApps([{ name: "hello", identities: [{ mrenclave: mr }] }]);
  const r = matchApp(v, strict);
  assert.ok(!r.matched && r.reasons[0]!.includes("ConfigurationAndSWHardeningNeeded"));
  const ok = compileApps([
    { name: "hello", identities: [{ mrenclave: mr, tcbStatuses: ["ConfigurationAndSWHardeningNeeded"] }] },
  ]);
  assert.equal(matchApp(v, ok).matched, true);
});

test("real TDX vector: MRTD with RTMRs", () => {
  const v = verifyEvidence(vector("intel/dcap-qvl/tdx_quote"), {
    at: new Date("2025-07-01T00:00:00Z"),
    collateral: loadCollateral([vectorPath("intel/dcap-qvl/tdx_quote_collateral.json")]),
  });
  const t = v.claims!.tdx!;
  assert.equal(
    matchApp(v, compileApps([{ name: "vm", identities: [{ mrtd: t.mrtd, rtmr0: t.rtmr0, rtmr3: t.rtmr3 }] }]))
      .matched,
    true,
  );
  const r = matchApp(
    v,
    compileApps([{ name: "vm", identities: [{ mrtd: t.mrtd, rtmr1: "00".repeat(48) }] }]),
  );
  assert.ok(!r.matched && r.reasons[0]!.includes("RTMR1"));
  const sgxOnly = matchApp(v, apps);
  assert.ok(!sgxOnly.matched && sgxOnly.reasons[0]!.includes("expects SGX evidence, got tdx"));
});

test("real SNP vectors: MEASUREMENT (+HOST_DATA); the debug-policy report is refused", () => {
  const milan = verifyEvidence(vector("amd/virtee-sev/report_milan.hex"), {
    at: new Date("2025-01-01T00:00:00Z"),
    vcek: certOf("amd/virtee-sev/vcek_milan.der"),
  });
  assert.equal(milan.verified, true, milan.reason);
  const m = milan.claims!.snp!.measurement;
  assert.equal(
    matchApp(
      milan,
      compileApps([
        {
          name: "cvm",
          identities: [{ measurement: m, hostData: milan.claims!.snp!.hostData, minTcb: MILAN_TCB }],
        },
      ]),
    ).matched,
    true,
  );
  const hd = matchApp(
    milan,
    compileApps([{ name: "cvm", identities: [{ measurement: m, hostData: "ff".repeat(32) }] }]),
  );
  assert.ok(!hd.matched && hd.reasons[0]!.includes("HOST_DATA"));

  const dbg = verifyEvidence(vector("amd/go-sev-guest/attestation.bin"), {
    at: new Date("2025-01-01T00:00:00Z"),
    vcek: certOf("amd/go-sev-guest/vcek.der"),
  });
  assert.equal(dbg.verified, true, dbg.reason);
  assert.equal(dbg.claims!.debug, true);
  const id = { measurement: dbg.claims!.snp!.measurement, minTcb: { bootloader: 0 } };
  const refused = matchApp(dbg, compileApps([{ name: "cvm", identities: [id] }]));
  assert.ok(!refused.matched && refused.reasons[0]!.includes("debug"));
  assert.equal(
    matchApp(dbg, compileApps([{ name: "cvm", identities: [{ ...id, allowDebug: true }] }])).matched,
    true,
  );
});

/** report_milan.hex's REPORTED_TCB (MANIFEST.md), as a minimum it meets. */
const MILAN_TCB = { bootloader: 3, tee: 0, snp: 8, microcode: 115 };

function certOf(rel: string): Cert {
  return Cert.from(vector(rel));
}

test("bad identities are refused with the key that is wrong", () => {
  const cases: [unknown, RegExp][] = [
    [
      [{ name: "a", identities: [{ mrenclave: "abc" }] }],
      /apps\[0\]\.identities\[0\]\.mrenclave: expected 32 bytes of hex/,
    ],
    [[{ name: "a", identities: [{ mrsigner: SIGNER }] }], /apps\[0\]\.identities\[0\]\.isvprodid/],
    [[{ name: "a", identities: [{ mrenclave: MR_A, mrtd: "00".repeat(48) }] }], /exactly one of/],
    [[{ name: "a", identities: [] }], /apps\[0\]\.identities: expected at least one/],
    [[{ name: "bad name!", identities: [{ mrenclave: MR_A }] }], /apps\[0\]\.name/],
    [
      [
        { name: "a", identities: [{ mrenclave: MR_A }] },
        { name: "a", identities: [{ mrenclave: MR_B }] },
      ],
      /duplicate app name/,
    ],
    [[{ name: "a", identities: [{ mrenclave: MR_A, tcbStatuses: ["Fine"] }] }], /unknown status "Fine"/],
    [[{ name: "a", identities: [{ mrenclave: MR_A, minIsvsvn: -1 }] }], /minIsvsvn: expected an integer/],
    [
      [{ name: "a", identities: [{ measurement: "00".repeat(48), rtmr0: "00".repeat(48) }] }],
      /RTMRs only apply/,
    ],
  ];
  for (const [spec, re] of cases) {
    assert.throws(
      () => compileApps(spec as never),
      (e: unknown) => e instanceof PolicyError && re.test(e.message),
      String(re),
    );
  }
});
