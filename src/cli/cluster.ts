/**
 * `seng cluster`: the cluster's shared state in etcd, from any host with the gateway configuration (its `cluster:`
 * section names etcd): `revoke` and `unrevoke` (every gateway cuts the matching tunnels within about a second and
 * refuses them until lifted), `revocations`, and `status` (gateways, leases per gateway, etcd members' health).
 */
import { readFileSync } from "node:fs";
import { Command } from "commander";
import type { GatewayConfig } from "../policy/config.js";
import { ClusterAdmin } from "../store/etcd-admin.js";
import type { Revocation } from "../store/interface.js";
import { action, UsageError } from "./errors.js";
import { configOption, gatewayConfigFile, helpText, loadGatewayConfig } from "./common.js";

const KINDS = ["app", "key", "measurement"] as const;

/** A client of the configuration's etcd; a configuration without `cluster:` is a usage error. */
export function clusterAdmin(c: GatewayConfig): ClusterAdmin {
  const k = c.cluster;
  if (!k)
    throw new UsageError(`${c.file}: cluster: not set (this gateway keeps its state in SQLite, not in etcd)`);
  const read = (key: string, p: string | undefined) => {
    if (!p) return undefined;
    try {
      return readFileSync(p);
    } catch (e) {
      throw new UsageError(`${c.file}: cluster.etcd.${key}: ${p}: ${(e as NodeJS.ErrnoException).code}`);
    }
  };
  return new ClusterAdmin({
    hosts: k.etcd.endpoints,
    prefix: k.etcd.prefix,
    tls: { ca: read("ca", k.etcd.ca), cert: read("cert", k.etcd.cert), key: read("key", k.etcd.key) },
  });
}

/** Runs `fn` with a cluster client and closes it; etcd errors become one line naming the endpoints (exit 2). */
async function withCluster<T>(f: { config?: string }, fn: (a: ClusterAdmin) => Promise<T>): Promise<T> {
  const c = loadGatewayConfig(gatewayConfigFile(f.config));
  const a = clusterAdmin(c);
  try {
    return await fn(a);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(
      `etcd at ${c.cluster!.etcd.endpoints.join(",")}: ${(e as Error).message.split("\n")[0]}`,
    );
  } finally {
    a.close();
  }
}

function kindOf(s: string): Revocation["kind"] {
  if (!(KINDS as readonly string[]).includes(s))
    throw new UsageError(`<kind>: expected one of ${KINDS.join(", ")} (got ${s})`);
  return s as Revocation["kind"];
}

export function clusterCommand(): Command {
  const c = new Command("cluster").description("the gateways' shared state in etcd (revocations, status)");
  c.addCommand(
    helpText(
      new Command("revoke")
        .description(
          "cut the tunnels of an app, a runtime key or a measurement on every gateway, and refuse them",
        )
        .argument("<kind>", `one of ${KINDS.join(", ")}`)
        .argument("<value>", "the app's name, the key's SHA-256 fingerprint (hex), or the measurement (hex)")
        .option("--reason <text>", "recorded with the revocation", "revoked by an administrator")
        .addOption(configOption())
        .action(
          action(async (kind: string, value: string, f: { reason: string; config?: string }) => {
            const k = kindOf(kind);
            if (!/^[A-Za-z0-9._-]{1,128}$/.test(value))
              throw new UsageError(`<value>: expected a name or hex value (got ${value})`);
            await withCluster(f, (a) => a.revoke({ kind: k, value, reason: f.reason, t: Date.now() }));
            process.stdout.write(`revoked ${k} ${value} on every gateway\n`);
          }),
        ),
      ["seng cluster revoke app browser --reason 'CVE-2026-1234'", "seng cluster revoke key 3f2a…"],
    ),
  );
  c.addCommand(
    helpText(
      new Command("unrevoke")
        .description("lift a revocation (new tunnels are admitted again)")
        .argument("<kind>", `one of ${KINDS.join(", ")}`)
        .argument("<value>", "as given to revoke")
        .addOption(configOption())
        .action(
          action(async (kind: string, value: string, f: { config?: string }) => {
            const k = kindOf(kind);
            const found = await withCluster(f, (a) => a.unrevoke(k, value));
            process.stdout.write(found ? `lifted ${k} ${value}\n` : `no revocation of ${k} ${value}\n`);
            return found ? 0 : 1;
          }),
        ),
      ["seng cluster unrevoke app browser"],
    ),
  );
  c.addCommand(
    helpText(
      new Command("status")
        .description("gateways, live leases per gateway, revocations and each etcd member's health")
        .addOption(configOption())
        .option("--json", "print JSON")
        .action(
          action(async (f: { config?: string; json?: boolean }) => {
            const r = await withCluster(f, async (a) => {
              const health = await a.health();
              const view = await a.view().catch((e: Error) => ({ error: e.message.split("\n")[0] ?? "" }));
              return { health, view };
            });
            if (f.json) process.stdout.write(JSON.stringify(r) + "\n");
            else process.stdout.write(formatCluster(r));
            const ok = r.health.some((h) => h.ok) && !("error" in r.view);
            return ok ? 0 : 1;
          }),
        ),
      ["seng cluster status", "seng cluster status --json"],
    ),
  );
  return c;
}

/** The cluster part of `seng status` and `seng cluster status`. */
export function formatCluster(r: {
  health: Awaited<ReturnType<ClusterAdmin["health"]>>;
  view: Awaited<ReturnType<ClusterAdmin["view"]>> | { error: string };
}): string {
  const lines = ["etcd:"];
  for (const h of r.health)
    lines.push(`  ${h.endpoint}  ${h.ok ? (h.leader ? "healthy, leader" : "healthy") : `DOWN: ${h.error}`}`);
  if ("error" in r.view) lines.push(`cluster: unreadable: ${r.view.error}`);
  else {
    const v = r.view;
    lines.push(`gateways (revision ${v.rev}):`);
    const ids = [...new Set([...v.gateways, ...Object.keys(v.leases)])].sort();
    for (const id of ids)
      lines.push(
        `  ${id}  ${v.leases[id] ?? 0} leases${v.gateways.includes(id) ? "" : "  (gone: its leases lapse at its TTL)"}`,
      );
    lines.push(`revocations: ${v.revocations.length ? "" : "none"}`);
    for (const x of v.revocations)
      lines.push(`  ${x.kind} ${x.value}  ${new Date(x.t).toISOString()}  ${x.reason}`);
  }
  return lines.join("\n") + "\n";
}
