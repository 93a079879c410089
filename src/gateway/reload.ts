/**
 * Hot reload (SIGHUP, `seng gateway reload`, later the admin API): what may change without a restart, and whether a
 * live tunnel's identity is still allowed under the new configuration.
 *
 * May change: identities (revocation), trust (new collateral: TCB statuses are re-evaluated), apps added (new
 * subnets get their route and pool), apps removed (their tunnels are revoked), categories, marks, firewall and
 * policy, tunnel timings, limits, dns. Must not change (restart instead): listen, certificate, key, database, tun,
 * pool, pool6, and an existing app's subnet and subnet6 — live leases and routes depend on them.
 */
import { matchApp } from "../attest/policy.js";
import { verifyRaTlsCert, type VerifyOptions } from "../attest/verify.js";
import { Cert } from "../attest/x509.js";
import { performance } from "node:perf_hooks";
import { ConfigError, loadConfig, type GatewayConfig } from "../policy/config.js";
import { verifyOptions, type Gateway } from "./server.js";
import { zero, type Tunnel } from "./tunnel.js";

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
  for (const k of ["listen", "certificate", "key", "database", "pool", "pool6", "workers"] as const) {
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
      return `${f}: apps[${i}].subnet: cannot change on reload (was ${old.subnet ?? "none"}; restart the gateway)`;
    if (old && old.subnet6 !== a.subnet6)
      return `${f}: apps[${i}].subnet6: cannot change on reload (was ${old.subnet6 ?? "none"}; restart the gateway)`;
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

/**
 * The reload itself (Gateway.reload shares one run between concurrent callers): validate, apply the new policy
 * atomically with the revoked addresses already out of the sets, then close the revoked tunnels and cut their flows;
 * in a cluster, revoke the same identities on the other gateways. On any error the old configuration stays.
 */
export async function applyReload(gw: Gateway, file: string): Promise<ReloadResult> {
  const t0 = performance.now();
  const startedAt = gw.now();
  const fail = (error: string): ReloadResult => {
    gw.log.log("error", "reload-failed", { file, error });
    return { ok: false, error, revoked: [], added: [], ms: Math.round(performance.now() - t0) };
  };
  let next: GatewayConfig;
  let verify: VerifyOptions;
  try {
    next = loadConfig(file);
    verify = verifyOptions(next);
  } catch (e) {
    return fail(e instanceof ConfigError ? e.message : `${file}: ${(e as Error).message}`);
  }
  const immutable = immutableChange(gw.config, next);
  if (immutable) return fail(immutable);
  for (const warning of next.warnings) gw.log.log("warn", "config-warning", { warning });
  const revoke: { t: Tunnel; reason: string }[] = [];
  for (const t of gw.leased) {
    const reason = revocationReason(await gw.leases.certOf(t.certLease), t.app, next.apps, verify);
    if (reason) revoke.push({ t, reason });
  }
  const added = next.apps.filter((a) => !gw.config.apps.some((o) => o.name === a.name));
  const newRoutes = [
    ...new Set(added.flatMap((a) => [a.shared ? undefined : a.subnet, a.shared6 ? undefined : a.subnet6])),
  ].filter((s): s is string => s !== undefined);
  try {
    // New subnets first, so the new policy never names an app the kernel cannot route.
    await gw.system.addRoutes(gw.tunName, newRoutes);
    await gw.firewall.apply(
      next.model,
      revoke.flatMap((r) => r.t.addresses),
    );
  } catch (e) {
    await gw.system.removeRoutes(gw.tunName, newRoutes); // nothing of the refused configuration stays
    return fail(`policy not applied: ${(e as Error).message}`);
  }
  await gw.leases.addApps(added);
  for (const a of added) gw.appCounters.set(a.name, zero());
  gw.config = next;
  gw.verifyOpts = verify;
  gw.pool?.reload();
  // Tunnels leased while the new policy was being applied were matched against the old configuration.
  for (const t of gw.leased) {
    if (t.leasedAt < startedAt || revoke.some((r) => r.t === t)) continue;
    const reason = revocationReason(await gw.leases.certOf(t.certLease), t.app, next.apps, verify);
    if (reason) revoke.push({ t, reason });
  }
  const revoked: ReloadResult["revoked"] = [];
  for (const { t, reason } of revoke) {
    // One entry per address: IPv4 and IPv6 flows are cut alike.
    for (const address of t.addresses)
      revoked.push({ address, app: t.app, measurement: t.measurement, reason });
    gw.close(t, "revoked", reason);
  }
  // Flows of revoked addresses end now, not when they time out.
  await Promise.all(
    revoked.map((r) =>
      gw.firewall
        .cutFlows(r.address)
        .catch((e: Error) =>
          gw.log.log("error", "conntrack-failed", { address: r.address, error: e.message }),
        ),
    ),
  );
  // In a cluster: the same identities on the other gateways are cut too (key revocations in etcd).
  const elsewhere = gw.cluster ? await gw.cluster.revokeOthers(gw, next.apps, verify) : 0;
  if (elsewhere) gw.log.log("info", "cluster-reload-revoked", { tunnels: elsewhere });
  const res: ReloadResult = {
    ok: true,
    revoked,
    added: added.map((a) => a.name),
    ms: Math.round(performance.now() - t0),
  };
  gw.log.log("info", "reloaded", { file, ...res });
  return res;
}
