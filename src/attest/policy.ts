/**
 * Identity policy: which app a verified piece of evidence belongs to.
 *
 * An app has one or more identities; an identity names the TEE by one of
 *  - MRENCLAVE (SGX: this exact enclave build),
 *  - MRSIGNER + ISVPRODID + minimum ISVSVN (SGX: any build of this product from this signer, at or above an SVN),
 *  - MRTD, optionally with RTMR0-3 (TDX),
 *  - SNP MEASUREMENT, optionally with HOST_DATA (SEV-SNP), with a minimum TCB (`minTcb`), a maximum VMPL
 *    (`maxVmpl`, default 0) and the migration agent refused unless `allowMigrationAgent`,
 * plus conditions that apply to all: debug TEEs are refused unless `allowDebug`, and the TCB status must be in
 * `tcbStatuses` (default UpToDate and SWHardeningNeeded; Intel evidence checked without collateral has no status
 * and is refused unless the list contains "Unknown"). The first identity that matches decides; when none does,
 * the result lists, per identity, exactly why not.
 */
import {
  SNP_TCB_FIELDS,
  snpTcbShortfall,
  TCB_STATUSES,
  type Claims,
  type SnpMinTcb,
  type TcbStatus,
  type Verdict,
} from "./claims.js";

/** TCB statuses an identity may accept; "Unknown" stands for "verified without TCB collateral". */
export type AcceptedStatus = TcbStatus | "Unknown";

export interface IdentitySpec {
  mrenclave?: string;
  mrsigner?: string;
  isvprodid?: number;
  minIsvsvn?: number;
  mrtd?: string;
  rtmr0?: string;
  rtmr1?: string;
  rtmr2?: string;
  rtmr3?: string;
  measurement?: string;
  hostData?: string;
  /** SEV-SNP: REPORTED_TCB (what the VCEK certifies) must meet this; overrides the site-wide minimum. */
  minTcb?: SnpMinTcb;
  /** SEV-SNP: the highest VMPL the report may come from (default 0: only the most privileged level). */
  maxVmpl?: number;
  /** SEV-SNP: accept a guest whose policy allows a migration agent (default false). */
  allowMigrationAgent?: boolean;
  allowDebug?: boolean;
  tcbStatuses?: AcceptedStatus[];
}

export interface AppSpec {
  name: string;
  identities: IdentitySpec[];
}

export const DEFAULT_TCB_STATUSES: readonly AcceptedStatus[] = ["UpToDate", "SWHardeningNeeded"];

export type PolicyResult =
  { matched: true; app: string; identity: number; claims: Claims } | { matched: false; reasons: string[] };

/** Thrown for an identity that cannot be used (bad hex, no selector, mixed TEE kinds). `path` names the key. */
export class PolicyError extends Error {
  override readonly name = "PolicyError";
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
  }
}

const HEX_LEN: Record<string, number> = {
  mrenclave: 32,
  mrsigner: 32,
  mrtd: 48,
  rtmr0: 48,
  rtmr1: 48,
  rtmr2: 48,
  rtmr3: 48,
  measurement: 48,
  hostData: 32,
};

/** Checks and normalizes (lowercase hex) an app list; throws PolicyError naming the offending key. */
export function compileApps(apps: readonly AppSpec[], base = "apps"): AppSpec[] {
  const names = new Set<string>();
  return apps.map((app, i) => {
    const p = `${base}[${i}]`;
    if (!app.name || !/^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/.test(app.name)) {
      throw new PolicyError(`${p}.name`, "expected 1-32 letters, digits, '-' or '_'");
    }
    if (names.has(app.name)) throw new PolicyError(`${p}.name`, `duplicate app name ${app.name}`);
    names.add(app.name);
    if (!Array.isArray(app.identities) || app.identities.length === 0) {
      throw new PolicyError(`${p}.identities`, "expected at least one identity");
    }
    return {
      name: app.name,
      identities: app.identities.map((id, j) => compileIdentity(id, `${p}.identities[${j}]`)),
    };
  });
}

