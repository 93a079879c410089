/**
 * The SENG gateway: attested DTLS tunnels in, per-app addresses out, packets between the tunnels and a TUN device.
 *
 * Receive path (UDP → TUN), per batch of datagrams from the socket:
 *   1. look up the tunnel by the datagram's source (ip:port); unknown sources go to step 6
 *   2. DTLS: decrypt the tunnel's datagrams of the batch in one native call
 *   3. control records (first byte 0) → control handler; others are IP packets
 *   4. check version, header, length and that the source is the tunnel's leased address; else drop and count
 *   5. write the batch of accepted packets to the TUN: with offload (tun.offload), consecutive in-order TCP
 *      segments of one flow go in one write as a GSO super-packet; everything else one write per packet
 *   6. unknown source: per-source rate limit and a cap on half-open handshakes, then the stateless cookie
 *      check; a valid cookie creates the session, whose handshake continues in step 2
 *   7. handshake done: verify the RA-TLS certificate's evidence and key binding, match an app, lease an address
 *      from its subnet, send LEASE
 *
 * Send path (TUN → UDP), per batch of packets from the TUN (with offload, the addon has split the kernel's TCP
 * super-packets into MTU-sized packets and completed checksums left to it):
 *   1. destination address → tunnel (one Map lookup on a number); none → drop (no-route)
 *   2. group the batch per tunnel, encrypt each group in one native call, send all datagrams with one sendmmsg
 *
 * Timers (one sweep every 200 ms): handshake timeouts and DTLS retransmissions, keepalives, idle timeouts, lease
 * extension in one transaction, and after a burst of setups or closes, freed C heap returned to the kernel.
 *
 * Firewall (src/firewall/, off the packet path): a leased tunnel's address joins its app's nftables sets and leaves
 * them when the tunnel closes; the policy table is applied at start and by reload(), which also revokes tunnels
 * whose identity the new configuration no longer allows (src/gateway/reload.ts).
 */
import { readFileSync } from "node:fs";
import { Firewall, type FirewallStats } from "../firewall/firewall.js";
import { matchApp } from "../attest/policy.js";
import { primaryMeasurement, type Claims, type TcbStatus } from "../attest/claims.js";
import { loadCollateral } from "../attest/intel/collateral.js";
import { verifyRaTlsCert, type VerifyOptions } from "../attest/verify.js";
import { Cert } from "../attest/x509.js";
import { DtlsContext, DtlsListener, DtlsSession, type DtlsResult } from "../native/dtls.js";
import { Tun, UdpSocket } from "../native/io.js";
import { trimMemory } from "../native/mem.js";
import { checkTunnelPacket, intToIp, ipToInt, ipv4Dst, parseCidr, type DropReason } from "../packet/ip.js";
import { ConfigError, loadConfig, type GatewayConfig } from "../policy/config.js";
import {
  decodeControl,
  encodeControl,
  isControl,
  MSG,
  ProtocolError,
  type CloseReason,
  type Lease,
} from "../tunnel/protocol.js";
import { LeaseStore } from "./leases.js";
import { jsonLogger, type Logger } from "./log.js";
import { RateLimiter, sourceIp } from "./ratelimit.js";
import { SystemSetup } from "./system.js";
import { immutableChange, revocationReason, type ReloadResult } from "./reload.js";

/** Room for the DTLS record header, explicit nonce and AEAD tag around one tunnelled packet (37 bytes, rounded up). */
export const DTLS_OVERHEAD = 64;

/**
 * After tunnels were set up or closed, the sweep hands the C heap's free pages back to the kernel (malloc_trim) once
 * no setup or close has happened for TRIM_QUIET_MS, at most once per TRIM_INTERVAL_MS. A burst of handshakes leaves
 * megabytes of freed transient memory (certificate parsing, verification, handshake buffers) mapped in malloc's
 * arenas; trimming makes RSS show what is live. It takes about 2 ms at 10,000 tunnels and never runs per packet.
 */
