/**
 * The SENG gateway: attested DTLS tunnels in, per-app addresses out, packets between the tunnels and a TUN device.
 *
 * The gateway is split by concern (as wireguard-go's device/):
 *   - admission.ts: handshake admission (rate limits, caps, cookies) and the end of a handshake (attestation, lease)
 *   - receive.ts: the receive path (UDP → TUN), its steps numbered at the top
 *   - send.ts: the send path (TUN → UDP), its steps numbered at the top
 *   - timers.ts: the sweep (handshake and idle timeouts, keepalives, lease extension, heap trimming)
 *   - tunnel.ts: one runtime's tunnel and its abuse budget
 *   - guard.ts: kernel drops (nftables) of the datagrams of throttled or misbehaving peers
 *   - this file: start and stop, closing tunnels, reload, counters, and the read-only views for the admin API
 *
 * Firewall (src/firewall/, off the packet path): a leased tunnel's address joins its app's nftables sets and leaves
 * them when the tunnel closes; the policy table is applied at start and by reload(), which also revokes tunnels
 * whose identity the new configuration no longer allows (src/gateway/reload.ts).
 */
import { readFileSync } from "node:fs";
import { Firewall, type FirewallStats } from "../firewall/firewall.js";
import { type Claims, type TcbStatus } from "../attest/claims.js";
import { loadCollateral } from "../attest/intel/collateral.js";
import { verifyRaTlsCert, type VerifyOptions } from "../attest/verify.js";
import { Cert } from "../attest/x509.js";
import { DtlsContext, DtlsListener } from "../native/dtls.js";
import { Tun, UdpSocket } from "../native/io.js";
import { intToIp, ipToInt } from "../packet/ip.js";
import { formatIp6, parseIp6 } from "../packet/addr6.js";
import { Ip6Map } from "../packet/ip6.js";
import type { GatewayConfig } from "../policy/config.js";
import { ALPN_OFFER, encodeControl, MSG, type CloseReason } from "../tunnel/protocol.js";
import { CookieRotation } from "./admission.js";
import { PeerGuard } from "./guard.js";
import type { LeaseStore } from "./leases.js";
import type { LeaseBackend } from "../store/interface.js";
import { SqliteStore } from "../store/sqlite.js";
import { ClusterLink, openStore, type ClusterStats } from "./cluster.js";
import { EtcdStore } from "../store/etcd.js";
import { onDatagrams } from "./receive.js";
import { onTunPackets } from "./send.js";
import { sweep, sweepLeases } from "./timers.js";
import { RemoteSession, WorkerPool, workerCount } from "./workers/pool.js";
import { zero, type Counters, type DropCounter, type Tunnel } from "./tunnel.js";
import { jsonLogger, type Logger } from "./log.js";
import { RateLimiter, TokenBucket } from "./ratelimit.js";
import { SystemSetup } from "./system.js";
import { applyReload, type ReloadResult } from "./reload.js";

/** Room for the DTLS record header, explicit nonce and AEAD tag around one tunnelled packet (37 bytes, rounded up). */
export const DTLS_OVERHEAD = 64;

export interface GatewayStats {
  tunnels: number;
  halfOpen: number;
  handshakes: Record<string, number>;
  drops: Record<string, number>;
  apps: Record<string, Counters & { tunnels: number }>;
  tunnelList: {
    peer: string;
    app: string;
    address: string;
    address6?: string;
    measurement: string;
    counters: Counters;
  }[];
  firewall: FirewallStats;
  /** In a cluster (etcd): fencing, refusals, view age (src/gateway/cluster.ts). */
  cluster?: ClusterStats;
}

/** A read-only view of one live tunnel (admin API, dashboard). */
export interface TunnelInfo {
  id: number;
  app: string;
  /** Leased IPv4 address ("" when the tunnel has none: an IPv6-only app). */
  address: string;
  /** Leased IPv6 address, when the tunnel has one. */
  address6?: string;
  /** Protocol version negotiated with the runtime (1 or 2). */
  version?: number;
  /** The runtime's outer UDP address (ip:port). */
  peer: string;
  measurement: string;
  /** SHA-256 of the runtime's RA-TLS key (certificate), hex. */
  key: string;
  /** ms since the epoch. */
  createdAt: number;
  leasedAt: number;
  lastRx: number;
  lastTx: number;
  counters: Counters;
}

/** One tunnel with its attestation claims. */
export interface TunnelDetail extends TunnelInfo {
  tcbStatus: TcbStatus | null;
  claims: Claims | undefined;
}

