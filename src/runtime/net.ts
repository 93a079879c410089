/**
 * The SENG socket SDK: TCP sockets and servers on the in-process TCP/IP stack (lwIP), whose packets leave only
 * through the attested tunnel (stack.ts). The shapes are Node's: `Socket` is a `net.Socket` (so a stream.Duplex,
 * and `instanceof net.Socket` holds) with no host handle; `Server` is a `net.Server` whose listening "handle" is an
 * lwIP listener. Code written for `node:net` works unchanged; `register.ts` puts these in place of Node's.
 *
 * What a Socket does, over the native stack's calls and events:
 *  - connect: resolve the host (IP literal, or the tunnel's DNS through dns.ts), wait for the lease, `tcpConnect`;
 *    "connected" → 'connect' and 'ready'. Writes made before that wait in the Writable buffer.
 *  - write: `tcpWrite` returns how much lwIP took; the rest waits for "sent" (acknowledged bytes free lwIP's send
 *    buffer). The write callback runs when all of a chunk was taken, so `write()` returning false and 'drain' follow
 *    lwIP's buffer, as they follow the kernel's for a host socket.
 *  - read: "data" is pushed; the bytes are given back to lwIP's receive window (`tcpRecved`) when the stream has
 *    room (push returned true) or when the consumer asks for more (`_read`), so a slow reader shrinks the window.
 *  - end(): `tcpShutdown(write)` after the buffered data (FIN); "end" from the peer → 'end' (half-close with
 *    allowHalfOpen, else the Duplex ends its side too).
 *  - destroy(): `tcpClose` (FIN after data lwIP holds), `resetAndDestroy()`: `tcpAbort` (RST).
 *  - setTimeout/'timeout', remoteAddress/remotePort/localAddress/localPort, address(), bytesRead/bytesWritten,
 *    ref/unref as in Node; setNoDelay/setKeepAlive are accepted and do nothing (lwIP's own settings apply).
 */
import dns from "node:dns";
import net from "node:net";
import { constants as osConstants } from "node:os";
import type { Duplex } from "node:stream";
import { lookup as shieldedLookup } from "./dns.js";
import { socketInternals, type ServerInternals } from "./node-internals.js";
import {
  hostNetworkingError,
  parseEndpoint,
  shieldedStack,
  ShieldedStackError,
  type NetStack,
  type ShieldedStack,
  type StackEvent,
} from "./stack.js";

/** Node's classes as they were when this module loaded (register.ts patches their prototypes afterwards). */
export const HostSocket = net.Socket;
export const HostServer = net.Server;

// Node's private fields are reached only through ./node-internals.ts, which probes them at start.
const internals = socketInternals;

type Endpoint = { address: string; port: number };

interface ConnState {
  shield: ShieldedStack | undefined;
  stack: NetStack | undefined;
  id: number;
  phase: "idle" | "connecting" | "open" | "closed";
  /** The pcb is gone (closed by us, or freed by lwIP after an error). */
  gone: boolean;
  remote: Endpoint | undefined;
  local: Endpoint | undefined;
  /** A chunk lwIP has taken only part of; its callback runs when the rest is taken. */
  pending: { buf: Buffer; cb: (err?: Error | null) => void } | undefined;
  retry: NodeJS.Timeout | undefined;
  /** Happy Eyeballs: the current attempt's timer (the next address is tried when it fires). */
  attempt: NodeJS.Timeout | undefined;
  /** Accepted by a dual-stack listener: IPv4 endpoints are shown as IPv4-mapped IPv6 addresses, as Node does. */
  mapped: boolean;
  /** Bytes pushed to the reader and not yet given back to lwIP's receive window. */
  unacked: number;
  /** Bytes lwIP took and the peer has not acknowledged yet ("sent" events). */
  inflight: number;
  /** The peer's FIN arrived. */
  remoteEnded: boolean;
  /** Destroyed with data or a FIN still on the way: the process stays up a little for lwIP to deliver them. */
  lingering: boolean;
  bytesRead: number;
  bytesWritten: number;
  refd: boolean;
  release: (() => void) | undefined;
  reset: boolean;
  /** setNoDelay() asked for this (applied once connected). */
  noDelay: boolean | undefined;
  handler: (ev: StackEvent) => void;
}

const kConn = Symbol("seng.conn");

function state(s: net.Socket): ConnState {
  const o = s as unknown as { [kConn]?: ConnState };
  if (!o[kConn]) {
    o[kConn] = {
      shield: undefined,
      stack: undefined,
      id: -1,
      phase: "idle",
      gone: false,
      remote: undefined,
      local: undefined,
      pending: undefined,
      retry: undefined,
      attempt: undefined,
      mapped: false,
      unacked: 0,
      inflight: 0,
      remoteEnded: false,
      lingering: false,
      bytesRead: 0,
      bytesWritten: 0,
      refd: true,
      release: undefined,
      reset: false,
      noDelay: undefined,
      handler: (ev) => onEvent(s, ev),
    };
  }
  return o[kConn];
}

// ---- errors ---------------------------------------------------------------------------------------------------------

