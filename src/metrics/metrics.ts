/**
 * Prometheus metrics of the gateway (prom-client). Names and labels: docs/ADMIN.md.
 *
 * Per-packet figures (bytes, packets, drops, handshake results, tunnels) are read from the gateway's own counters
 * when scraped, so the data path pays nothing for metrics. Events that the counters do not keep (attestation
 * verdicts with their reason, handshake latency, closes by reason) come through the {@link GatewayObserver} hooks.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { CloseReason } from "../tunnel/protocol.js";
import type { GatewayObserver, GatewayStats, TunnelInfo } from "../gateway/server.js";
import type { GuardStats } from "../admin/guard.js";

/** What metrics read at scrape time. */
export interface MetricsSource {
  stats(): GatewayStats;
  /** Drops counted outside the gateway process (nftables: `policy`, `unshielded`), by reason. */
  firewallDrops?(): Promise<Record<string, number>> | Record<string, number>;
  /** The policy table's packet counters: per rule key path, and the named counters (nftables). */
  firewallCounters?(): Promise<Record<string, number>> | Record<string, number>;
}

/** Drop reasons always exported (0 until seen), so dashboards and alerts see the series from the start. */
export const DROP_REASONS = [
  "spoofed-source",
  "malformed",
  "unsupported-version",
  "no-route",
  "too-big",
  "rate-limited",
  "half-open-cap",
  "tunnel-cap",
  "throttled",
  "unknown-session",
  "dtls-error",
  "not-leased",
  "policy",
  "unshielded",
  "to-gateway",
] as const;

export const HANDSHAKE_RESULTS = ["started", "accepted", "refused", "timeout", "pool-exhausted"] as const;

export class GatewayMetrics implements GatewayObserver {
  /** Told each etcd lease acquisition's duration (set by the gateway in a cluster). */
  readonly etcdSeconds: Histogram<"operation">;

  readonly registry = new Registry();
  private readonly verdicts: Counter<"result" | "reason">;
  private readonly handshakeSeconds: Histogram<"result">;
  private readonly closes: Counter<"app" | "reason">;
  private readonly setUpdateSeconds: Histogram<"operation">;
  private snap: GatewayStats | undefined;
  /** HTTP listeners with a connection guard (admin API, metrics), read at scrape time. */
  private readonly guards = new Map<string, () => GuardStats>();

