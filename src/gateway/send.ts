/**
 * The gateway's send path (TUN → UDP), per batch of packets from the TUN (with offload, the addon has split the
 * kernel's TCP super-packets into MTU-sized packets and completed checksums left to it):
 *   1. destination address → tunnel (one Map lookup on a number: the IPv4 address, or a hash of the IPv6 address
 *      whose 16 bytes are then compared, ip6.ts Ip6Map; ICMPv6 Packet Too Big toward an app passes like any
 *      packet); none → drop (no-route)
 *   2. group the batch per tunnel, encrypt each group in one native call, send all datagrams with one sendmmsg
 */
import { ipv4Dst } from "../packet/ip.js";
import { encodeControl } from "../tunnel/protocol.js";
import type { Gateway } from "./server.js";
import type { Tunnel } from "./tunnel.js";

export function onTunPackets(gw: Gateway, packets: Buffer[]): void {
  let groups: Map<Tunnel, Buffer[]> | undefined;
  for (const p of packets) {
    const v = p.length >= 20 ? p[0]! >> 4 : 0;
    const t =
      v === 4
        ? gw.byAddress.get(ipv4Dst(p))
        : v === 6 && p.length >= 40
          ? gw.byAddress6.get(p, 24)
          : undefined;
    if (!t || t.state !== "leased") {
      gw.count("no-route");
      continue;
    }
    if (p.length > t.maxRecord) {
      gw.count("too-big");
      continue;
    }
    groups ??= new Map();
    const g = groups.get(t);
    if (g) g.push(p);
    else groups.set(t, [p]);
  }
  if (!groups) return;
  const now = gw.now();
  for (const [t, batch] of groups) {
    const app = gw.appCounters.get(t.app)!;
    let bytes = 0;
    for (const p of batch) bytes += p.length;
    t.counters.txPackets += batch.length;
    t.counters.txBytes += bytes;
    app.txPackets += batch.length;
    app.txBytes += bytes;
    t.lastTx = now;
    gw.udp.sendMany(t.session.send(batch), t.peer);
  }
}

export function sendControl(gw: Gateway, t: Tunnel, msg: Parameters<typeof encodeControl>[0]): void {
  t.lastTx = gw.now();
  gw.udp.sendMany(t.session.send([encodeControl(msg, t.version)]), t.peer);
}
