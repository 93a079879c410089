/**
 * SENG attestation: verify Intel SGX/TDX DCAP quotes and AMD SEV-SNP reports offline, bind them to RA-TLS keys, and
 * match them against app identities. See docs/ATTESTATION.md.
 */
export * from "./claims.js";
export { AttestError, type RejectCode } from "./errors.js";
export { decodeEvidence } from "./input.js";
export { verifyEvidence, verifyRaTlsCert, type VerifyOptions } from "./verify.js";
export { loadCollateral, collateralFromBundle, type Collateral } from "./intel/collateral.js";
export { intelRoot } from "./intel/roots.js";
export {
  compileApps,
  matchApp,
  mismatch,
  PolicyError,
  DEFAULT_TCB_STATUSES,
  type AppSpec,
  type IdentitySpec,
  type PolicyResult,
  type AcceptedStatus,
} from "./policy.js";
export { Cert } from "./x509.js";
