/**
 * A data-path worker (a worker_thread; docs/DATAPATH.md). It owns a share of the tunnels: their DTLS sessions, one
 * UDP socket of the SO_REUSEPORT group on the gateway's port, and one queue of the multi-queue TUN. Per batch it
 * runs the same numbered pipelines as the single-threaded gateway (receive.ts, send.ts) against its own context
 * (context.ts); only the end of a handshake differs:
 *   H1. the handshake's datagrams (state "handshake") go through the DTLS session here; a ClientHello from an
 *       unknown peer goes through admission step 6 (admission.ts) with this worker's share of the caps
 *   H2. handshake done: the RA-TLS certificate's evidence is verified here (a pure function of bytes, so
 *       verification uses every core), and the verdict goes to the control thread, which decides (policy, lease)
 *   H3. the control thread's answer: `leased` (LEASE is sent from here) or `close` (refused)
 * Misdirected traffic (after the kernel's socket choice changed, or without the TUN steering program) is relayed
 * to the owning worker through the control thread.
 */
import { readFileSync } from "node:fs";
import { parentPort, workerData, type MessagePort } from "node:worker_threads";
import { verifyRaTlsCert } from "../../attest/verify.js";
import { Cert } from "../../attest/x509.js";
import { DtlsContext, DtlsListener } from "../../native/dtls.js";
import { Tun, UdpSocket } from "../../native/io.js";
import { ipv4Dst, ipToInt } from "../../packet/ip.js";
import { loadConfig, type GatewayConfig } from "../../policy/config.js";
import { MSG } from "../../tunnel/protocol.js";
import { CookieRotation, onUnknown } from "../admission.js";
import { RateLimiter, TokenBucket } from "../ratelimit.js";
import { onTunnelDatagrams } from "../receive.js";
import { onTunPackets, sendControl } from "../send.js";
import { DTLS_OVERHEAD, verifyOptions } from "../server.js";
import { sweepTunnels } from "../timers.js";
import { zero, type Tunnel } from "../tunnel.js";
import { WorkerContext } from "./context.js";
import type { FromWorker, ToWorker, WorkerInit } from "./messages.js";

const STATS_MS = 250;

/** This worker's share of the gateway-wide caps and budgets (the kernel spreads peers evenly over the workers). */
function share(config: GatewayConfig, workers: number): GatewayConfig {
  const l = config.limits;
  return {
    ...config,
    limits: {
      ...l,
      maxTunnels: Math.ceil(l.maxTunnels / workers),
      maxHalfOpen: Math.ceil(l.maxHalfOpen / workers),
      handshakesPerSecond: l.handshakesPerSecond / workers,
    },
  };
}

