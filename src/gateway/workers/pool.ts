/**
 * The control thread's side of the data-path workers (`workers: N` or `auto`; docs/DATAPATH.md).
 *
 * Each worker (worker.ts) owns a share of the tunnels with their sessions; the control thread keeps a Tunnel for
 * each leased one (a RemoteSession in place of its DTLS session), so leases, the firewall's sets, reload and
 * revocation, the admin API, logs and observers work as with one thread. The control thread decides; workers move
 * packets:
 *   C1. a worker's `admit` (handshake done, evidence verified there): match the app, lease, join the sets, steer
 *       the address to the worker's TUN queue, tell every worker who owns the peer and the address, answer `leased`
 *       (or close with the refusal)
 *   C2. closing a tunnel (revocation, admin, replacement, timers of the control thread) sends `close` to its worker;
 *       a worker's own closes (idle, client-closed, misbehaving) come back as `closed` and go through Gateway.close
 *   C3. counters arrive every 250 ms (`stats`): drops and handshakes as increments, apps and tunnels as totals
 *   C4. a worker that dies: its tunnels are closed here keeping their leases (the runtimes reconnect and get the
 *       same addresses back), its addresses leave the steering map (nothing is routed to it), and a new worker
 *       takes its place (at most MAX_RESTARTS a minute)
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { primaryMeasurement, type Verdict } from "../../attest/claims.js";
import { matchApp } from "../../attest/policy.js";
import type { DtlsSession } from "../../native/dtls.js";
import { TunSteering } from "../../native/steer.js";
import { intToIp, parseCidr } from "../../packet/ip.js";
import type { GatewayConfig } from "../../policy/config.js";
import { type CloseReason, type Lease } from "../../tunnel/protocol.js";
import { refuse } from "../admission.js";
import type { Level } from "../log.js";
import type { Gateway } from "../server.js";
import { Tunnel, zero, type Counters, type DropCounter } from "../tunnel.js";
import type { FromWorker, ToWorker, WorkerInit } from "./messages.js";

const MAX_RESTARTS = 5;
const STOP_WAIT_MS = 3000;

/** Workers for a configuration: `auto` is one per core; 1 means no workers (the single-threaded gateway). */
export function workerCount(config: GatewayConfig): number {
  return config.workers === "auto" ? availableParallelism() : config.workers;
}

interface Slot {
  index: number;
  worker: Worker;
  alive: boolean;
  /** Leased tunnels (control side) this worker owns. */
  tunnels: Set<Tunnel>;
  /** The worker's app counter totals (its last report). */
  apps: Record<string, Counters>;
  halfOpen: number;
}

/** Stands in for a worker-owned tunnel's DTLS session on the control thread; close() tells the worker. */
export class RemoteSession {
  /** The worker no longer has the tunnel (it closed it, or died): closing only updates the control side. */
  gone = false;

  constructor(
    private readonly pool: WorkerPool,
    readonly slot: Slot,
    readonly hs: number,
    private readonly der: Uint8Array | null,
    private readonly max: number,
  ) {}

  established(): boolean {
    return false;
  }
  free(): void {}
  peerCertificate(): Buffer | null {
    return this.der ? Buffer.from(this.der) : null;
  }
  trimPeerCertificate(): number {
    return 0;
  }
  maxRecord(): number {
    return this.max;
  }

  /** Called by Gateway.close before it updates its maps. */
  close(t: Tunnel, reason: CloseReason, message: string, notify: boolean): void {
    this.pool.closing(t, this, reason, message, notify);
  }
}

export class WorkerPool {
  readonly slots: Slot[] = [];
  port = 0;
  offload = false;
  tunName = "";
  private readonly byKey = new Map<number, Tunnel>();
  /** App counters of workers that are gone, so totals never go backwards. */
  private readonly baseApps = new Map<string, Counters>();
  private accepting = false;
  private readonly deferred: { slot: Slot; m: FromWorker & { type: "admit" } }[] = [];
  private stopping = false;
  private restarts: number[] = [];
  /** The TUN steering program (packets to a leased address → its worker's queue), when the kernel allowed it. */
  private steering: TunSteering | undefined;
  /** Worker index by TUN queue number (the kernel numbers queues in attach order and fills a gap with the last). */
  private readonly queues: number[] = [];