const TRIM_QUIET_MS = 500;
const TRIM_INTERVAL_MS = 5000;

/** Per-tunnel and per-app traffic counters. */
export interface Counters {
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
}

const zero = (): Counters => ({ rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0 });

type State = "handshake" | "leased" | "closed";

let nextTunnelId = 0;

/** One runtime's tunnel. */
export class Tunnel {
  /** Stable id for the admin API, unique within the process. */
  readonly id = ++nextTunnelId;
  state: State = "handshake";
  app = "";
  address = 0;
  leaseId = 0;
  keyFp = "";
  measurement = "";
  acked = false;
  /** Largest packet the DTLS session can carry in one record (set when established). */
  maxRecord = 0;
  /** The runtime's RA-TLS certificate, kept so a reload can re-check its identity (revocation). */
  leasedAt = 0;
  readonly counters = zero();
  lastRx: number;
  lastTx: number;

  constructor(
    readonly peer: string,
    readonly session: DtlsSession,
    readonly createdAt: number,
  ) {
    this.lastRx = createdAt;
    this.lastTx = createdAt;
  }
}

/** Why packets or datagrams were dropped, counted. */
export type DropCounter =
  DropReason | "too-big" | "rate-limited" | "half-open-cap" | "unknown-session" | "dtls-error" | "not-leased";

export interface GatewayStats {
  tunnels: number;
  halfOpen: number;
  handshakes: Record<string, number>;
  drops: Record<string, number>;
  apps: Record<string, Counters & { tunnels: number }>;
  tunnelList: { peer: string; app: string; address: string; measurement: string; counters: Counters }[];
  firewall: FirewallStats;
}

/** A read-only view of one live tunnel (admin API, dashboard). */
export interface TunnelInfo {
  id: number;
  app: string;
  address: string;
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

export class Gateway {
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly byPeer = new Map<string, Tunnel>();
  private readonly byAddress = new Map<number, Tunnel>();
  private readonly halfOpen = new Set<Tunnel>();
  private readonly drops = new Map<string, number>();
  private readonly handshakes = new Map<string, number>();
  private readonly appCounters = new Map<string, Counters>();
  private readonly limiter: RateLimiter;
  private readonly system = new SystemSetup();
  private verifyOpts: VerifyOptions;
  private readonly firewall: Firewall;
  private reloading: Promise<ReloadResult> | undefined;
  private readonly gatewayAddress: number;
  private leases!: LeaseStore;
  private ctx!: DtlsContext;
  private listener!: DtlsListener;
  private udp!: UdpSocket;
  private tun!: Tun;
  private sweepTimer: NodeJS.Timeout | undefined;
  private lastExpiry = 0;
  private lastLeaseFlush = 0;
  /** When a tunnel was last set up or closed, and when the C heap was last trimmed (see TRIM_QUIET_MS). */
  private churnAt = 0;
  private trimmedAt = 0;
  private stopping = false;
  private readonly observers: GatewayObserver[] = [];
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
    this.gatewayAddress = ipToInt(config.tun.address.split("/")[0]!);
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
    this.leases = new LeaseStore(c.database, c.apps, [this.gatewayAddress]);
    for (const f of this.leases.fixedModes)
      this.log.log("warn", "state-file-mode-fixed", { ...f, now: "600" });
    this.leases.expire(this.now());
    this.ctx = new DtlsContext({
      role: "server",
      certPem: readFileSync(c.certificate, "utf8"),
      keyPem: readFileSync(c.key, "utf8"),
      mtu: c.tun.mtu + DTLS_OVERHEAD,
    });
    this.listener = new DtlsListener(this.ctx);
    this.tun = c.tun.offload
      ? Tun.openOffloaded(c.tun.name, { napi: true }, (e) =>
          this.log.log("warn", "tun-offload-unavailable", { error: e.message }),
        )
      : Tun.open(c.tun.name, { napi: true });
    try {
      await this.system.configure(this.tun.name, c.tun.address, c.tun.mtu, [
        ...new Set(c.apps.map((a) => a.subnet)),
      ]);
      await this.firewall.start();
      const [host, port] = splitHostPort(c.listen);
      this.udp = UdpSocket.bind(host, port, { rcvbuf: 4 << 20, sndbuf: 4 << 20 });
    } catch (e) {
      this.tun.close();
      await this.firewall.stop();
      await this.system.undo();
      throw e;
    }
    this.udp.onDatagrams((b) => this.onDatagrams(b.data, b.peers));
    this.tun.onPackets((p) => this.onTunPackets(p));
    this.sweepTimer = setInterval(() => this.sweep(), 200);
    this.startedAt = this.now();
    this.log.log("info", "gateway-started", {
      listen: c.listen,
      port: this.udp.port,
      tun: this.tun.name,
      offload: this.tun.offload,
      apps: c.apps.map((a) => `${a.name}=${a.subnet}`),
    });
  }