/**
 * Told about events the counters cannot show (metrics, admin API). Called synchronously on the event loop: keep
 * the work small. Observers never see packets; per-packet figures are read from {@link Gateway.stats}.
 */
export interface GatewayObserver {
  /** An attestation verdict at the end of a handshake: `accepted`, or `refused` with a short stable reason. */
  verdict?(result: "accepted" | "refused", reason: string, setupMs: number): void;
  tunnelUp?(t: TunnelInfo): void;
  tunnelDown?(t: TunnelInfo, reason: CloseReason, message: string): void;
}

export interface GatewayOptions {
  logger?: Logger;
  /** Clock in ms (tests). */
  now?: () => number;
}

export type { Counters, DropCounter } from "./tunnel.js";
export { Tunnel } from "./tunnel.js";

export class Gateway {
  private readonly drops = new Map<string, number>();
  private readonly handshakes = new Map<string, number>();
  /** @internal */ readonly system = new SystemSetup();
  private reloading: Promise<ReloadResult> | undefined;
  private ctx!: DtlsContext;
  private sweepTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private readonly observers: GatewayObserver[] = [];

  // Shared with the data path and timers (admission.ts, receive.ts, send.ts, timers.ts); not for other callers.
  /** @internal */ readonly log: Logger;
  /** @internal */ readonly now: () => number;
  /** @internal */ readonly byPeer = new Map<string, Tunnel>();
  /** @internal Leased tunnels by IPv4 address (a number) and by IPv6 address (the packet's 16 bytes, ip6.ts). */
  readonly byAddress = new Map<number, Tunnel>();
  /** @internal */ readonly byAddress6 = new Ip6Map<Tunnel>();
  /** @internal Every leased tunnel, whatever its families. */
  readonly leased = new Set<Tunnel>();
  /** @internal */ readonly halfOpen = new Set<Tunnel>();
  /** @internal */ readonly appCounters = new Map<string, Counters>();
  /** @internal */ readonly limiter: RateLimiter;
  /** @internal */ readonly handshakeBudget: TokenBucket;
  /** @internal */ verifyOpts: VerifyOptions;
  /** @internal */ readonly firewall: Firewall;
  /** @internal */ readonly gatewayAddress: number;
  /** @internal The gateway's IPv6 address (the leases' gateway6, the source of Packet Too Big), when configured. */
  readonly gatewayAddress6: string | undefined;
  /** @internal */ readonly gatewayAddress6Bytes: Buffer;
  /** @internal SQLite (one gateway) or etcd (cluster.ts) */ leases!: LeaseBackend;
  /** @internal The cluster (etcd mode), undefined for a single gateway */ cluster: ClusterLink | undefined;
  /** @internal */ listener!: DtlsListener;
  /** @internal */ cookies!: CookieRotation;
  /** @internal */ udp!: UdpSocket;
  /** @internal */ tun!: Tun;
  /** @internal The data-path workers (`workers` above 1; workers/pool.ts): then `udp` and `tun` stay unset here. */
  pool: WorkerPool | undefined;
  /** @internal */ guard!: PeerGuard;
  /** @internal */ lastExpiry = 0;
  /** @internal */ lastLeaseFlush = 0;
  /** @internal When a tunnel was last set up or closed, and when the C heap was last trimmed (timers.ts). */
  churnAt = 0;
  /** @internal */ trimmedAt = 0;

  /** ms since the epoch when {@link start} finished. */
  startedAt = 0;

  constructor(
    public config: GatewayConfig,
    opts: GatewayOptions = {},
  ) {
    this.log = opts.logger ?? jsonLogger();
    this.now = opts.now ?? Date.now;
    this.limiter = new RateLimiter(
      config.limits.handshakesPerSecondPerSource,
      config.limits.handshakeBurstPerSource,
    );
    this.handshakeBudget = new TokenBucket(
      config.limits.handshakesPerSecond,
      config.limits.handshakesPerSecond,
    );
    this.gatewayAddress = ipToInt(config.tun.address.split("/")[0]!);
    const g6 = config.tun.address6 ? parseIp6(config.tun.address6.split("/")[0]!) : undefined;
    this.gatewayAddress6 = g6 ? formatIp6(g6) : undefined;
    this.gatewayAddress6Bytes = Buffer.from(g6 ?? new Uint8Array(16));
    this.verifyOpts = verifyOptions(config);
    for (const app of config.apps) this.appCounters.set(app.name, zero());
    this.firewall = new Firewall(config.model, this.log);
  }