/** An Error shaped like Node's system errors: "connect ECONNREFUSED 1.2.3.4:80", with code, errno, syscall... */
export function sysError(
  code: string,
  syscall: string,
  address?: string,
  port?: number,
  detail?: string,
): NodeJS.ErrnoException {
  const errno = (osConstants.errno as Record<string, number>)[code];
  const where = address ? ` ${address}${port !== undefined ? `:${port}` : ""}` : "";
  const err: NodeJS.ErrnoException = new Error(`${syscall} ${code}${where}${detail ? ` (${detail})` : ""}`);
  err.code = code;
  err.syscall = syscall;
  if (errno !== undefined) err.errno = -errno;
  if (address) (err as { address?: string }).address = address;
  if (port !== undefined) (err as { port?: number }).port = port;
  return err;
}

/**
 * The Node code of an error from the stack: an errno-style code (what lwIP's "error" events carry, mapped from its
 * err_t by src/native/lwip-errors.ts), or an Error with such a `code` (what the binding throws). Anything else: EIO.
 */
export function errorCode(raw: unknown): string {
  const code = typeof raw === "string" ? raw : (raw as { code?: unknown } | null)?.code;
  if (typeof code === "string" && (code in osConstants.errno || code.startsWith("ERR_SENG_"))) return code;
  return "EIO";
}

/**
 * A Node-shaped error for what the stack reported: an "error" event's code, or an Error a binding call threw (lwIP's
 * carry `lwipErr` and get "connect EADDRINUSE 1.2.3.4:80 (lwIP: ...)"). Errors that already have their own code
 * (lookups, SENG's: ERR_SENG_ENTROPY...) and argument errors pass through.
 */
function stackError(raw: unknown, syscall: string, at: Endpoint | undefined): Error {
  if (raw instanceof ShieldedStackError || raw instanceof TypeError || raw instanceof RangeError) return raw;
  if (raw instanceof Error && !("lwipErr" in raw) && typeof (raw as { code?: unknown }).code === "string")
    return raw;
  const detail = raw instanceof Error ? `lwIP: ${raw.message}` : undefined;
  return sysError(errorCode(raw), syscall, at?.address, at?.port, detail);
}

// ---- argument handling ----------------------------------------------------------------------------------------------

type Callback = (...a: unknown[]) => void;

/** Options of `connect`/`createConnection` that the SDK uses (others are accepted and ignored). */
export interface ConnectOptions {
  port?: number | string;
  host?: string;
  path?: string;
  /** 4 or 6: only that family; 0 (default): either. */
  family?: number;
  /** Happy Eyeballs for a name with addresses of both families (default: net.getDefaultAutoSelectFamily()). */
  autoSelectFamily?: boolean;
  /** How long an attempt may take before the next address is tried (default: Node's, 250 ms). */
  autoSelectFamilyAttemptTimeout?: number;
  timeout?: number;
  lookup?: (
    hostname: string,
    options: { family?: number; all?: boolean; hints?: number },
    cb: (err: Error | null, address: string | { address: string; family: number }[], family?: number) => void,
  ) => void;
  allowHalfOpen?: boolean;
  readableHighWaterMark?: number;
  writableHighWaterMark?: number;
  highWaterMark?: number;
  noDelay?: boolean;
  keepAlive?: boolean;
  keepAliveInitialDelay?: number;
  signal?: AbortSignal;
  [k: string]: unknown;
}

const isPipeName = (s: unknown): s is string => typeof s === "string" && !(Number(s) >= 0);

/** Node's normalizeArgs for connect: (options[, cb]) | (port[, host][, cb]) | (path[, cb]). */
export function normalizeConnectArgs(args: unknown[]): [ConnectOptions, Callback | undefined] {
  const last = args[args.length - 1];
  const cb = typeof last === "function" ? (last as Callback) : undefined;
  const a0 = args[0];
  if (Array.isArray(a0)) return normalizeConnectArgs(a0 as unknown[]); // net's pre-normalized [options, cb]
  if (a0 !== null && typeof a0 === "object") return [{ ...(a0 as ConnectOptions) }, cb];
  if (isPipeName(a0)) return [{ path: a0 }, cb];
  const opts: ConnectOptions = { port: a0 as number | string };
  if (typeof args[1] === "string") opts.host = args[1];
  return [opts, cb];
}

function validatePort(port: unknown, what = "options.port", allowZero = true): number {
  const n = typeof port === "string" && port.trim() !== "" ? Number(port) : port;
  if (typeof n !== "number" || !Number.isInteger(n) || n < (allowZero ? 0 : 1) || n > 65535) {
    const err = new RangeError(
      `${what} should be >= ${allowZero ? 0 : 1} and < 65536. Received ${String(port)}.`,
    );
    (err as NodeJS.ErrnoException).code = "ERR_SOCKET_BAD_PORT";
    throw err;
  }
  return n;
}

type Addr = { address: string; family: 4 | 6 };

/** "IPv4"/"IPv6" for an address, as Node's address() and remoteFamily give it. */
export function familyName(address: string | undefined): "IPv4" | "IPv6" {
  return address !== undefined && net.isIPv6(address) ? "IPv6" : "IPv4";
}

/** An IPv4 endpoint of a dual-stack socket as Node shows it: "::ffff:a.b.c.d". */
function mapEndpoint(e: Endpoint | undefined, mapped: boolean): Endpoint | undefined {
  return e && mapped && net.isIPv4(e.address) ? { address: `::ffff:${e.address}`, port: e.port } : e;
}

/**
 * The error for a destination of a family the lease lacks: ENETUNREACH, as Node gets it from a host without a route
 * of that family.
 */
export function unreachable(
  shield: ShieldedStack,
  address: string,
  port: number | undefined,
  syscall: string,
): Error {
  const fam = net.isIP(address) === 6 ? 6 : 4;
  return sysError(
    "ENETUNREACH",
    syscall,
    address,
    port,
    `SENG: the app's lease has no IPv${fam} address${shield.lease ? "" : " yet"}`,
  );
}