  /** Closes every tunnel with `shutting-down`, keeps their leases for the grace period, and undoes the setup. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.sweepTimer);
    for (const t of [...this.byPeer.values()]) this.close(t, "shutting-down", "gateway is shutting down");
    this.udp?.close();
    this.tun?.close();
    await this.firewall.stop();
    await this.system.undo();
    this.leases?.close();
    this.log.log("info", "gateway-stopped");
  }

  get port(): number {
    return this.udp.port;
  }

  // ---- receive path ----

  private onDatagrams(data: Buffer[], peers: string[]): void {
    // Group datagrams of one tunnel so each tunnel's batch is decrypted in one native call.
    let groups: Map<Tunnel, Buffer[]> | undefined;
    for (let i = 0; i < data.length; i++) {
      const t = this.byPeer.get(peers[i]!);
      if (t) {
        groups ??= new Map();
        const g = groups.get(t);
        if (g) g.push(data[i]!);
        else groups.set(t, [data[i]!]);
      } else this.onUnknown(data[i]!, peers[i]!);
    }
    if (!groups) return;
    const toTun: Buffer[] = [];
    for (const [t, batch] of groups) this.onTunnelDatagrams(t, batch, toTun);
    if (toTun.length) this.tun.writeMany(toTun);
  }

  private onTunnelDatagrams(t: Tunnel, batch: Buffer[], toTun: Buffer[]): void {
    let r: DtlsResult;
    try {
      r = t.session.receiveMany(batch);
    } catch (e) {
      this.count("dtls-error");
      return this.close(t, "protocol-error", (e as Error).message, false);
    }
    if (r.out.length) this.udp.sendMany(r.out, t.peer);
    if (r.error) {
      this.count("dtls-error");
      this.log.limited(`dtls:${t.peer}`, 5000, "warn", "dtls-error", { peer: t.peer, error: r.error });
      if (!r.established || t.state === "handshake") return this.close(t, "protocol-error", r.error, false);
    }
    const now = this.now();
    t.lastRx = now;
    if (t.state === "handshake" && r.established) this.onEstablished(t);
    if (t.state !== "leased") {
      if (r.records.length) this.count("not-leased", r.records.length);
      if (r.closed) this.close(t, "client-closed", "peer sent close_notify", false);
      return;
    }
    const app = this.appCounters.get(t.app)!;
    for (const rec of r.records) {
      if (isControl(rec)) {
        this.onControl(t, rec);
        if (t.state !== "leased") return;
        continue;
      }
      const drop = checkTunnelPacket(rec, t.address);
      if (drop) {
        this.count(drop);
        if (drop === "spoofed-source") {
          this.log.limited(`spoof:${t.peer}`, 10_000, "warn", "spoofed-source-dropped", {
            peer: t.peer,
            app: t.app,
            leased: intToIp(t.address),
            source: intToIp(rec.readUInt32BE(12)),
          });
        }
        continue;
      }
      t.counters.rxPackets++;
      t.counters.rxBytes += rec.length;
      app.rxPackets++;
      app.rxBytes += rec.length;
      toTun.push(rec);
    }
    if (r.closed) this.close(t, "client-closed", "peer sent close_notify", false);
  }

  private onUnknown(datagram: Buffer, peer: string): void {
    // A DTLS handshake record has content type 22; anything else from an unknown source is noise.
    if (datagram.length < 13 || datagram[0] !== 22) return this.count("unknown-session");
    const now = this.now();
    if (!this.limiter.take(sourceIp(peer), now)) {
      this.count("rate-limited");
      this.log.limited(`rl:${sourceIp(peer)}`, 10_000, "warn", "handshake-rate-limited", {
        source: sourceIp(peer),
      });
      return;
    }
    if (
      this.halfOpen.size >= this.config.limits.maxHalfOpen ||
      this.byPeer.size >= this.config.limits.maxTunnels
    ) {
      this.count("half-open-cap");
      this.log.limited("half-open-cap", 10_000, "warn", "half-open-cap-reached", {
        halfOpen: this.halfOpen.size,
      });
      return;
    }
    const res = this.listener.handle(datagram, peer);
    if (res.verdict === "drop") return this.count("unknown-session");
    if (res.out.length) this.udp.sendMany(res.out, peer);
    if (res.verdict === "accept") {
      const t = new Tunnel(peer, res.session, now);
      this.byPeer.set(peer, t);
      this.halfOpen.add(t);
      this.handshake("started");
    }
  }

  private onEstablished(t: Tunnel): void {
    const started = t.createdAt;
    this.churnAt = this.now();
    this.halfOpen.delete(t);
    const der = t.session.peerCertificate();
    if (!der) return this.refuse(t, "no client certificate", "", "no_certificate");
    // The DER is all the gateway keeps (with the lease, in SQLite); OpenSSL's parsed copy loses its extensions (the
    // evidence: ~4 KB per idle tunnel).
    t.session.trimPeerCertificate();
    let cert: Cert;
    try {
      cert = Cert.parseOnce(der);
    } catch (e) {
      return this.refuse(
        t,
        `client certificate unreadable: ${(e as Error).message}`,
        "",
        "certificate_unreadable",
      );
    }
    const verdict = verifyRaTlsCert(cert, this.verifyOpts);
    const measurement = verdict.claims ? primaryMeasurement(verdict.claims) : "";
    if (!verdict.verified)
      return this.refuse(
        t,
        `attestation failed (${verdict.code}): ${verdict.reason}`,
        measurement,
        verdict.code ?? "attestation_failed",
      );
    const match = matchApp(verdict, this.config.apps);
    if (!match.matched)
      return this.refuse(t, `no app matches: ${match.reasons.join("; ")}`, measurement, "no_app_match");
    const app = this.config.apps.find((a) => a.name === match.app)!;
    const now = this.now();
    const grace = this.config.tunnel.leaseGraceSeconds * 1000;
    const lease = this.leases.acquire(
      app.name,
      cert.fingerprint,
      measurement,
      t.peer,
      now,
      now + grace,
      cert.der,
    );
    if (!lease) {
      this.handshake("pool-exhausted");
      this.log.log("warn", "pool-exhausted", {
        app: app.name,
        subnet: app.subnet,
        peer: t.peer,
        measurement,
      });
      return this.close(t, "pool-exhausted", `no free address in ${app.subnet} for app ${app.name}`);
    }
    const holder = this.byAddress.get(lease.address);
    if (holder && holder !== t) {
      // The same key reconnected from elsewhere (new port after a NAT rebinding or restart): the new tunnel wins.
      this.close(holder, "client-closed", "replaced by a new tunnel of the same key", false, true);
    }
    Object.assign(t, {
      state: "leased",
      app: app.name,
      address: lease.address,
      leaseId: lease.id,
      keyFp: cert.fingerprint,
      measurement,
      maxRecord: t.session.maxRecord(),
      // Only the DER: a parsed Cert (with Node's X509 object) would cost ~20 KB per idle tunnel.
      leasedAt: now,
    });
    this.byAddress.set(lease.address, t);
    this.firewall.tunnelUp(intToIp(lease.address), app.name);
    const msg: Lease = {
      address: intToIp(lease.address),
      prefix: parseCidr(app.subnet).prefix,
      gateway: intToIp(this.gatewayAddress),
      mtu: this.config.tun.mtu,
      dns: this.config.dns,
      lifetime: this.config.tunnel.leaseGraceSeconds,
      app: app.name,
    };
    this.sendControl(t, { type: MSG.LEASE, lease: msg });
    this.handshake("accepted");
    this.log.log("info", "tunnel-up", {
      peer: t.peer,
      app: app.name,
      address: msg.address,
      measurement,
      key: cert.fingerprint,
      resumed: lease.resumed,
      simulated: verdict.claims?.simulated ?? false,
      tcbStatus: verdict.tcbStatus,
      setupMs: now - started,
    });
    this.notify((o) => {
      o.verdict?.("accepted", "accepted", now - started);
      o.tunnelUp?.(this.info(t));
    });
  }

  private refuse(t: Tunnel, reason: string, measurement: string, code: string): void {
    this.handshake("refused");
    this.notify((o) => o.verdict?.("refused", code, this.now() - t.createdAt));
    this.log.limited(`refused:${measurement}:${reason.slice(0, 40)}`, 5000, "warn", "tunnel-refused", {
      peer: t.peer,
      measurement,
      reason,
      code,
    });
    this.close(t, "policy-rejected", reason);
  }

  private onControl(t: Tunnel, rec: Buffer): void {
    let msg;
    try {
      msg = decodeControl(rec);
    } catch (e) {
      if (e instanceof ProtocolError) return this.close(t, "protocol-error", e.message);
      throw e;
    }
    switch (msg.type) {
      case MSG.KEEPALIVE:
        return;
      case MSG.LEASE_ACK:
        if (msg.address !== intToIp(t.address))
          return this.close(
            t,
            "protocol-error",
            `LEASE_ACK for ${msg.address}, leased ${intToIp(t.address)}`,
          );
        t.acked = true;
        return;
      case MSG.CLOSE:
        return this.close(t, "client-closed", `${msg.reason}: ${msg.message}`, false);
      default:
        return this.close(t, "protocol-error", `unexpected control message ${msg.type} from a runtime`);
    }
  }

  // ---- send path ----

  private onTunPackets(packets: Buffer[]): void {
    let groups: Map<Tunnel, Buffer[]> | undefined;
    for (const p of packets) {
      const t = p.length >= 20 && p[0]! >> 4 === 4 ? this.byAddress.get(ipv4Dst(p)) : undefined;
      if (!t || t.state !== "leased") {
        this.count("no-route");
        continue;
      }
      if (p.length > t.maxRecord) {
        this.count("too-big");
        continue;
      }
      groups ??= new Map();
      const g = groups.get(t);
      if (g) g.push(p);
      else groups.set(t, [p]);
    }
    if (!groups) return;
    const now = this.now();
    for (const [t, batch] of groups) {
      const app = this.appCounters.get(t.app)!;
      let bytes = 0;
      for (const p of batch) bytes += p.length;
      t.counters.txPackets += batch.length;
      t.counters.txBytes += bytes;
      app.txPackets += batch.length;
      app.txBytes += bytes;
      t.lastTx = now;
      this.udp.sendMany(t.session.send(batch), t.peer);
    }
  }

  private sendControl(t: Tunnel, msg: Parameters<typeof encodeControl>[0]): void {
    t.lastTx = this.now();
    this.udp.sendMany(t.session.send([encodeControl(msg)]), t.peer);
  }

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
    if (notify) {
      try {
        if (t.session.established())
          this.udp.sendMany(
            [
              ...t.session.send([encodeControl({ type: MSG.CLOSE, reason, message })]),
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
      if (this.byAddress.get(t.address) === t) {
        this.byAddress.delete(t.address);
        this.firewall.tunnelDown(intToIp(t.address));
      }
      const now = this.now();
      if (keepLease) this.leases.extendMany([[t.leaseId, now + this.config.tunnel.leaseGraceSeconds * 1000]]);
      else {
        this.leases.release(t.leaseId, now, reason);
        // The address is free for another holder: its flows must not outlive the lease (ct state established).
        this.cutFlows(intToIp(t.address));
      }
      this.log.log("info", "tunnel-down", {
        peer: t.peer,
        app: t.app,
        address: intToIp(t.address),
        measurement: t.measurement,
        reason,
        message,
        ...t.counters,
      });
      this.notify((o) => o.tunnelDown?.(this.info(t), reason, message));
    }
  }

  private sweep(): void {
    const now = this.now();
    const tc = this.config.tunnel;
    for (const t of this.halfOpen) {
      if (now - t.createdAt > tc.handshakeTimeoutSeconds * 1000) {
        this.handshake("timeout");
        this.close(t, "protocol-error", "handshake timed out", false);
        continue;
      }
      const ms = t.session.timeoutMs();
      if (ms === 0) {
        const out = t.session.onTimeout();
        if (out.length) this.udp.sendMany(out, t.peer);
      }
    }
    const extend: [number, number][] = [];
    const flush = now - this.lastLeaseFlush > 30_000;
    for (const t of this.byAddress.values()) {
      if (now - t.lastRx > tc.idleTimeoutSeconds * 1000) {
        this.close(t, "idle-timeout", `nothing received for ${tc.idleTimeoutSeconds} s`);
        continue;
      }
      if (now - t.lastTx > tc.keepaliveSeconds * 1000) this.sendControl(t, { type: MSG.KEEPALIVE });
      if (flush) extend.push([t.leaseId, now + tc.leaseGraceSeconds * 1000]);
    }
    if (flush) {
      this.lastLeaseFlush = now;
      if (extend.length) this.leases.extendMany(extend);
    }
    // Leases whose grace period lapsed: release them now (not only when their pool runs out), and their flows.
    if (now - this.lastExpiry > 5000) {
      this.lastExpiry = now;
      for (const a of this.leases.expire(now)) this.cutFlows(a);
    }
    if (
      this.churnAt > this.trimmedAt &&
      now - this.churnAt >= TRIM_QUIET_MS &&
      now - this.trimmedAt >= TRIM_INTERVAL_MS
    ) {
      this.trimmedAt = now;
      trimMemory();
    }
  }

  /** Deletes the conntrack entries of an address that has no tunnel any more (after its set update). */
  private cutFlows(address: string): void {
    void this.firewall.cutFlows(address).catch((e: Error) =>
      this.log.limited("conntrack-failed", 10_000, "error", "conntrack-failed", {
        address,
        error: e.message,
      }),
    );
  }

