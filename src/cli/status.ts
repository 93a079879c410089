/**
 * `seng status`: the gateway's apps, tunnels, traffic and last errors from the admin API, as tables or `--json`.
 */
import { Command } from "commander";
import { adminJson, AdminClientError, readClientToken, type AdminTarget } from "../admin/client.js";
import type { StatusView } from "../admin/backend.js";
import { action, UsageError } from "./errors.js";
import { readFileSync } from "node:fs";
import { configOption, gatewayConfigFile, helpText, loadGatewayConfig } from "./common.js";

interface StatusFlags {
  socket?: string;
  config?: string;
  url?: string;
  tokenFile?: string;
  ca?: string;
  json?: boolean;
}

function target(f: StatusFlags): AdminTarget {
  if (f.url) {
    let u: URL;
    try {
      u = new URL(f.url);
    } catch {
      throw new UsageError(`status: --url ${f.url}: expected a URL such as http://10.0.0.1:9443`);
    }
    if (u.protocol !== "http:" && u.protocol !== "https:")
      throw new UsageError(`status: --url ${f.url}: expected an http:// or https:// URL`);
    if (!f.tokenFile)
      throw new UsageError("status: --url needs --token-file (the admin API over TCP needs the token)");
    let ca: Buffer | undefined;
    if (f.ca) {
      try {
        ca = readFileSync(f.ca);
      } catch (e) {
        throw new UsageError(`status: --ca ${f.ca}: cannot read (${(e as NodeJS.ErrnoException).code})`);
      }
    }
    return { url: f.url, token: readClientToken(f.tokenFile), ca };
  }
  if (f.socket) return { socket: f.socket };
  try {
    return { socket: loadGatewayConfig(gatewayConfigFile(f.config)).admin.socket };
  } catch (e) {
    if (e instanceof UsageError)
      throw new UsageError(`status: ${e.message} (give --socket, --config or --url to reach the gateway)`);
    throw e;
  }
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

export function formatAge(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86_400)}d`;
}

/** Columns padded to their widest cell; columns named with a leading `>` are right-aligned. */
export function table(head: string[], rows: string[][]): string {
  const right = head.map((h) => h.startsWith(">"));
  const names = head.map((h) => h.replace(/^>/, ""));
  const widths = names.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(names), ...rows.map(line)].join("\n");
}

/** Strips control characters from values that come from clients (measurements, reasons) before they reach a terminal. */
const clean = (v: unknown): string => String(v ?? "").replace(/[\p{Cc}]/gu, "?");

export function renderStatus(s: StatusView, now = Date.now()): string {
  const out: string[] = [];
  const g = s.gateway;
  out.push(
    `SENG gateway  listen ${g.listen} (UDP ${g.port})  TUN ${g.tun}  up ${formatAge(g.uptimeSeconds * 1000)}  ` +
      `tunnels ${s.tunnels.length}  handshakes in progress ${s.halfOpen}`,
  );
  out.push("", "APPS");
  out.push(
    table(
      ["app", "subnet", ">tunnels", ">packets in", ">bytes in", ">packets out", ">bytes out"],
      s.apps.map((a) => [
        a.name,
        a.subnet,
        String(a.tunnels),
        String(a.rxPackets),
        formatBytes(a.rxBytes),
        String(a.txPackets),
        formatBytes(a.txBytes),
      ]),
    ),
  );
  out.push("", "TUNNELS");
  out.push(
    s.tunnels.length
      ? table(
          ["id", "app", "address", "outer", ">age", ">bytes in", ">bytes out", "measurement"],
          s.tunnels.map((t) => [
            String(t.id),
            t.app,
            t.address,
            t.peer,
            formatAge(now - t.leasedAt),
            formatBytes(t.counters.rxBytes),
            formatBytes(t.counters.txBytes),
            clean(t.measurement).slice(0, 16) + (t.measurement.length > 16 ? "…" : ""),
          ]),
        )
      : "(none)",
  );
  const hs = Object.entries(s.handshakes)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  const drops = Object.entries(s.drops)
    .filter(([, v]) => v > 0)
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  out.push("", `HANDSHAKES  ${hs || "none"}`, `DROPS       ${drops || "none"}`);
  if (s.firewall) {
    const c = s.firewall.counters;
    const rules = Object.entries(c)
      .filter(([k]) => k.startsWith("policy.") || k.startsWith("firewall."))
      .sort(([a], [b]) => a.localeCompare(b, undefined, { numeric: true }))
      .map(([k, v]) => `${k} ${v}`);
    out.push(
      `FIREWALL    packets: ${[...rules, `default ${c.seng_policy_default ?? 0}`, `unshielded dropped ${c.seng_unshielded_drops ?? 0}`].join(", ")}`,
      `            set updates ${s.firewall.updates}, nft errors ${s.firewall.errors}, resyncs ${s.firewall.resyncs}, lease-to-set median ${s.firewall.addLatencyMedianMs} ms`,
    );
  }
  if (s.cluster) {
    const k = s.cluster;
    out.push(
      "",
      `CLUSTER     gateway ${k.gatewayId}${k.fenced ? "  FENCED (no new tunnels, none forwarded)" : ""}  view age ${k.viewAgeSeconds.toFixed(1)} s  ` +
        `other gateways' leases ${k.remoteLeases}  revocations ${k.revocations}  refused: fenced ${k.refused.fenced}, stale ${k.refused.stale}, revoked ${k.refused.revoked}`,
    );
    if (k.error) out.push(`            cluster unreadable: ${clean(k.error)}`);
    if (k.gateways.length)
      out.push(
        table(
          ["gateway", ">leases", "state"],
          k.gateways.map((g) => [g.id, String(g.leases), g.alive ? "up" : "gone (leases lapse at its TTL)"]),
        ),
      );
    out.push(
      table(
        ["etcd member", "state"],
        k.etcd.map((e) => [
          e.endpoint,
          e.ok ? (e.leader ? "healthy, leader" : "healthy") : `DOWN: ${clean(e.error)}`,
        ]),
      ),
    );
  }
  out.push("", "LAST ERRORS");
  out.push(
    s.recent.length
      ? table(
          ["time", "event", "app", "peer/source", "reason"],
          s.recent.slice(0, 10).map((e) => {
            const f = e.fields;
            const reason = clean(f.reason ?? f.error ?? f.note ?? "");
            const sup = f.suppressed ? ` (+${clean(f.suppressed)} suppressed)` : "";
            return [
              e.t.replace("T", " ").replace(/\.\d+Z$/, "Z"),
              e.event,
              clean(f.app),
              clean(f.peer ?? f.source),
              (reason.length > 80 ? reason.slice(0, 79) + "…" : reason) + sup,
            ];
          }),
        )
      : "(none)",
  );
  return out.join("\n") + "\n";
}

