/**
 * Handshake admission and the end of a handshake (steps 6 and 7 of the receive path, receive.ts):
 *   6. unknown source: caps first (live tunnels: `tunnel-cap`; half-open handshakes: `half-open-cap`), then the
 *      stateless cookie check; only a source that returned a valid cookie (it owns its address) is charged its
 *      per-source rate limit (`rate-limited`; an IPv6 source by its /64), so spoofed ClientHellos cannot drain a victim's bucket. A valid
 *      cookie within the limit creates the session, whose handshake continues in step 2. The cookie secret
 *      rotates every COOKIE_ROTATION_MS (timers.ts); cookies of the previous secret stay valid for one period.
 *   7. handshake done: verify the RA-TLS certificate's evidence and key binding, match an app, lease one address
 *      of each family the app has (IPv6 only for protocol version 2), send LEASE
 */
import { matchApp } from "../attest/policy.js";
import { primaryMeasurement } from "../attest/claims.js";
import { verifyRaTlsCert } from "../attest/verify.js";
import { Cert } from "../attest/x509.js";
import { intToIp, parseCidr } from "../packet/ip.js";
import { parseCidr6, parseIp6 } from "../packet/addr6.js";
import { MSG, ProtocolError, versionFromAlpn, type Lease } from "../tunnel/protocol.js";
import { rateKey } from "./ratelimit.js";
import { sendControl } from "./send.js";
import type { Gateway } from "./server.js";
import { Tunnel } from "./tunnel.js";

/** How often the cookie secret is replaced; a cookie stays valid for one to two periods. */
export const COOKIE_ROTATION_MS = 30_000;

/** Replaces a listener's cookie secret every `periodMs` (driven by the gateway's sweep, with its clock). */
export class CookieRotation {
  private last: number;

  constructor(
    private readonly listener: { rotate(): void },
    now: number,
    private readonly periodMs = COOKIE_ROTATION_MS,
  ) {
    this.last = now;
  }

  /** Rotates when a period has passed since the last rotation; true when it did. */
  tick(now: number): boolean {
    if (now - this.last < this.periodMs) return false;
    this.last = now;
    this.listener.rotate();
    return true;
  }
}

export function onUnknown(gw: Gateway, datagram: Buffer, peer: string): void {
  // A DTLS handshake record has content type 22; anything else from an unknown source is noise.
  if (datagram.length < 13 || datagram[0] !== 22) return gw.count("unknown-session");
  const limits = gw.config.limits;
  if (gw.byPeer.size >= limits.maxTunnels) {
    gw.count("tunnel-cap");
    gw.log.limited("tunnel-cap", 10_000, "warn", "tunnel-cap-reached", { tunnels: gw.byPeer.size });
    return;
  }
  if (gw.halfOpen.size >= limits.maxHalfOpen) {
    gw.count("half-open-cap");
    gw.log.limited("half-open-cap", 10_000, "warn", "half-open-cap-reached", { halfOpen: gw.halfOpen.size });
    return;
  }
  const now = gw.now();
  // IPv6 sources share one bucket per /64 (ratelimit.ts): a host picks any address of its prefix.
  const source = rateKey(peer);
  let overall = false;
  const res = gw.listener.handle(datagram, peer, () => {
    if (!gw.limiter.take(source, now)) return false;
    overall = !gw.handshakeBudget.take(now);
    return !overall;
  });
  if (res.verdict === "drop") return gw.count("unknown-session");
  if (res.verdict === "refused") {
    gw.count("rate-limited");
    if (overall)
      gw.log.limited("rl:all", 10_000, "warn", "handshake-rate-limited", {
        limit: "handshakesPerSecond",
        rate: gw.config.limits.handshakesPerSecond,
      });
    else gw.log.limited(`rl:${source}`, 10_000, "warn", "handshake-rate-limited", { source });
    return;
  }
  if (res.out.length) gw.udp.sendMany(res.out, peer);
  if (res.verdict === "accept") {
    const t = new Tunnel(peer, res.session, now);
    gw.byPeer.set(peer, t);
    gw.halfOpen.add(t);
    gw.handshake("started");
  }
}

