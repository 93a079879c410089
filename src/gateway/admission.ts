/**
 * Handshake admission and the end of a handshake (steps 6 and 7 of the receive path, receive.ts):
 *   6. unknown source: caps first (live tunnels: `tunnel-cap`; half-open handshakes: `half-open-cap`), then the
 *      stateless cookie check; only a source that returned a valid cookie (it owns its address) is charged its
 *      per-source rate limit (`rate-limited`), so spoofed ClientHellos cannot drain a victim's bucket. A valid
 *      cookie within the limit creates the session, whose handshake continues in step 2. The cookie secret
 *      rotates every COOKIE_ROTATION_MS (timers.ts); cookies of the previous secret stay valid for one period.
 *   7. handshake done: verify the RA-TLS certificate's evidence and key binding, match an app, lease an address
 *      from its subnet, send LEASE
 */
import { matchApp } from "../attest/policy.js";
import { primaryMeasurement } from "../attest/claims.js";
import { verifyRaTlsCert } from "../attest/verify.js";
import { Cert } from "../attest/x509.js";
import { intToIp, parseCidr } from "../packet/ip.js";
import { MSG, type Lease } from "../tunnel/protocol.js";
import { sourceIp } from "./ratelimit.js";
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
  const source = sourceIp(peer);
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
  let now = gw.now();
  const grace = gw.config.tunnel.leaseGraceSeconds * 1000;
  let lease;
  try {
    // SQLite answers at once (setup stays a few ms); etcd takes a round trip (src/gateway/cluster.ts).
    lease = await gw.leases.acquire({
      app: app.name,
      keyFp: cert.fingerprint,
      measurement,
      outer: t.peer,
      now,
      until: now + grace,
      cert: cert.der,
    });
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
  // The runtime left (or the gateway stopped) while the store answered: the lease lapses after its grace.
  if (t.state !== "handshake") return;
  if (!lease) {
    gw.handshake("pool-exhausted");
    gw.log.log("warn", "pool-exhausted", {
      app: app.name,
      subnet: app.subnet,
      peer: t.peer,
      measurement,
    });
    return gw.close(t, "pool-exhausted", `no free address in ${app.subnet} for app ${app.name}`);
  }
  const holder = gw.byAddress.get(lease.address);
  if (holder && holder !== t) {
    // The same key reconnected from elsewhere (new port after a NAT rebinding or restart): the new tunnel wins.
    gw.close(holder, "client-closed", "replaced by a new tunnel of the same key", false, true);
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
  gw.byAddress.set(lease.address, t);
  gw.firewall.tunnelUp(intToIp(lease.address), app.name);
  const msg: Lease = {
    address: intToIp(lease.address),
    prefix: parseCidr(app.subnet).prefix,
    gateway: intToIp(gw.gatewayAddress),
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
    measurement,
    key: cert.fingerprint,
    resumed: lease.resumed,
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
