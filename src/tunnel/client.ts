/**
 * The runtime side of a SENG tunnel: one DTLS session to the gateway, authenticated with an RA-TLS certificate,
 * with the gateway pinned by certificate fingerprint. It receives the lease, acknowledges it, carries IP packets
 * both ways, sends keepalives, and reconnects with backoff (with the same key, so the gateway gives the same address
 * back) after a loss or a gateway restart. Packet I/O is the caller's: `onPackets` and `send`.
 *
 * Only what authenticates counts: datagrams from any address but the gateway's are ignored; liveness is refreshed
 * only by records that decrypt (and by the handshake completing); nothing unauthenticated (a stray alert, garbage,
 * a plaintext close) ends a handshake attempt, which ends only by its own deadline. A tunnel silent for
 * `probeSeconds` gets a KEEPALIVE, which the gateway answers; no authenticated answer within `probeWaitSeconds`
 * and the tunnel is lost. Each connection attempt uses a fresh UDP socket (a new source port), so the gateway
 * sees a new peer and its handshake is never mistaken for the old tunnel's traffic; the same key gets the same
 * address back and replaces the old tunnel.
 *
 * Several gateways (a cluster sharing its leases, docs/CLUSTER.md): `gateway` may list them, comma-separated; all
 * are pinned with the same fingerprint. After a loss the next attempt goes to the next gateway of the list (round
 * robin), where the same key gets the same address back; every attempt is a full handshake, so the identity is
 * checked again by the gateway it lands on.
 *
 *   send:    packets → DTLS records (one per packet) → datagrams → sendmmsg
 *   receive: datagrams → DTLS → control messages (LEASE, KEEPALIVE, CLOSE) or IP packets → onPackets
 *
 * Protocol version 2 is offered with ALPN ("seng/2", then "seng/1"); a gateway that selects none speaks version 1
 * (IPv4 leases only). Control messages carry the negotiated version.
 */
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import { DtlsContext, DtlsSession } from "../native/dtls.js";
import { canonicalPeer, UdpSocket } from "../native/io.js";
import {
  ALPN_OFFER,
  decodeControl,
  encodeControl,
  isControl,
  MSG,
  ProtocolError,
  versionFromAlpn,
  type CloseReason,
  type Lease,
  type ProtocolVersion,
} from "./protocol.js";

export interface TunnelClientOptions {
  /** Gateway "host:port", or several, comma-separated (tried in turn after each loss; see the file comment). */
  gateway: string;
  /** SHA-256 (hex) of the gateway certificate's DER. */
  pin: string;
  /** RA-TLS certificate (PEM) and its private key (PKCS#8 PEM). */
  certPem: string;
  keyPem: string;
  /** Send a KEEPALIVE when nothing was sent for this long (default 10). */
  keepaliveSeconds?: number;
  /** Nothing authenticated received for this long: probe with a KEEPALIVE (default 4; 1 with several gateways). */
  probeSeconds?: number;
  /** A probe unanswered for this long: the tunnel is lost (default 2; 1 with several gateways). */
  probeWaitSeconds?: number;
  /** Nothing authenticated received for this long: the tunnel is lost, probes or not (default 30). */
  deadSeconds?: number;
  /** A handshake attempt that has not completed after this long is abandoned and retried (default 4). */
  handshakeSeconds?: number;
  /** Reconnect after loss (default true). Never after `policy-rejected` or `revoked`. */
  reconnect?: boolean;
  /** Backoff bounds for reconnection, ms (default [100, 2000]). */
  backoffMs?: [number, number];
  /** Largest UDP payload to send (default 1464: a 1400-byte packet plus DTLS overhead, within a 1500-byte path). */
  mtu?: number;
  /**
   * Highest protocol version to offer (default 2: ALPN "seng/2" then "seng/1"). 1 offers no ALPN at all, as
   * runtimes before version 2 did (for compatibility tests).
   */
  maxVersion?: ProtocolVersion;
}