/**
 * The addresses to connect to for `host`: an IP literal as it is, else what `lookup` (the tunnel's DNS by default)
 * answers for `family` (0: both), every one when `all` (Happy Eyeballs) or the first. `onLookup` sees each, as
 * Node's 'lookup' event does.
 */
function resolveHost(
  host: string,
  family: 0 | 4 | 6,
  all: boolean,
  lookup: ConnectOptions["lookup"] | undefined,
  onLookup?: (err: Error | null, address?: string, family?: number) => void,
): Promise<Addr[]> {
  const fam = net.isIP(host);
  if (fam !== 0) return Promise.resolve([{ address: host, family: fam as 4 | 6 }]);
  return new Promise((resolve, reject) => {
    const fn = lookup ?? (shieldedLookup as unknown as NonNullable<ConnectOptions["lookup"]>);
    // As net.connect does: AI_ADDRCONFIG when either family will do (only families the lease has).
    const hints = family === 0 ? dns.ADDRCONFIG : 0;
    fn(host, { family, all, hints }, (err, address, f) => {
      let list: Addr[] = [];
      if (Array.isArray(address))
        list = address
          .filter((x) => net.isIP(x?.address) !== 0)
          .map((x) => ({ address: x.address, family: net.isIP(x.address) as 4 | 6 }));
      else if (typeof address === "string" && net.isIP(address) !== 0)
        list = [{ address, family: net.isIP(address) as 4 | 6 }];
      if (family !== 0) list = list.filter((x) => x.family === family);
      if (!err && list.length === 0)
        err = sysError("ENOTFOUND", "getaddrinfo", host, undefined, `no IPv${family || "4 or IPv6"} address`);
      if (err) {
        onLookup?.(err, undefined, f ?? family);
        return reject(err);
      }
      for (const a of list) onLookup?.(null, a.address, a.family);
      resolve(all ? list : list.slice(0, 1));
    });
  });
}

/** Node's order for Happy Eyeballs: the families alternate, starting with the first address's. */
export function interleaveFamilies(addrs: Addr[]): Addr[] {
  const first = addrs[0]?.family;
  const a = addrs.filter((x) => x.family === first);
  const b = addrs.filter((x) => x.family !== first);
  const out: Addr[] = [];
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i]) out.push(a[i]!);
    if (b[i]) out.push(b[i]!);
  }
  return out;
}

/** Every attempt failed: Node's AggregateError (code of the first), or the one error. */
function aggregate(errors: Error[]): Error {
  if (errors.length === 1) return errors[0]!;
  const e = new AggregateError(errors, errors.map((x) => x.message).join("; "));
  return Object.assign(e, { code: (errors[0] as NodeJS.ErrnoException | undefined)?.code });
}

// ---- Socket ---------------------------------------------------------------------------------------------------------

/** Socket options: net.Socket's, without `fd`/`handle` (those would be host sockets). */
export interface SocketOptions {
  allowHalfOpen?: boolean;
  readableHighWaterMark?: number;
  writableHighWaterMark?: number;
  highWaterMark?: number;
  noDelay?: boolean;
  keepAlive?: boolean;
  keepAliveInitialDelay?: number;
  signal?: AbortSignal;
  readable?: boolean;
  writable?: boolean;
  fd?: never;
  handle?: never;
}

/** A TCP socket on the shielded stack. */
export class Socket extends HostSocket {
  constructor(options?: SocketOptions) {
    const o = { ...(options as Record<string, unknown> | undefined) };
    if (o.fd !== undefined || o.handle !== undefined)
      throw hostNetworkingError("a net.Socket over a host file descriptor or handle");
    super(o as net.SocketConstructorOpts);
    state(this);
  }

  /** A connection lwIP accepted on a listener. */
  static accepted(
    shield: ShieldedStack,
    id: number,
    remote: Endpoint | undefined,
    local: Endpoint | undefined,
    options: SocketOptions & { pauseOnCreate?: boolean; noDelay?: boolean; mapped?: boolean },
  ): Socket {
    const s = new Socket({
      allowHalfOpen: options.allowHalfOpen,
      readableHighWaterMark: options.readableHighWaterMark,
      writableHighWaterMark: options.writableHighWaterMark,
    });
    const st = state(s);
    st.shield = shield;
    st.stack = shield.stack;
    st.id = id;
    st.phase = "open";
    st.remote = remote;
    st.local = local;
    st.mapped = options.mapped === true;
    shield.register(id, st.handler);
    syncHold(s);
    if (options.pauseOnCreate) s.pause();
    if (options.noDelay) s.setNoDelay(true);
    return s;
  }

  override connect(...args: unknown[]): this {
    return connectImpl(this, args) as this;
  }

  override _write(chunk: Buffer | string, encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    writeImpl(this, typeof chunk === "string" ? Buffer.from(chunk, encoding) : chunk, cb);
  }

  override _writev(
    chunks: { chunk: Buffer | string; encoding: BufferEncoding }[],
    cb: (err?: Error | null) => void,
  ): void {
    const bufs = chunks.map((c) =>
      typeof c.chunk === "string" ? Buffer.from(c.chunk, c.encoding) : c.chunk,
    );
    writeImpl(this, bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs), cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    finalImpl(this, cb);
  }