export function statusCommand(): Command {
  const c = new Command("status")
    .description("show the gateway's apps, tunnels, traffic and last errors (from the admin API)")
    .option("--socket <path>", "the admin API's Unix socket")
    .addOption(configOption())
    .option("--url <url>", "the admin API over TCP, e.g. http://10.0.0.1:9443 (needs --token-file)")
    .option("--token-file <file>", "file holding the admin token (with --url)")
    .option("--ca <file>", "CA certificate(s) for an https:// --url with a self-signed certificate")
    .option("--json", "print the API's JSON instead of tables")
    .action(
      action(async (f: StatusFlags) => {
        let s: StatusView;
        try {
          s = await adminJson<StatusView>(target(f), "GET", "/v1/status");
        } catch (e) {
          if (e instanceof AdminClientError) throw new UsageError(`status: ${e.message}`);
          throw e;
        }
        process.stdout.write(f.json ? JSON.stringify(s, null, 2) + "\n" : renderStatus(s));
      }),
    );
  return helpText(c, [
    "seng status                                   # the admin socket of /etc/seng/gateway.yaml",
    "seng status --socket /var/lib/seng/admin.sock --json",
    "seng status --url https://10.0.0.1:9443 --token-file admin.token --ca admin-ca.pem",
  ]);
}