  /** Opens the database, the TUN and the UDP socket, and configures the kernel. */
  async start(): Promise<void> {
    const c = this.config;
    if (c.trust.simulatedRoots.length) {
      this.log.log("warn", "simulated-roots-trusted", {
        roots: c.trust.simulatedRoots,
        note: "INSECURE: evidence under these roots has no hardware protection",
      });
    }
    for (const warning of c.warnings) this.log.log("warn", "config-warning", { warning });
    this.leases = await openStore(
      c,
      [this.gatewayAddress],
      this.log,
      this.gatewayAddress6 ? [this.gatewayAddress6] : [],
    );
    if (this.leases instanceof EtcdStore)
      this.cluster = new ClusterLink(this.leases, c.cluster?.staleAfterMs ?? 3000);
    await this.leases.expire(this.now());
    this.ctx = new DtlsContext({
      role: "server",
      certPem: readFileSync(c.certificate, "utf8"),
      keyPem: readFileSync(c.key, "utf8"),
      mtu: c.tun.mtu + DTLS_OVERHEAD,
      alpn: ALPN_OFFER, // protocol version 2 preferred; a runtime offering nothing speaks version 1
    });
    this.listener = new DtlsListener(this.ctx);
    this.cookies = new CookieRotation(this.listener, this.now());
    const workers = workerCount(c);
    if (workers > 1) {
      // Each worker opens a TUN queue and binds its UDP socket; admissions wait for the firewall (accept()).
      this.pool = new WorkerPool(this, workers);
      try {
        await this.pool.start();
      } catch (e) {
        await this.pool.stop();
        throw e;
      }
    } else
      this.tun = c.tun.offload
        ? Tun.openOffloaded(c.tun.name, { napi: true }, (e) =>
            this.log.log("warn", "tun-offload-unavailable", { error: e.message }),
          )
        : Tun.open(c.tun.name, { napi: true });
    try {
      await this.system.configure(
        this.tunName,
        c.tun.address,
        c.tun.mtu,
        [...new Set(c.apps.flatMap((a) => [a.subnet, a.subnet6].filter((x) => x !== undefined)))],
        c.tun.address6,
      );
      await this.firewall.start();
      await this.cluster?.start(this);
      if (!this.pool) {
        const [host, port] = splitHostPort(c.listen);
        this.udp = UdpSocket.bind(host, port, { rcvbuf: 4 << 20, sndbuf: 4 << 20 });
      }
    } catch (e) {
      this.tun?.close();
      await this.pool?.stop();
      await this.firewall.stop();
      await this.system.undo();
      throw e;
    }
    this.guard = new PeerGuard(this.port, this.log);
    await this.guard.start();
    if (this.pool) {
      this.pool.accept();
      this.sweepTimer = setInterval(() => sweepLeases(this, this.now()), 200);
    } else {
      this.udp.onDatagrams((b) => onDatagrams(this, b.data, b.peers));
      this.tun.onPackets((p) => onTunPackets(this, p));
      this.sweepTimer = setInterval(() => sweep(this), 200);
    }
    this.startedAt = this.now();
    this.log.log("info", "gateway-started", {
      listen: c.listen,
      port: this.port,
      tun: this.tunName,
      offload: this.pool ? this.pool.offload : this.tun.offload,
      workers,
      apps: c.apps.map((a) => `${a.name}=${[a.subnet, a.subnet6].filter(Boolean).join(",")}`),
    });
  }

  /** Closes every tunnel with `shutting-down`, keeps their leases for the grace period, and undoes the setup. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.sweepTimer);
    this.cluster?.stop();
    for (const t of [...this.byPeer.values()]) this.close(t, "shutting-down", "gateway is shutting down");
    this.udp?.close();
    this.tun?.close();
    await this.pool?.stop();
    await this.guard?.stop();
    await this.firewall.stop();
    await this.system.undo();
    await this.leases?.close();
    this.log.log("info", "gateway-stopped");
  }

  get port(): number {
    return this.pool ? this.pool.port : this.udp.port;
  }

  /** The TUN interface's name. */
  get tunName(): string {
    return this.pool ? this.pool.tunName : this.tun.name;
  }

  // ---- receive path ----

  // ---- send path ----

  // ---- lifecycle ----