  constructor(
    private readonly source: MetricsSource,
    opts: { processMetrics?: boolean } = {},
  ) {
    const registers = [this.registry];
    // One snapshot of the gateway's counters per scrape, shared by the collectors.
    const src = {
      stats: () => (this.snap ??= this.source.stats()),
      firewallDrops: () => this.source.firewallDrops?.(),
      firewallCounters: () => this.source.firewallCounters?.(),
    };
    if (opts.processMetrics !== false) collectDefaultMetrics({ register: this.registry });

    new Gauge({
      name: "seng_tunnels",
      help: "Leased tunnels, by app",
      labelNames: ["app"],
      registers,
      collect() {
        for (const [app, c] of Object.entries(src.stats().apps)) this.set({ app }, c.tunnels);
      },
    });
    new Gauge({
      name: "seng_handshakes_in_progress",
      help: "DTLS handshakes in progress (half-open tunnels)",
      registers,
      collect() {
        this.set(src.stats().halfOpen);
      },
    });
    new Counter({
      name: "seng_handshakes_total",
      help: "Tunnel handshakes by result (started, accepted, refused, timeout, pool-exhausted)",
      labelNames: ["result"],
      registers,
      collect() {
        const h = src.stats().handshakes;
        this.reset();
        for (const r of new Set([...HANDSHAKE_RESULTS, ...Object.keys(h)]))
          this.inc({ result: r }, h[r] ?? 0);
      },
    });
    const traffic = (name: string, help: string, pick: "Packets" | "Bytes") =>
      new Counter({
        name,
        help,
        labelNames: ["app", "direction"],
        registers,
        collect() {
          this.reset();
          for (const [app, c] of Object.entries(src.stats().apps)) {
            this.inc({ app, direction: "in" }, c[`rx${pick}`]);
            this.inc({ app, direction: "out" }, c[`tx${pick}`]);
          }
        },
      });
    traffic(
      "seng_app_packets_total",
      "Inner IP packets per app; direction in = from the app's tunnels, out = to them",
      "Packets",
    );
    traffic(
      "seng_app_bytes_total",
      "Inner IP bytes (IP header included) per app; direction in = from the app's tunnels, out = to them",
      "Bytes",
    );
    const guards = this.guards;
    new Counter({
      name: "seng_http_connections_closed_total",
      help: "Connections the admin API's and the metrics listener's guard closed: evicted (waiting for headers to make room) or refused (all busy)",
      labelNames: ["server", "reason"],
      registers,
      collect() {
        this.reset();
        for (const [server, stats] of guards) {
          const st = stats();
          this.inc({ server, reason: "evicted" }, st.evicted);
          this.inc({ server, reason: "refused" }, st.refused);
        }
      },
    });
    new Counter({
      name: "seng_drops_total",
      help: "Packets and datagrams dropped, by reason",
      labelNames: ["reason"],
      registers,
      async collect() {
        const d = { ...src.stats().drops, ...(await src.firewallDrops()) };
        this.reset();
        for (const r of new Set([...DROP_REASONS, ...Object.keys(d)])) this.inc({ reason: r }, d[r] ?? 0);
      },
    });
    new Counter({
      name: "seng_policy_rule_packets_total",
      help: "Packets counted by each policy rule of the nftables table (rule = key path, e.g. policy.rules[2]; policy.default; firewall.unshielded)",
      labelNames: ["rule"],
      registers,
      async collect() {
        const c = (await src.firewallCounters()) ?? {};
        this.reset();
        for (const [k, v] of Object.entries(c)) {
          const rule =
            k === "seng_policy_default"
              ? "policy.default"
              : k === "seng_unshielded_drops"
                ? "firewall.unshielded"
                : k;
          if (rule.startsWith("policy.") || rule.startsWith("firewall.")) this.inc({ rule }, v);
        }
      },
    });
    this.clusterMetrics(registers, src.stats);
    this.etcdSeconds = new Histogram({
      name: "seng_cluster_etcd_seconds",
      help: "etcd latency as the handshake sees it: one lease acquisition (allocation or takeover), seconds",
      labelNames: ["operation"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.verdicts = new Counter({
      name: "seng_attestation_verdicts_total",
      help: "Attestation verdicts at the end of handshakes: result accepted or refused, with a stable reason code",
      labelNames: ["result", "reason"],
      registers,
    });
    this.handshakeSeconds = new Histogram({
      name: "seng_handshake_duration_seconds",
      help: "Time from the first accepted handshake datagram to the verdict, by result (accepted, refused)",
      labelNames: ["result"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.closes = new Counter({
      name: "seng_tunnel_closes_total",
      help: "Leased tunnels closed, by app and close reason",
      labelNames: ["app", "reason"],
      registers,
    });
    this.setUpdateSeconds = new Histogram({
      name: "seng_firewall_set_update_duration_seconds",
      help: "Time to apply one nftables set update (add or remove a tunnel address)",
      labelNames: ["operation"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    });
  }

  verdict(result: "accepted" | "refused", reason: string, setupMs: number): void {
    this.verdicts.inc({ result, reason });
    this.handshakeSeconds.observe({ result }, setupMs / 1000);
  }

  tunnelDown(t: TunnelInfo, reason: CloseReason): void {
    this.closes.inc({ app: t.app, reason });
  }

  /** Reports a listener's connection guard (src/admin/guard.ts) as `seng_http_connections_closed_total`. */
  addConnectionGuard(listener: string, stats: () => GuardStats): void {
    this.guards.set(listener, stats);
  }

  /** Records one firewall set update (called by the firewall code; see docs/ADMIN.md). */
  observeSetUpdate(operation: "add" | "remove" | "reload", seconds: number): void {
    this.setUpdateSeconds.observe({ operation }, seconds);
  }

  /** The exposition text and its content type. */
  async render(): Promise<{ contentType: string; body: string }> {
    try {
      return { contentType: this.registry.contentType, body: await this.registry.metrics() };
    } finally {
      this.snap = undefined;
    }
  }

  /** Cluster (etcd) series; present only when the gateway runs in a cluster. */
  private clusterMetrics(registers: Registry[], stats: () => GatewayStats): void {
    const c = () => stats().cluster;
    new Gauge({
      name: "seng_cluster_fenced",
      help: "1 while this gateway cannot prove it holds its etcd lease (no new tunnels, none forwarded)",
      registers,
      collect() {
        const s = c();
        if (s) this.set(s.fenced ? 1 : 0);
      },
    });
    new Counter({
      name: "seng_cluster_fencings_total",
      help: "Times this gateway fenced itself",
      registers,
      collect() {
        const s = c();
        if (!s) return;
        this.reset();
        this.inc(s.fencings);
      },
    });
    new Counter({
      name: "seng_cluster_refused_total",
      help: "New tunnels refused by the cluster checks, by reason (fenced, stale, revoked)",
      labelNames: ["reason"],
      registers,
      collect() {
        const s = c();
        if (!s) return;
        this.reset();
        for (const [reason, n] of Object.entries(s.refused)) this.inc({ reason }, n);
      },
    });
    new Gauge({
      name: "seng_cluster_watch_age_seconds",
      help: "Seconds since the etcd watch last delivered a change or a progress notification (watch lag bound)",
      registers,
      collect() {
        const s = c();
        if (s) this.set(s.viewAgeSeconds);
      },
    });
    new Gauge({
      name: "seng_cluster_remote_leases",
      help: "Other gateways' leases in this gateway's firewall sets",
      registers,
      collect() {
        const s = c();
        if (s) this.set(s.remoteLeases);
      },
    });
  }
}