  constructor(
    private readonly gw: Gateway,
    readonly size: number,
    private readonly logLevel: Level = "info",
  ) {}

  /** Starts the workers one after the other (the first one's port is every worker's port; queues attach in order). */
  async start(): Promise<void> {
    const [, p] = splitHostPort(this.gw.config.listen);
    this.port = p;
    for (let i = 0; i < this.size; i++) await this.spawn(i);
    try {
      this.steering = TunSteering.attach(this.tunName, {
        napi: true,
        offload: this.offload,
        maxEntries: this.gw.config.limits.maxTunnels,
      });
      this.broadcast({ type: "steered", on: true });
    } catch (e) {
      // Without it the kernel spreads flows over the queues by hash, and workers relay what is not theirs.
      this.gw.log.log("warn", "tun-steering-unavailable", { error: (e as Error).message });
    }
    if (process.env.SENG_TEST_HOOKS === "1") process.on("SIGUSR2", this.crashFirst);
  }

  private readonly crashFirst = (): void => this.crash(0);

  /** Admissions wait until the gateway's firewall and routes are in place. */
  accept(): void {
    this.accepting = true;
    for (const { slot, m } of this.deferred.splice(0)) void this.admit(slot, m);
  }

  private spawn(index: number): Promise<void> {
    const init: WorkerInit = {
      index,
      configFile: this.gw.config.file,
      workers: this.size,
      port: this.port,
      logLevel: this.logLevel,
    };
    const worker = import.meta.url.endsWith(".ts")
      ? // From source (tests, tsx): a worker does not inherit tsx's loader, so it registers it before the import.
        new Worker(
          `import(${JSON.stringify(import.meta.resolve("tsx/esm/api"))}).then((m) => { m.register(); ` +
            `return import(${JSON.stringify(new URL("./worker.ts", import.meta.url).href)}); })`,
          { eval: true, workerData: init },
        )
      : new Worker(new URL("./worker.js", import.meta.url), { workerData: init });
    const slot: Slot = { index, worker, alive: true, tunnels: new Set(), apps: {}, halfOpen: 0 };
    this.slots[index] = slot;
    return new Promise((resolve, reject) => {
      let ready = false;
      worker.on("message", (m: FromWorker) => {
        if (m.type === "ready") {
          ready = true;
          this.port = m.port;
          this.offload = m.offload;
          this.tunName = m.tun;
          this.queues.push(index);
          if (this.steering) this.post(slot, { type: "steered", on: true });
          // A worker that replaces a dead one learns who owns which peer and address, to relay what it gets.
          for (const t of this.byKey.values()) {
            const owner = (t.session as unknown as RemoteSession).slot.index;
            this.post(slot, { type: "owner", peer: t.peer, address: t.address, worker: owner });
          }
          return resolve();
        }
        this.onMessage(slot, m);
      });
      worker.on("error", (e) => {
        if (!ready) return reject(new Error(`worker ${index}: ${e.message}`, { cause: e }));
        this.gw.log.log("error", "worker-error", { worker: index, error: e.message });
      });
      worker.on("exit", (code) => {
        if (!ready) reject(new Error(`worker ${index} exited during start (${code})`));
        else this.onExit(slot, code);
      });
    });
  }

  private post(slot: Slot, m: ToWorker, transfer?: ArrayBuffer[]): void {
    if (slot.alive) slot.worker.postMessage(m, transfer);
  }

  private broadcast(m: ToWorker): void {
    for (const s of this.slots) this.post(s, m);
  }

