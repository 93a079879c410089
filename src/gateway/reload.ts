/**
 * Hot reload (SIGHUP, `seng gateway reload`, later the admin API): what may change without a restart, and whether a
 * live tunnel's identity is still allowed under the new configuration.
 *
 * May change: identities (revocation), trust (new collateral: TCB statuses are re-evaluated), apps added (new
 * subnets get their route and pool), apps removed (their tunnels are revoked), categories, marks, firewall and
 * policy, tunnel timings, limits, dns. Must not change (restart instead): listen, certificate, key, database, tun,
 * pool, and an existing app's subnet — live leases and routes depend on them.
 */
import { matchApp } from "../attest/policy.js";
import { verifyRaTlsCert, type VerifyOptions } from "../attest/verify.js";
import { Cert } from "../attest/x509.js";
import type { GatewayConfig } from "../policy/config.js";

/** The outcome of a reload, for logs, the CLI and the admin API. */
export interface ReloadResult {
  ok: boolean;
  /** The configuration error or nft's refusal when not ok (the old configuration and policy stay). */
  error?: string;
  /** Tunnels closed with `revoked`. */
  revoked: { address: string; app: string; measurement: string; reason: string }[];
  /** Apps added (routes and pools created). */
  added: string[];
  ms: number;
}

/** Why `next` cannot replace `prev` without a restart, or undefined. */
export function immutableChange(prev: GatewayConfig, next: GatewayConfig): string | undefined {
  const f = next.file;
  for (const k of ["listen", "certificate", "key", "database", "pool"] as const) {
    if (prev[k] !== next[k]) return `${f}: ${k}: cannot change on reload (restart the gateway)`;
  }
  // Read once at start (listeners, rate limiter, our table's name and whether we manage nftables at all): a reload
  // that silently ignored them would let an admin believe a rotated token or a new limit is in force.
  for (const k of ["tun", "admin", "metrics", "limits", "cluster"] as const) {
    if (JSON.stringify(prev[k]) !== JSON.stringify(next[k]))
      return `${f}: ${k}: cannot change on reload (restart the gateway)`;
  }
  for (const k of ["enabled", "table"] as const) {
    if (prev.firewall[k] !== next.firewall[k])
      return `${f}: firewall.${k}: cannot change on reload (restart the gateway)`;
  }
  for (const [i, a] of next.apps.entries()) {
    const old = prev.apps.find((o) => o.name === a.name);
    if (old && old.subnet !== a.subnet)
      return `${f}: apps[${i}].subnet: cannot change on reload (was ${old.subnet}; restart the gateway)`;
  }
  return undefined;
}

/**
 * Re-verifies a tunnel's RA-TLS certificate with the new trust settings and matches it against the new apps.
 * Returns undefined when it still maps to `app`, else why not (fails closed: any error revokes).
 */
export function revocationReason(
  certDer: Buffer | undefined,
  app: string,
  apps: GatewayConfig["apps"],
  verify: VerifyOptions,
): string | undefined {
  if (!certDer) return "no certificate kept for this tunnel";
  try {
    const verdict = verifyRaTlsCert(Cert.parseOnce(certDer), verify);
    if (!verdict.verified) return `attestation no longer verifies (${verdict.code}): ${verdict.reason}`;
    const m = matchApp(verdict, apps);
    if (!m.matched) return `no app matches any more: ${m.reasons.join("; ")}`;
    if (m.app !== app) return `now matches app ${m.app}, not ${app}`;
    return undefined;
  } catch (e) {
    return `re-verification failed: ${(e as Error).message}`;
  }
}
