/**
 * What the preload closes besides the entry points register.ts replaces: Node's ways to get or wrap a host socket
 * handle directly, and the addresses of TLS sockets that run over SDK sockets.
 *
 *  - `net._createServerHandle(...)` and `dgram._createSocketHandle(...)` (exported by Node for its own cluster
 *    module) return working host TCP/UDP handles: refused.
 *  - `new net.Socket({ handle })` wraps any handle: refused for TCP handles (Node itself wraps Pipe and TTY handles
 *    this way for child-process stdio, which stays possible); `new net.Socket({ fd })` refused for any fd but
 *    stdin/stdout/stderr (Node wraps those itself when they are pipes or sockets), since an inherited descriptor may
 *    be a host TCP socket. net.Socket becomes a Proxy of Node's class that checks these options: `instanceof`,
 *    `extends` and the prototype stay Node's.
 *  - TLS sockets over SDK sockets: Node's TLSSocket asks its TLS handle for the addresses, which for a socket
 *    without a libuv handle knows none (`remoteAddress` was undefined, so express's `req.ip` was too); they are
 *    answered by the SDK socket underneath.
 */
import dgram from "node:dgram";
import net from "node:net";
import tls from "node:tls";
import { Socket as SdkSocket } from "./net.js";
import { handleKind, socketInternals, tlsTransport } from "./node-internals.js";
import { hostNetworkingError } from "./stack.js";

function put(obj: object, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, writable: true, configurable: true, enumerable: true });
}

/** The net.Socket options that would make it a host socket: a TCP handle, or an inherited descriptor. */
function checkSocketOptions(options: unknown): void {
  if (options === null || typeof options !== "object") return;
  const o = options as { handle?: unknown; fd?: unknown };
  if (o.handle != null && handleKind(o.handle) === "TCP")
    throw hostNetworkingError("new net.Socket({ handle }) over a host TCP handle");
  if (o.fd != null && !(typeof o.fd === "number" && o.fd >= 0 && o.fd <= 2))
    throw hostNetworkingError(`new net.Socket({ fd: ${String(o.fd)} }) over a host file descriptor`);
}

/** The SDK socket a TLS socket runs over, if it does. */
function sdkUnder(t: tls.TLSSocket): SdkSocket | undefined {
  const s = tlsTransport(t);
  return s instanceof SdkSocket ? s : undefined;
}

let closed = false;

/** Closes the host-handle escapes and answers TLS sockets' addresses (idempotent). */
export function closeHostHandles(): void {
  if (closed) return;
  closed = true;
  put(net, "_createServerHandle", () => {
    throw hostNetworkingError("net._createServerHandle (a host listening socket)");
  });
  put(dgram, "_createSocketHandle", () => {
    throw hostNetworkingError("dgram._createSocketHandle (a host UDP socket)");
  });

  const HostSocket = net.Socket;
  const Guarded: typeof net.Socket = new Proxy(HostSocket, {
    construct(target, args: unknown[], newTarget) {
      checkSocketOptions(args[0]);
      return Reflect.construct(target, args, newTarget) as object;
    },
    apply(target, self, args: unknown[]) {
      checkSocketOptions(args[0]);
      return Reflect.apply(target, self, args) as unknown;
    },
  });
  put(net, "Socket", Guarded);
  put(net, "Stream", Guarded);

  const proto = tls.TLSSocket.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
  const peer = proto._getpeername ?? (net.Socket.prototype as unknown as typeof proto)._getpeername!;
  const sock = proto._getsockname ?? (net.Socket.prototype as unknown as typeof proto)._getsockname!;
  // Cached once known, as Node does, so that the addresses stay readable after close.
  put(proto, "_getpeername", function (this: tls.TLSSocket) {
    const s = sdkUnder(this);
    const i = socketInternals(this);
    if (!s) return peer.call(this);
    const r = s._getpeername();
    if (r.address) i._peername = r;
    return r.address ? r : (i._peername ?? r);
  });
  const sockCache = new WeakMap<object, object>();
  put(proto, "_getsockname", function (this: tls.TLSSocket) {
    const s = sdkUnder(this);
    if (!s) return sockCache.get(this) ?? sock.call(this);
    const r = s._getsockname();
    if (r.address) sockCache.set(this, r);
    return r.address ? r : (sockCache.get(this) ?? r);
  });
}
