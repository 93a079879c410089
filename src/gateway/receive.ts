/**
 * The gateway's receive path (UDP → TUN), per batch of datagrams from the socket:
 *   1. look up the tunnel by the datagram's source (ip:port); unknown sources go to step 6 (admission.ts); a
 *      throttled tunnel's datagrams are dropped here, before decryption (`throttled`), and soon by the kernel
 *      before they reach the socket (guard.ts)
 *   2. DTLS: decrypt the tunnel's datagrams of the batch in one native call (replayed and forged records are
 *      dropped by OpenSSL before or at decryption); only records that decrypt refresh the tunnel's idle timer
 *   3. control records (first byte 0) → control handler; others are IP packets
 *   4. check version, header, length and that the source is the tunnel's leased address; else drop and count.
 *      Malformed and spoofed packets are charged to the tunnel's abuse budget (tunnel.ts): over it, the tunnel is
 *      throttled, and after MAX_STRIKES throttles closed with `misbehaving`. A packet larger than the lease's MTU
 *      is dropped (`too-big`); with DF set it is answered with ICMP "fragmentation needed" through the tunnel
 *   5. write the batch of accepted packets to the TUN: with offload (tun.offload), consecutive in-order TCP
 *      segments of one flow go in one write as a GSO super-packet; everything else one write per packet
 *   6. unknown source: admission (admission.ts)
 */
import type { DtlsResult } from "../native/dtls.js";
import { checkTunnelPacket, dontFragment, fragmentationNeeded, intToIp } from "../packet/ip.js";
import { decodeControl, isControl, MSG, ProtocolError } from "../tunnel/protocol.js";
import { onEstablished, onUnknown } from "./admission.js";
import { sendControl } from "./send.js";
import type { Gateway } from "./server.js";
import { ICMP_PER_SECOND, MISBEHAVING_BLOCK_MS, THROTTLE_MS, type Tunnel } from "./tunnel.js";

export function onDatagrams(gw: Gateway, data: Buffer[], peers: string[]): void {
  // Group datagrams of one tunnel so each tunnel's batch is decrypted in one native call.
  let groups: Map<Tunnel, Buffer[]> | undefined;
  const now = gw.now();
  for (let i = 0; i < data.length; i++) {
    const t = gw.byPeer.get(peers[i]!);
    if (t) {
      if (t.throttledUntil > now) {
        gw.count("throttled");
        continue;
      }
      groups ??= new Map();
      const g = groups.get(t);
      if (g) g.push(data[i]!);
      else groups.set(t, [data[i]!]);
    } else onUnknown(gw, data[i]!, peers[i]!);
  }
  if (!groups) return;
  const toTun: Buffer[] = [];
  for (const [t, batch] of groups) onTunnelDatagrams(gw, t, batch, toTun);
  if (toTun.length) gw.tun.writeMany(toTun);
}

