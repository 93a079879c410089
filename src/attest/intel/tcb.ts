/**
 * TCB status evaluation, following Intel's published verification rules (the numbered steps 4.1.2.4.x of
 * Intel's Quote Verification Library, whose structure this mirrors):
 *  - the platform level is the first TCB info level, highest first, whose 16 SGX components and PCESVN are all at
 *    or below the PCK certificate's. "Highest first" is Intel's order (its QVL keeps the levels in a set sorted by
 *    SGX components, then PCESVN, then TDX components, all descending), not the document's: Intel serves them so
 *    sorted, but the walk must not depend on it, or an out-of-order level could give a better status;
 *  - for TDX, the first level at or after that one whose TDX components are at or below TEE_TCB_SVN, where bytes
 *    0 and 1 (the TDX module's SVN and version) are skipped when byte 1 is non-zero: the module is then judged by
 *    its own identity (`TDX_<version>`) and its ISVSVN = TEE_TCB_SVN[0];
 *  - the QE's level from its identity by ISVSVN;
 *  - the statuses converge: an OutOfDate module or QE turns UpToDate/SWHardeningNeeded into OutOfDate and the
 *    Configuration* statuses into OutOfDateConfigurationNeeded; a Revoked one makes the result Revoked.
 */
import type { TcbStatus } from "../claims.js";
import type { EnclaveIdentity, ModuleIdentity, TcbInfo, TcbLevel } from "./collateral.js";

export interface TcbResult {
  status: TcbStatus;
  advisoryIds: string[];
  /** Human-readable trail of what decided the status. */
  detail: string;
}

function geq(have: ArrayLike<number>, need: readonly number[], from = 0): boolean {
  for (let i = from; i < 16; i++) if (have[i]! < need[i]!) return false;
  return true;
}

/** Lexicographic comparison of two component lists (missing lists compare as empty). */
function cmpList(a: readonly number[] | undefined, b: readonly number[] | undefined): number {
  const x = a ?? [];
  const y = b ?? [];
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
  return x.length - y.length;
}

const sortedLevels = new WeakMap<readonly TcbLevel[], TcbLevel[]>();

/** The TCB levels highest first, as Intel's QVL orders them (stable: equal keys keep their document order). */
export function levelsHighestFirst(levels: readonly TcbLevel[]): TcbLevel[] {
  let out = sortedLevels.get(levels);
  if (!out) {
    out = [...levels].sort((a, b) => cmpList(b.sgx, a.sgx) || b.pcesvn - a.pcesvn || cmpList(b.tdx, a.tdx));
    sortedLevels.set(levels, out);
  }
  return out;
}

/** Selects the platform's SGX level and, for TDX, its TDX level. */
export function matchTcbLevels(
  info: TcbInfo,
  sgxComponents: readonly number[],
  pcesvn: number,
  teeTcbSvn?: Buffer,
): { sgx?: TcbLevel; tdx?: TcbLevel } {
  let sgx: TcbLevel | undefined;
  for (const level of levelsHighestFirst(info.tcbLevels)) {
    if (!geq(sgxComponents, level.sgx) || pcesvn < level.pcesvn) continue;
    if (!teeTcbSvn) return { sgx: level };
    sgx ??= level;
    if (level.tdx && geq(teeTcbSvn, level.tdx, teeTcbSvn[1]! > 0 ? 2 : 0)) return { sgx, tdx: level };
  }
  return { sgx };
}

/**
 * The QE's (or TDX module's) level by ISVSVN: the highest level whose ISVSVN is at or below the report's (Intel's
 * QVL sorts these levels by ISVSVN, descending; equal ISVSVNs keep their document order).
 */
export function isvLevel(levels: EnclaveIdentity["tcbLevels"] | ModuleIdentity["tcbLevels"], isvsvn: number) {
  let best: (typeof levels)[number] | undefined;
  for (const l of levels) if (isvsvn >= l.isvsvn && (!best || l.isvsvn > best.isvsvn)) best = l;
  return best;
}

/** Intel's convergence of a platform status with a QE or TDX module status. */
export function converge(platform: TcbStatus, other: TcbStatus): TcbStatus {
  if (other === "OutOfDate") {
    if (platform === "UpToDate" || platform === "SWHardeningNeeded") return "OutOfDate";
    if (platform === "ConfigurationNeeded" || platform === "ConfigurationAndSWHardeningNeeded") {
      return "OutOfDateConfigurationNeeded";
    }
  }
  if (other === "Revoked") return "Revoked";
  if (other === "TcbLevelNotFound") return "TcbLevelNotFound";
  return platform;
}

export function unionAdvisories(...lists: (readonly string[] | undefined)[]): string[] {
  const s = new Set<string>();
  for (const l of lists) for (const a of l ?? []) s.add(a);
  return [...s].sort();
}

export type { TcbLevel };
