/**
 * The shielded network stack of one process: a tunnel client (attested DTLS to the gateway) and an in-process
 * TCP/IP stack (lwIP, in the native addon) joined together.
 *
 *   app socket (net.ts, dgram.ts, dns.ts) → lwIP → IP packets → TunnelClient.send → DTLS → gateway
 *   gateway → DTLS → TunnelClient "packets" → lwIP input → socket events → app socket
 *
 * The stack is made when the first lease arrives (address, prefix, gateway, MTU) and reconfigured when a later lease
 * differs (after a reconnection the gateway normally gives the same address back). Sockets wait for the lease before
 * they connect, bind or listen (`ready()`); a final close of the tunnel (policy-rejected, revoked) fails them.
 *
 * Event loop: the tunnel's UDP socket and timers are unref()'d; what keeps the process alive is the app's own
 * sockets, servers and lookups, each holding the stack with `hold()` while it is open, as Node's own handles do.
 * So a shielded app exits when its work is done, like an unshielded one.
 *
 * One process-wide instance: `ShieldedStack.start()` makes it, `shieldedStack()` returns it.
 */
import { EventEmitter } from "node:events";
import { TunnelClient, type TunnelClientOptions } from "../tunnel/client.js";
import type { CloseReason, Lease } from "../tunnel/protocol.js";
import type { StackConfig } from "../native/lwip.js";
import { checkNodeInternals } from "./node-internals.js";

/** Addressing of the in-process stack, from the lease (the binding's own type; a type import loads nothing). */
export type { StackConfig };

export type StackEventType =
  "connected" | "accept" | "data" | "sent" | "end" | "error" | "closed" | "message" | "pong";

/** An event of the native stack, for the pcb (TCP) or socket (UDP) `id`. */
export interface StackEvent {
  id: number;
  type: StackEventType;
  data?: Buffer;
  /** accept: the new connection's id. */
  child?: number;
  /** accept/connected/message: the peer ("ip:port" or {address, port}). */
  remote?: unknown;
  local?: unknown;
  /** sent: bytes acknowledged; data: bytes. */
  n?: number;
  /** error: an errno-style code ("ECONNRESET"...), or an Error when the tunnel is gone for good. */
  error?: unknown;
}

/**
 * What the runtime uses of the native lwIP binding (src/native/lwip.ts, `LwipStack`). Kept as an interface so the
 * sockets can be tested against an in-memory stack too. The binding's contract that the sockets rely on: events
 * arrive asynchronously (never from inside a call), in order per socket, and every socket ends with exactly one
 * "closed" event ("error" is always followed by one), after which its id is unknown.
 */
export interface NetStack {
  reconfigure(cfg: StackConfig): void;
  input(packets: Buffer[]): void;
  onOutput(cb: (packets: Buffer[]) => void): void;
  onEvent(cb: (ev: StackEvent) => void): void;
  tcpConnect(ip: string, port: number): number;
  tcpListen(ip: string, port: number, backlog?: number): number;
  /** Returns how many bytes lwIP took (0 when its send buffer is full: wait for "sent"). */
  tcpWrite(id: number, data: Buffer): number;
  tcpShutdown(id: number, read: boolean, write: boolean): void;
  tcpClose(id: number): void;
  tcpAbort(id: number): void;
  tcpRecved(id: number, n: number): void;
  udpBind(ip: string, port: number): number;
  udpSend(id: number, data: Buffer, ip: string, port: number): unknown;
  udpClose(id: number): void;
  /** Nagle off (true) or on. */
  tcpNoDelay?(id: number, on?: boolean): void;
  /** "ip:port" a socket is bound to (the port picked for port 0), or undefined. */
  localAddress?(id: number): string | undefined;
  /** Lets the process exit while the stack is open (the sockets hold it instead). */
  unref?(): unknown;
  stats(): unknown;
  close(): void;
}

/** The tunnel as the stack uses it (TunnelClient, or a stand-in in tests). */
export interface TunnelLike {
  on(event: "lease", cb: (lease: Lease) => void): unknown;
  on(event: "packets", cb: (packets: Buffer[]) => void): unknown;
  on(
    event: "closed",
    cb: (c: { reason: CloseReason | "lost"; message: string; final: boolean }) => void,
  ): unknown;
  on(event: "error", cb: (e: Error) => void): unknown;
  send(packets: Buffer[]): void;
  connect(): void;
  /** Lets the process exit while the tunnel is up. */
  unref?(): unknown;
  close(message?: string): void;
}

