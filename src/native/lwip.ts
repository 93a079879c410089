/**
 * A userspace TCP/IP stack (lwIP, Debian's liblwip 2.1.3) with one point-to-point interface (an IPv4 address, an
 * IPv6 address, or both) whose packets are exchanged with JavaScript: {@link LwipStack.input} feeds it raw IPv4 and
 * IPv6 packets (e.g. from the tunnel), {@link LwipStack.onOutput}
 * receives what it sends, batched per job (all the calls of one callback). TCP, UDP and ICMP echo run on lwIP's raw API
 * (native/src/lwip.cc). A mechanism only: which addresses, what to connect to and where packets go are the caller's.
 *
 * One stack per process: lwIP is global. {@link LwipStack.close} ends it; a new one can be created afterwards.
 *
 * Sockets are numbers. Everything that happens to them arrives through {@link LwipStack.onEvent}, asynchronously
 * (never from inside a call), in order per socket; every socket ends with exactly one "closed" event, after which its
 * id is unknown.
 * - TCP client: `tcpConnect` → "connected" (or "error" ECONNREFUSED/ETIMEDOUT, then "closed").
 * - TCP server: `tcpListen` → "accept" events on the listener's id, with `child` (the new socket's id), `remote`,
 *   `local`. Events of the child follow its "accept".
 * - "data" (`data`): received bytes. The receive window stays closed by that much until {@link LwipStack.tcpRecved}
 *   is called with the number of bytes consumed: that is the flow control towards the peer.
 * - "sent" (`n`): the peer acknowledged n bytes; send buffer space is back. {@link LwipStack.tcpWrite} accepts at most
 *   the free send buffer and returns how much it took: write again after "sent".
 * - "end": the peer sent FIN (no more data). "error" (`error`: ECONNRESET, ECONNREFUSED, ETIMEDOUT, ECONNABORTED,
 *   EADDRNOTAVAIL..., mapped from lwIP's err_t `lwipErr` by the table in ./lwip-errors.ts) is always followed by
 *   "closed". Errors thrown by calls carry `lwipErr` and the Node `code` the same way.
 * - Randomness: local ports (port 0, and every outgoing connection) are random in 49152..65535 and TCP initial
 *   sequence numbers random, both from getrandom(2). If the OS random source fails the stack fails closed: calls
 *   that need a port throw `ERR_SENG_ENTROPY`, nothing more is sent, and `stats().entropyFailures` counts it.
 * - A TCP socket is finished when both directions are (our FIN via tcpShutdown(write) and their "end"), or on
 *   tcpClose (graceful FIN, data already queued still goes) or tcpAbort (RST): "closed" follows. lwIP completes the
 *   close itself (FIN retransmission, TIME-WAIT).
 * - UDP: `udpBind` → "message" events with `data` and `remote` ("ip:port").
 * - ICMP: lwIP answers echo requests to its address itself. `ping` sends a request; replies come as "pong" events
 *   with id 0, `n` = the sequence number and `remote`.
 *
 * Addresses are numeric IPv4 or IPv6 strings (no zone); in events "ip:port" for IPv4, "[ip6]:port" for IPv6, written
 * as Node writes them (RFC 5952). A family the configuration lacks cannot be used: connecting to it throws
 * EHOSTUNREACH, sending to it returns false. Binding "::" with `dualStack` serves both families (a Linux socket on
 * [::] without IPV6_V6ONLY); an IPv4 peer of such a socket is reported as plain IPv4 (the caller maps it).
 *
 * IPv6 is point-to-point: the leased address only (no link-local address, no neighbour discovery, router
 * solicitation, duplicate address detection or autoconfiguration); input other than TCP, UDP and ICMPv6 echo and
 * errors to that address is dropped (stats().rx6Filtered), and nothing is sent to or from a link-local or multicast
 * address (stats().tx6Filtered). TCP's IPv6 MSS is min(1460, mtu - 60).
 *
 * Compiled-in limits of Debian's build (see {@link lwipBuildOptions}): TCP receive window 65535 bytes (TCP_WND;
 * window scaling shift 1), TCP_MSS 1460, at most 180 pbufs queued for sending per connection (TCP_SND_QUEUELEN). The
 * MSS used is min(1460, mtu - 40). The receive window cannot be changed at run time: per connection, download is
 * bounded by 64 KiB per round-trip time. The send buffer is a run-time field, set to 192 KiB per connection (Debian's
 * TCP_SND_BUF is 64 KiB), so upload is bounded by 192 KiB per round trip.
 */
