/**
 * `seng policy check|compile|apply [--config <file>]` and `seng policy explain [--config <file>] <app|address>
 * <destination> <proto/port>`: the firewall policy of a gateway configuration (docs/POLICY.md). The configuration
 * comes from --config, SENG_CONFIG or /etc/seng/gateway.yaml; a positional <config> is a deprecated alias.
 */
import { existsSync } from "node:fs";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import Database from "better-sqlite3";
import { Command } from "commander";
import { explain, parseService, type Resolver } from "../firewall/explain.js";
import { canonicalAddress, inNets } from "../firewall/model.js";
import { formatIp6, parseIp6 } from "../packet/addr6.js";
import { applyPolicy, renderScript } from "../firewall/nft.js";
import type { GatewayConfig } from "../policy/config.js";
import { action, UsageError } from "./errors.js";
import { configOption, gatewayConfigFile, helpText, loadGatewayConfig } from "./common.js";

const load = (flag: string | undefined, positional: string | undefined, files = false): GatewayConfig =>
  loadGatewayConfig(gatewayConfigFile(flag, positional), { files });

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
      live = new Map(rows.map((r) => [canonicalAddress(r.address), r.app]));
    } catch {
      live = undefined;
    }
  }
  return (address) =>
    live?.get(canonicalAddress(address)) ??
    (isIP(address) === 6
      ? config.apps.find((a) => a.subnet6 && !a.shared6 && inNets(address, [a.subnet6]))?.name
      : config.apps.find((a) => a.subnet && !a.shared && inNets(address, [a.subnet]))?.name);
}

/**
 * The addresses of the host explain runs on: like the lease database, explain assumes it runs on the gateway, where
 * a packet to one of these goes to the gateway chain (rules with `to: gateway`). With forwarding on (a gateway),
 * Linux also takes the subnet-router anycast address (host bits zero) of each IPv6 prefix on its interfaces as its
 * own: those count too, as nft's `fib daddr type anycast` does.
 */
export function hostAddresses(): Set<string> {
  const out = new Set<string>();
  for (const i of Object.values(networkInterfaces()).flat()) {
    if (!i) continue;
    out.add(canonicalAddress(i.address));
    const len = Number(i.cidr?.split("/")[1]);
    const b = i.family === "IPv6" && len < 127 ? parseIp6(i.address) : undefined;
    if (!b) continue;
    for (let bit = len; bit < 128; bit++) b[bit >> 3]! &= ~(0x80 >> (bit & 7));
    out.add(canonicalAddress(formatIp6(b)));
  }
  return out;
}

export function policyCommand(): Command {
  const p = new Command("policy").description("the gateway's firewall policy (nftables)");
  p.addCommand(
    helpText(
      new Command("check")
        .description(
          "validate a configuration: apps, firewall, policy, and the files and folders the gateway needs at start",
        )
        .addOption(configOption())
        .argument("[config]", "deprecated: use --config")
        .option("--json", "print the summary as JSON")
        .action(
          action((positional: string | undefined, f: { config?: string; json?: boolean }) => {
            const c = load(f.config, positional, true);
            const m = c.model;
            for (const w of c.warnings) process.stderr.write(`seng: warning: ${w}\n`);
            const summary = {
              ok: true,
              file: c.file,
              apps: c.apps.length,
              categories: Object.keys(m.categories).length,
              rules: m.rules.length,
              default: m.filtering ? (m.defaultAction === "accept" ? "allow" : "deny") : null,
              unshieldedDropped: m.unshielded ? m.unshielded.interfaces : [],
            };
            process.stdout.write(
              f.json
                ? JSON.stringify(summary) + "\n"
                : `${c.file}: ok: ${summary.apps} apps, ${summary.categories} categories, ${summary.rules} rules, ` +
                    `default ${summary.default ?? "none (no policy section: not filtered)"}` +
                    `${m.unshielded ? `, unshielded traffic dropped on ${m.unshielded.interfaces.join(", ")}` : ""}\n`,
            );
          }),
        ),
      ["seng policy check --config /etc/seng/gateway.yaml", "SENG_CONFIG=gw.yaml seng policy check --json"],
    ),
  );
  p.addCommand(
    helpText(
      new Command("compile")
        .description("print the nftables script the policy compiles to (one transaction, our table only)")
        .addOption(configOption())
        .argument("[config]", "deprecated: use --config")
        .action(
          action((positional: string | undefined, f: { config?: string }) => {
            process.stdout.write(renderScript(load(f.config, positional).model));
          }),
        ),
      ["seng policy compile --config /etc/seng/gateway.yaml | less"],
    ),
  );
  p.addCommand(
    helpText(
      new Command("apply")
        .description("apply the policy atomically to this network namespace (live set members are kept)")
        .addOption(configOption())
        .argument("[config]", "deprecated: use --config")
        .action(
          action(async (positional: string | undefined, f: { config?: string }) => {
            const c = load(f.config, positional);
            if (!c.model.enabled)
              throw new UsageError(`${c.file}: firewall.enabled is false: nothing to apply`);
            try {
              await applyPolicy(c.model);
            } catch (e) {
              throw new UsageError(`policy apply: ${(e as Error).message}`);
            }
            process.stdout.write(`applied table inet ${c.model.table}\n`);
          }),
        ),
      ["seng policy apply --config /etc/seng/gateway.yaml"],
    ),
  );
  p.addCommand(
    new Command("explain")
      .description("say which rule decides the first packet of a connection, and why")
      .addOption(configOption())
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
            f: { config?: string; db?: string; in?: string; json?: boolean },
          ) => {
            const c = load(f.config, undefined);
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
                (a) => local.has(canonicalAddress(a)),
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
  helpText(
    p.commands.at(-1)!,
    [
      "seng policy explain --config /etc/seng/gateway.yaml browser 198.18.2.10 tcp/443",
      "seng policy explain 100.64.1.7 198.18.2.10 udp/53 --json",
    ],
    "Exit codes: 0 ALLOW, 1 DENY, 2 usage, configuration or I/O error.",
  );
  return p;
}
