/**
 * The runtime side of a SENG tunnel: one DTLS session to the gateway, authenticated with an RA-TLS certificate,
 * with the gateway pinned by certificate fingerprint. It receives the lease, acknowledges it, carries IP packets
 * both ways, sends keepalives, and reconnects with backoff (with the same key, so the gateway gives the same address
 * back) after a loss or a gateway restart. Packet I/O is the caller's: `onPackets` and `send`.
 *
 *   send:    packets → DTLS records (one per packet) → datagrams → sendmmsg
 *   receive: datagrams → DTLS → control messages (LEASE, KEEPALIVE, CLOSE) or IP packets → onPackets
 */
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import { DtlsContext, DtlsSession } from "../native/dtls.js";
import { UdpSocket } from "../native/io.js";
import {
  decodeControl,
  encodeControl,
  isControl,
  MSG,
  ProtocolError,
  type CloseReason,
  type Lease,
} from "./protocol.js";

export interface TunnelClientOptions {
  /** Gateway "host:port". */
  gateway: string;
  /** SHA-256 (hex) of the gateway certificate's DER. */
  pin: string;
  /** RA-TLS certificate (PEM) and its private key (PKCS#8 PEM). */
  certPem: string;
  keyPem: string;
  keepaliveSeconds?: number;
  /** No datagram from the gateway for this long: the tunnel is considered lost. */
  deadSeconds?: number;
  /** Reconnect after loss (default true). Never after `policy-rejected` or `revoked`. */
  reconnect?: boolean;
  /** Backoff bounds for reconnection, ms. */
  backoffMs?: [number, number];
  /** Largest UDP payload to send (default 1464: a 1400-byte packet plus DTLS overhead, within a 1500-byte path). */
  mtu?: number;
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
  private readonly udp: UdpSocket;
  private readonly peer: string;
  private session: DtlsSession | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastRx = 0;
  private lastTx = 0;
  private attempt = 0;
  private stopped = false;
  private unrefed = false;
  lease: Lease | undefined;

  constructor(readonly opts: TunnelClientOptions) {
    super();
    this.ctx = new DtlsContext({
      role: "client",
      certPem: opts.certPem,
      keyPem: opts.keyPem,
      mtu: opts.mtu ?? 1464,
    });
    const i = opts.gateway.lastIndexOf(":");
    const host = opts.gateway.slice(0, i).replace(/^\[|\]$/g, "");
    this.peer = opts.gateway;
    this.udp = UdpSocket.bind(host.includes(":") ? "::" : "0.0.0.0", 0, { rcvbuf: 4 << 20, sndbuf: 4 << 20 });
    this.udp.onDatagrams((b) => this.onDatagrams(b.data));
  }

  /** Starts the handshake (and, after losses, reconnects until `close()`). */
  connect(): void {
    this.stopped = false;
    this.session?.free();
    this.session = DtlsSession.client(this.ctx);
    this.lastRx = Date.now();
    this.udp.sendMany(this.session.start(), this.peer);
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), 100);
    if (this.unrefed) this.timer.unref();
  }

  /** Sends IP packets through the tunnel (dropped while no lease is held). */
  send(packets: Buffer[]): void {
    const s = this.session;
    if (!s || !this.lease || packets.length === 0) return;
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
            ...this.session.send([encodeControl({ type: MSG.CLOSE, reason: "client-closed", message })]),
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
    this.lastRx = Date.now();
    if (!wasEstablished && r.established) {
      const der = s.peerCertificate();
      const fp = der ? createHash("sha256").update(der).digest("hex") : "";
      if (fp !== this.opts.pin.toLowerCase()) {
        // Say so before leaving: the gateway may have leased an address already, which it then releases at once
        // instead of holding the tunnel (and the address in the app's set) until its idle timeout.
        try {
          this.udp.sendMany(
            [
              ...s.send([
                encodeControl({
                  type: MSG.CLOSE,
                  reason: "policy-rejected",
                  message: "gateway certificate does not match the pin",
                }),
              ]),
              ...s.shutdown(),
            ],
            this.peer,
          );
        } catch {
          // best effort
        }
        return this.lost(
          "protocol-error",
          `gateway certificate ${fp} does not match the pinned ${this.opts.pin}`,
          true,
        );
      }
    }
    if (r.error && !r.established) return this.lost("protocol-error", r.error);
    const packets: Buffer[] = [];
    for (const rec of r.records) {
      if (!isControl(rec)) {
        packets.push(rec);
        continue;
      }
      let msg;
      try {
        msg = decodeControl(rec);
      } catch (e) {
        if (e instanceof ProtocolError) return this.lost("protocol-error", e.message);
        throw e;
      }
      if (msg.type === MSG.LEASE) {
        this.lease = msg.lease;
        this.attempt = 0;
        this.udp.sendMany(
          s.send([encodeControl({ type: MSG.LEASE_ACK, address: msg.lease.address })]),
          this.peer,
        );
        this.emit("lease", msg.lease);
      } else if (msg.type === MSG.CLOSE) {
        return this.lost(msg.reason, msg.message, FINAL.has(msg.reason));
      }
    }
    if (packets.length) this.emit("packets", packets);
    // After the records: a CLOSE message and the close_notify that follows it often arrive in one batch.
    if (r.closed) this.lost("shutting-down", "gateway closed the session");
  }

  private lost(reason: CloseReason | "lost", message: string, final = false): void {
    this.session?.free();
    this.session = undefined;
    clearInterval(this.timer);
    const willRetry = !final && !this.stopped && this.opts.reconnect !== false;
    if (!willRetry) {
      this.stopped = true;
      this.udp.close();
    }
    this.emit("closed", { reason, message, final: !willRetry });
    if (!willRetry) return;
    const [lo, hi] = this.opts.backoffMs ?? [100, 5000];
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
    if (!s.established()) {
      if (s.timeoutMs() === 0) this.udp.sendMany(s.onTimeout(), this.peer);
      if (now - this.lastRx > 10_000) this.lost("lost", "handshake timed out");
      return;
    }
    if (now - this.lastRx > (this.opts.deadSeconds ?? 30) * 1000)
      return this.lost("lost", "no answer from the gateway");
    if (this.lease && now - this.lastTx > (this.opts.keepaliveSeconds ?? 10) * 1000) {
      this.lastTx = now;
      this.udp.sendMany(s.send([encodeControl({ type: MSG.KEEPALIVE })]), this.peer);
    }
  }
}