export interface TunnelClientEvents {
  lease: [Lease];
  packets: [Buffer[]];
  closed: [{ reason: CloseReason | "lost"; message: string; final: boolean }];
  error: [Error];
}

/** Reasons after which reconnecting is pointless: the gateway will refuse again. */
const FINAL: ReadonlySet<string> = new Set(["policy-rejected", "revoked"]);

export class TunnelClient extends EventEmitter<TunnelClientEvents> {
  private readonly ctx: DtlsContext;
  private udp: UdpSocket;
  /** The gateways to walk, and the one the current attempt goes to. */
  private readonly gateways: readonly string[];
  private index = 0;
  /** The gateways (indexes) that showed a certificate other than the pinned one since the last lease. */
  private readonly pinMismatches = new Set<number>();
  private session: DtlsSession | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** When something authenticated was last received, and when the current attempt or probe began. */
  private lastRx = 0;
  private lastTx = 0;
  private attemptAt = 0;
  private probeAt = 0;
  /** Datagrams ignored because they came from another address than the gateway's. */
  strays = 0;
  private attempt = 0;
  private stopped = false;
  private unrefed = false;
  lease: Lease | undefined;
  /** The protocol version of the current session (negotiated in its handshake). */
  version: ProtocolVersion = 1;
  /** Whether the current session has received its LEASE (`lease` may be the previous session's). */
  private sessionLeased = false;

  constructor(readonly opts: TunnelClientOptions) {
    super();
    this.ctx = new DtlsContext({
      role: "client",
      certPem: opts.certPem,
      keyPem: opts.keyPem,
      mtu: opts.mtu ?? 1464,
      ...(opts.maxVersion === 1 ? {} : { alpn: ALPN_OFFER }),
    });
    // As the socket's reader writes peers (canonical IPv6, mapped IPv4 as IPv4), or every reply would be a stray.
    this.gateways = gatewayList(opts.gateway).map(canonicalPeer);
    this.udp = this.bind();
  }

  /** The gateway ("host:port") the current or next attempt goes to. */
  get peer(): string {
    return this.gateways[this.index]!;
  }

  private get host(): string {
    return this.peer.slice(0, this.peer.lastIndexOf(":")).replace(/^\[|\]$/g, "");
  }

  /** Probe timings: faster with several gateways, where noticing a dead one early is what failover waits for. */
  private get probeMs(): [number, number] {
    const multi = this.gateways.length > 1;
    return [
      (this.opts.probeSeconds ?? (multi ? 1 : 4)) * 1000,
      (this.opts.probeWaitSeconds ?? (multi ? 1 : 2)) * 1000,
    ];
  }

  /** A fresh socket; datagrams from anyone but the gateway are ignored (they cannot be authenticated anyway). */
  private bind(): UdpSocket {
    const udp = UdpSocket.bind(this.host.includes(":") ? "::" : "0.0.0.0", 0, {
      rcvbuf: 4 << 20,
      sndbuf: 4 << 20,
    });
    udp.onDatagrams((b) => {
      if (udp !== this.udp) return;
      let data = b.data;
      if (b.peers.some((p) => p !== this.peer)) {
        data = b.data.filter((_, k) => b.peers[k] === this.peer);
        this.strays += b.data.length - data.length;
      }
      if (data.length) this.onDatagrams(data);
    });
    if (this.unrefed) udp.unref();
    return udp;
  }