function compileIdentity(id: IdentitySpec, p: string): IdentitySpec {
  const out: IdentitySpec = { ...id };
  for (const [key, len] of Object.entries(HEX_LEN)) {
    const v = (id as Record<string, unknown>)[key];
    if (v === undefined) continue;
    if (typeof v !== "string" || !new RegExp(`^(0x)?[0-9a-fA-F]{${len * 2}}$`).test(v)) {
      throw new PolicyError(`${p}.${key}`, `expected ${len} bytes of hex (${len * 2} digits)`);
    }
    (out as Record<string, unknown>)[key] = v.replace(/^0x/, "").toLowerCase();
  }
  const kinds = [
    id.mrenclave !== undefined || id.mrsigner !== undefined ? "sgx" : "",
    id.mrtd !== undefined ? "tdx" : "",
    id.measurement !== undefined ? "snp" : "",
  ].filter(Boolean);
  if (kinds.length !== 1) {
    throw new PolicyError(p, "expected exactly one of mrenclave, mrsigner (+isvprodid), mrtd or measurement");
  }
  if (id.mrsigner !== undefined && id.mrenclave === undefined && id.isvprodid === undefined) {
    throw new PolicyError(
      `${p}.isvprodid`,
      "an MRSIGNER identity needs isvprodid (a signer may sign many products)",
    );
  }
  for (const k of ["isvprodid", "minIsvsvn"] as const) {
    const v = id[k];
    if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 0xffff))
      throw new PolicyError(`${p}.${k}`, "expected an integer 0-65535");
  }
  if (kinds[0] !== "tdx" && [id.rtmr0, id.rtmr1, id.rtmr2, id.rtmr3].some((r) => r !== undefined)) {
    throw new PolicyError(p, "RTMRs only apply to an mrtd identity");
  }
  if (id.allowDebug !== undefined && typeof id.allowDebug !== "boolean")
    throw new PolicyError(`${p}.allowDebug`, "expected true or false");
  for (const k of ["hostData", "minTcb", "maxVmpl", "allowMigrationAgent"] as const) {
    if (kinds[0] !== "snp" && id[k] !== undefined)
      throw new PolicyError(`${p}.${k}`, `${k} only applies to a measurement (SEV-SNP) identity`);
  }
  if (id.maxVmpl !== undefined && (!Number.isInteger(id.maxVmpl) || id.maxVmpl < 0 || id.maxVmpl > 3))
    throw new PolicyError(`${p}.maxVmpl`, "expected an integer 0-3");
  if (id.allowMigrationAgent !== undefined && typeof id.allowMigrationAgent !== "boolean")
    throw new PolicyError(`${p}.allowMigrationAgent`, "expected true or false");
  if (id.minTcb !== undefined) checkMinTcb(id.minTcb, `${p}.minTcb`);
  if (id.tcbStatuses !== undefined) {
    if (!Array.isArray(id.tcbStatuses) || id.tcbStatuses.length === 0)
      throw new PolicyError(`${p}.tcbStatuses`, "expected a non-empty list");
    for (const s of id.tcbStatuses) {
      if (s !== "Unknown" && !TCB_STATUSES.includes(s as TcbStatus)) {
        throw new PolicyError(
          `${p}.tcbStatuses`,
          `unknown status ${JSON.stringify(s)} (expected one of ${[...TCB_STATUSES, "Unknown"].join(", ")})`,
        );
      }
    }
  }
  return out;
}

/** Checks a minimum SEV-SNP TCB (`{bootloader, tee, snp, microcode, fmc}`, each 0-255, at least one). */
export function checkMinTcb(min: unknown, p: string): asserts min is SnpMinTcb {
  if (typeof min !== "object" || min === null || Array.isArray(min))
    throw new PolicyError(p, `expected a map of ${SNP_TCB_FIELDS.join(", ")}`);
  const keys = Object.keys(min);
  if (keys.length === 0) throw new PolicyError(p, `expected at least one of ${SNP_TCB_FIELDS.join(", ")}`);
  for (const k of keys) {
    if (!(SNP_TCB_FIELDS as readonly string[]).includes(k))
      throw new PolicyError(`${p}.${k}`, `unknown TCB component (expected ${SNP_TCB_FIELDS.join(", ")})`);
    const v = (min as Record<string, unknown>)[k];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 255)
      throw new PolicyError(`${p}.${k}`, "expected an integer 0-255 (a security patch level)");
  }
}

/**
 * Weak identities in a compiled app list, one line each naming the key (`apps[0].identities[1]: …`): accepted, but
 * an administrator should know what they admit. Printed by `seng policy check` and logged when the gateway starts.
 */
export function identityWarnings(
  apps: readonly AppSpec[],
  opts: { base?: string; siteSnpMinTcb?: boolean } = {},
): string[] {
  const out: string[] = [];
  apps.forEach((app, i) =>
    app.identities.forEach((id, j) => {
      const p = `${opts.base ?? "apps"}[${i}].identities[${j}]`;
      if (
        id.measurement !== undefined &&
        id.minTcb === undefined &&
        !opts.siteSnpMinTcb &&
        !(id.tcbStatuses ?? DEFAULT_TCB_STATUSES).includes("Unknown")
      ) {
        out.push(
          `${p}: an SEV-SNP identity without minTcb, and no trust.snpMinTcb: its TCB status is Unknown, so every report is refused (set a minimum TCB, docs/ATTESTATION.md)`,
        );
      }
      // MRTD measures only the TD's firmware (TDVF): the kernel, initrd, command line and app are measured into
      // RTMR1-3. Without them, any TD booted with this firmware matches, whatever it runs.
      if (
        id.mrtd !== undefined &&
        id.rtmr1 === undefined &&
        id.rtmr2 === undefined &&
        id.rtmr3 === undefined
      ) {
        out.push(
          `${p}: an mrtd identity without rtmr1-rtmr3 admits any TD booted with this firmware, whatever kernel and app it runs: pin rtmr1 and rtmr2 (kernel, initrd, command line) and rtmr3 if the app extends it (docs/ATTESTATION.md)`,
        );
      }
    }),
  );
  return out;
}