  override _read(): void {
    ackReceived(this);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    destroyImpl(this, err, cb);
  }

  _getpeername(): { address?: string; family?: string; port?: number } {
    const st = state(this);
    const r = mapEndpoint(st.remote, st.mapped);
    return r ? { address: r.address, family: familyName(r.address), port: r.port } : {};
  }

  _getsockname(): { address?: string; family?: string; port?: number } {
    const st = state(this);
    const l = mapEndpoint(st.local, st.mapped);
    return l ? { address: l.address, family: familyName(l.address), port: l.port } : {};
  }

  /** Nagle off (true, the default argument) or on, as net.Socket; applied when connected. */
  override setNoDelay(noDelay?: boolean): this {
    state(this).noDelay = noDelay === undefined ? true : !!noDelay;
    applyNoDelay(this);
    return this;
  }

  /** Accepted; lwIP's keepalive is the binding's. */
  override setKeepAlive(_enable?: boolean, _initialDelay?: number): this {
    return this;
  }

  override ref(): this {
    refImpl(this, true);
    return this;
  }

  override unref(): this {
    refImpl(this, false);
    return this;
  }

  override resetAndDestroy(): this {
    state(this).reset = true;
    this.destroy();
    return this;
  }
}

// Accessors net.Socket declares as fields in its types; defined here as getters over the SDK state.
Object.defineProperties(Socket.prototype, {
  pending: {
    configurable: true,
    get(this: Socket) {
      return state(this).phase !== "open";
    },
  },
  bytesRead: {
    configurable: true,
    get(this: Socket) {
      return state(this).bytesRead;
    },
  },
  bytesWritten: {
    configurable: true,
    get(this: Socket) {
      return state(this).bytesWritten + (this.writableLength ?? 0);
    },
  },
  _bytesDispatched: {
    configurable: true,
    get(this: Socket) {
      return state(this).bytesWritten;
    },
  },
  bufferSize: {
    configurable: true,
    get(this: Socket) {
      return this.writableLength + (state(this).pending?.buf.length ?? 0);
    },
  },
});

const SDK_METHODS = [
  "connect",
  "_write",
  "_writev",
  "_final",
  "_read",
  "_destroy",
  "_getpeername",
  "_getsockname",
  "setNoDelay",
  "setKeepAlive",
  "ref",
  "unref",
  "resetAndDestroy",
] as const;

/**
 * Turns a fresh host `net.Socket` (made with `new net.Socket()`, no handle yet) into an SDK socket before it
 * connects: the socket object the app holds stays the same. A socket with a host handle cannot be turned: that is
 * an Error (fail closed).
 */
export function adoptHostSocket(sock: net.Socket): Socket {
  if (sock instanceof Socket) return sock;
  if (internals(sock)._handle)
    throw hostNetworkingError("connect() on a socket that already has a host handle");
  if (Object.getPrototypeOf(sock) === HostSocket.prototype) Object.setPrototypeOf(sock, Socket.prototype);
  else {
    // A subclass of net.Socket: the SDK's methods go on the instance, above the subclass's.
    const proto = Socket.prototype as unknown as Record<string, unknown>;
    for (const m of SDK_METHODS)
      Object.defineProperty(sock, m, { value: proto[m], configurable: true, writable: true });
    for (const p of ["pending", "bytesRead", "bytesWritten", "_bytesDispatched", "bufferSize"])
      Object.defineProperty(sock, p, Object.getOwnPropertyDescriptor(Socket.prototype, p)!);
  }
  state(sock);
  return sock as Socket;
}

/** The binding's "ip:port" for a socket, or undefined (unknown id, or no such call). */
function safeLocalAddress(stack: NetStack | undefined, id: number): string | undefined {
  try {
    return stack?.localAddress?.(id);
  } catch {
    return undefined;
  }
}

function applyNoDelay(s: net.Socket): void {
  const st = state(s);
  if (st.phase !== "open" || st.gone || st.noDelay === undefined || !st.stack?.tcpNoDelay) return;
  try {
    st.stack.tcpNoDelay(st.id, st.noDelay);
  } catch {
    // gone
  }
}

function refImpl(s: net.Socket, on: boolean): void {
  state(s).refd = on;
  syncHold(s);
}

/**
 * Whether this socket keeps the process alive, as a host socket's libuv handle would: while connecting, while the
 * peer may still send, and while written data is not yet with the peer (lwIP's buffers die with the process, unlike
 * the kernel's). Not after unref().
 */
function syncHold(s: net.Socket): void {
  const st = state(s);
  let want = false;
  if (st.refd && st.shield) {
    if (st.phase === "connecting") want = true;
    else if (st.phase === "open")
      want = !st.remoteEnded || !!st.pending || s.writableLength > 0 || st.inflight > 0;
    want ||= st.lingering;
  }
  if (want && !st.release) st.release = st.shield!.hold();
  else if (!want && st.release) {
    st.release();
    st.release = undefined;
  }
}

/** How long a closed socket may keep the process alive for lwIP to deliver its last data and FIN. */
const LINGER_MS = 2000;

/** Keeps the process alive for `ms` (lwIP still owns a closed pcb's unsent data: it goes out while we run). */
function linger(s: net.Socket, ms: number): void {
  const st = state(s);
  st.lingering = true;
  syncHold(s);
  setTimeout(() => {
    st.lingering = false;
    syncHold(s);
  }, ms).unref();
}

