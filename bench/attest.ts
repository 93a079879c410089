/**
 * Attestation verification on the gateway's handshake path: median time per full verification with warm
 * collateral, ours against @phala/dcap-qvl (the closest existing JS verifier) on the same quote and collateral in
 * the same run, and an AMD SEV-SNP report with its VCEK. `attest_sgx_verify_ms` is a platform verified again (its
 * PCK chain checks and attestation key memoized, as on a gateway where runtimes reconnect);
 * `attest_sgx_verify_cold_ms` a platform seen for the first time (only the collateral warm).
 */
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import assert from "node:assert/strict";
import { Cert, loadCollateral, verifyEvidence } from "../src/attest/index.js";
import { clearCertCaches } from "../src/attest/x509.js";
import { clearKeyCache } from "../src/attest/intel/verify.js";
import { round, timePerCall } from "./util.js";

const require = createRequire(import.meta.url);

export async function benchAttest(vectors: string, quick: boolean): Promise<Record<string, number>> {
  const quote = readFileSync(resolve(vectors, "intel/dcap-qvl/sgx_quote"));
  const bundlePath = resolve(vectors, "intel/dcap-qvl/sgx_quote_collateral.json");
  const at = new Date("2025-07-19T10:01:17Z");
  const collateral = loadCollateral([bundlePath]);
  const ours = () => {
    const v = verifyEvidence(quote, { at, collateral });
    if (!v.verified) throw new Error(`bench: our verifier rejected the sample quote: ${v.reason}`);
  };
  const dcap = require("@phala/dcap-qvl") as {
    verify(q: Uint8Array, c: unknown, now: number): { status: string };
  };
  const bundle = JSON.parse(readFileSync(bundlePath, "utf8")) as unknown;
  const theirs = () => dcap.verify(quote, bundle, Math.floor(at.getTime() / 1000));
  // Same verdict first: a benchmark of a verifier that disagrees would be meaningless.
  assert.equal(theirs().status, verifyEvidence(quote, { at, collateral }).tcbStatus);

  const report = readFileSync(resolve(vectors, "amd/virtee-sev/report_milan.hex"), "utf8");
  const vcek = Cert.from(readFileSync(resolve(vectors, "amd/virtee-sev/vcek_milan.der")));
  const snpAt = new Date("2025-01-01T00:00:00Z");
  const snp = () => {
    const v = verifyEvidence(report, { at: snpAt, vcek });
    if (!v.verified) throw new Error(`bench: SNP report rejected: ${v.reason}`);
  };

  const n = quick ? { warmup: 50, samples: 15, batch: 20 } : { warmup: 200, samples: 40, batch: 50 };
  const nq = quick ? { warmup: 3, samples: 7, batch: 2 } : { warmup: 5, samples: 15, batch: 4 };
  // A platform seen for the first time: no memoized PCK chain checks or attestation key (collateral still warm).
  const firstSeen = () => {
    clearCertCaches();
    clearKeyCache();
    ours();
  };
  return {
    attest_sgx_verify_ms: round(timePerCall(ours, n), 4),
    attest_sgx_verify_cold_ms: round(timePerCall(firstSeen, n), 4),
    dcapqvl_sgx_verify_ms: round(timePerCall(theirs, nq), 3),
    attest_snp_verify_ms: round(timePerCall(snp, n), 4),
  };
}
