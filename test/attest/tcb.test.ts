/** Intel's TCB level rules in isolation, including the TDX rule that dcap-qvl 0.3.9 does not apply. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { converge, isvLevel, matchTcbLevels } from "../../src/attest/intel/tcb.js";
import type { TcbInfo, TcbLevel } from "../../src/attest/intel/collateral.js";
import type { TcbStatus } from "../../src/attest/claims.js";

const comps = (...head: number[]) => [...head, ...new Array<number>(16 - head.length).fill(0)];
const level = (status: TcbStatus, sgx: number[], pcesvn: number, tdx?: number[]): TcbLevel => ({
  sgx,
  pcesvn,
  tdx,
  status,
  tcbDate: "",
  advisoryIds: [status],
});
const info = (levels: TcbLevel[]) => ({ tcbLevels: levels }) as unknown as TcbInfo;

test("SGX: the first level whose every component and PCESVN are at or below the platform's", () => {
  const i = info([
    level("UpToDate", comps(5, 5), 13),
    level("OutOfDate", comps(3, 3), 11),
    level("Revoked", comps(1), 1),
  ]);
  assert.equal(matchTcbLevels(i, comps(5, 5), 13).sgx?.status, "UpToDate");
  assert.equal(
    matchTcbLevels(i, comps(6, 4), 13).sgx?.status,
    "OutOfDate",
    "one lower component is enough to fall back",
  );
  assert.equal(matchTcbLevels(i, comps(5, 5), 12).sgx?.status, "OutOfDate", "PCESVN counts too");
  assert.equal(matchTcbLevels(i, comps(2, 9), 20).sgx?.status, "Revoked");
  assert.equal(matchTcbLevels(i, comps(0, 9), 20).sgx, undefined);
});

test("TDX: TEE_TCB_SVN bytes 0-1 are skipped when byte 1 (module version) is non-zero", () => {
  const i = info([
    level("UpToDate", comps(1), 1, comps(5, 0, 7)),
    level("OutOfDate", comps(1), 1, comps(3, 0, 5)),
  ]);
  // Module SVN 2 is below every level's byte 0; the module version 3 says the module is judged by its own identity.
  const withModule = Buffer.from(comps(2, 3, 7));
  assert.equal(matchTcbLevels(i, comps(1), 1, withModule).tdx?.status, "UpToDate");
  // Version 0: all 16 bytes count, so byte 0 = 2 matches no level.
  assert.equal(matchTcbLevels(i, comps(1), 1, Buffer.from(comps(2, 0, 7))).tdx, undefined);
  assert.equal(matchTcbLevels(i, comps(1), 1, Buffer.from(comps(3, 0, 6))).tdx?.status, "OutOfDate");
});

test("TDX: the SGX level is the first SGX match even when the TDX level is later", () => {
  const i = info([level("UpToDate", comps(2), 2, comps(9)), level("OutOfDate", comps(1), 1, comps(1))]);
  const m = matchTcbLevels(i, comps(2), 2, Buffer.from(comps(1)));
  assert.equal(m.sgx?.status, "UpToDate");
  assert.equal(m.tdx?.status, "OutOfDate");
});

test("QE / module level by ISVSVN", () => {
  const levels = [
    { isvsvn: 8, status: "UpToDate" as const, advisoryIds: [] },
    { isvsvn: 6, status: "OutOfDate" as const, advisoryIds: ["SA-1"] },
  ];
  assert.equal(isvLevel(levels, 9)?.status, "UpToDate");
  assert.equal(isvLevel(levels, 7)?.status, "OutOfDate");
  assert.equal(isvLevel(levels, 5), undefined);
});

test("status convergence as in Intel's library", () => {
  assert.equal(converge("UpToDate", "UpToDate"), "UpToDate");
  assert.equal(converge("UpToDate", "OutOfDate"), "OutOfDate");
  assert.equal(converge("SWHardeningNeeded", "OutOfDate"), "OutOfDate");
  assert.equal(converge("ConfigurationNeeded", "OutOfDate"), "OutOfDateConfigurationNeeded");
  assert.equal(converge("ConfigurationAndSWHardeningNeeded", "OutOfDate"), "OutOfDateConfigurationNeeded");
  assert.equal(converge("ConfigurationNeeded", "Revoked"), "Revoked");
  assert.equal(converge("OutOfDate", "UpToDate"), "OutOfDate");
  assert.equal(converge("UpToDate", "TcbLevelNotFound"), "TcbLevelNotFound");
});