  /**
   * Closes a tunnel. `notify`: send CLOSE and close_notify first. `keepLease`: the address stays reserved for the
   * grace period (reconnects get it back); revocation passes false and frees it.
   */
  close(
    t: Tunnel,
    reason: CloseReason,
    message: string,
    notify = true,
    keepLease = reason !== "revoked",
  ): void {
    if (t.state === "closed") return;
    const wasLeased = t.state === "leased";
    // A worker's tunnel (workers/pool.ts): its worker sends CLOSE and frees the session.
    if (t.session instanceof RemoteSession) t.session.close(t, reason, message, notify);
    else if (notify) {
      try {
        if (t.session.established())
          this.udp.sendMany(
            [
              ...t.session.send([encodeControl({ type: MSG.CLOSE, reason, message }, t.version)]),
              ...t.session.shutdown(),
            ],
            t.peer,
          );
      } catch {
        // The session may already be broken; closing goes on.
      }
    }
    t.state = "closed";
    t.session.free();
    this.churnAt = this.now();
    this.halfOpen.delete(t);
    if (this.byPeer.get(t.peer) === t) this.byPeer.delete(t.peer);
    if (wasLeased) {
      this.leased.delete(t);
      if (t.address && this.byAddress.get(t.address) === t) {
        this.byAddress.delete(t.address);
        this.firewall.tunnelDown(intToIp(t.address));
      }
      if (t.addr6 && this.byAddress6.get(t.addr6, 0) === t) {
        this.byAddress6.delete(t.addr6);
        this.firewall.tunnelDown(t.address6);
      }
      const now = this.now();
      const ids = [t.leaseId, t.leaseId6].filter((id) => id !== 0);
      const until = now + this.config.tunnel.leaseGraceSeconds * 1000;
      if (keepLease)
        this.storeCall("extend", this.leases.extendMany(ids.map((id): [number, number] => [id, until])));
      else {
        for (const id of ids) this.storeCall("release", this.leases.release(id, now, reason));
        // The addresses are free for another holder: their flows must not outlive the lease (ct state established).
        for (const a of t.addresses) this.cutFlows(a);
      }
      this.log.log("info", "tunnel-down", {
        peer: t.peer,
        app: t.app,
        address: t.address ? intToIp(t.address) : undefined,
        ...(t.address6 ? { address6: t.address6 } : {}),
        measurement: t.measurement,
        reason,
        message,
        ...t.counters,
      });
      this.notify((o) => o.tunnelDown?.(this.info(t), reason, message));
    }
  }

  /** Logs a failed store write the caller does not wait for (the lease then lapses after its grace). */
  /** @internal */
  storeCall(what: string, p: Promise<unknown>): void {
    p.catch((e: Error) =>
      this.log.limited(`store-${what}`, 10_000, "error", "store-failed", { what, error: e.message }),
    );
  }

  /** Deletes the conntrack entries of an address that has no tunnel any more (after its set update). */
  /** @internal */
  cutFlows(address: string): void {
    void this.firewall.cutFlows(address).catch((e: Error) =>
      this.log.limited("conntrack-failed", 10_000, "error", "conntrack-failed", {
        address,
        error: e.message,
      }),
    );
  }

  // ---- counters ----

  /** @internal */
  count(reason: DropCounter, n = 1): void {
    this.drops.set(reason, (this.drops.get(reason) ?? 0) + n);
  }

  /** @internal */
  handshake(result: string): void {
    this.handshakes.set(result, (this.handshakes.get(result) ?? 0) + 1);
  }

  /**
   * Reloads the configuration file: validates it, applies the new policy atomically, and closes with `revoked`
   * every tunnel whose identity is no longer allowed (its set elements removed and its conntrack entries deleted,
   * so established flows end too). On any error the old configuration and policy stay. Concurrent calls share
   * one reload.
   */
  reload(file = this.config.file): Promise<ReloadResult> {
    this.reloading ??= applyReload(this, file).finally(() => (this.reloading = undefined));
    return this.reloading;
  }

  /**
   * The audit log's rows matching `q`, newest first (the admin API's audit search). SQLite only: in a cluster the
   * audit trail is in etcd, answered per address by `seng audit who`.
   */
  auditQuery(q: Parameters<LeaseStore["audit"]["query"]>[0]): ReturnType<LeaseStore["audit"]["query"]> {
    if (!(this.leases instanceof SqliteStore))
      throw new Error("audit search is not available in a cluster: use seng audit who <address> --at <time>");
    return this.leases.leases.audit.query(q);
  }

  /** Packets the policy table dropped, by reason (`policy`, `unshielded`); for metrics. */
  firewallDrops(): Promise<Record<string, number>> {
    return this.firewall.drops().catch(() => ({}));
  }

  /** Reports each set addition's latency in seconds (metrics). */
  onSetUpdate(fn: (seconds: number) => void): void {
    this.firewall.onSetUpdate(fn);
  }

