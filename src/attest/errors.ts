/**
 * Errors of the attestation layer.
 *
 * Every rejection carries a stable machine-readable `code` (used in logs, metrics labels and the CLI's JSON) and
 * a one-line human `message`. Codes are documented in docs/ATTESTATION.md.
 */
import type { TcbStatus } from "./claims.js";

/** Why evidence was not accepted. Stable strings: metrics and tests depend on them. */
export type RejectCode =
  | "malformed"
  | "unsupported"
  | "untrusted_root"
  | "chain_invalid"
  | "cert_expired"
  | "cert_revoked"
  | "crl_invalid"
  | "crl_expired"
  | "qe_report_signature_invalid"
  | "attestation_key_binding_invalid"
  | "quote_signature_invalid"
  | "report_signature_invalid"
  | "collateral_invalid"
  | "collateral_signature_invalid"
  | "collateral_expired"
  | "collateral_mismatch"
  | "qe_identity_mismatch"
  | "tdx_module_mismatch"
  | "tcb_level_not_found"
  | "tcb_revoked"
  | "vcek_missing"
  | "vcek_tcb_mismatch"
  | "chip_id_mismatch"
  | "policy_invalid"
  | "key_binding_invalid"
  | "ratls_cert_expired"
  | "ratls_cert_not_yet_valid"
  | "no_evidence";

/** A verification failure: the evidence is rejected for the given reason. Fail closed on any of these. */
export class AttestError extends Error {
  override readonly name = "AttestError";
  constructor(
    readonly code: RejectCode,
    message: string,
    /** What was established before the rejection (a TCB status that is itself the reason, say). */
    readonly detail: { tcbStatus?: TcbStatus; advisoryIds?: string[] } = {},
  ) {
    super(message);
  }
}

/** Throws a `malformed` AttestError unless `cond` holds. */
export function need(cond: unknown, message: string): asserts cond {
  if (!cond) throw new AttestError("malformed", message);
}
