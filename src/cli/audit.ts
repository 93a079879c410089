/**
 * `seng audit who <address> [--at <time>]` and `seng audit export [--since <time>]`: the gateway's attribution
 * audit log (src/gateway/audit.ts), read from its SQLite database (read-only; the gateway may be running).
 */
import { createWriteStream, openSync } from "node:fs";
import { Command } from "commander";
import { isIP } from "node:net";
import { AuditLog } from "../gateway/audit.js";
import { action, UsageError } from "./errors.js";
import { configOption, gatewayConfigFile, helpText, loadGatewayConfig } from "./common.js";
import { clusterAdmin } from "./cluster.js";
import type { GatewayConfig } from "../policy/config.js";

async function clusterWho(c: GatewayConfig, address: string, at: number) {
  const a = clusterAdmin(c);
  try {
    return await a.who(address, at);
  } catch (e) {
    throw new UsageError(
      `etcd at ${c.cluster!.etcd.endpoints.join(",")}: ${(e as Error).message.split("\n")[0]}`,
    );
  } finally {
    a.close();
  }
}

/** --db, else the database of the gateway configuration (--config, SENG_CONFIG, /etc/seng/gateway.yaml). */
function dbPath(f: { config?: string; db?: string }): string {
  if (f.db) return f.db;
  return loadGatewayConfig(gatewayConfigFile(f.config)).database;
}

function parseTime(s: string, what: string): number {
  const t = /^\d+$/.test(s) ? Number(s) : Date.parse(s);
  if (!Number.isFinite(t))
    throw new UsageError(`${what}: expected an ISO 8601 time or ms since the epoch (got ${s})`);
  return t;
}

function open(f: { config?: string; db?: string }): { audit: AuditLog; close: () => void } {
  const p = dbPath(f);
  try {
    return AuditLog.openReadOnly(p);
  } catch (e) {
    throw new UsageError(`${p}: ${(e as Error).message.replace(`${p}: `, "")}`);
  }
}

const iso = (t: number | null) => (t === null ? "-" : new Date(t).toISOString());

export function auditCommand(): Command {
  const a = new Command("audit").description(
    "the gateway's attribution audit log: which app held an address",
  );
  a.addCommand(
    helpText(
      new Command("who")
        .description("which app held an address at a time (default: now)")
        .argument("<address>", "an address leased by the gateway")
        .option("--at <time>", "ISO 8601 time or ms since the epoch")
        .addOption(configOption())
        .option("--db <file>", "the gateway's SQLite database (instead of the configuration's)")
        .option("--json", "print JSON")
        .action(
          action(
            async (address: string, f: { at?: string; config?: string; db?: string; json?: boolean }) => {
              if (!isIP(address)) throw new UsageError(`<address>: expected an IP address (got ${address})`);
              const at = f.at ? parseTime(f.at, "--at") : Date.now();
              let r;
              const cfg = f.db ? undefined : loadGatewayConfig(gatewayConfigFile(f.config));
              if (cfg?.cluster)
                r = await clusterWho(cfg, address, at); // any gateway's lease, from etcd
              else {
                const { audit, close } = open(f);
                r = audit.who(address, at);
                close();
              }
              if (f.json) process.stdout.write(JSON.stringify(r) + "\n");
              else if (r.holder) {
                const h = r.holder;
                process.stdout.write(
                  `${address} at ${iso(at)}: app ${h.app}\n  measurement ${h.measurement}\n  key ${h.keyFp}\n` +
                    `  outer ${h.outer}\n  lease ${h.leaseId} granted ${iso(h.granted)}, released ${iso(h.released)}${h.releaseReason ? ` (${h.releaseReason})` : ""}\n`,
                );
              } else
                process.stdout.write(
                  `${address} at ${iso(at)}: no app${r.previous ? ` (last: ${r.previous.app}, released ${iso(r.previous.released)})` : ""}\n`,
                );
              return r.holder ? 0 : 1;
            },
          ),
        ),
      [
        "seng audit who 100.64.1.7",
        "seng audit who 100.64.1.7 --at 2026-11-25T10:00Z --config /etc/seng/gateway.yaml --json",
      ],
      "Exit codes: 0 an app held the address, 1 no app held it, 2 usage, configuration or I/O error.",
    ),
  );
  a.addCommand(
    helpText(
      new Command("export")
        .description("write the audit log as JSON lines (for a SIEM)")
        .option("--since <time>", "ISO 8601 time or ms since the epoch", "0")
        .option("--out <file>", "write here instead of stdout")
        .addOption(configOption())
        .option("--db <file>", "the gateway's SQLite database (instead of the configuration's)")
        .action(
          action(async (f: { since: string; out?: string; config?: string; db?: string }) => {
            const since = parseTime(f.since, "--since");
            const { audit, close } = open(f);
            // The output file is opened here so that its errors are one line (a stream would throw them later).
            let fd: number | undefined;
            if (f.out) {
              try {
                fd = openSync(f.out, "w", 0o600);
              } catch (e) {
                close();
                const code = (e as NodeJS.ErrnoException).code;
                throw new UsageError(
                  `--out ${f.out}: cannot write: ${code === "ENOENT" ? "no such folder" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "is a folder" : (e as Error).message}`,
                );
              }
            }
            const out = fd !== undefined ? createWriteStream("", { fd }) : process.stdout;
            try {
              for (const r of audit.since(since)) {
                const line = JSON.stringify({ time: iso(r.t), ...r }) + "\n";
                if (!out.write(line)) await new Promise<void>((res) => out.once("drain", () => res()));
              }
            } finally {
              close();
            }
            if (f.out)
              await new Promise<void>((res) => (out as ReturnType<typeof createWriteStream>).end(res));
          }),
        ),
      [
        "seng audit export --since 2026-11-01 --out audit.jsonl",
        "seng audit export --db /var/lib/seng/seng.db | jq .",
      ],
    ),
  );
  return a;
}