  /** Live packet counters of the policy table (per rule key path, and the named counters). */
  firewallCounters(): Promise<Record<string, number>> {
    return this.firewall.counters();
  }

  // ---- read-only views and actions for the admin API ----

  /** Registers an observer (metrics, admin API). */
  observe(o: GatewayObserver): void {
    this.observers.push(o);
  }

  /** Tells the observers; one that throws is logged, never allowed to break the gateway's own work. */
  /** @internal */
  notify(f: (o: GatewayObserver) => void): void {
    for (const o of this.observers) {
      try {
        f(o);
      } catch (e) {
        this.log.limited("observer-error", 10_000, "error", "observer-error", {
          error: (e as Error).message,
        });
      }
    }
  }

  /** @internal */
  info(t: Tunnel): TunnelInfo {
    return {
      id: t.id,
      app: t.app,
      address: t.address ? intToIp(t.address) : "",
      ...(t.address6 ? { address6: t.address6 } : {}),
      version: t.version,
      peer: t.peer,
      measurement: t.measurement,
      key: t.keyFp,
      createdAt: t.createdAt,
      leasedAt: t.leasedAt,
      lastRx: t.lastRx,
      lastTx: t.lastTx,
      counters: { ...t.counters },
    };
  }

  /** The leased tunnels, oldest first. */
  tunnels(): TunnelInfo[] {
    return [...this.leased].map((t) => this.info(t)).sort((a, b) => a.id - b.id);
  }

  /** One leased tunnel with its attestation claims; undefined when no live tunnel has this id. */
  async tunnel(id: number): Promise<TunnelDetail | undefined> {
    const t = this.findTunnel(id);
    if (!t) return undefined;
    // Claims come from the certificate kept with the lease (not kept in memory: ~6 KB per idle tunnel).
    const der = await this.leases.certOf(t.certLease);
    let verdict: ReturnType<typeof verifyRaTlsCert> | undefined;
    try {
      verdict = der ? verifyRaTlsCert(Cert.parseOnce(der), this.verifyOpts) : undefined;
    } catch {
      verdict = undefined;
    }
    return { ...this.info(t), tcbStatus: verdict?.tcbStatus ?? null, claims: verdict?.claims };
  }

  /**
   * Closes a leased tunnel on an administrator's request (CLOSE is sent to the runtime). `revoked` frees the address
   * and tells the runtime not to reconnect; `shutting-down` keeps the lease and lets it reconnect. False when no live
   * tunnel has this id.
   */
  closeTunnel(id: number, reason: "revoked" | "shutting-down", message: string): boolean {
    const t = this.findTunnel(id);
    if (!t) return false;
    this.close(t, reason, message);
    return true;
  }

  private findTunnel(id: number): Tunnel | undefined {
    for (const t of this.leased) if (t.id === id) return t;
    return undefined;
  }

  stats(): GatewayStats {
    const apps: GatewayStats["apps"] = {};
    for (const [name, c] of this.appCounters) apps[name] = { ...c, tunnels: 0 };
    for (const t of this.leased) apps[t.app]!.tunnels++;
    return {
      tunnels: this.leased.size,
      halfOpen: this.halfOpen.size + (this.pool?.halfOpen() ?? 0),
      handshakes: Object.fromEntries(this.handshakes),
      drops: Object.fromEntries(this.drops),
      apps,
      tunnelList: [...this.leased].map((t) => ({
        peer: t.peer,
        app: t.app,
        address: t.address ? intToIp(t.address) : "",
        ...(t.address6 ? { address6: t.address6 } : {}),
        measurement: t.measurement,
        counters: { ...t.counters },
      })),
      firewall: this.firewall.stats(),
      ...(this.cluster ? { cluster: this.cluster.stats() } : {}),
    };
  }
}

/** Trust settings of a configuration for verifyRaTlsCert (also built by each data-path worker). */
export function verifyOptions(config: GatewayConfig): VerifyOptions {
  return {
    collateral: config.trust.collateral.length ? loadCollateral(config.trust.collateral) : undefined,
    extraRoots: config.trust.simulatedRoots.flatMap((p) => Cert.fromPemBundle(readFileSync(p))),
    clockSkewSeconds: config.trust.clockSkewSeconds,
    snpMinTcb: config.trust.snpMinTcb,
  };
}

function splitHostPort(s: string): [string, number] {
  const i = s.lastIndexOf(":");
  return [s.slice(0, i).replace(/^\[|\]$/g, ""), Number(s.slice(i + 1))];
}