  private onMessage(slot: Slot, m: FromWorker): void {
    const gw = this.gw;
    switch (m.type) {
      case "admit":
        if (this.accepting) void this.admit(slot, m);
        else this.deferred.push({ slot, m });
        return;
      case "closed": {
        const t = this.byKey.get(m.key);
        if (!t) return;
        Object.assign(t.counters, m.counters);
        if (m.lastRx) t.lastRx = m.lastRx;
        if (m.lastTx) t.lastTx = m.lastTx;
        (t.session as unknown as RemoteSession).gone = true;
        gw.close(t, m.reason, m.message, false, m.keepLease);
        return;
      }
      case "relay-udp": {
        const to = new Map<Slot, { peers: string[]; data: Uint8Array[] }>();
        for (let i = 0; i < m.peers.length; i++) {
          const t = gw.byPeer.get(m.peers[i]!);
          const s = t && (t.session as unknown as RemoteSession).slot;
          if (!s || s === slot) {
            gw.count("unknown-session");
            continue;
          }
          const g = to.get(s) ?? { peers: [], data: [] };
          g.peers.push(m.peers[i]!);
          g.data.push(m.data[i]!);
          to.set(s, g);
        }
        for (const [s, g] of to) this.post(s, { type: "relay-udp", ...g });
        return;
      }
      case "relay-tun": {
        const to = new Map<number, Uint8Array[]>();
        m.owner.forEach((o, i) => to.set(o, [...(to.get(o) ?? []), m.packets[i]!]));
        for (const [o, packets] of to) {
          const s = this.slots[o];
          if (s?.alive) this.post(s, { type: "relay-tun", packets });
          else gw.count("no-route", packets.length);
        }
        return;
      }
      case "block":
        return gw.guard.block(m.peer, m.ms);
      case "log":
        return gw.log.log(m.level, m.event, { ...m.fields, worker: slot.index });
      case "stats": {
        for (const [k, n] of Object.entries(m.drops)) gw.count(k as DropCounter, n);
        for (const [k, n] of Object.entries(m.handshakes)) for (let i = 0; i < n; i++) gw.handshake(k);
        slot.apps = m.apps;
        slot.halfOpen = m.halfOpen;
        this.sumApps(Object.keys(m.apps));
        for (const [key, rxP, rxB, txP, txB, lastRx, lastTx] of m.tunnels) {
          const t = this.byKey.get(key);
          if (!t) continue;
          t.counters.rxPackets = rxP;
          t.counters.rxBytes = rxB;
          t.counters.txPackets = txP;
          t.counters.txBytes = txB;
          t.lastRx = lastRx;
          t.lastTx = lastTx;
        }
        return;
      }
      case "ready":
        return;
    }
  }

  /** The gateway's app counters are the sum of every worker's (kept in place: the metrics hold the objects). */
  private sumApps(apps: string[]): void {
    for (const app of apps) {
      const sum = { ...(this.baseApps.get(app) ?? zero()) };
      for (const s of this.slots) {
        const c = s.apps[app];
        if (!c) continue;
        sum.rxPackets += c.rxPackets;
        sum.rxBytes += c.rxBytes;
        sum.txPackets += c.txPackets;
        sum.txBytes += c.txBytes;
      }
      const target = this.gw.appCounters.get(app);
      if (target) Object.assign(target, sum);
      else this.gw.appCounters.set(app, sum);
    }
  }

  /** Handshakes in progress in the workers (their last reports). */
  halfOpen(): number {
    let n = 0;
    for (const s of this.slots) if (s.alive) n += s.halfOpen;
    return n;
  }