  // ---- counters ----

  private count(reason: DropCounter, n = 1): void {
    this.drops.set(reason, (this.drops.get(reason) ?? 0) + n);
  }

  private handshake(result: string): void {
    this.handshakes.set(result, (this.handshakes.get(result) ?? 0) + 1);
  }

  /**
   * Reloads the configuration file: validates it, applies the new policy atomically, and closes with `revoked`
   * every tunnel whose identity is no longer allowed (its set elements removed and its conntrack entries deleted,
   * so established flows end too). On any error the old configuration and policy stay. Concurrent calls share
   * one reload.
   */
  reload(file = this.config.file): Promise<ReloadResult> {
    this.reloading ??= this.doReload(file).finally(() => (this.reloading = undefined));
    return this.reloading;
  }

  private async doReload(file: string): Promise<ReloadResult> {
    const t0 = performance.now();
    const startedAt = this.now();
    const fail = (error: string): ReloadResult => {
      this.log.log("error", "reload-failed", { file, error });
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
    const immutable = immutableChange(this.config, next);
    if (immutable) return fail(immutable);
    for (const warning of next.warnings) this.log.log("warn", "config-warning", { warning });
    const revoke: { t: Tunnel; reason: string }[] = [];
    for (const t of this.byAddress.values()) {
      const reason = revocationReason(this.leases.certOf(t.leaseId), t.app, next.apps, verify);
      if (reason) revoke.push({ t, reason });
    }
    const added = next.apps.filter((a) => !this.config.apps.some((o) => o.name === a.name));
    const newRoutes = [...new Set(added.filter((a) => !a.shared).map((a) => a.subnet))];
    try {
      // New subnets first, so the new policy never names an app the kernel cannot route.
      await this.system.addRoutes(this.tun.name, newRoutes);
      await this.firewall.apply(
        next.model,
        revoke.map((r) => intToIp(r.t.address)),
      );
    } catch (e) {
      await this.system.removeRoutes(this.tun.name, newRoutes); // nothing of the refused configuration stays
      return fail(`policy not applied: ${(e as Error).message}`);
    }
    this.leases.addApps(added);
    for (const a of added) this.appCounters.set(a.name, zero());
    this.config = next;
    this.verifyOpts = verify;
    // Tunnels leased while the new policy was being applied were matched against the old configuration.
    for (const t of this.byAddress.values()) {
      if (t.leasedAt < startedAt || revoke.some((r) => r.t === t)) continue;
      const reason = revocationReason(this.leases.certOf(t.leaseId), t.app, next.apps, verify);
      if (reason) revoke.push({ t, reason });
    }
    const revoked: ReloadResult["revoked"] = [];
    for (const { t, reason } of revoke) {
      const address = intToIp(t.address);
      revoked.push({ address, app: t.app, measurement: t.measurement, reason });
      this.close(t, "revoked", reason);
    }
    // Flows of revoked addresses end now, not when they time out.
    await Promise.all(
      revoked.map((r) =>
        this.firewall
          .cutFlows(r.address)
          .catch((e: Error) =>
            this.log.log("error", "conntrack-failed", { address: r.address, error: e.message }),
          ),
      ),
    );
    const res: ReloadResult = {
      ok: true,
      revoked,
      added: added.map((a) => a.name),
      ms: Math.round(performance.now() - t0),
    };
    this.log.log("info", "reloaded", { file, ...res });
    return res;
  }

  /** The audit log's rows matching `q`, newest first (the admin API's audit search). */
  auditQuery(q: Parameters<LeaseStore["audit"]["query"]>[0]): ReturnType<LeaseStore["audit"]["query"]> {
    return this.leases.audit.query(q);
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
  private notify(f: (o: GatewayObserver) => void): void {
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

  private info(t: Tunnel): TunnelInfo {
    return {
      id: t.id,
      app: t.app,
      address: intToIp(t.address),
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
    return [...this.byAddress.values()].map((t) => this.info(t)).sort((a, b) => a.id - b.id);
  }

  /** One leased tunnel with its attestation claims; undefined when no live tunnel has this id. */
  tunnel(id: number): TunnelDetail | undefined {
    const t = this.findTunnel(id);
    if (!t) return undefined;
    // Claims come from the certificate kept with the lease (not kept in memory: ~6 KB per idle tunnel).
    const der = this.leases.certOf(t.leaseId);
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
    for (const t of this.byAddress.values()) if (t.id === id) return t;
    return undefined;
  }

  stats(): GatewayStats {
    const apps: GatewayStats["apps"] = {};
    for (const [name, c] of this.appCounters) apps[name] = { ...c, tunnels: 0 };
    for (const t of this.byAddress.values()) apps[t.app]!.tunnels++;
    return {
      tunnels: this.byAddress.size,
      halfOpen: this.halfOpen.size,
      handshakes: Object.fromEntries(this.handshakes),
      drops: Object.fromEntries(this.drops),
      apps,
      tunnelList: [...this.byAddress.values()].map((t) => ({
        peer: t.peer,
        app: t.app,
        address: intToIp(t.address),
        measurement: t.measurement,
        counters: { ...t.counters },
      })),
      firewall: this.firewall.stats(),
    };
  }
}

function verifyOptions(config: GatewayConfig): VerifyOptions {
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