export function onTunnelDatagrams(gw: Gateway, t: Tunnel, batch: Buffer[], toTun: Buffer[]): void {
  let r: DtlsResult;
  try {
    r = t.session.receiveMany(batch);
  } catch (e) {
    gw.count("dtls-error");
    return gw.close(t, "protocol-error", (e as Error).message, false);
  }
  if (r.out.length) gw.udp.sendMany(r.out, t.peer);
  if (r.error) {
    gw.count("dtls-error");
    gw.log.limited(`dtls:${t.peer}`, 5000, "warn", "dtls-error", { peer: t.peer, error: r.error });
    // Before the handshake ends nothing is authenticated: a forged alert must not end it (the sweep's handshake
    // timeout does). An established session's errors come from records that decrypted.
    if (t.state === "handshake") return;
    if (!r.established) return gw.close(t, "protocol-error", r.error, false);
  }
  const now = gw.now();
  // Liveness only from authenticated records, as WireGuard: datagrams that do not decrypt (garbage or replays
  // spoofed from the tunnel's address) must not keep a dead tunnel, its lease and set membership alive.
  if (r.records.length) t.lastRx = now;
  if (t.state === "handshake" && r.established) void onEstablished(gw, t);
  if (t.state !== "leased") {
    if (r.records.length) gw.count("not-leased", r.records.length);
    if (r.closed && r.established) gw.close(t, "client-closed", "peer sent close_notify", false);
    return;
  }
  const app = gw.appCounters.get(t.app)!;
  const mtu = gw.config.tun.mtu;
  let icmp: Buffer[] | undefined;
  for (const rec of r.records) {
    if (isControl(rec)) {
      onControl(gw, t, rec);
      if (t.state !== "leased") return;
      continue;
    }
    const drop = checkTunnelPacket(rec, t.address);
    if (drop) {
      gw.count(drop);
      if (drop === "unsupported-version") continue; // a TUN-mode kernel's IPv6 chatter is not abuse
      if (drop === "spoofed-source" && t.strikes === 0 && t.badTokens >= 1) {
        gw.log.limited(`spoof:${t.peer}`, 10_000, "warn", "spoofed-source-dropped", {
          peer: t.peer,
          app: t.app,
          leased: intToIp(t.address),
          source: intToIp(rec.readUInt32BE(12)),
        });
      }
      const verdict = t.bad(now);
      if (verdict === "ok") continue;
      if (verdict === "close") {
        gw.guard.block(t.peer, MISBEHAVING_BLOCK_MS);
        gw.close(t, "misbehaving", "kept sending malformed or spoofed packets after being throttled");
        break;
      }
      gw.guard.block(t.peer, THROTTLE_MS);
      gw.log.limited(`throttle:${t.peer}`, 10_000, "warn", "tunnel-throttled", {
        peer: t.peer,
        app: t.app,
        address: intToIp(t.address),
        strikes: t.strikes,
      });
      break; // the rest of this batch goes with the throttle
    }
    if (rec.length > mtu) {
      gw.count("too-big");
      if (dontFragment(rec)) {
        const second = Math.floor(now / 1000);
        if (t.icmpSecond !== second) {
          t.icmpSecond = second;
          t.icmpCount = 0;
        }
        if (t.icmpCount++ < ICMP_PER_SECOND)
          (icmp ??= []).push(fragmentationNeeded(rec, gw.gatewayAddress, mtu));
      }
      continue;
    }
    t.counters.rxPackets++;
    t.counters.rxBytes += rec.length;
    app.rxPackets++;
    app.rxBytes += rec.length;
    toTun.push(rec);
  }
  if (icmp && t.state === "leased") {
    t.lastTx = now;
    gw.udp.sendMany(t.session.send(icmp), t.peer);
  }
  if (r.closed && t.state === "leased") gw.close(t, "client-closed", "peer sent close_notify", false);
}

export function onControl(gw: Gateway, t: Tunnel, rec: Buffer): void {
  let msg;
  try {
    msg = decodeControl(rec);
  } catch (e) {
    if (e instanceof ProtocolError) return gw.close(t, "protocol-error", e.message);
    throw e;
  }
  switch (msg.type) {
    case MSG.KEEPALIVE: {
      // Answered (at most once a second), so the runtime's bounded wait for an answer detects a dead path.
      const now = gw.now();
      if (now - t.keepaliveAnsweredAt < 1000) return;
      t.keepaliveAnsweredAt = now;
      return sendControl(gw, t, { type: MSG.KEEPALIVE });
    }
    case MSG.LEASE_ACK:
      if (msg.address !== intToIp(t.address))
        return gw.close(t, "protocol-error", `LEASE_ACK for ${msg.address}, leased ${intToIp(t.address)}`);
      t.acked = true;
      return;
    case MSG.CLOSE:
      // A runtime that refused this gateway (its pin) will not come back with this key: release the lease now.
      return gw.close(
        t,
        "client-closed",
        `${msg.reason}: ${msg.message}`,
        false,
        msg.reason !== "policy-rejected",
      );
    default:
      return gw.close(t, "protocol-error", `unexpected control message ${msg.type} from a runtime`);
  }
}