  /** C1: the decision at the end of a handshake, as admission.ts's onEstablished after verification. */
  private async admit(slot: Slot, m: FromWorker & { type: "admit" }): Promise<void> {
    const gw = this.gw;
    if (!slot.alive) return; // its worker died after asking: the runtime will try again
    const session = new RemoteSession(this, slot, m.hs, m.der, m.maxRecord);
    const t = new Tunnel(m.peer, session as unknown as DtlsSession, m.createdAt);
    gw.churnAt = gw.now();
    const verdict = m.verdict as Verdict;
    const measurement = verdict.claims ? primaryMeasurement(verdict.claims) : "";
    if (!verdict.verified) {
      const code = verdict.code ?? "attestation_failed";
      const early = code === "no_certificate" || code === "certificate_unreadable";
      return refuse(
        gw,
        t,
        early ? (verdict.reason ?? code) : `attestation failed (${code}): ${verdict.reason}`,
        measurement,
        code,
      );
    }
    const match = matchApp(verdict, gw.config.apps);
    if (!match.matched)
      return refuse(gw, t, `no app matches: ${match.reasons.join("; ")}`, measurement, "no_app_match");
    const app = gw.config.apps.find((a) => a.name === match.app)!;
    // Workers speak protocol version 1 only (no ALPN on their listeners): IPv4 leases. The configuration refuses
    // IPv6 apps with workers, so this is a second lock, not a path.
    if (!app.subnet)
      return refuse(gw, t, `app ${app.name} has no IPv4 subnet`, measurement, "protocol_version");
    const now = gw.now();
    const grace = gw.config.tunnel.leaseGraceSeconds * 1000;
    const der = Buffer.from(m.der!);
    let lease;
    try {
      // The SQLite store answers at once (the configuration refuses workers with the etcd store).
      lease = await gw.leases.acquire({
        app: app.name,
        keyFp: m.fingerprint,
        measurement,
        outer: t.peer,
        now,
        until: now + grace,
        cert: der,
      });
    } catch (e) {
      gw.handshake("store-error");
      return gw.close(
        t,
        "shutting-down",
        `this gateway cannot lease an address now: ${(e as Error).message}`,
      );
    }
    if (!slot.alive) return; // its worker died while the store answered: the lease lapses after its grace
    if (!lease) {
      gw.handshake("pool-exhausted");
      gw.log.log("warn", "pool-exhausted", { app: app.name, subnet: app.subnet, peer: t.peer, measurement });
      return gw.close(t, "pool-exhausted", `no free address in ${app.subnet} for app ${app.name}`);
    }
    const holder = gw.byAddress.get(lease.address);
    if (holder && holder !== t)
      gw.close(holder, "client-closed", "replaced by a new tunnel of the same key", false, true);
    Object.assign(t, {
      state: "leased",
      app: app.name,
      address: lease.address,
      leaseId: lease.id,
      keyFp: m.fingerprint,
      measurement,
      maxRecord: m.maxRecord,
      leasedAt: now,
    });
    this.byKey.set(t.id, t);
    slot.tunnels.add(t);
    gw.byPeer.set(t.peer, t);
    gw.byAddress.set(lease.address, t);
    gw.leased.add(t);
    gw.firewall.tunnelUp(intToIp(lease.address), app.name);
    this.steering?.set(lease.address, this.queues.indexOf(slot.index));
    this.broadcast({ type: "owner", peer: t.peer, address: lease.address, worker: slot.index });
    const msg: Lease = {
      address: intToIp(lease.address),
      prefix: parseCidr(app.subnet).prefix,
      gateway: intToIp(gw.gatewayAddress),
      mtu: gw.config.tun.mtu,
      dns: gw.config.dns,
      lifetime: gw.config.tunnel.leaseGraceSeconds,
      app: app.name,
    };
    this.post(slot, {
      type: "leased",
      hs: m.hs,
      key: t.id,
      lease: msg,
      app: app.name,
      address: lease.address,
      leaseId: lease.id,
      measurement,
      leasedAt: now,
    });
    gw.handshake("accepted");
    gw.log.log("info", "tunnel-up", {
      peer: t.peer,
      app: app.name,
      address: msg.address,
      measurement,
      key: m.fingerprint,
      resumed: lease.resumed,
      simulated: verdict.claims?.simulated ?? false,
      tcbStatus: verdict.tcbStatus,
      setupMs: now - m.createdAt,
      worker: slot.index,
    });
    gw.notify((o) => {
      o.verdict?.("accepted", "accepted", now - m.createdAt);
      o.tunnelUp?.(gw.info(t));
    });
  }