function connectImpl(s: net.Socket, args: unknown[]): net.Socket {
  const [opts, cb] = normalizeConnectArgs(args);
  if (opts.path != null)
    throw hostNetworkingError(`connecting to the local socket ${String(opts.path)} (IPC on the host)`);
  if (opts.port === undefined) {
    const err = new TypeError('The "options", "port" or "path" argument must be specified');
    (err as NodeJS.ErrnoException).code = "ERR_MISSING_ARGS";
    throw err;
  }
  const port = validatePort(opts.port);
  const st = state(s);
  if (st.phase === "connecting" || st.phase === "open")
    throw Object.assign(new Error("SENG: this socket is already connecting or connected"), {
      code: "ERR_SOCKET_CONNECTING",
    });
  if (s.destroyed || st.phase === "closed")
    throw Object.assign(new Error("SENG: a destroyed socket cannot connect again"), {
      code: "ERR_SOCKET_CLOSED",
    });
  const shield = shieldedStack();
  if (cb) s.once("connect", cb as () => void);
  if (opts.timeout) s.setTimeout(opts.timeout);
  if (opts.noDelay) st.noDelay = true;
  const host = opts.host || "localhost";
  const si = internals(s);
  si.connecting = true;
  si._host = host;
  st.shield = shield;
  st.phase = "connecting";
  syncHold(s);
  si._unrefTimer();
  const family = opts.family === 4 || opts.family === 6 ? opts.family : 0;
  const autoSelect =
    family === 0 &&
    net.isIP(host) === 0 &&
    (typeof opts.autoSelectFamily === "boolean" ? opts.autoSelectFamily : net.getDefaultAutoSelectFamily());
  const attemptMs = Math.max(
    10,
    Number(opts.autoSelectFamilyAttemptTimeout) || net.getDefaultAutoSelectFamilyAttemptTimeout(),
  );
  void (async () => {
    try {
      const addrs = await resolveHost(host, family, autoSelect, opts.lookup, (err, address, fam) => {
        if (net.isIP(host) === 0) s.emit("lookup", err, address, fam, host);
      });
      const stack = await shield.ready();
      if (s.destroyed) return;
      st.stack = stack;
      if (addrs.length > 1) return connectMultiple(s, addrs, port, attemptMs);
      const ip = addrs[0]!.address;
      st.remote = { address: ip, port };
      if (!shield.hasFamily(addrs[0]!.family)) throw unreachable(shield, ip, port, "connect");
      const id = stack.tcpConnect(ip, port);
      st.id = id;
      shield.register(id, st.handler);
    } catch (e) {
      if (!s.destroyed) s.destroy(stackError(e, "connect", st.remote));
    }
  })();
  return s;
}

/**
 * Happy Eyeballs as Node 20's `autoSelectFamily` does it: the addresses in turn, families alternating; an attempt
 * that has not connected within `attemptMs` is abandoned for the next (the last one waits for lwIP's own timeout);
 * one that fails (refused, or a family the lease lacks: ENETUNREACH at once) moves on at once. The first to connect
 * is the socket's. 'connectionAttempt', 'connectionAttemptFailed' and 'connectionAttemptTimeout' are emitted, and
 * `autoSelectFamilyAttemptedAddresses` lists what was tried, as in Node.
 */
function connectMultiple(s: net.Socket, addrs: Addr[], port: number, attemptMs: number): void {
  const st = state(s);
  const shield = st.shield!;
  const stack = st.stack!;
  const order = interleaveFamilies(addrs);
  const attempted: string[] = [];
  (s as { autoSelectFamilyAttemptedAddresses?: string[] }).autoSelectFamilyAttemptedAddresses = attempted;
  const errors: Error[] = [];
  let i = 0;
  const next = (): void => {
    clearTimeout(st.attempt);
    st.attempt = undefined;
    if (s.destroyed) return;
    if (i >= order.length) return void s.destroy(aggregate(errors));
    const { address, family } = order[i++]!;
    const remote = { address, port };
    attempted.push(`${address}:${port}`);
    s.emit("connectionAttempt", address, port, family);
    const fail = (e: Error): void => {
      errors.push(e);
      s.emit("connectionAttemptFailed", address, port, family, e);
      next();
    };
    if (!shield.hasFamily(family)) return fail(unreachable(shield, address, port, "connect"));
    let id: number;
    try {
      id = stack.tcpConnect(address, port);
    } catch (e) {
      if (e instanceof ShieldedStackError) return void s.destroy(e);
      return fail(stackError(e, "connect", remote));
    }
    st.id = id;
    st.remote = remote;
    const attempt = (ev: StackEvent): void => {
      if (ev.type === "connected") {
        clearTimeout(st.attempt);
        st.attempt = undefined;
        shield.register(id, st.handler); // this connection is the socket's from now on
        st.handler(ev);
      } else if (ev.type === "error") {
        shield.unregister(id, attempt);
        st.id = -1;
        if (ev.error instanceof Error) return void s.destroy(ev.error); // the tunnel is gone for good
        fail(stackError(ev.error, "connect", remote));
      } else if (ev.type === "closed") shield.unregister(id, attempt); // destroyed while connecting
    };
    shield.register(id, attempt);
    if (i < order.length)
      st.attempt = setTimeout(() => {
        shield.unregister(id, attempt);
        st.id = -1;
        try {
          stack.tcpAbort(id);
        } catch {
          // gone meanwhile
        }
        s.emit("connectionAttemptTimeout", address, port, family);
        errors.push(sysError("ETIMEDOUT", "connect", address, port));
        next();
      }, attemptMs);
  };
  next();
}

