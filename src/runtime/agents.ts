/**
 * HTTP(S) agents whose connections are SDK sockets (net.ts): `http.request(url, { agent: shieldedHttpAgent })`
 * goes through the tunnel. For HTTPS the TLS session runs inside the app over the shielded TCP socket
 * (`tls.connect({ socket })`), so certificate checks, SNI and session reuse are Node's own.
 *
 * register.ts installs these as http.globalAgent / https.globalAgent (with Node's defaults: keep-alive, lifo,
 * 5 s idle timeout).
 */
import http from "node:http";
import https from "node:https";
import type { Duplex } from "node:stream";
import { createConnection, type ConnectOptions } from "./net.js";

/**
 * Makes ref()/unref() of a TLS socket reach the SDK socket under it (a TLS socket over a JS stream has no handle of
 * its own to unref): idle keep-alive sockets must not keep the process alive.
 */
export function linkRef(outer: Duplex, inner: { ref(): unknown; unref(): unknown }): void {
  const o = outer as Duplex & { ref?: () => unknown; unref?: () => unknown };
  const ref = o.ref;
  const unref = o.unref;
  o.ref = function (this: Duplex) {
    inner.ref();
    return ref?.call(this) ?? this;
  };
  o.unref = function (this: Duplex) {
    inner.unref();
    return unref?.call(this) ?? this;
  };
}

/** The TCP part of an agent's connection options (request-only fields such as `path` left out). */
function tcpOptions(o: Record<string, unknown>): ConnectOptions {
  return {
    host: (o.host as string | undefined) ?? (o.hostname as string | undefined) ?? "localhost",
    port: (o.port as number | string | undefined) ?? (o.defaultPort as number | undefined),
    lookup: o.lookup as ConnectOptions["lookup"],
    timeout: o.timeout as number | undefined,
    highWaterMark: o.highWaterMark as number | undefined,
    keepAlive: o.keepAlive as boolean | undefined,
    keepAliveInitialDelay: o.keepAliveInitialDelay as number | undefined,
    noDelay: o.noDelay as boolean | undefined,
  };
}

const CONTEXT = "an HTTP agent";

/** An http.Agent over shielded sockets. */
export class ShieldedHttpAgent extends http.Agent {
  override createConnection(
    options: http.ClientRequestArgs,
    _callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex {
    const o = options as unknown as Record<string, unknown>;
    if (o.socketPath)
      throw new Error(`SENG: ${CONTEXT} cannot reach the host's local socket ${String(o.socketPath)}`);
    return createConnection(tcpOptions(o));
  }
}

/** An https.Agent over shielded sockets (TLS in the app, over the tunnel's TCP). */
export class ShieldedHttpsAgent extends https.Agent {
  override createConnection(
    options: https.RequestOptions,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex {
    const o = options as unknown as Record<string, unknown>;
    if (o.socketPath)
      throw new Error(`SENG: ${CONTEXT} cannot reach the host's local socket ${String(o.socketPath)}`);
    // The idle timeout belongs to the TLS socket the agent gets back, not to the TCP socket under it.
    const socket = createConnection({ ...tcpOptions(o), timeout: undefined });
    // https.Agent's own createConnection keeps its TLS session cache; with `socket` set, tls.connect only wraps it.
    const create = https.Agent.prototype.createConnection as (
      this: https.Agent,
      options: Record<string, unknown>,
      cb?: (err: Error | null, stream: Duplex) => void,
    ) => Duplex;
    const tlsSocket = create.call(this, { ...o, socket }, callback);
    linkRef(tlsSocket, socket);
    return tlsSocket;
  }
}

/** Agents with Node's global-agent defaults. */
export function makeGlobalAgents(): { http: ShieldedHttpAgent; https: ShieldedHttpsAgent } {
  const opts = { keepAlive: true, scheduling: "lifo" as const, timeout: 5000 };
  return { http: new ShieldedHttpAgent(opts), https: new ShieldedHttpsAgent(opts) };
}