  /** Starts the handshake (and, after losses, reconnects until `close()`). */
  connect(): void {
    const fresh = this.stopped || this.session !== undefined || this.attemptAt !== 0;
    this.stopped = false;
    this.session?.free();
    if (fresh) {
      // A new source port for every attempt after the first (see the file comment).
      try {
        this.udp.close();
      } catch {
        // already closed
      }
      this.udp = this.bind();
    }
    this.session = DtlsSession.client(this.ctx);
    this.sessionLeased = false;
    this.attemptAt = Date.now();
    this.probeAt = 0;
    this.udp.sendMany(this.session.start(), this.peer);
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), 100);
    if (this.unrefed) this.timer.unref();
  }

  /** Sends IP packets through the tunnel (dropped while no lease is held). */
  send(packets: Buffer[]): void {
    const s = this.session;
    // Only once this session has its lease: a gateway still admitting the tunnel (attestation, the store) treats
    // data before the lease as abuse; after a reconnection `lease` is the previous session's until the new one.
    if (!s || !this.sessionLeased || packets.length === 0) return;
    const max = s.maxRecord();
    const fit = packets.every((p) => p.length <= max) ? packets : packets.filter((p) => p.length <= max);
    this.lastTx = Date.now();
    if (fit.length) this.udp.sendMany(s.send(fit), this.peer);
  }

  /**
   * Lets the process exit while the tunnel is up (now and after reconnections): an in-process runtime's sockets,
   * not the tunnel, decide how long an app lives.
   */
  unref(): this {
    this.unrefed = true;
    try {
      this.udp.unref();
    } catch {
      // already closed
    }
    this.timer?.unref();
    return this;
  }

  /** Closes the tunnel for good, telling the gateway. */
  close(message = "runtime closing"): void {
    this.stopped = true;
    clearInterval(this.timer);
    if (this.session?.established()) {
      try {
        this.udp.sendMany(
          [
            ...this.session.send([
              encodeControl({ type: MSG.CLOSE, reason: "client-closed", message }, this.version),
            ]),
            ...this.session.shutdown(),
          ],
          this.peer,
        );
      } catch {
        // best effort
      }
    }
    this.session?.free();
    this.session = undefined;
    this.udp.close();
  }

  private onDatagrams(data: Buffer[]): void {
    const s = this.session;
    if (!s) return;
    const wasEstablished = s.established();
    const r = s.receiveMany(data);
    if (r.out.length) this.udp.sendMany(r.out, this.peer);
    // Only authenticated input counts as a sign of life: decrypted records, or the handshake completing.
    if (r.records.length || (!wasEstablished && r.established)) {
      this.lastRx = Date.now();
      this.probeAt = 0;
    }
    if (!wasEstablished && r.established) {
      try {
        this.version = versionFromAlpn(s.alpn());
      } catch (e) {
        return this.lost("protocol-error", (e as Error).message);
      }
      const der = s.peerCertificate();
      const fp = der ? createHash("sha256").update(der).digest("hex") : "";
      if (fp !== this.opts.pin.toLowerCase()) {
        // Say so before leaving: the gateway may have leased an address already, which it then releases at once
        // instead of holding the tunnel (and the address in the app's set) until its idle timeout.
        try {
          this.udp.sendMany(
            [
              ...s.send([
                encodeControl(
                  {
                    type: MSG.CLOSE,
                    reason: "policy-rejected",
                    message: "gateway certificate does not match the pin",
                  },
                  this.version,
                ),
              ]),
              ...s.shutdown(),
            ],
            this.peer,
          );
        } catch {
          // best effort
        }
        // Final only once every gateway of the list has shown another certificate: whoever answers at one address
        // must not keep the runtime from the others.
        this.pinMismatches.add(this.index);
        return this.lost(
          "protocol-error",
          `gateway certificate ${fp} does not match the pinned ${this.opts.pin}`,
          this.pinMismatches.size >= this.gateways.length,
        );
      }
    }
    // A handshake error may come from a forged datagram (alerts are not authenticated before the handshake ends):
    // the attempt goes on until its deadline (tick).
    if (!r.established) return;
    const packets: Buffer[] = [];
    for (const rec of r.records) {
      if (!isControl(rec)) {
        packets.push(rec);
        continue;
      }
      let msg;
      try {
        msg = decodeControl(rec, this.version);
      } catch (e) {
        if (e instanceof ProtocolError) return this.lost("protocol-error", e.message);
        throw e;
      }
      if (msg.type === MSG.LEASE) {
        this.pinMismatches.clear();
        this.lease = msg.lease;
        this.sessionLeased = true;
        this.attempt = 0;
        const ack = {
          type: MSG.LEASE_ACK,
          address: msg.lease.address,
          address6: msg.lease.address6,
        } as const;
        this.udp.sendMany(s.send([encodeControl(ack, this.version)]), this.peer);
        this.emit("lease", msg.lease);
      } else if (msg.type === MSG.CLOSE) {
        return this.lost(msg.reason, msg.message, FINAL.has(msg.reason));
      }
    }
    if (packets.length) this.emit("packets", packets);
    // After the records: a CLOSE message and the close_notify that follows it often arrive in one batch.
    if (r.closed && wasEstablished) this.lost("shutting-down", "gateway closed the session");
  }

  private lost(reason: CloseReason | "lost", message: string, final = false): void {
    this.session?.free();
    this.session = undefined;
    clearInterval(this.timer);
    const willRetry = !final && !this.stopped && this.opts.reconnect !== false;
    // The next attempt goes to the next gateway of the list (the same one when there is only one).
    if (willRetry) this.index = (this.index + 1) % this.gateways.length;
    if (!willRetry) {
      this.stopped = true;
      this.udp.close();
    }
    this.emit("closed", { reason, message, final: !willRetry });
    if (!willRetry) return;
    const [lo, hi] = this.opts.backoffMs ?? [100, 2000];
    const delay = Math.min(hi, lo * 2 ** this.attempt++) * (0.75 + Math.random() / 2);
    this.timer = setTimeout(() => {
      if (!this.stopped) this.connect();
    }, delay);
    if (this.unrefed) this.timer.unref();
  }

  private tick(): void {
    const s = this.session;
    if (!s) return;
    const now = Date.now();
    const o = this.opts;
    if (!s.established()) {
      if (s.timeoutMs() === 0) this.udp.sendMany(s.onTimeout(), this.peer);
      if (now - this.attemptAt > (o.handshakeSeconds ?? 4) * 1000) this.lost("lost", "handshake timed out");
      return;
    }
    if (!this.sessionLeased) {
      // Established, waiting for the lease: the gateway is verifying and leasing; bounded like the handshake.
      if (now - this.attemptAt > (o.handshakeSeconds ?? 4) * 1000)
        this.lost("lost", "no lease from the gateway");
      return;
    }
    const silent = now - Math.max(this.lastRx, this.attemptAt);
    if (silent > (o.deadSeconds ?? 30) * 1000) return this.lost("lost", "no answer from the gateway");
    const [probeMs, probeWaitMs] = this.probeMs;
    if (this.probeAt && now - this.probeAt > probeWaitMs)
      return this.lost("lost", "no answer to a keepalive");
    const probe = !this.probeAt && silent > probeMs;
    if (probe || now - this.lastTx > (o.keepaliveSeconds ?? 10) * 1000) {
      if (probe) this.probeAt = now;
      this.lastTx = now;
      this.udp.sendMany(s.send([encodeControl({ type: MSG.KEEPALIVE }, this.version)]), this.peer);
    }
  }
}

/**
 * The gateways of a `gateway` setting: one "host:port" or several, comma-separated (spaces allowed around commas).
 * Throws a TypeError naming the bad entry.
 */
export function gatewayList(setting: string): string[] {
  const list = setting
    .split(",")
    .map((g) => g.trim())
    .filter(Boolean);
  if (!list.length) throw new TypeError("gateway: expected host:port, or several separated by commas");
  for (const g of list)
    if (!/^[^:\s,]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(g))
      throw new TypeError(`gateway: expected host:port, got ${g}`);
  return list;
}