function onEvent(s: net.Socket, ev: StackEvent): void {
  const st = state(s);
  const si = internals(s);
  switch (ev.type) {
    case "connected": {
      if (st.phase !== "connecting") return;
      st.phase = "open";
      si.connecting = false;
      st.local = parseEndpoint(ev.local) ??
        parseEndpoint(safeLocalAddress(st.stack, st.id)) ?? {
          address: st.shield?.lease?.address ?? "0.0.0.0",
          port: 0,
        };
      st.remote = parseEndpoint(ev.remote) ?? st.remote;
      if (st.noDelay !== undefined) applyNoDelay(s);
      si._unrefTimer();
      s.emit("connect");
      s.emit("ready");
      return;
    }
    case "data": {
      const d = ev.data;
      if (!d || d.length === 0) return;
      st.bytesRead += d.length;
      si._unrefTimer();
      st.unacked += d.length;
      if (s.destroyed || s.readableEnded) return ackReceived(s);
      // `d` is a view into the whole batch's buffer: a small piece that may wait unread (a slow reader) is copied,
      // so that it does not keep every other connection's bytes of the batch alive.
      const own = d.length * 4 < d.buffer.byteLength ? Buffer.from(d) : d;
      if (s.push(own)) ackReceived(s);
      return;
    }
    case "sent":
      st.inflight = Math.max(0, st.inflight - (ev.n ?? 0));
      si._unrefTimer();
      flush(s);
      syncHold(s);
      return;
    case "end":
      st.remoteEnded = true;
      if (!s.readableEnded) s.push(null);
      syncHold(s);
      return;
    case "error": {
      if (st.phase === "closed") return;
      const connecting = st.phase === "connecting";
      st.gone = true;
      st.shield?.unregister(st.id, st.handler);
      if (!s.destroyed) s.destroy(stackError(ev.error, connecting ? "connect" : "read", st.remote));
      return;
    }
    case "closed": {
      // The pcb is finished (both directions closed): nothing more will arrive or leave.
      st.gone = true;
      st.remoteEnded = true;
      if (st.inflight > 0) linger(s, LINGER_MS);
      st.inflight = 0;
      st.shield?.unregister(st.id, st.handler);
      syncHold(s);
      if (s.destroyed) return;
      if (!s.readableEnded) s.push(null);
      if (st.pending || s.writableLength > 0)
        s.destroy(sysError("EPIPE", "write", st.remote?.address, st.remote?.port));
      else if (!s.writableEnded) s.end();
      return;
    }
    default:
      return;
  }
}

/**
 * Gives the received bytes back to lwIP's receive window. Called when push() had room and from _read(): Readable
 * calls _read only once until the next push, so _read must reopen the window unconditionally.
 */
function ackReceived(s: net.Socket): void {
  const st = state(s);
  if (st.unacked === 0 || st.gone || st.id < 0 || !st.stack) return;
  let n = st.unacked;
  st.unacked = 0;
  try {
    // tcp_recved takes 16 bits.
    while (n > 0) {
      const k = Math.min(n, 0xffff);
      st.stack.tcpRecved(st.id, k);
      n -= k;
    }
  } catch {
    // the pcb went away; its "error"/"closed" event follows
  }
}

function writeImpl(s: net.Socket, buf: Buffer, cb: (err?: Error | null) => void): void {
  const st = state(s);
  if (st.phase === "connecting" || st.phase === "idle") {
    const onConnect = () => {
      s.off("close", onClose);
      writeImpl(s, buf, cb);
    };
    const onClose = () => {
      s.off("connect", onConnect);
      cb(
        Object.assign(new Error("Socket closed before the connection was established"), {
          code: "ERR_SOCKET_CLOSED_BEFORE_CONNECTION",
        }),
      );
    };
    s.once("connect", onConnect);
    s.once("close", onClose);
    return;
  }
  if (st.gone || st.phase === "closed" || !st.stack)
    return cb(sysError("EPIPE", "write", st.remote?.address, st.remote?.port));
  internals(s)._unrefTimer();
  st.pending = { buf, cb };
  flush(s);
}

/** Hands the pending chunk to lwIP; its callback runs once all of it was taken. */
function flush(s: net.Socket): void {
  const st = state(s);
  const p = st.pending;
  if (!p || st.gone || !st.stack) return;
  let n: number;
  try {
    n = st.stack.tcpWrite(st.id, p.buf);
  } catch (e) {
    st.pending = undefined;
    return p.cb(stackError(e, "write", st.remote));
  }
  st.bytesWritten += n;
  st.inflight += n;
  if (n >= p.buf.length) {
    st.pending = undefined;
    clearTimeout(st.retry);
    st.retry = undefined;
    p.cb();
    syncHold(s);
    return;
  }
  if (n > 0) p.buf = p.buf.subarray(n);
  // "sent" normally wakes this up; a slow retry covers lwIP running out of pbufs with nothing in flight.
  st.retry ??= setTimeout(() => {
    st.retry = undefined;
    flush(s);
  }, 50);
}

function finalImpl(s: net.Socket, cb: (err?: Error | null) => void): void {
  const st = state(s);
  if (st.phase === "connecting" || st.phase === "idle") {
    const onConnect = () => {
      s.off("close", onClose);
      finalImpl(s, cb);
    };
    const onClose = () => {
      s.off("connect", onConnect);
      cb();
    };
    s.once("connect", onConnect);
    s.once("close", onClose);
    return;
  }
  if (!st.gone && st.stack && st.id >= 0) {
    try {
      st.stack.tcpShutdown(st.id, false, true);
    } catch {
      // already closed: nothing to shut down
    }
  }
  cb();
}

