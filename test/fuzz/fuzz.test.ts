/**
 * The fuzzing campaign's short run (fuzz/README.md): every parser of untrusted input gets its saved regression
 * inputs and a few thousand fresh structure-aware inputs, and must keep its error contract (a value, or the
 * module's typed error: AttestError with its code, ProtocolError; never a TypeError or RangeError) and its
 * round-trip properties. The native offload harnesses are built with libFuzzer, ASan and UBSan and run for a few
 * seconds each after replaying their regressions. SENG_FUZZ_RUNS and SENG_FUZZ_SEED change the run.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { NATIVE_TARGETS, TARGETS } from "../../fuzz/targets/index.js";
import { fuzz, regressionFiles, replayRegressions, type Finding } from "../../fuzz/lib/engine.js";
import { buildNative, haveClang, runNative } from "../../fuzz/lib/native.js";
import { rawJsonMemberRoundTrip } from "../../fuzz/targets/collateral.js";

const RUNS = Number(process.env.SENG_FUZZ_RUNS ?? 2000);
const SEED = Number(process.env.SENG_FUZZ_SEED ?? 1);

const show = (fs: Finding[]): string =>
  fs.map((f) => `${f.file ?? `input ${f.input.toString("base64")}`}\n${f.message}`).join("\n\n");

for (const t of TARGETS) {
  test(
    `fuzz ${t.name}: regressions and ${RUNS} inputs (seed ${SEED}) keep the error contract`,
    { timeout: 300_000 },
    async () => {
      await t.prepare?.();
      const replayed = replayRegressions(t);
      assert.deepEqual(replayed, [], `saved regressions fail again:\n${show(replayed)}`);
      const { findings, inputs } = fuzz(t, { runs: RUNS, seed: SEED });
      assert.equal(
        findings.length,
        0,
        `${t.name} broke its contract (rerun: npm run fuzz -- --target ${t.name} --seed ${SEED}):\n${show(findings)}`,
      );
      assert.equal(inputs, RUNS);
    },
  );
}

test("rawJsonMember returns exactly the member's JSON text (objects and lists)", () => {
  assert.equal(rawJsonMemberRoundTrip(RUNS, SEED), undefined);
});

test(
  "native offload harnesses (libFuzzer + ASan + UBSan): regressions and a few seconds each",
  { timeout: 600_000 },
  (t) => {
    if (!haveClang()) {
      t.skip("clang++ with libFuzzer is not installed (scripts/quickstart.sh installs it)");
      return;
    }
    buildNative();
    for (const name of NATIVE_TARGETS) {
      assert.ok(regressionFiles(name).length >= 0);
      const r = runNative(name, { long: false, runs: 0, seconds: 3 });
      assert.ok(
        r.ok,
        `${name}_fuzz failed:\n${r.output
          .split("\n")
          .filter((l) => /violated|ERROR|SUMMARY|artifact|failed/.test(l))
          .join("\n")}`,
      );
      assert.ok(r.inputs > 0, `${name}_fuzz ran no inputs`);
    }
  },
);
