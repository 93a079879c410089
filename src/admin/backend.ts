/**
 * What the admin API needs from the gateway, as an interface, so the HTTP side can be tested and the parts that
 * arrive with other issues (policy reload, audit log) plug in without touching it.
 */
import type { ClusterLink, ClusterStats } from "../gateway/cluster.js";
import type { Gateway, GatewayStats, TunnelDetail, TunnelInfo } from "../gateway/server.js";
import type { GatewayMetrics } from "../metrics/metrics.js";
import type { RecentEvent, RecentEvents } from "./recent.js";
import type { FirewallStats } from "../firewall/firewall.js";

/** A query of the audit log (`GET /v1/audit`). All filters optional; times in ms since the epoch. */
export interface AuditQuery {
  app?: string;
  address?: string;
  event?: string;
  since?: number;
  until?: number;
  /** 1-1000, default 100. */
  limit?: number;
}

export interface AppView {
  name: string;
  subnet: string;
  tunnels: number;
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
}

/** `GET /v1/status`: everything `seng status` and the dashboard show, in one answer. */
export interface StatusView {
  gateway: { listen: string; port: number; tun: string; startedAt: number; uptimeSeconds: number };
  apps: AppView[];
  tunnels: TunnelInfo[];
  halfOpen: number;
  handshakes: Record<string, number>;
  drops: Record<string, number>;
  /**
   * The policy table (docs/GATEWAY.md): set-update statistics, and live packet counters per rule key path
   * (`policy.rules[2]`), `seng_policy_default` and `seng_unshielded_drops`. Absent when the firewall is off.
   */
  firewall?: FirewallStats & { counters: Record<string, number> };
  /** In a cluster (etcd): this gateway's fencing and view, leases per gateway, each etcd member's health. */
  cluster?: ClusterStats & {
    gateways: { id: string; leases: number; alive: boolean }[];
    etcd: { endpoint: string; ok: boolean; leader: boolean; error?: string }[];
    error?: string;
  };
  recent: RecentEvent[];
}

export interface AdminBackend {
  status(): StatusView | Promise<StatusView>;
  apps(): AppView[];
  tunnels(): TunnelInfo[];
  tunnel(id: number): Promise<TunnelDetail | undefined> | TunnelDetail | undefined;
  closeTunnel(id: number, reason: "revoked" | "shutting-down", message: string): boolean;
  recent(limit: number): RecentEvent[];
  metrics(): Promise<{ contentType: string; body: string }>;
  /** Re-reads the configuration file and applies it (as SIGHUP); resolves to the reload's result. */
  reload(): Promise<unknown>;
  /** Queries the audit log. */
  auditQuery(q: AuditQuery): Promise<unknown[]> | unknown[];
}

/** The admin backend of a running gateway. */
export function gatewayBackend(gw: Gateway, metrics: GatewayMetrics, recent: RecentEvents): AdminBackend {
  const apps = (s: GatewayStats = gw.stats()): AppView[] =>
    gw.config.apps.map((a) => {
      const c = s.apps[a.name] ?? { tunnels: 0, rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0 };
      return { name: a.name, subnet: a.subnet, ...c };
    });
  return {
    async status() {
      const counters = await gw.firewallCounters().catch(() => ({}));
      const cluster = gw.cluster && (await clusterStatus(gw.cluster));
      const s = gw.stats();
      const now = Date.now();
      return {
        gateway: {
          listen: gw.config.listen,
          port: gw.port,
          tun: gw.config.tun.name,
          startedAt: gw.startedAt,
          uptimeSeconds: Math.round((now - gw.startedAt) / 1000),
        },
        apps: apps(s),
        tunnels: gw.tunnels(),
        halfOpen: s.halfOpen,
        handshakes: s.handshakes,
        drops: s.drops,
        ...(s.firewall.enabled ? { firewall: { ...s.firewall, counters } } : {}),
        ...(cluster ? { cluster } : {}),
        recent: recent.list(20),
      };
    },
    apps: () => apps(),
    tunnels: () => gw.tunnels(),
    tunnel: (id) => gw.tunnel(id),
    closeTunnel: (id, reason, message) => gw.closeTunnel(id, reason, message),
    recent: (limit) => recent.list(limit),
    metrics: () => metrics.render(),
    reload: () => gw.reload(),
    auditQuery: (q) => gw.auditQuery(q),
  };
}

/** The cluster part of the status: never throws (an unreachable etcd is shown, not an error). */
async function clusterStatus(c: ClusterLink): Promise<NonNullable<StatusView["cluster"]>> {
  const etcd = await c.store.health().catch(() => []);
  try {
    const snap = await c.store.snapshot();
    const count = new Map<string, number>(snap.gateways.map((g) => [g, 0]));
    for (const l of snap.leases) count.set(l.holder, (count.get(l.holder) ?? 0) + 1);
    const gateways = [...count]
      .sort()
      .map(([id, leases]) => ({ id, leases, alive: snap.gateways.includes(id) }));
    return { ...c.stats(), gateways, etcd };
  } catch (e) {
    return { ...c.stats(), gateways: [], etcd, error: (e as Error).message.split("\n")[0] };
  }
}