import { contextFromFlags, nodeCodeOf, withNodeCode } from "./lwip-errors.js";
import { native } from "./load.js";

const EMPTY = Buffer.alloc(0);

/** The interface's configuration (a DHCP-like lease): IPv4, IPv6 or both (at least one). */
export interface StackConfig {
  /** lwIP's own IPv4 address (with prefix and gateway), absent for an IPv6-only lease. */
  address?: string | undefined;
  /** Prefix length of the on-link subnet (0..32). */
  prefix?: number | undefined;
  /** Default gateway; every packet leaves through the one interface anyway. */
  gateway?: string | undefined;
  /** lwIP's own IPv6 address (global or unique-local), absent for an IPv4-only lease. */
  address6?: string | undefined;
  /** Its prefix length (1..128). */
  prefix6?: number | undefined;
  /** The gateway's IPv6 address in the tunnel (informational: ::/0 goes into the one interface anyway). */
  gateway6?: string | undefined;
  /**
   * Interface MTU (576..65535; at least 1280 with IPv6): TCP's MSS is min(1460, mtu - 40) over IPv4 and
   * min(1460, mtu - 60) over IPv6.
   */
  mtu: number;
}

export type LwipEventType =
  "connected" | "accept" | "data" | "sent" | "end" | "error" | "closed" | "message" | "pong";

export interface LwipEvent {
  /** The socket (0 for "pong"). */
  id: number;
  type: LwipEventType;
  /**
   * "data", "message": the bytes: a view into one Buffer per batch of events (copy before keeping a small piece
   * for long: it keeps the batch alive).
   */
  data?: Buffer;
  /** "accept": the new connection's socket id. */
  child?: number;
  /** "connected", "accept", "message": the peer, "ip:port" ("ip" for "pong"). */
  remote?: string;
  /** "connected", "accept": our end, "ip:port". */
  local?: string;
  /** "sent": bytes acknowledged; "pong": the echo sequence number. */
  n?: number;
  /** "error": Node's errno-style code for it (ECONNRESET...). */
  error?: string;
  /** "error": lwIP's err_t (ERR_RST = -14...), see ./lwip-errors.ts. */
  lwipErr?: number;
}

/** Counters of a stack. `mallocInUse` is the whole process's malloc'd bytes (lwIP allocates with malloc). */
export type LwipStats = Record<string, number>;

type Kind = "tcp" | "listener" | "udp";

/** Event types by the addon's number (native/src/lwip.cc, EvType) and the flags packed with them. */
const EVENT_TYPES: readonly LwipEventType[] = [
  "connected",
  "accept",
  "data",
  "sent",
  "end",
  "error",
  "closed",
  "message",
  "pong",
];
const HAS_DATA = 0x100;
const HAS_STRINGS = 0x200;

interface NativeLwip {
  readonly closed: boolean;
  reconfigure(cfg: StackConfig): void;
  input(packets: Uint8Array[]): number;
  tcpConnect(ip: string, port: number): number;
  tcpListen(ip: string, port: number, backlog: number | undefined, dualStack: boolean): number;
  tcpWrite(id: number, data: Uint8Array): number;
  tcpShutdown(id: number, read: boolean, write: boolean): void;
  tcpClose(id: number): void;
  tcpAbort(id: number): void;
  tcpRecved(id: number, n: number): void;
  tcpNoDelay(id: number, on: boolean): void;
  localAddress(id: number): string | undefined;
  udpBind(ip: string, port: number, dualStack: boolean): number;
  udpSend(id: number, data: Uint8Array, ip: string, port: number): boolean;
  udpClose(id: number): void;
  ping(ip: string, seq: number, size: number | undefined): boolean;
  ref(): void;
  unref(): void;
  stats(): LwipStats;
  close(): void;
  flush(): void;
}

