/**
 * Every private part of Node that the runtime relies on, in one place, with a self-check run before the runtime
 * starts (the preload, and ShieldedStack.start for the SDK).
 *
 * The SDK's sockets are `net.Socket`s and its servers `net.Server`s without a libuv handle, so it reads and sets some
 * of their underscore fields (the connection count, the listening token, the host name, the idle timer...), gives a
 * server a listening "handle" of its own (net.Server's address()/close()/ref()/unref() call it), and answers
 * remoteAddress/localAddress through `_getpeername`/`_getsockname`. A TLS socket over an SDK socket is found through
 * the TLS handle's `_parentWrap`. None of this is Node's public API: a Node release may change it without notice,
 * and the runtime would then misbehave quietly (a server that never closes, addresses that are undefined), or worse,
 * fall through to host networking. So the supported Node range is pinned to what is tested (package.json `engines`
 * says the same), and each internal is probed at start: anything missing or changed stops the app with one line,
 * ERR_SENG_UNSUPPORTED_NODE.
 */
import net from "node:net";
import { Duplex } from "node:stream";
import tls from "node:tls";

/** The Node versions the runtime is tested with (also package.json `engines`). */
export const SUPPORTED_NODE = ">=20.20.0 <21";

/** Whether `version` ("v20.20.2" or "20.20.2") is in SUPPORTED_NODE. */
export function isSupportedNode(version: string): boolean {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(version);
  if (!m) return false;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major === 20 && minor >= 20;
}

/** Fields of net.Socket that the SDK reads or sets. */
export interface SocketInternals {
  connecting: boolean;
  _host: string | null;
  _handle: unknown;
  _unrefTimer(): void;
  server: unknown;
  _server: ServerInternals | null;
  allowHalfOpen: boolean;
  _peername?: unknown;
}

/** Fields of net.Server that the SDK reads or sets. */
export interface ServerInternals extends net.Server {
  _handle: unknown;
  _connections: number;
  _listeningId: number;
  _unref: boolean;
  _connectionKey?: string;
  _emitCloseIfDrained(): void;
  allowHalfOpen: boolean;
  pauseOnConnect: boolean;
  noDelay: boolean;
  highWaterMark?: number;
}

export const socketInternals = (s: net.Socket): SocketInternals => s as unknown as SocketInternals;
export const serverInternals = (s: net.Server): ServerInternals => s as unknown as ServerInternals;

/**
 * The stream a TLS socket runs over when that is not a libuv socket: Node wraps it in a JSStreamSocket, which the
 * TLS handle keeps as `_parentWrap` (`.stream` is the wrapped one). Undefined when there is none (or no handle).
 */
export function tlsTransport(t: tls.TLSSocket): unknown {
  const w = (t as unknown as { _handle?: { _parentWrap?: { stream?: unknown } } | null })._handle
    ?._parentWrap;
  return w && typeof w === "object" && "stream" in w ? w.stream : w;
}

/** The kind of a libuv handle ("TCP", "Pipe", "TTY", "UDP"...), by its class name. */
export function handleKind(handle: unknown): string | undefined {
  return (handle as { constructor?: { name?: string } } | null)?.constructor?.name;
}

/** The runtime cannot run on this Node. */
export class UnsupportedNodeError extends Error {
  override readonly name = "UnsupportedNodeError";
  readonly code = "ERR_SENG_UNSUPPORTED_NODE";
}

/** What the probes look at: Node's own modules by default, a simulated Node in tests. */
export interface NodeUnderTest {
  version: string;
  net: Pick<typeof net, "Socket" | "Server">;
  tls: Pick<typeof tls, "TLSSocket">;
  process: { binding?: unknown };
}

type Probe = [what: string, ok: (n: NodeUnderTest) => boolean];

const PROBES: Probe[] = [
  [
    "net.Socket#connecting, _host, _handle, _server, allowHalfOpen",
    ({ net: N }) => {
      const s = socketInternals(new N.Socket());
      return (
        s.connecting === false &&
        s._host === null &&
        s._handle === null &&
        s._server === null &&
        "server" in s &&
        typeof s.allowHalfOpen === "boolean"
      );
    },
  ],
  [
    "net.Socket#_unrefTimer",
    ({ net: N }) => typeof socketInternals(new N.Socket())._unrefTimer === "function",
  ],
  [
    "net.Socket: remoteAddress/remotePort/localAddress/localPort from _getpeername/_getsockname",
    ({ net: N }) => {
      const s = new N.Socket();
      const o = s as unknown as Record<string, unknown>;
      o._getpeername = () => ({ address: "192.0.2.1", family: "IPv4", port: 1 });
      o._getsockname = () => ({ address: "192.0.2.2", family: "IPv4", port: 2 });
      return (
        s.remoteAddress === "192.0.2.1" &&
        s.remotePort === 1 &&
        s.localAddress === "192.0.2.2" &&
        s.localPort === 2 &&
        (s.address() as net.AddressInfo).port === 2
      );
    },
  ],
  [
    "net.Server#_handle, _connections, _listeningId, _unref, _emitCloseIfDrained, pauseOnConnect, noDelay",
    ({ net: N }) => {
      const s = serverInternals(new N.Server());
      return (
        s._handle === null &&
        s._connections === 0 &&
        typeof s._listeningId === "number" &&
        s._unref === false &&
        typeof s._emitCloseIfDrained === "function" &&
        typeof s.pauseOnConnect === "boolean" &&
        typeof s.noDelay === "boolean"
      );
    },
  ],
  [
    "net.Server#address() and close() through its _handle (getsockname, close)",
    ({ net: N }) => {
      const s = serverInternals(new N.Server());
      let closed = false;
      s._handle = {
        getsockname(out: Record<string, unknown>) {
          Object.assign(out, { address: "192.0.2.3", family: "IPv4", port: 3 });
          return 0;
        },
        close() {
          closed = true;
        },
      };
      const a = s.address() as net.AddressInfo | null;
      s.close();
      return a?.address === "192.0.2.3" && a.port === 3 && closed && s._handle === null;
    },
  ],
  [
    "tls.TLSSocket over a stream: its handle's _parentWrap.stream",
    ({ tls: T }) => {
      const d = new Duplex({ read() {}, write: (_c, _e, cb) => cb() });
      const t = new T.TLSSocket(d);
      try {
        return tlsTransport(t) === d;
      } finally {
        t.destroy();
        d.destroy();
      }
    },
  ],
  ["process.binding", ({ process: p }) => typeof p.binding === "function"],
];

let checked = false;

/**
 * Probes every internal the runtime relies on; throws UnsupportedNodeError naming the first one that is missing or
 * behaves differently, or the Node version when it is outside SUPPORTED_NODE. Runs once per process for the real
 * Node (later calls return at once); `node` is for tests.
 */
export function checkNodeInternals(node?: NodeUnderTest): void {
  if (!node && checked) return;
  const n: NodeUnderTest = node ?? {
    version: process.version,
    net,
    tls,
    process: process as { binding?: unknown },
  };
  const unsupported = (why: string) =>
    new UnsupportedNodeError(
      `SENG: Node ${n.version} is not supported by the runtime (supported: ${SUPPORTED_NODE}): ${why}`,
    );
  if (!isSupportedNode(n.version)) throw unsupported("untested version");
  for (const [what, ok] of PROBES) {
    let good: boolean;
    try {
      good = ok(n);
    } catch {
      good = false;
    }
    if (!good) throw unsupported(`a Node internal it relies on is missing or changed: ${what}`);
  }
  if (!node) checked = true;
}