/** The message every refusal of host networking starts with. */
export const HOST_NETWORKING_DISABLED = "SENG: host networking is disabled in a shielded app";

/** An Error for an attempt to use host networking (fail closed). `code` is ERR_SENG_HOST_NETWORKING. */
export function hostNetworkingError(what: string): Error {
  return Object.assign(new Error(`${HOST_NETWORKING_DISABLED}: ${what}`), {
    code: "ERR_SENG_HOST_NETWORKING",
  });
}

/** Signals whose default ends the process: the stack closes its tunnel first (see #onSignal). */
const SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

/** Thrown when the tunnel is gone for good or the stack was closed. */
export class ShieldedStackError extends Error {
  override readonly name = "ShieldedStackError";
  constructor(
    message: string,
    readonly code = "ERR_SENG_TUNNEL_CLOSED",
  ) {
    super(message);
  }
}

/** A peer endpoint as the binding gives it ("a.b.c.d:port" or {address|ip, port}), or undefined. */
export function parseEndpoint(x: unknown): { address: string; port: number } | undefined {
  if (typeof x === "string") {
    const i = x.lastIndexOf(":");
    if (i < 0) return undefined;
    const port = Number(x.slice(i + 1));
    return Number.isInteger(port) ? { address: x.slice(0, i).replace(/^\[|\]$/g, ""), port } : undefined;
  }
  if (x && typeof x === "object") {
    const o = x as { address?: unknown; ip?: unknown; port?: unknown };
    const address = typeof o.address === "string" ? o.address : typeof o.ip === "string" ? o.ip : undefined;
    if (address !== undefined && typeof o.port === "number") return { address, port: o.port };
  }
  return undefined;
}

export interface ShieldedStackOptions {
  /** Gateway "host:port", the pinned gateway certificate fingerprint, and the RA-TLS identity. */
  gateway?: string;
  pin?: string;
  identity?: { certPem: string; keyPem: string };
  /** More TunnelClient options (keepalive, dead time, backoff). */
  tunnel?: Partial<TunnelClientOptions>;
  /** Tests: a ready-made tunnel and stack factory instead of TunnelClient and lwIP. */
  tunnelClient?: TunnelLike;
  createStack?: (cfg: StackConfig) => NetStack | Promise<NetStack>;
  /** Events worth logging (lease, closed, errors). */
  log?: (event: Record<string, unknown>) => void;
}

type Handler = (ev: StackEvent) => void;

let current: ShieldedStack | undefined;

/** Loads the native lwIP binding (lazily: an app that never gets a lease never loads lwIP). */
async function lwipFactory(): Promise<(cfg: StackConfig) => NetStack> {
  const { LwipStack } = await import("../native/lwip.js");
  return (cfg) => LwipStack.create(cfg);
}

export interface ShieldedStackEvents {
  lease: [Lease];
  closed: [{ reason: string; message: string; final: boolean }];
}