function buf(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

function main(port: MessagePort, init: WorkerInit): void {
  let config = share(loadConfig(init.configFile), init.workers);
  let verify = verifyOptions(config);
  const post = (m: FromWorker, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer);
  const tun = config.tun.offload
    ? Tun.openOffloaded(config.tun.name, { napi: true, multiQueue: true }, () => undefined)
    : Tun.open(config.tun.name, { napi: true, multiQueue: true });
  const udp = UdpSocket.bind(splitHost(config.listen), init.port, {
    rcvbuf: 4 << 20,
    sndbuf: 4 << 20,
    reusePort: true,
  });
  const dtls = new DtlsContext({
    role: "server",
    certPem: readFileSync(config.certificate, "utf8"),
    keyPem: readFileSync(config.key, "utf8"),
    mtu: config.tun.mtu + DTLS_OVERHEAD,
  });
  const listener = new DtlsListener(dtls);
  const ctx = new WorkerContext(
    init.index,
    config,
    ipToInt(config.tun.address.split("/")[0]!),
    new RateLimiter(config.limits.handshakesPerSecondPerSource, config.limits.handshakeBurstPerSource),
    new TokenBucket(config.limits.handshakesPerSecond, config.limits.handshakesPerSecond),
    listener,
    new CookieRotation(listener, Date.now()),
    udp,
    tun,
    port,
  );
  const gw = ctx.gw;
  let steered = false;

  /** Receive path step 1 for this worker: group by tunnel; handshakes (H1), leased tunnels (receive.ts 2-5). */
  const onDatagrams = (data: Buffer[], peers: string[], relayed: boolean): void => {
    let groups: Map<Tunnel, Buffer[]> | undefined;
    let relay: { peers: string[]; data: Uint8Array[] } | undefined;
    const now = ctx.now();
    for (let i = 0; i < data.length; i++) {
      const peer = peers[i]!;
      const t = ctx.byPeer.get(peer);
      if (t) {
        if (t.throttledUntil > now) {
          ctx.count("throttled");
          continue;
        }
        groups ??= new Map();
        const g = groups.get(t);
        if (g) g.push(data[i]!);
        else groups.set(t, [data[i]!]);
        continue;
      }
      const owner = relayed ? undefined : ctx.peerOwner.get(peer);
      if (owner !== undefined && owner !== ctx.index) {
        relay ??= { peers: [], data: [] };
        relay.peers.push(peer);
        relay.data.push(new Uint8Array(data[i]!)); // a copy: the batch's memory stays with the socket
      } else onUnknown(gw, data[i]!, peer);
    }
    if (relay) post({ type: "relay-udp", ...relay });
    if (!groups) return;
    const toTun: Buffer[] = [];
    for (const [t, batch] of groups) {
      if (t.state === "handshake") onHandshake(t, batch);
      else onTunnelDatagrams(gw, t, batch, toTun);
    }
    if (toTun.length) tun.writeMany(toTun);
  };

  /** H1: a tunnel still in its handshake (or waiting for the control thread's decision). */
  const onHandshake = (t: Tunnel, batch: Buffer[]): void => {
    let r;
    try {
      r = t.session.receiveMany(batch);
    } catch (e) {
      ctx.count("dtls-error");
      return ctx.close(t, "protocol-error", (e as Error).message, false);
    }
    if (r.out.length) udp.sendMany(r.out, t.peer);
    const waiting = ctx.pending.has(t.id);
    if (r.error) {
      ctx.count("dtls-error");
      ctx.log.limited(`dtls:${t.peer}`, 5000, "warn", "dtls-error", { peer: t.peer, error: r.error });
      if (!waiting) return; // as receive.ts: nothing is authenticated before the handshake ends
      if (!r.established) return ctx.close(t, "protocol-error", r.error, false);
    }
    if (r.records.length) {
      t.lastRx = ctx.now();
      ctx.count("not-leased", r.records.length);
    }
    if (!waiting && r.established) admit(t);
    if (r.closed && r.established) ctx.close(t, "client-closed", "peer sent close_notify", false);
  };

  /** H2: verify the evidence here; the control thread matches the app and leases (pool.ts). */
  const admit = (t: Tunnel): void => {
    ctx.churnAt = ctx.now();
    ctx.halfOpen.delete(t);
    ctx.pending.set(t.id, t);
    const der = t.session.peerCertificate();
    t.session.trimPeerCertificate();
    const base = {
      type: "admit",
      hs: t.id,
      peer: t.peer,
      maxRecord: t.session.maxRecord(),
      createdAt: t.createdAt,
    } as const;
    if (!der)
      return post({
        ...base,
        der: null,
        fingerprint: "",
        verdict: { verified: false, code: "no_certificate", reason: "no client certificate" },
      });
    let cert: Cert;
    try {
      cert = Cert.parseOnce(der);
    } catch (e) {
      return post({
        ...base,
        der: null,
        fingerprint: "",
        verdict: {
          verified: false,
          code: "certificate_unreadable",
          reason: `client certificate unreadable: ${(e as Error).message}`,
        },
      });
    }
    const verdict = verifyRaTlsCert(cert, verify);
    post({ ...base, der: new Uint8Array(cert.der), fingerprint: cert.fingerprint, verdict });
  };

  /** Send path for this worker's TUN queue: without steering, packets for other workers' addresses are relayed. */
  tun.onPackets((packets) => {
    if (steered) return onTunPackets(gw, packets);
    let mine: Buffer[] | undefined;
    let relay: Uint8Array[] | undefined;
    let owners: number[] | undefined;
    for (const p of packets) {
      const dst = p.length >= 20 && p[0]! >> 4 === 4 ? ipv4Dst(p) : -1;
      const owner = ctx.byAddress.has(dst) ? ctx.index : ctx.addressOwner.get(dst);
      if (owner !== undefined && owner !== ctx.index) {
        (relay ??= []).push(new Uint8Array(p)); // a copy: the next batch reuses the reader's memory
        (owners ??= []).push(owner);
      } else (mine ??= []).push(p);
    }
    if (mine) onTunPackets(gw, mine);
    if (relay) post({ type: "relay-tun", owner: owners!, packets: relay });
  });
  udp.onDatagrams((b) => onDatagrams(b.data, b.peers, false));
  // A bug that reaches the event loop ends this worker, not the gateway: close the socket and the TUN queue first
  // (they leave the kernel's SO_REUSEPORT group and queue set at once; a thread torn down with them still polling
  // crashes the process), then exit; the control thread closes its tunnels and starts a new worker (pool.ts C4).
  process.on("uncaughtException", (e) => {
    ctx.log.log("error", "worker-failed", {
      error: e.message,
      stack: e.stack?.split("\n").slice(0, 6).join(" | "),
    });
    udp.close();
    tun.close();
    process.exit(1);
  });

  port.on("message", (m: ToWorker) => {
    switch (m.type) {
      case "leased": {
        const t = ctx.pending.get(m.hs);
        ctx.pending.delete(m.hs);
        if (!t || t.state === "closed") {
          // Closed while the control thread decided: tell it, so the lease goes back into its grace period.
          post({
            type: "closed",
            key: m.key,
            reason: "client-closed",
            message: "tunnel ended before its lease was sent",
            keepLease: true,
            counters: zero(),
            lastRx: 0,
            lastTx: 0,
          });
          return;
        }
        Object.assign(t, {
          state: "leased",
          app: m.app,
          address: m.address,
          leaseId: m.leaseId,
          measurement: m.measurement,
          maxRecord: t.session.maxRecord(),
          leasedAt: m.leasedAt,
        });
        ctx.byKey.set(m.key, t);
        ctx.keyOf.set(t, m.key);
        ctx.byAddress.set(m.address, t);
        ctx.leased.add(t);
        if (!ctx.appCounters.has(m.app)) ctx.appCounters.set(m.app, zero());
        sendControl(gw, t, { type: MSG.LEASE, lease: m.lease });
        return;
      }
      case "close": {
        const t = m.hs !== undefined ? ctx.pending.get(m.hs) : ctx.byKey.get(m.key);
        if (t) ctx.close(t, m.reason, m.message, m.notify, true, false);
        return;
      }
      case "owner":
        if (m.worker < 0) {
          if (m.peer) ctx.peerOwner.delete(m.peer);
          if (m.address) ctx.addressOwner.delete(m.address);
        } else {
          if (m.peer) ctx.peerOwner.set(m.peer, m.worker);
          if (m.address) ctx.addressOwner.set(m.address, m.worker);
        }
        return;
      case "relay-udp":
        return onDatagrams(m.data.map(buf), m.peers, true);
      case "relay-tun":
        return onTunPackets(gw, m.packets.map(buf));
      case "steered":
        steered = m.on;
        return;
      case "reload":
        config = share(loadConfig(init.configFile), init.workers);
        verify = verifyOptions(config);
        ctx.config = config;
        return;
      case "crash":
        setImmediate(() => {
          throw new Error("worker crash requested (SENG_TEST_HOOKS)");
        });
        return;
      case "stop":
        clearInterval(timer);
        report();
        udp.close();
        tun.close();
        port.close();
        return;
    }
  });

  const reported = new WeakMap<Tunnel, number>();
  const report = (): void => {
    const tunnels: FromWorker & { type: "stats" } = {
      type: "stats",
      drops: Object.fromEntries(ctx.drops),
      handshakes: Object.fromEntries(ctx.handshakes),
      apps: Object.fromEntries(ctx.appCounters),
      tunnels: [],
      halfOpen: ctx.halfOpen.size + ctx.pending.size,
    };
    ctx.drops.clear();
    ctx.handshakes.clear();
    for (const [key, t] of ctx.byKey) {
      const sig = t.lastRx * 3 + t.lastTx;
      if (reported.get(t) === sig) continue;
      reported.set(t, sig);
      const c = t.counters;
      tunnels.tunnels.push([key, c.rxPackets, c.rxBytes, c.txPackets, c.txBytes, t.lastRx, t.lastTx]);
    }
    post(tunnels);
  };
  let lastReport = 0;
  const timer = setInterval(() => {
    const now = ctx.now();
    sweepTunnels(gw, now);
    if (now - lastReport >= STATS_MS) {
      lastReport = now;
      report();
    }
  }, 200);
  post({ type: "ready", port: udp.port, offload: tun.offload, tun: tun.name });
}

function splitHost(s: string): string {
  return s.slice(0, s.lastIndexOf(":")).replace(/^\[|\]$/g, "");
}

if (parentPort) main(parentPort, workerData as WorkerInit);