/** Never rejects: a store error closes the tunnel (the runtime tries again, or another gateway). */
export async function onEstablished(gw: Gateway, t: Tunnel): Promise<void> {
  const started = t.createdAt;
  gw.churnAt = gw.now();
  gw.halfOpen.delete(t);
  try {
    // The listener selects only names it offers; anything else is a broken session.
    t.version = versionFromAlpn(t.session.alpn());
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    return gw.close(t, "protocol-error", e.message);
  }
  const der = t.session.peerCertificate();
  if (!der) return refuse(gw, t, "no client certificate", "", "no_certificate");
  // The DER is all the gateway keeps (with the lease, in SQLite); OpenSSL's parsed copy loses its extensions (the
  // evidence: ~4 KB per idle tunnel).
  t.session.trimPeerCertificate();
  let cert: Cert;
  try {
    cert = Cert.parseOnce(der);
  } catch (e) {
    return refuse(
      gw,
      t,
      `client certificate unreadable: ${(e as Error).message}`,
      "",
      "certificate_unreadable",
    );
  }
  const verdict = verifyRaTlsCert(cert, gw.verifyOpts);
  const measurement = verdict.claims ? primaryMeasurement(verdict.claims) : "";
  if (!verdict.verified)
    return refuse(
      gw,
      t,
      `attestation failed (${verdict.code}): ${verdict.reason}`,
      measurement,
      verdict.code ?? "attestation_failed",
    );
  const match = matchApp(verdict, gw.config.apps);
  if (!match.matched)
    return refuse(gw, t, `no app matches: ${match.reasons.join("; ")}`, measurement, "no_app_match");
  const app = gw.config.apps.find((a) => a.name === match.app)!;
  const refusal = gw.cluster?.refusal(app.name, cert.fingerprint, measurement);
  if (refusal) return refuse(gw, t, refusal.reason, measurement, refusal.code);
  if (!app.subnet && t.version < 2)
    return refuse(
      gw,
      t,
      `app ${app.name} has only IPv6 addresses, which need protocol version 2 (ALPN seng/2); this runtime speaks version 1`,
      measurement,
      "protocol_version",
    );
  // A version-1 runtime of a dual-stack app gets its IPv4 address only: version 1 cannot carry IPv6.
  const want6 = app.subnet6 !== undefined && t.version >= 2;
  let now = gw.now();
  const grace = gw.config.tunnel.leaseGraceSeconds * 1000;
  const req = {
    app: app.name,
    keyFp: cert.fingerprint,
    measurement,
    outer: t.peer,
    now,
    until: now + grace,
    cert: cert.der,
  };
  let lease: Awaited<ReturnType<typeof gw.leases.acquire>> | undefined;
  let lease6: Awaited<ReturnType<NonNullable<typeof gw.leases.acquire6>>> | undefined;
  try {
    // SQLite answers at once (setup stays a few ms); etcd takes a round trip (src/gateway/cluster.ts). The etcd
    // store leases IPv4 only: the configuration refuses IPv6 apps in a cluster, and acquire6 is absent there.
    lease = app.subnet ? await gw.leases.acquire(req) : undefined;
    if ((!app.subnet || lease) && want6) {
      if (!gw.leases.acquire6) throw new Error("this lease store has no IPv6 leases");
      lease6 = await gw.leases.acquire6(req);
    }
  } catch (e) {
    gw.handshake("store-error");
    gw.log.limited("store-acquire", 5000, "error", "lease-store-failed", {
      peer: t.peer,
      app: app.name,
      error: (e as Error).message,
    });
    return gw.close(t, "shutting-down", `this gateway cannot lease an address now: ${(e as Error).message}`);
  }
  gw.cluster?.onAcquire?.((gw.now() - now) / 1000);
  now = gw.now();
  // The runtime left (or the gateway stopped) while the store answered: the leases lapse after their grace.
  if (t.state !== "handshake") return;
  // A revocation or a fencing that arrived while the store answered walked the live tunnels, not this one: ask again.
  const late = gw.cluster?.refusal(app.name, cert.fingerprint, measurement);
  if (late) {
    for (const l of [lease, lease6]) if (l) gw.storeCall("release", gw.leases.release(l.id, now, late.code));
    return refuse(gw, t, late.reason, measurement, late.code);
  }
  if ((app.subnet && !lease) || (want6 && !lease6)) {
    const subnet = app.subnet && !lease ? app.subnet : app.subnet6;
    gw.handshake("pool-exhausted");
    gw.log.log("warn", "pool-exhausted", { app: app.name, subnet, peer: t.peer, measurement });
    return gw.close(t, "pool-exhausted", `no free address in ${subnet} for app ${app.name}`);
  }
  const addr6 = lease6 ? Buffer.from(parseIp6(lease6.address)!) : undefined;
  for (const holder of [lease && gw.byAddress.get(lease.address), addr6 && gw.byAddress6.get(addr6, 0)]) {
    // The same key reconnected from elsewhere (new port after a NAT rebinding or restart): the new tunnel wins.
    if (holder && holder !== t)
      gw.close(holder, "client-closed", "replaced by a new tunnel of the same key", false, true);
  }
  Object.assign(t, {
    state: "leased",
    app: app.name,
    address: lease?.address ?? 0,
    leaseId: lease?.id ?? 0,
    address6: lease6?.address ?? "",
    addr6,
    leaseId6: lease6?.id ?? 0,
    keyFp: cert.fingerprint,
    measurement,
    maxRecord: t.session.maxRecord(),
    // Only the DER: a parsed Cert (with Node's X509 object) would cost ~20 KB per idle tunnel.
    leasedAt: now,
  });
  gw.leased.add(t);
  if (lease) {
    gw.byAddress.set(lease.address, t);
    gw.firewall.tunnelUp(intToIp(lease.address), app.name);
  }
  if (lease6) {
    gw.byAddress6.set(addr6!, t);
    gw.firewall.tunnelUp(lease6.address, app.name);
  }
  const msg: Lease = {
    ...(lease && app.subnet
      ? {
          address: intToIp(lease.address),
          prefix: parseCidr(app.subnet).prefix,
          gateway: intToIp(gw.gatewayAddress),
        }
      : {}),
    ...(lease6 && app.subnet6
      ? { address6: lease6.address, prefix6: parseCidr6(app.subnet6).prefix, gateway6: gw.gatewayAddress6 }
      : {}),
    mtu: gw.config.tun.mtu,
    dns: gw.config.dns,
    lifetime: gw.config.tunnel.leaseGraceSeconds,
    app: app.name,
  };
  sendControl(gw, t, { type: MSG.LEASE, lease: msg });
  gw.handshake("accepted");
  gw.log.log("info", "tunnel-up", {
    peer: t.peer,
    app: app.name,
    address: msg.address,
    ...(msg.address6 ? { address6: msg.address6 } : {}),
    version: t.version,
    measurement,
    key: cert.fingerprint,
    resumed: (lease ?? lease6)!.resumed,
    simulated: verdict.claims?.simulated ?? false,
    tcbStatus: verdict.tcbStatus,
    setupMs: now - started,
  });
  gw.notify((o) => {
    o.verdict?.("accepted", "accepted", now - started);
    o.tunnelUp?.(gw.info(t));
  });
}

export function refuse(gw: Gateway, t: Tunnel, reason: string, measurement: string, code: string): void {
  gw.handshake("refused");
  gw.notify((o) => o.verdict?.("refused", code, gw.now() - t.createdAt));
  gw.log.limited(`refused:${measurement}:${reason.slice(0, 40)}`, 5000, "warn", "tunnel-refused", {
    peer: t.peer,
    measurement,
    reason,
    code,
  });
  gw.close(t, "policy-rejected", reason);
}