function destroyImpl(s: net.Socket, err: Error | null, cb: (err?: Error | null) => void): void {
  const st = state(s);
  const si = internals(s);
  si.connecting = false;
  clearTimeout(st.retry);
  st.retry = undefined;
  clearTimeout(st.attempt);
  st.attempt = undefined;
  if (st.id >= 0 && !st.gone && st.stack) {
    // Give back what was read first, so lwIP ends with FIN rather than RST (it resets on unread data).
    if (!st.reset) ackReceived(s);
    // Data not yet acknowledged: up to LINGER_MS; only our FIN: long enough for lwIP's next output batch.
    if (!st.reset && (st.inflight > 0 || !st.remoteEnded)) linger(s, st.inflight > 0 ? LINGER_MS : 100);
    st.gone = true;
    st.shield?.unregister(st.id, st.handler);
    try {
      if (st.reset) st.stack.tcpAbort(st.id);
      else st.stack.tcpClose(st.id);
    } catch {
      // already gone
    }
  }
  st.phase = "closed";
  syncHold(s);
  s.setTimeout(0);
  const p = st.pending;
  st.pending = undefined;
  if (p) p.cb(err ?? sysError("EPIPE", "write"));
  cb(err);
  const server = si._server;
  if (server) {
    si._server = null;
    server._connections--;
    server._emitCloseIfDrained();
  }
  // Like a host socket, whose "close" follows its handle closing on a later turn of the loop.
  setImmediate(() => s.emit("close", !!err));
}

// ---- connect / createConnection -------------------------------------------------------------------------------------

/** `net.createConnection` on the shielded stack. */
export function createConnection(options: ConnectOptions, connectionListener?: () => void): Socket;
export function createConnection(port: number, host?: string, connectionListener?: () => void): Socket;
export function createConnection(...args: unknown[]): Socket {
  const [opts] = normalizeConnectArgs(args);
  if (opts.path != null)
    throw hostNetworkingError(`connecting to the local socket ${String(opts.path)} (IPC on the host)`);
  const s = new Socket({
    allowHalfOpen: opts.allowHalfOpen,
    readableHighWaterMark: opts.readableHighWaterMark ?? opts.highWaterMark,
    writableHighWaterMark: opts.writableHighWaterMark ?? opts.highWaterMark,
    signal: opts.signal,
  });
  return s.connect(...(args as [ConnectOptions]));
}

export const connect = createConnection;

// ---- Server ---------------------------------------------------------------------------------------------------------

interface ListenOptions {
  port?: number | string;
  host?: string;
  backlog?: number;
  path?: string;
  fd?: number;
  handle?: unknown;
  exclusive?: boolean;
  ipv6Only?: boolean;
  signal?: AbortSignal;
}

/** Node's listen arguments: () | (port[, host][, backlog][, cb]) | (options[, cb]) | (path|handle[, backlog][, cb]). */
function normalizeListenArgs(args: unknown[]): [ListenOptions, Callback | undefined] {
  const a = [...args];
  const cb = typeof a[a.length - 1] === "function" ? (a.pop() as Callback) : undefined;
  const a0 = a[0];
  if (a0 !== null && typeof a0 === "object") {
    const o = a0 as Record<string, unknown>;
    if ("_handle" in o || o instanceof HostSocket || o instanceof HostServer) return [{ handle: a0 }, cb];
    return [{ ...(o as ListenOptions) }, cb];
  }
  if (isPipeName(a0)) return [{ path: a0 }, cb];
  const opts: ListenOptions = { port: (a0 as number | string | undefined) ?? 0 };
  if (typeof a[1] === "string") {
    opts.host = a[1];
    if (typeof a[2] === "number") opts.backlog = a[2];
  } else if (typeof a[1] === "number") opts.backlog = a[1];
  return [opts, cb];
}

/** The listening "handle" of a shielded server: what net.Server's own address()/close()/ref()/unref() call. */
class ListenHandle {
  #release: (() => void) | undefined;
  constructor(
    readonly shield: ShieldedStack,
    readonly server: ServerInternals,
    readonly id: number,
    readonly address: string,
    readonly port: number,
    /** Bound to "::" for both families: IPv4 peers are shown IPv4-mapped. */
    readonly dual = false,
  ) {
    if (!server._unref) this.#release = shield.hold();
    shield.register(id, (ev) => this.onEvent(ev));
  }

  getsockname(out: Record<string, unknown>): number {
    out.address = this.address;
    out.family = familyName(this.address);
    out.port = this.port;
    return 0;
  }

  ref(): void {
    this.#release ??= this.shield.hold();
  }

  unref(): void {
    this.#release?.();
    this.#release = undefined;
  }

  close(): void {
    this.unref();
    this.shield.unregister(this.id);
    try {
      this.shield.stack.tcpClose(this.id);
    } catch {
      // the stack is gone
    }
  }

