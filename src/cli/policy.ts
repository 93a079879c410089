/**
 * `seng policy check|compile|apply <config>` and `seng policy explain --config <file> <app|address> <destination>
 * <proto/port>`: the firewall policy of a gateway configuration (docs/POLICY.md).
 */
import { existsSync } from "node:fs";
import { networkInterfaces } from "node:os";
import Database from "better-sqlite3";
import { Command } from "commander";
import { explain, parseService, type Resolver } from "../firewall/explain.js";
import { inNets } from "../firewall/model.js";
import { applyPolicy, renderScript } from "../firewall/nft.js";
import { ConfigError, loadConfig, type GatewayConfig } from "../policy/config.js";
import { action, UsageError } from "./errors.js";

function load(file: string): GatewayConfig {
  try {
    return loadConfig(file);
  } catch (e) {
    if (e instanceof ConfigError) throw new UsageError(e.message, 1);
    throw e;
  }
}

/**
 * Address → app for explain: the live lease in the gateway's database when there is one, else the app whose own
 * subnet contains it (an address of the shared pool names no app without a lease).
 */
export function configResolver(config: GatewayConfig, dbPath = config.database): Resolver {
  let live: Map<string, string> | undefined;
  if (existsSync(dbPath)) {
    try {
      const db = new Database(dbPath, { readonly: true, fileMustExist: true });
      const rows = db.prepare("SELECT address, app FROM leases WHERE released IS NULL").all() as {
        address: string;
        app: string;
      }[];
      db.close();
      live = new Map(rows.map((r) => [r.address, r.app]));
    } catch {
      live = undefined;
    }
  }
  return (address) =>
    live?.get(address) ?? config.apps.find((a) => !a.shared && inNets(address, [a.subnet]))?.name;
}

/**
 * The addresses of the host explain runs on: like the lease database, explain assumes it runs on the gateway, where
 * a packet to one of these goes up the input path (rules with `to: gateway`).
 */
export function hostAddresses(): Set<string> {
  return new Set(
    Object.values(networkInterfaces())
      .flat()
      .flatMap((i) => (i ? [i.address] : [])),
  );
}

export function policyCommand(): Command {
  const p = new Command("policy").description("the gateway's firewall policy (nftables)");
  p.addCommand(
    new Command("check")
      .description("validate a configuration's apps, firewall and policy; exit 1 with the error when invalid")
      .argument("<config>", "gateway configuration (YAML)")
      .action(
        action((file: string) => {
          const c = load(file);
          const m = c.model;
          for (const w of c.warnings) process.stderr.write(`warning: ${w}\n`);
          process.stdout.write(
            `${file}: ok: ${c.apps.length} apps, ${Object.keys(m.categories).length} categories, ${m.rules.length} rules, ` +
              `default ${m.filtering ? (m.defaultAction === "accept" ? "allow" : "deny") : "none (no policy section: not filtered)"}` +
              `${m.unshielded ? `, unshielded traffic dropped on ${m.unshielded.interfaces.join(", ")}` : ""}\n`,
          );
        }),
      ),
  );
  p.addCommand(
    new Command("compile")
      .description("print the nftables script the policy compiles to (one transaction, our table only)")
      .argument("<config>", "gateway configuration (YAML)")
      .action(
        action((file: string) => {
          process.stdout.write(renderScript(load(file).model));
        }),
      ),
  );
  p.addCommand(
    new Command("apply")
      .description("apply the policy atomically to this network namespace (live set members are kept)")
      .argument("<config>", "gateway configuration (YAML)")
      .action(
        action(async (file: string) => {
          const c = load(file);
          if (!c.model.enabled)
            throw new UsageError(`${file}: firewall.enabled is false: nothing to apply`, 1);
          try {
            await applyPolicy(c.model);
          } catch (e) {
            throw new UsageError((e as Error).message, 1);
          }
          process.stdout.write(`applied table inet ${c.model.table}\n`);
        }),
      ),
  );
  p.addCommand(
    new Command("explain")
      .description("say which rule decides the first packet of a connection, and why")
      .requiredOption("--config <file>", "gateway configuration (YAML)")
      .option("--db <file>", "lease database for address → app (default: the config's)")
      .option("--in <interface>", "interface a non-tunnel source comes in on (for firewall.unshielded)")
      .option("--json", "print the explanation as JSON")
      .argument("<source>", "an app name or an address")
      .argument("<destination>", "an address, an app name, or gateway (the gateway host itself)")
      .argument("<service>", "tcp/<port>, udp/<port>, icmp or any")
      .action(
        action(
          (
            source: string,
            destination: string,
            service: string,
            f: { config: string; db?: string; in?: string; json?: boolean },
          ) => {
            const c = load(f.config);
            let svc;
            try {
              svc = parseService(service);
            } catch (e) {
              throw new UsageError(`<service>: ${(e as Error).message}`);
            }
            const local = hostAddresses();
            let r;
            try {
              r = explain(
                c.model,
                { from: source, to: destination, ...svc, inInterface: f.in },
                configResolver(c, f.db),
                (a) => local.has(a),
              );
            } catch (e) {
              throw new UsageError((e as Error).message);
            }
            if (f.json) process.stdout.write(JSON.stringify(r) + "\n");
            else
              process.stdout.write(
                `${r.verdict === "accept" ? "ALLOW" : "DENY"} by ${r.decidedBy}\n${r.trace.map((l) => `  ${l}`).join("\n")}\n`,
              );
            return r.verdict === "accept" ? 0 : 1;
          },
        ),
      ),
  );
  return p;
}
