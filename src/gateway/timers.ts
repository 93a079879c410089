/**
 * The gateway's timers, one sweep every 200 ms: handshake timeouts and DTLS retransmissions, cookie secret
 * rotation, keepalives, idle timeouts, lease extension in one transaction, and after a burst of setups or closes,
 * freed C heap returned to the kernel.
 */
import { trimMemory } from "../native/mem.js";
import { MSG } from "../tunnel/protocol.js";
import { sendControl } from "./send.js";
import type { Gateway } from "./server.js";

/**
 * After tunnels were set up or closed, the sweep hands the C heap's free pages back to the kernel (malloc_trim) once
 * no setup or close has happened for TRIM_QUIET_MS, at most once per TRIM_INTERVAL_MS. A burst of handshakes leaves
 * megabytes of freed transient memory (certificate parsing, verification, handshake buffers) mapped in malloc's
 * arenas; trimming makes RSS show what is live. It takes about 2 ms at 10,000 tunnels and never runs per packet.
 */
const TRIM_QUIET_MS = 500;
const TRIM_INTERVAL_MS = 5000;

export function sweep(gw: Gateway): void {
  const now = gw.now();
  const tc = gw.config.tunnel;
  for (const t of gw.halfOpen) {
    if (now - t.createdAt > tc.handshakeTimeoutSeconds * 1000) {
      gw.handshake("timeout");
      gw.close(t, "protocol-error", "handshake timed out", false);
      continue;
    }
    const ms = t.session.timeoutMs();
    if (ms === 0) {
      const out = t.session.onTimeout();
      if (out.length) gw.udp.sendMany(out, t.peer);
    }
  }
  gw.cookies.tick(now);
  gw.cluster?.tick(gw);
  const extend: [number, number][] = [];
  const flush = now - gw.lastLeaseFlush > 30_000;
  for (const t of gw.byAddress.values()) {
    if (now - t.lastRx > tc.idleTimeoutSeconds * 1000) {
      gw.close(t, "idle-timeout", `nothing received for ${tc.idleTimeoutSeconds} s`);
      continue;
    }
    if (now - t.lastTx > tc.keepaliveSeconds * 1000) sendControl(gw, t, { type: MSG.KEEPALIVE });
    if (flush) extend.push([t.leaseId, now + tc.leaseGraceSeconds * 1000]);
  }
  if (flush) {
    gw.lastLeaseFlush = now;
    if (extend.length) gw.storeCall("extend", gw.leases.extendMany(extend));
  }
  // Leases whose grace period lapsed: release them now (not only when their pool runs out), and their flows.
  if (now - gw.lastExpiry > 5000) {
    gw.lastExpiry = now;
    gw.storeCall(
      "expire",
      gw.leases.expire(now).then((gone) => gone.forEach((a) => gw.cutFlows(a))),
    );
  }
  if (
    gw.churnAt > gw.trimmedAt &&
    now - gw.churnAt >= TRIM_QUIET_MS &&
    now - gw.trimmedAt >= TRIM_INTERVAL_MS
  ) {
    gw.trimmedAt = now;
    trimMemory();
  }
}