export class ShieldedStack extends EventEmitter<ShieldedStackEvents> {
  readonly tunnel: TunnelLike;
  /** The current lease (undefined before the first one). */
  lease: Lease | undefined;
  #stack: NetStack | undefined;
  #creating: Promise<void> | undefined;
  #failure: Error | undefined;
  #closed = false;
  readonly #handlers = new Map<number, Handler>();
  #waiters: { resolve: (s: NetStack) => void; reject: (e: Error) => void }[] = [];
  #holds = 0;
  #keepAlive: NodeJS.Timeout | undefined;
  readonly #createStack: Promise<(cfg: StackConfig) => NetStack | Promise<NetStack>>;
  readonly #log: (event: Record<string, unknown>) => void;
  readonly #onExit = (): void => this.close("process exiting");
  /**
   * Ctrl-C, kill, a hangup: the process ends by the signal, without 'exit', so the tunnel would stay up at the
   * gateway (address in the app's set) until its idle timeout. When the app has no handler of its own for the
   * signal, the tunnel is closed (CLOSE to the gateway) and the signal raised again, so the process still ends as
   * the signal's default says. An app with its own handler decides; its exit runs #onExit.
   */
  readonly #onSignal = (sig: NodeJS.Signals): void => {
    if (process.listenerCount(sig) > 1) return;
    this.close(`process ending (${sig})`);
    process.kill(process.pid, sig);
  };

  constructor(readonly opts: ShieldedStackOptions) {
    super();
    this.#log = opts.log ?? (() => {});
    this.#createStack = opts.createStack ? Promise.resolve(opts.createStack) : lwipFactory();
    this.#createStack.catch(() => {}); // reported through ready()
    if (opts.tunnelClient) this.tunnel = opts.tunnelClient;
    else {
      if (!opts.gateway || !opts.pin || !opts.identity)
        throw new TypeError("ShieldedStack: gateway, pin and identity are required");
      this.tunnel = new TunnelClient({
        ...opts.tunnel,
        gateway: opts.gateway,
        pin: opts.pin,
        certPem: opts.identity.certPem,
        keyPem: opts.identity.keyPem,
      });
    }
    const t = this.tunnel;
    t.unref?.(); // the app's sockets, not the tunnel, keep the process alive
    t.on("lease", (lease) => this.#onLease(lease));
    t.on("packets", (packets) => {
      try {
        this.#stack?.input(packets);
      } catch (e) {
        this.#log({ event: "error", where: "stack-input", message: (e as Error).message });
      }
    });
    t.on("closed", (c) => {
      this.#log({ event: "tunnel-closed", ...c });
      this.emit("closed", c);
      if (c.final && !this.#closed)
        this.#fail(
          new ShieldedStackError(
            `SENG: the tunnel to the gateway closed for good (${c.reason}): ${c.message}`,
          ),
        );
    });
    t.on("error", (e) => this.#log({ event: "error", where: "tunnel", message: e.message }));
  }

  /** Starts the process-wide stack (connects the tunnel). Throws if one is running. */
  static start(opts: ShieldedStackOptions): ShieldedStack {
    if (current && !current.#closed)
      throw new Error("SENG: a shielded stack is already running in this process");
    checkNodeInternals(); // the SDK's sockets rely on them: refuse a Node where they changed
    const s = new ShieldedStack(opts);
    current = s;
    process.on("exit", s.#onExit);
    for (const sig of SIGNALS) process.on(sig, s.#onSignal);
    s.tunnel.connect();
    return s;
  }

  /** The running process-wide stack, if any. */
  static get current(): ShieldedStack | undefined {
    return current && !current.#closed ? current : undefined;
  }

  /** The native stack, once there is a lease; throws otherwise. */
  get stack(): NetStack {
    if (this.#failure) throw this.#failure;
    if (!this.#stack) throw new ShieldedStackError("SENG: no lease yet", "ERR_SENG_NOT_READY");
    return this.#stack;
  }

  /** True once the stack exists (a lease arrived) and nothing failed. */
  get isReady(): boolean {
    return !!this.#stack && !this.#failure;
  }

  /**
   * Resolves with the native stack once a lease has arrived; rejects when the tunnel is closed for good, the stack
   * is closed, or after `timeoutMs` (default: no limit). Keeps the process alive while it waits.
   */
  ready(timeoutMs?: number): Promise<NetStack> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.#stack) return Promise.resolve(this.#stack);
    const release = this.hold();
    return new Promise<NetStack>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const w = {
        resolve: (s: NetStack) => {
          clearTimeout(timer);
          release();
          resolve(s);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          release();
          reject(e);
        },
      };
      this.#waiters.push(w);
      if (timeoutMs !== undefined)
        timer = setTimeout(() => {
          this.#waiters = this.#waiters.filter((x) => x !== w);
          w.reject(
            new ShieldedStackError(
              `SENG: no lease from the gateway ${this.opts.gateway ?? ""} after ${timeoutMs} ms`,
              "ERR_SENG_NO_LEASE",
            ),
          );
        }, timeoutMs);
    });
  }

  /** Routes the native stack's events for `id` to `handler` (until `unregister`). */
  register(id: number, handler: Handler): void {
    this.#handlers.set(id, handler);
  }

  unregister(id: number, handler?: Handler): void {
    if (!handler || this.#handlers.get(id) === handler) this.#handlers.delete(id);
  }

  /**
   * Keeps the process alive until the returned function is called (once). Sockets hold while open, as Node's own
   * handles do.
   */
  hold(): () => void {
    if (++this.#holds === 1 && !this.#keepAlive) this.#keepAlive = setInterval(() => {}, 1 << 30);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.#holds === 0 && this.#keepAlive) {
        clearInterval(this.#keepAlive);
        this.#keepAlive = undefined;
      }
    };
  }

  /** Closes the tunnel (telling the gateway) and the stack; sockets fail from then on. */
  close(message = "runtime closing"): void {
    if (this.#closed) return;
    this.#closed = true;
    process.off("exit", this.#onExit);
    for (const sig of SIGNALS) process.off(sig, this.#onSignal);
    this.#fail(new ShieldedStackError("SENG: the shielded stack was closed", "ERR_SENG_STACK_CLOSED"));
    // The stack first: it resets its connections and hands the RSTs to the tunnel, which then says goodbye.
    try {
      if (this.#stack) this.#log({ event: "stack-closing", message, stats: this.#stack.stats() });
      this.#stack?.close();
    } catch {
      // best effort
    }
    this.#stack = undefined;
    try {
      this.tunnel.close(message);
    } catch {
      // already closed
    }
    if (current === this) current = undefined;
  }

  #fail(err: Error): void {
    if (this.#failure) return;
    this.#failure = err;
    for (const w of this.#waiters.splice(0)) w.reject(err);
    // Every open socket learns it is over.
    for (const [id, h] of [...this.#handlers]) {
      try {
        h({ id, type: "error", error: err });
      } catch {
        // a handler's own problem
      }
    }
    this.#handlers.clear();
    if (this.#keepAlive) {
      clearInterval(this.#keepAlive);
      this.#keepAlive = undefined;
    }
  }

  #onLease(lease: Lease): void {
    const prev = this.lease;
    this.lease = lease;
    this.#log({ event: "lease", ...lease });
    this.emit("lease", lease);
    if (this.#failure) return;
    const cfg = stackConfig(lease);
    if (!cfg)
      return this.#fail(
        new ShieldedStackError(
          "SENG: the lease has no IPv4 address, which this stack needs",
          "ERR_SENG_STACK",
        ),
      );
    if (this.#stack) {
      if (
        prev &&
        (prev.address !== cfg.address ||
          prev.prefix !== cfg.prefix ||
          prev.gateway !== cfg.gateway ||
          prev.mtu !== cfg.mtu)
      ) {
        this.#log({ event: "stack-reconfigured", from: prev.address, to: cfg.address });
        this.#stack.reconfigure(cfg);
      }
      return;
    }
    if (this.#creating) return; // a newer lease is applied once the stack exists
    this.#creating = (async () => {
      const make = await this.#createStack;
      const stack = await make(cfg);
      if (this.#closed) return stack.close();
      stack.unref?.();
      stack.onOutput((packets) => this.tunnel.send(packets));
      stack.onEvent((ev) => this.#dispatch(ev));
      this.#stack = stack;
      const latest = stackConfig(this.lease!);
      if (
        latest &&
        (latest.address !== cfg.address || latest.mtu !== cfg.mtu || latest.prefix !== cfg.prefix)
      )
        stack.reconfigure(latest);
      for (const w of this.#waiters.splice(0)) w.resolve(stack);
    })().catch((e: Error) => {
      this.#log({ event: "error", where: "stack-create", message: e.message });
      this.#fail(
        new ShieldedStackError(
          `SENG: cannot start the in-process TCP/IP stack: ${e.message}`,
          "ERR_SENG_STACK",
        ),
      );
    });
  }

  #dispatch(ev: StackEvent): void {
    this.#handlers.get(ev.id)?.(ev);
  }
}

/** The stack settings of a lease's IPv4 part, or undefined for a lease without IPv4. */
function stackConfig(lease: Lease): StackConfig | undefined {
  const { address, prefix, gateway, mtu } = lease;
  if (address === undefined || prefix === undefined || gateway === undefined) return undefined;
  return { address, prefix, gateway, mtu };
}

/** The running process-wide stack; throws a clear error when there is none. */
export function shieldedStack(): ShieldedStack {
  const s = ShieldedStack.current;
  if (!s)
    throw new ShieldedStackError(
      "SENG: no shielded stack is running in this process: start the app with `node --import seng/register` " +
        "(SENG_GATEWAY, SENG_PIN, SENG_TEE in the environment) or call ShieldedStack.start()",
      "ERR_SENG_NO_STACK",
    );
  return s;
}