  onEvent(ev: StackEvent): void {
    const server = this.server;
    if (ev.type === "error") {
      server.emit("error", stackError(ev.error, "accept", { address: this.address, port: this.port }));
      return;
    }
    if (ev.type !== "accept" || typeof ev.child !== "number") return;
    const stack = this.shield.stack;
    const remote = parseEndpoint(ev.remote);
    const local = parseEndpoint(ev.local) ??
      parseEndpoint(safeLocalAddress(stack, ev.child)) ?? {
        address:
          this.address === "0.0.0.0" || this.address === "::"
            ? (this.shield.leasedAddress(familyName(remote?.address) === "IPv6" ? 6 : 4) ?? this.address)
            : this.address,
        port: this.port,
      };
    if (server.maxConnections && server._connections >= server.maxConnections) {
      try {
        stack.tcpClose(ev.child);
      } catch {
        // gone already
      }
      const l = mapEndpoint(local, this.dual)!;
      const r = mapEndpoint(remote, this.dual);
      server.emit("drop", {
        localAddress: l.address,
        localPort: l.port,
        localFamily: familyName(l.address),
        remoteAddress: r?.address,
        remotePort: r?.port,
        remoteFamily: r ? familyName(r.address) : undefined,
      });
      return;
    }
    const s = Socket.accepted(this.shield, ev.child, remote, local, {
      allowHalfOpen: server.allowHalfOpen,
      pauseOnCreate: server.pauseOnConnect,
      noDelay: server.noDelay,
      readableHighWaterMark: server.highWaterMark,
      writableHighWaterMark: server.highWaterMark,
      mapped: this.dual,
    });
    const si = internals(s);
    si.server = server;
    si._server = server;
    server._connections++;
    server.emit("connection", s);
    announceEstablished(s); // a tls/https server wrapped it: let its TLSSocket write
  }
}

/**
 * Node's TLSSocket takes a net.Socket without a native handle for one still connecting, and holds its writes until
 * that socket emits 'connect'. SDK sockets have no native handle, so an established one wrapped by TLS (accepted by
 * a tls/https server, or connected before TLS starts, as with STARTTLS) emits 'connect' once more, on the next
 * tick, when something waits for it.
 */
export function announceEstablished(s: net.Socket): void {
  process.nextTick(() => {
    if (!s.destroyed && !s.connecting && s.listenerCount("connect") > 0) s.emit("connect");
  });
}

/**
 * `listen` for any net.Server (the SDK's, and through register.ts http.Server, https.Server, tls.Server...): an lwIP
 * listener on the leased address. Local sockets (path), file descriptors and host handles are refused.
 */
export function shieldedListen(this: net.Server, ...args: unknown[]): net.Server {
  const server = this as ServerInternals;
  const [opts, cb] = normalizeListenArgs(args);
  if (opts.path != null)
    throw hostNetworkingError(`listening on the local socket ${opts.path} (IPC on the host)`);
  if (opts.fd != null || opts.handle != null)
    throw hostNetworkingError("listening on a host file descriptor or handle");
  if (server._handle)
    throw Object.assign(new Error("Listen method has been called more than once without closing."), {
      code: "ERR_SERVER_ALREADY_LISTEN",
    });
  const port = validatePort(opts.port ?? 0);
  const host = opts.host || undefined;
  const ipv6Only = (opts as { ipv6Only?: boolean }).ipv6Only === true;
  // lwIP's backlog is 8 bits.
  const backlog = Math.min(
    255,
    Math.max(1, typeof opts.backlog === "number" ? Math.trunc(opts.backlog) : 255),
  );
  const shield = shieldedStack();
  if (cb) server.once("listening", cb as () => void);
  const token = server._listeningId;
  const release = shield.hold();
  const abort = () => {
    server._listeningId++;
  };
  opts.signal?.addEventListener("abort", abort, { once: true });
  void (async () => {
    try {
      const stack = await shield.ready();
      // No host: "::" (both families) when the lease has IPv6, else "0.0.0.0", as Node picks by the host's IPv6.
      const ip =
        host === undefined
          ? shield.hasFamily(6)
            ? "::"
            : "0.0.0.0"
          : (await resolveHost(host, 0, false, undefined))[0]!.address;
      if (server._listeningId !== token) return; // closed (or aborted) before the lease came
      const dual = ip === "::" && !ipv6Only;
      const id = stack.tcpListen(ip, port, backlog, dual);
      const local = parseEndpoint(safeLocalAddress(stack, id));
      const h = new ListenHandle(shield, server, id, ip, local?.port || port, dual);
      server._handle = h;
      server._connectionKey = `${net.isIP(ip)}:${ip}:${h.port}`;
      if (opts.signal) opts.signal.addEventListener("abort", () => server.close(), { once: true });
      process.nextTick(() => server.emit("listening"));
    } catch (e) {
      const err = stackError(e, "listen", { address: host ?? "::", port });
      process.nextTick(() => server.emit("error", err));
    } finally {
      opts.signal?.removeEventListener("abort", abort);
      release();
    }
  })();
  return server;
}

/** A TCP server on the shielded stack (a net.Server). */
export class Server extends HostServer {
  constructor(
    options?: net.ServerOpts | ((socket: net.Socket) => void),
    listener?: (socket: net.Socket) => void,
  ) {
    super(options as net.ServerOpts, listener);
  }

  override listen(...args: unknown[]): this {
    return shieldedListen.apply(this, args) as this;
  }
}

/** `net.createServer` on the shielded stack. */
export function createServer(
  options?: net.ServerOpts | ((socket: net.Socket) => void),
  listener?: (socket: net.Socket) => void,
): Server {
  return new Server(options, listener);
}

/** A Duplex for the given options, as `http.Agent#createConnection` and undici want. */
export function connectDuplex(options: ConnectOptions): Duplex {
  return createConnection(options);
}