/** Why `claims` (with `tcbStatus`) do not satisfy `id`, or undefined when they do. */
export function mismatch(id: IdentitySpec, claims: Claims, tcbStatus: TcbStatus | null): string | undefined {
  const { sgx, tdx, snp } = claims;
  if (id.mrenclave !== undefined || id.mrsigner !== undefined) {
    if (!sgx) return `expects SGX evidence, got ${claims.tee}`;
    if (id.mrenclave !== undefined && sgx.mrenclave !== id.mrenclave)
      return `MRENCLAVE ${sgx.mrenclave} is not ${id.mrenclave}`;
    if (id.mrsigner !== undefined && sgx.mrsigner !== id.mrsigner)
      return `MRSIGNER ${sgx.mrsigner} is not ${id.mrsigner}`;
    if (id.isvprodid !== undefined && sgx.isvprodid !== id.isvprodid)
      return `ISVPRODID ${sgx.isvprodid} is not ${id.isvprodid}`;
    if (id.minIsvsvn !== undefined && sgx.isvsvn < id.minIsvsvn)
      return `ISVSVN ${sgx.isvsvn} is below the minimum ${id.minIsvsvn}`;
  } else if (id.mrtd !== undefined) {
    if (!tdx) return `expects TDX evidence, got ${claims.tee}`;
    if (tdx.mrtd !== id.mrtd) return `MRTD ${tdx.mrtd} is not ${id.mrtd}`;
    for (const k of ["rtmr0", "rtmr1", "rtmr2", "rtmr3"] as const) {
      if (id[k] !== undefined && tdx[k] !== id[k]) return `${k.toUpperCase()} ${tdx[k]} is not ${id[k]}`;
    }
  } else if (id.measurement !== undefined) {
    if (!snp) return `expects SEV-SNP evidence, got ${claims.tee}`;
    if (snp.measurement !== id.measurement) return `MEASUREMENT ${snp.measurement} is not ${id.measurement}`;
    if (id.hostData !== undefined && snp.hostData !== id.hostData)
      return `HOST_DATA ${snp.hostData} is not ${id.hostData}`;
    // VMPL is the privilege level of the code that asked for the report. Under an SVSM or a paravisor, the less
    // privileged levels run code the measurement does not vouch for: only the levels the identity allows speak.
    const maxVmpl = id.maxVmpl ?? 0;
    if (snp.vmpl > maxVmpl) return `VMPL ${snp.vmpl} is above maxVmpl ${maxVmpl}`;
    // A migration agent can read and move the guest's memory (policy bit MIGRATE_MA).
    if (snp.policyMigrateMa && id.allowMigrationAgent !== true)
      return "guest policy allows a migration agent (which can read its memory): refused unless allowMigrationAgent";
  } else {
    return "identity names no measurement";
  }
  if (claims.debug && id.allowDebug !== true)
    return "debug TEE (its memory is readable by the host): refused unless allowDebug";
  const accepted = id.tcbStatuses ?? DEFAULT_TCB_STATUSES;
  let s: AcceptedStatus = tcbStatus ?? "Unknown";
  let why = "";
  // SEV-SNP: the identity's own minimum replaces the site-wide one the verdict's status was computed against.
  if (snp && id.minTcb) {
    const short = snpTcbShortfall(snp.reportedTcb, id.minTcb);
    s = short.length ? "OutOfDate" : "UpToDate";
    if (short.length) why = ` (REPORTED_TCB below the identity's minTcb: ${short.join(", ")})`;
  } else if (snp && s === "OutOfDate") why = " (REPORTED_TCB below trust.snpMinTcb)";
  if (!accepted.includes(s)) {
    if (s !== "Unknown") return `TCB status ${s} is not accepted${why} (accepted: ${accepted.join(", ")})`;
    return snp
      ? "TCB status unknown (no SEV-SNP minimum TCB: set minTcb on the identity or trust.snpMinTcb) and the identity does not accept Unknown"
      : "TCB status unknown (verified without collateral, or without a QE identity) and the identity does not accept Unknown";
  }
  return undefined;
}

/** Matches a verdict against the apps. Unverified evidence never matches. */
export function matchApp(verdict: Verdict, apps: readonly AppSpec[]): PolicyResult {
  if (!verdict.verified || !verdict.claims) {
    return { matched: false, reasons: [`evidence not verified: ${verdict.reason ?? "unknown reason"}`] };
  }
  const reasons: string[] = [];
  // A quote whose quoting enclave was not checked against a QE identity proves no more than one verified without
  // collateral: its TCB status is Unknown to the policy, whatever the platform's TCB level says.
  const status = verdict.qeIdentityVerified === false ? null : verdict.tcbStatus;
  for (const app of apps) {
    for (let i = 0; i < app.identities.length; i++) {
      const why = mismatch(app.identities[i]!, verdict.claims, status);
      if (why === undefined) return { matched: true, app: app.name, identity: i, claims: verdict.claims };
      reasons.push(`${app.name}[${i}]: ${why}`);
    }
  }
  if (reasons.length === 0) reasons.push("no apps are configured");
  return { matched: false, reasons };
}