interface Addon {
  LwipHandle: new (
    cfg: StackConfig,
    onOutput: (data: Buffer, lengths: Uint32Array) => void,
    onEvents: (meta: Uint32Array, data: Buffer | undefined, strings: string[] | undefined) => void,
  ) => NativeLwip;
  lwipBuildOptions(): Record<string, number | string>;
}

/** The options Debian compiled liblwip with (TCP_WND, TCP_SND_BUF, TCP_MSS, MEM_LIBC_MALLOC, threading...). */
export function lwipBuildOptions(): Record<string, number | string> {
  return native<Addon>().lwipBuildOptions();
}

export class LwipStack {
  readonly #h: NativeLwip;
  readonly #kinds = new Map<number, Kind>();
  #onOutput: ((packets: Buffer[]) => void) | undefined;
  #onEvent: ((ev: LwipEvent) => void) | undefined;
  #flushQueued = false;
  readonly #flush = (): void => {
    this.#flushQueued = false;
    if (!this.#h.closed) this.#h.flush();
  };

  private constructor(cfg: StackConfig) {
    const { LwipHandle } = native<Addon>();
    this.#h = new LwipHandle(
      cfg,
      (data, lengths) => this.#deliverOutput(data, lengths),
      (meta, data, strings) => this.#deliverEvents(meta, data, strings),
    );
  }

  /**
   * Starts lwIP (its thread, once per process) and brings up the interface with `cfg`. The stack keeps the event
   * loop alive until {@link LwipStack.close} (or {@link LwipStack.unref}).
   * @throws TypeError/RangeError on a bad configuration; Error when a stack is already open in this process.
   */
  static create(cfg: StackConfig): LwipStack {
    if (typeof cfg !== "object" || cfg === null)
      throw new TypeError("LwipStack.create: cfg must be an object");
    return new LwipStack(cfg);
  }

  /** True after {@link LwipStack.close}. */
  get closed(): boolean {
    return this.#h.closed;
  }

  /**
   * Applies a new lease: address, prefix, gateway, MTU. Connections bound to an address that went away end with
   * "error" EADDRNOTAVAIL.
   */
  reconfigure(cfg: StackConfig): void {
    this.#h.reconfigure(cfg);
    this.#soon();
  }

  /**
   * Hands raw IPv4 packets to lwIP (processed synchronously, copied: the Buffers can be reused at once). Only ICMP,
   * TCP and UDP are passed on (Debian's lwIP aborts the process on a malformed UDP-Lite packet; nothing here uses
   * other protocols). Returns how many were passed; lwIP checks and drops the rest of what is wrong. Dropped ones
   * count in stats().rxDropped (rxProtoDropped for other protocols).
   */
  input(packets: Buffer[]): number {
    const n = this.#h.input(packets);
    this.#soon();
    return n;
  }

  /**
   * Where lwIP's packets go: all packets queued since the last delivery, as views into one Buffer. Copy a
   * packet before keeping it for long (a view keeps its whole batch alive). Without a callback they are dropped.
   */
  onOutput(cb: (packets: Buffer[]) => void): void {
    if (typeof cb !== "function") throw new TypeError("LwipStack.onOutput: callback must be a function");
    this.#onOutput = cb;
  }

  /** Where socket events go (see the module documentation). Without a callback they are dropped. */
  onEvent(cb: (ev: LwipEvent) => void): void {
    if (typeof cb !== "function") throw new TypeError("LwipStack.onEvent: callback must be a function");
    this.#onEvent = cb;
  }

  // ---- TCP ----

  /**
   * Opens a TCP connection from lwIP's address (ephemeral port). Returns the socket id; "connected" or "error"
   * follows. Data may be written before "connected" (it goes once connected).
   */
  tcpConnect(ip: string, port: number): number {
    let id: number;
    try {
      id = this.#h.tcpConnect(ip, port);
    } catch (e) {
      throw withNodeCode(e);
    }
    this.#soon();
    this.#kinds.set(id, "tcp");
    return id;
  }

  /**
   * Listens on `ip:port` ("0.0.0.0" or "::" for any; "::" with `dualStack` for both families). Connections arrive as
   * "accept" events on the returned id.
   */
  tcpListen(ip: string, port: number, backlog?: number, dualStack = false): number {
    let id: number;
    try {
      id = this.#h.tcpListen(ip, port, backlog, dualStack === true);
    } catch (e) {
      throw withNodeCode(e);
    }
    this.#kinds.set(id, "listener");
    return id;
  }

  /**
   * Queues bytes for sending; returns how many were taken (at most the free send buffer; 0 when full, after
   * shutdown(write), or once the connection is gone). Write the rest after a "sent" event.
   */
  tcpWrite(id: number, data: Uint8Array): number {
    this.#check(id, "tcp", "tcpWrite");
    const n = this.#h.tcpWrite(id, data);
    if (n > 0) this.#soon();
    return n;
  }

  /**
   * Half-close. `write`: FIN after the queued data (no more writes). `read`: no more data wanted (lwIP resets the
   * connection if more arrives). Both: same as {@link LwipStack.tcpClose}.
   */
  tcpShutdown(id: number, read: boolean, write: boolean): void {
    this.#check(id, "tcp", "tcpShutdown");
    this.#h.tcpShutdown(id, read === true, write === true);
    this.#soon();
  }

  /** Graceful close (FIN after queued data; unconsumed received data is released). "closed" follows. */
  tcpClose(id: number): void {
    this.#check(id, undefined, "tcpClose");
    if (this.#kinds.get(id) === "udp") throw new TypeError(`LwipStack.tcpClose: socket ${id} is UDP`);
    this.#h.tcpClose(id);
    this.#soon();
  }

  /** Reset (RST) and forget the connection. "closed" follows. */
  tcpAbort(id: number): void {
    this.#check(id, undefined, "tcpAbort");
    if (this.#kinds.get(id) === "udp") throw new TypeError(`LwipStack.tcpAbort: socket ${id} is UDP`);
    this.#h.tcpAbort(id);
    this.#soon();
  }

  /** The application consumed `n` received bytes: reopens the receive window by that much. */
  tcpRecved(id: number, n: number): void {
    this.#check(id, "tcp", "tcpRecved");
    this.#h.tcpRecved(id, n);
    this.#soon();
  }

  /** Disables (true, the default argument) or re-enables Nagle's algorithm. */
  tcpNoDelay(id: number, on = true): void {
    this.#check(id, "tcp", "tcpNoDelay");
    this.#h.tcpNoDelay(id, on);
  }

  /** "ip:port" a socket is bound to (e.g. the port picked for port 0), or undefined once it is gone. */
  localAddress(id: number): string | undefined {
    this.#check(id, undefined, "localAddress");
    return this.#h.localAddress(id);
  }

  // ---- UDP ----

  /** Binds a UDP socket ("::" with `dualStack`: both families); datagrams arrive as "message" events. */
  udpBind(ip: string, port: number, dualStack = false): number {
    let id: number;
    try {
      id = this.#h.udpBind(ip, port, dualStack === true);
    } catch (e) {
      throw withNodeCode(e);
    }
    this.#kinds.set(id, "udp");
    return id;
  }

  /** Sends one datagram (up to 65507 bytes; lwIP fragments above the MTU). False when lwIP refused it. */
  udpSend(id: number, data: Uint8Array, ip: string, port: number): boolean {
    this.#check(id, "udp", "udpSend");
    const ok = this.#h.udpSend(id, data, ip, port);
    this.#soon();
    return ok;
  }

  udpClose(id: number): void {
    this.#check(id, "udp", "udpClose");
    this.#h.udpClose(id);
    this.#soon();
  }

  // ---- ICMP ----

  /** Sends an ICMP echo request (`size` payload bytes, default 56); the reply arrives as a "pong" event. */
  ping(ip: string, seq: number, size?: number): boolean {
    const ok = this.#h.ping(ip, seq, size);
    this.#soon();
    return ok;
  }

  // ---- the stack ----

  stats(): LwipStats {
    return this.#h.stats();
  }

  /** The stack keeps the event loop alive while open (the default). */
  ref(): this {
    this.#h.ref();
    return this;
  }

  unref(): this {
    this.#h.unref();
    return this;
  }

  /**
   * Resets every connection (their RSTs are handed to onOutput before this returns), removes the interface and
   * stops all callbacks. No events follow. Idempotent.
   */
  close(): void {
    this.#h.close();
    this.#kinds.clear();
  }

  /**
   * What lwIP queues during a call from this thread (output packets, events) is delivered by a flush at the end of
   * the current job (a microtask) rather than on the event loop's next turn: the answer to a received packet leaves
   * in the same turn, and all the calls of one job still make one batch. Events stay asynchronous to every call.
   */
  #soon(): void {
    if (this.#flushQueued) return;
    this.#flushQueued = true;
    queueMicrotask(this.#flush);
  }

  #check(id: number, kind: Kind | undefined, what: string): void {
    const k = this.#kinds.get(id);
    if (k === undefined) throw new Error(`LwipStack.${what}: unknown socket ${String(id)}`);
    if (kind !== undefined && k !== kind)
      throw new TypeError(`LwipStack.${what}: socket ${id} is a ${k} socket`);
  }

  #deliverOutput(data: Buffer, lengths: Uint32Array): void {
    const cb = this.#onOutput;
    if (!cb) return;
    const packets = new Array<Buffer>(lengths.length);
    let off = 0;
    for (let i = 0; i < lengths.length; i++) {
      const end = off + lengths[i]!;
      packets[i] = data.subarray(off, end);
      off = end;
    }
    cb(packets);
  }

  /**
   * One batch of events, packed by the addon (native/src/lwip.cc, DeliverPacked): 4 numbers per event in `meta`
   * (id, type with flags, n / child / err_t, payload length), payloads back to back in `data`, and two strings
   * (remote, local) per event flagged as having any. Every event object gets the same shape.
   */
  #deliverEvents(meta: Uint32Array, data: Buffer | undefined, strings: string[] | undefined): void {
    let off = 0;
    let k = 0;
    for (let i = 0; i < meta.length; i += 4) {
      const t = meta[i + 1]!;
      const type = EVENT_TYPES[t & 0xff]!;
      const ev: LwipEvent = {
        id: meta[i]!,
        type,
        data: undefined,
        child: undefined,
        remote: undefined,
        local: undefined,
        n: undefined,
        error: undefined,
        lwipErr: undefined,
      };
      if ((t & HAS_DATA) !== 0) {
        const end = off + meta[i + 3]!;
        // An empty UDP datagram has data of length 0, possibly in a batch with no payload bytes at all.
        ev.data = data ? data.subarray(off, end) : EMPTY;
        off = end;
      }
      if (type === "accept") ev.child = meta[i + 2]!;
      else if (type === "sent" || type === "pong") ev.n = meta[i + 2]!;
      else if (type === "error") {
        ev.lwipErr = meta[i + 2]! | 0; // a negative err_t, sent as 32 bits
        ev.error = nodeCodeOf(ev.lwipErr, contextFromFlags(t));
      }
      if ((t & HAS_STRINGS) !== 0) {
        ev.remote = strings![k] || undefined;
        ev.local = strings![k + 1] || undefined;
        k += 2;
      }
      if (type === "accept" && ev.child !== undefined) this.#kinds.set(ev.child, "tcp");
      if (type === "closed") this.#kinds.delete(ev.id);
      this.#onEvent?.(ev);
    }
  }
}