  /** C2: Gateway.close of a worker's tunnel (before the gateway updates its maps). */
  closing(t: Tunnel, s: RemoteSession, reason: CloseReason, message: string, notify: boolean): void {
    const gone = s.gone;
    s.gone = true;
    if (t.state !== "leased") {
      // Refused at admission: the worker still holds the session, waiting for the decision.
      if (!gone) this.post(s.slot, { type: "close", key: -1, hs: s.hs, reason, message, notify });
      return;
    }
    if (!gone) this.post(s.slot, { type: "close", key: t.id, reason, message, notify });
    this.byKey.delete(t.id);
    s.slot.tunnels.delete(t);
    if (this.gw.byAddress.get(t.address) === t) {
      this.steering?.delete(t.address);
      this.broadcast({ type: "owner", peer: t.peer, address: t.address, worker: -1 });
    }
  }

  /** C4: a worker ended while the gateway runs. */
  private onExit(slot: Slot, code: number): void {
    if (!slot.alive) return;
    slot.alive = false;
    if (this.stopping) return;
    const gw = this.gw;
    const tunnels = [...slot.tunnels];
    gw.log.log("error", "worker-died", { worker: slot.index, code, tunnels: tunnels.length });
    for (const [app, c] of Object.entries(slot.apps)) {
      const b = this.baseApps.get(app) ?? zero();
      b.rxPackets += c.rxPackets;
      b.rxBytes += c.rxBytes;
      b.txPackets += c.txPackets;
      b.txBytes += c.txBytes;
      this.baseApps.set(app, b);
    }
    slot.apps = {};
    slot.halfOpen = 0;
    for (const t of tunnels) {
      (t.session as unknown as RemoteSession).gone = true;
      gw.close(t, "shutting-down", `worker ${slot.index} stopped (exit code ${code})`, false, true);
    }
    // Its TUN queue is gone: the kernel moved the last queue into its place. Steer that worker's addresses there.
    const pos = this.queues.indexOf(slot.index);
    const last = this.queues.pop()!;
    if (pos >= 0 && pos < this.queues.length) {
      this.queues[pos] = last;
      for (const t of this.slots[last]!.tunnels) this.steering?.set(t.address, pos);
    }
    const now = gw.now();
    this.restarts = this.restarts.filter((at) => now - at < 60_000);
    if (this.restarts.length >= MAX_RESTARTS) {
      gw.log.log("error", "worker-not-restarted", {
        worker: slot.index,
        note: `${MAX_RESTARTS} restarts in a minute; the other workers carry on`,
      });
      return;
    }
    this.restarts.push(now);
    this.spawn(slot.index).then(
      () => gw.log.log("info", "worker-restarted", { worker: slot.index }),
      (e: Error) => gw.log.log("error", "worker-restart-failed", { worker: slot.index, error: e.message }),
    );
  }

  /** Test hook (SENG_TEST_HOOKS=1): worker `index` throws from its event loop, as a bug would make it. */
  crash(index: number): void {
    const s = this.slots[index];
    if (s) this.post(s, { type: "crash" });
  }

  reload(): void {
    this.broadcast({ type: "reload" });
  }

  /** Stops every worker (the gateway has closed the tunnels first); terminates one that does not end in time. */
  async stop(): Promise<void> {
    this.stopping = true;
    process.off("SIGUSR2", this.crashFirst);
    this.steering?.close();
    await Promise.all(
      this.slots.map(async (s) => {
        if (!s.alive) return;
        const exited = new Promise((r) => s.worker.once("exit", r));
        this.post(s, { type: "stop" });
        const timer = setTimeout(() => void s.worker.terminate(), STOP_WAIT_MS);
        await exited;
        clearTimeout(timer);
        s.alive = false;
      }),
    );
  }
}

function splitHostPort(s: string): [string, number] {
  const i = s.lastIndexOf(":");
  return [s.slice(0, i).replace(/^\[|\]$/g, ""), Number(s.slice(i + 1))];
}
