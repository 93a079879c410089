/**
 * Typed wrappers over the native I/O primitives: TUN devices and batched UDP sockets (native/src/tun.cc, udp.cc).
 *
 * Both are mechanisms only: they move packets and count them. What to do with a packet, addresses, routes and
 * firewalling are decided by the caller.
 *
 * Batches: a reader callback receives every packet that was ready at once (up to `batch`, default 64), as Buffer
 * views into one Buffer per batch (one call into JS per batch, not per packet). UDP: one native allocation per
 * batch, and a view keeps its whole batch alive: copy a datagram (`Buffer.from(p)`) before keeping it for long.
 * TUN: the next batch reuses the same Buffer, so packets are valid only until the callback returns: copy what you
 * keep.
 *
 * Errors: bad arguments throw TypeError/RangeError; using a closed handle throws Error; failed setup syscalls throw
 * an Error shaped like Node's system errors (`code`, `errno`, `syscall`, message "syscall: text (CODE)"). The data
 * path never throws for the network's reasons: a packet that could not be written returns false (or is left out of
 * the returned count) and is counted in `txDropped` (would block) or `txErrors` (refused), with `lastError` text.
 *
 * Handles keep the process alive only while they are reading (started and not paused) and not `unref()`'d; after
 * `close()` they never do.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { native } from "./load.js";

const execFileP = promisify(execFile);

/** Counters of a {@link Tun}. Numbers since open; `rxBatches` counts reader callbacks. */
export interface TunStats {
  /** IP packets handed to the reader (with offload: after splitting super-packets). */
  rxPackets: number;
  rxBytes: number;
  rxBatches: number;
  /** read() calls that returned a packet (with offload, one may carry up to 64 KiB of TCP segments). */
  rxReads: number;
  /** Offload only: reads dropped because their virtio_net_hdr or headers made no sense (see `lastError`). */
  rxDropped: number;
  /** IP packets written (with offload, several may have gone in one write). */
  txPackets: number;
  txBytes: number;
  /** write()/writev() calls that succeeded. */
  txWrites: number;
  /** Packets not written because the device would block (EAGAIN/ENOBUFS), including the rest of a writeMany. */
  txDropped: number;
  /** Packets the kernel refused (e.g. EINVAL for a packet that is not IPv4/IPv6). */
  txErrors: number;
  /** Text of the last data-path error, e.g. "write: Invalid argument (EINVAL)". */
  lastError?: string;
}

/** Counters of a {@link UdpSocket}. */
export interface UdpStats {
  rxPackets: number;
  rxBytes: number;
  /** recvmmsg() calls that delivered datagrams (one callback each). */
  rxBatches: number;
  /** Datagrams larger than `maxDatagram` (or in a GRO message of more than 128), dropped. */
  rxTruncated: number;
  /** Received messages that carried several datagrams (UDP GRO), split into them before delivery. */
  rxGroMessages: number;
  /** UDP GRO is on for this socket (see {@link UdpBindOptions.gro}). */
  gro: boolean;
  /** Transient receive errors (e.g. a queued ICMP error), skipped. */
  rxErrors: number;
  txPackets: number;
  txBytes: number;
  /** Datagrams not sent because the socket would block (EAGAIN/ENOBUFS), including the rest of a sendMany. */
  txDropped: number;
  /** Datagrams the kernel refused (EMSGSIZE, ENETUNREACH, EPERM from a firewall...). */
  txErrors: number;
  /**
   * sendMany messages that carried a run of datagrams with UDP GSO (UDP_SEGMENT): equal-sized datagrams to one
   * peer, adjacent in memory (as DTLS output is), go through the stack as one buffer the kernel cuts late.
   */
  txGsoMessages: number;
  /** GSO messages the kernel refused as a whole (e.g. above the path MTU), then sent datagram by datagram. */
  txGsoRefused: number;
  lastError?: string;
}

/** What both native handles share (native/src/reader.h). */
interface NativeReader<S> {
  readonly closed: boolean;
  pause(): void;
  resume(): void;
  ref(): void;
  unref(): void;
  stats(): S;
  close(): void;
}

interface NativeTun extends NativeReader<TunStats> {
  readonly name: string;
  readonly offload: boolean;
  start(
    onBatch: (count: number) => void,
    onError: (err: Error) => void,
    lengths: Uint32Array,
    scratch: Buffer,
  ): void;
  write(packet: Uint8Array): boolean;
  writeMany(packets: Uint8Array[]): number;
}

interface NativeUdp extends NativeReader<UdpStats> {
  readonly port: number;
  readonly address: string;
  readonly family: 4 | 6;
  readonly rcvbuf: number;
  readonly sndbuf: number;
  start(
    onBatch: (data: Buffer, count: number, peers: string[]) => void,
    onError: (err: Error) => void,
    meta: Uint32Array,
  ): void;
  send(datagram: Uint8Array, peer: string): boolean;
  sendMany(datagrams: Uint8Array[], peers: string[] | string): number;
}

interface Addon {
  TunHandle: new (
    name: string,
    multiQueue: boolean,
    batch: number | undefined,
    napi: boolean,
    offload: boolean,
  ) => NativeTun;
  offloadSplit(read: Uint8Array): Buffer[];
  offloadCoalesce(packets: Uint8Array[]): { data: Buffer; count: number }[];
  UdpHandle: new (address: string, port: number, opts: UdpBindOptions | undefined) => NativeUdp;
}

const DEFAULT_BATCH = 64;
/** Bytes of a TUN reader's scratch Buffer: one largest packet plus 2 KiB per batch slot (as tun.cc expects). */
const tunScratchBytes = (batch: number): number => 65536 + batch * 2048;

/** Options of {@link Tun.open}. */
export interface TunOpenOptions {
  /** IFF_MULTI_QUEUE: open one more queue of the same device each time (the kernel spreads flows over queues). */
  multiQueue?: boolean;
  /** Most packets handed over per callback (1..1024, default 64). */
  batch?: number;
  /**
   * IFF_NAPI: packets written to the device enter the kernel through NAPI with GRO, so a TCP stream's segments are
   * merged before the network stack sees them (fewer traversals per byte). Linux 4.15+.
   */
  napi?: boolean;
  /**
   * TUN offloads (IFF_VNET_HDR, TUNSETOFFLOAD with TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6): the kernel may hand over
   * TCP super-packets of up to 64 KiB and packets without their final checksum; the reader splits and completes
   * them, so callbacks still get ordinary MTU-sized IP packets with valid checksums. {@link Tun.writeMany} merges
   * consecutive in-order TCP segments of one flow into one write the kernel forwards as one super-packet. Fewer
   * syscalls and fewer trips through the kernel's stack per byte. Packets of different flows may be reordered
   * relative to each other within a batch; a flow's packets never are.
   */
  offload?: boolean;
}

/** Called with an Error when a reader stops for good (e.g. the device was deleted: "read: ... (EBADFD)"). */
export type ErrorCallback = (err: Error) => void;

/**
 * What a {@link Tun} and a {@link UdpSocket} share: a native handle with one batched reader (native/src/reader.h),
 * its error callback, pause/resume, ref/unref, counters and close.
 */
abstract class Reader<S> {
  protected readonly h: NativeReader<S>;
  protected readonly batch: number;
  #onError: ErrorCallback | undefined;

  protected constructor(h: NativeReader<S>, batch: number) {
    this.h = h;
    this.batch = batch;
  }

  /** Names the reader in the default error ("Tun tun0", "UdpSocket :4433"). */
  protected abstract readerName(): string;

  /** The function the native reader calls when it stops for good. */
  protected readonly fail = (err: Error): void => {
    if (this.#onError) return this.#onError(err);
    // Like an EventEmitter's unhandled 'error': loud, not silent.
    throw new Error(`${this.readerName()} reader failed: ${err.message}`, { cause: err });
  };

  /** True after {@link close}. */
  get closed(): boolean {
    return this.h.closed;
  }

  /** Where reader failures go. Without one, a reader failure is thrown as an uncaught exception. */
  onError(cb: ErrorCallback): void {
    if (typeof cb !== "function")
      throw new TypeError(`${this.constructor.name}.onError: callback must be a function`);
    this.#onError = cb;
  }

  /** Stops reading (input queues in the kernel) until {@link resume}. */
  pause(): void {
    this.h.pause();
  }

  resume(): void {
    this.h.resume();
  }

  /** Lets the reader keep the event loop alive (the default). */
  ref(): this {
    this.h.ref();
    return this;
  }

  /** The reader no longer keeps the process alive by itself. */
  unref(): this {
    this.h.unref();
    return this;
  }

  stats(): S {
    return this.h.stats();
  }

  /** Closes the handle (a TUN queue: the device goes with its last queue unless persistent). Idempotent. */
  close(): void {
    this.h.close();
  }
}

/**
 * A TUN device (layer 3, no packet information header): each read is one IP packet, each write must be one IP
 * packet. The device exists while a handle (queue) on it is open, unless made persistent elsewhere.
 */
export class Tun extends Reader<TunStats> {
  /** The interface name the kernel gave (e.g. "tun0" when opened as "tun%d"). */
  readonly name: string;
  readonly #h: NativeTun;

  private constructor(h: NativeTun, batch: number) {
    super(h, batch);
    this.#h = h;
    this.name = h.name;
  }

  protected override readerName(): string {
    return `Tun ${this.name}`;
  }

  /**
   * Opens (creating if needed) the TUN device `name` in the calling process's network namespace. `name` may be
   * empty or a pattern such as "seng%d" to let the kernel pick. Needs CAP_NET_ADMIN.
   * @throws TypeError on a bad name; Error (`syscall` "open(/dev/net/tun)" or "ioctl(TUNSETIFF)") when refused.
   */
  static open(name: string, opts: TunOpenOptions = {}): Tun {
    if (typeof name !== "string") throw new TypeError("Tun.open: name must be a string");
    if (typeof opts !== "object" || opts === null) throw new TypeError("Tun.open: opts must be an object");
    const batch = opts.batch ?? DEFAULT_BATCH;
    const { TunHandle } = native<Addon>();
    return new Tun(
      new TunHandle(name, opts.multiQueue === true, batch, opts.napi === true, opts.offload === true),
      batch,
    );
  }

  /**
   * Like {@link Tun.open} with `offload: true`, but falls back to a plain TUN when the kernel refuses offloads;
   * `onFallback` hears why.
   */
  static openOffloaded(name: string, opts: TunOpenOptions, onFallback: (err: Error) => void): Tun {
    try {
      return Tun.open(name, { ...opts, offload: true });
    } catch (e) {
      const sys = (e as { syscall?: string }).syscall;
      if (sys !== "ioctl(TUNSETOFFLOAD)" && sys !== "ioctl(TUNSETVNETHDRSZ)") throw e;
      onFallback(e as Error);
      return Tun.open(name, { ...opts, offload: false });
    }
  }

  /** True when opened with working offloads (see {@link TunOpenOptions.offload}). */
  get offload(): boolean {
    return this.#h.offload;
  }

  /**
   * Starts reading: `cb` receives every packet that was ready (1..batch) each time the device is readable. Call
   * once per handle. The Buffers are views into a Buffer the next batch reuses: valid until `cb` returns, so copy
   * (`Buffer.from(p)`) any packet kept longer.
   */
  onPackets(cb: (packets: Buffer[]) => void): void {
    if (typeof cb !== "function") throw new TypeError("Tun.onPackets: callback must be a function");
    const lengths = new Uint32Array(this.batch);
    const data = Buffer.allocUnsafeSlow(tunScratchBytes(this.batch));
    this.#h.start(
      (count) => {
        const packets = new Array<Buffer>(count);
        let off = 0;
        for (let i = 0; i < count; i++) {
          const end = off + lengths[i]!;
          packets[i] = data.subarray(off, end);
          off = end;
        }
        cb(packets);
      },
      this.fail,
      lengths,
      data,
    );
  }

  /** Writes one packet with one write(). False when not written (see {@link TunStats}); never merged. */
  write(packet: Uint8Array): boolean {
    return this.#h.write(packet);
  }

  /**
   * Writes the packets in order, each with its own write() syscall; with offload, consecutive in-order TCP segments
   * of one flow go in one write (see {@link TunOpenOptions.offload}). Returns how many packets were written: a
   * refused write is skipped (txErrors), a would-block stops the batch (the rest count in txDropped).
   */
  writeMany(packets: Uint8Array[]): number {
    return this.#h.writeMany(packets);
  }
}

/** Options of {@link UdpSocket.bind}. */
export interface UdpBindOptions {
  /** Requested SO_RCVBUF in bytes (SO_RCVBUFFORCE when allowed, so above net.core.rmem_max as root). */
  rcvbuf?: number;
  /** Requested SO_SNDBUF in bytes (SO_SNDBUFFORCE when allowed). */
  sndbuf?: number;
  /** SO_REUSEPORT: several sockets on one port, the kernel spreads flows over them. */
  reusePort?: boolean;
  /** IPv6 sockets only: refuse IPv4 (default false: dual-stack, IPv4 peers appear as "a.b.c.d:port"). */
  ipv6Only?: boolean;
  /** Most datagrams per recvmmsg() and callback (1..1024, default 64). */
  batch?: number;
  /** Largest datagram received (default 65536); larger ones are dropped and counted in rxTruncated. */
  maxDatagram?: number;
  /**
   * UDP GRO (default true; only with the default maxDatagram): the kernel may hand over a run of equal-sized
   * datagrams from one peer (e.g. a sender's UDP GSO message) as one, which is cheaper for both sides; it is split
   * back into the original datagrams before the callback, so what the callback sees does not change. Merged
   * messages fill the receive slots (batch × 64 KiB, reserved either way), so up to that much becomes resident.
   */
  gro?: boolean;
}

/** One reader callback's datagrams: `data[i]` came from `peers[i]`. */
export interface DatagramBatch {
  data: Buffer[];
  /**
   * "a.b.c.d:port" or "[v6addr]:port" (with "%scope" for scoped addresses). Datagrams of a batch from the same peer
   * share one string, so these are cheap Map keys.
   */
  peers: string[];
}

/**
 * A UDP socket with batched I/O: recvmmsg() drains up to `batch` datagrams per readiness event into one callback,
 * sendMany() sends a whole array with sendmmsg(). Peers are numeric "ip:port" strings.
 */
export class UdpSocket extends Reader<UdpStats> {
  /** The bound port (the kernel's choice when bound to port 0). */
  readonly port: number;
  /** The bound address as given back by the kernel ("127.0.0.1", "::"). */
  readonly address: string;
  readonly family: 4 | 6;
  /** Effective SO_RCVBUF (the kernel doubles the request for bookkeeping). */
  readonly rcvbuf: number;
  /** Effective SO_SNDBUF. */
  readonly sndbuf: number;
  readonly #h: NativeUdp;

  private constructor(h: NativeUdp, batch: number) {
    super(h, batch);
    this.#h = h;
    this.port = h.port;
    this.address = h.address;
    this.family = h.family;
    this.rcvbuf = h.rcvbuf;
    this.sndbuf = h.sndbuf;
  }

  /**
   * Binds a non-blocking UDP socket to a numeric IPv4 or IPv6 address ("127.0.0.1", "::1", "[::]", "0.0.0.0").
   * @throws TypeError/RangeError on bad arguments; Error with `syscall` "bind" etc. when refused.
   * (`override`: a derived class's static side shadows Function.prototype.bind, as this always did.)
   */
  static override bind(address: string, port: number, opts: UdpBindOptions = {}): UdpSocket {
    if (typeof opts !== "object" || opts === null)
      throw new TypeError("UdpSocket.bind: opts must be an object");
    const { UdpHandle } = native<Addon>();
    return new UdpSocket(new UdpHandle(address, port, opts), opts.batch ?? DEFAULT_BATCH);
  }

  protected override readerName(): string {
    return `UdpSocket :${this.port}`;
  }

  /**
   * Starts reading: `cb` gets every datagram that was ready per recvmmsg() (up to `batch` messages; with GRO a
   * message may carry several datagrams, each delivered on its own). Call once.
   */
  onDatagrams(cb: (batch: DatagramBatch) => void): void {
    if (typeof cb !== "function") throw new TypeError("UdpSocket.onDatagrams: callback must be a function");
    // [length, peer index] per datagram; a GRO message carries up to 128 (udp.cc, kGroMaxSegs)
    const meta = new Uint32Array(this.batch * 2 * 128);
    this.#h.start(
      (buf, count, table) => {
        const data = new Array<Buffer>(count);
        const peers = new Array<string>(count);
        let off = 0;
        for (let i = 0; i < count; i++) {
          const end = off + meta[2 * i]!;
          data[i] = buf.subarray(off, end);
          peers[i] = table[meta[2 * i + 1]!]!;
          off = end;
        }
        cb({ data, peers });
      },
      this.fail,
      meta,
    );
  }

  /** Sends one datagram (sendto). False when dropped or refused (see {@link UdpStats}). */
  send(datagram: Uint8Array, peer: string): boolean {
    return this.#h.send(datagram, peer);
  }

  /**
   * Sends datagrams with sendmmsg() (one syscall per up to 1024 messages), each to `peers[i]` or all to one `peers`
   * string; runs of equal-sized datagrams to one peer that are adjacent in memory go as one UDP GSO message (see
   * {@link UdpStats.txGsoMessages}). Returns how many datagrams were sent. Arguments are all checked before anything
   * is sent.
   */
  sendMany(datagrams: Uint8Array[], peers: string[] | string): number {
    return this.#h.sendMany(datagrams, peers);
  }
}

/** Options of {@link tunConfigure}. */
export interface TunConfig {
  /** CIDR address to add, IPv4 or IPv6 ("100.64.0.1/24", "fd00::1/64"). */
  address?: string;
  /** MTU to set. */
  mtu?: number;
  /** Run `ip -n <netns>` (the device must be in that namespace). */
  netns?: string;
  /** Bring the link up (default true). */
  up?: boolean;
}

const IFNAME = /^[^\s/:]{1,15}$/;
const CIDR = /^[0-9a-fA-F.:]+\/\d{1,3}$/;

/**
 * Configures an interface with the `ip` command (iproute2): adds `address`, sets `mtu`, brings it up.
 * @throws Error carrying ip's stderr when a command fails.
 */
export async function tunConfigure(name: string, cfg: TunConfig): Promise<void> {
  if (typeof name !== "string" || !IFNAME.test(name))
    throw new TypeError(`tunConfigure: bad interface name "${name}"`);
  if (cfg.address !== undefined && !CIDR.test(cfg.address)) {
    throw new TypeError(`tunConfigure: address must be CIDR like 100.64.0.1/24, got "${cfg.address}"`);
  }
  if (cfg.mtu !== undefined && !(Number.isInteger(cfg.mtu) && cfg.mtu >= 68 && cfg.mtu <= 65535)) {
    throw new RangeError(`tunConfigure: mtu must be an integer from 68 to 65535, got ${cfg.mtu}`);
  }
  if (cfg.netns !== undefined && !/^[\w.-]+$/.test(cfg.netns)) {
    throw new TypeError(`tunConfigure: bad netns name "${cfg.netns}"`);
  }
  const pre = cfg.netns ? ["-n", cfg.netns] : [];
  const ip = async (...args: string[]): Promise<void> => {
    try {
      await execFileP("ip", [...pre, ...args], { timeout: 10_000 });
    } catch (e) {
      const err = e as { stderr?: string; message: string };
      throw new Error(`ip ${[...pre, ...args].join(" ")}: ${(err.stderr ?? "").trim() || err.message}`, {
        cause: e,
      });
    }
  };
  if (cfg.address !== undefined) await ip("addr", "add", cfg.address, "dev", name);
  const link = ["link", "set", "dev", name];
  if (cfg.mtu !== undefined) link.push("mtu", String(cfg.mtu));
  if (cfg.up !== false) link.push("up");
  if (link.length > 4) await ip(...link);
}

/**
 * The TUN offload code on plain buffers, for tests and fuzzing: what the reader of an offloaded {@link Tun} makes of
 * one read (`read` = virtio_net_hdr + packet). Throws an Error naming the reason when the read would be dropped.
 */
export function offloadSplit(read: Uint8Array): Buffer[] {
  return native<Addon>().offloadSplit(read);
}

/**
 * The TUN offload code on plain buffers, for tests and fuzzing: the writes an offloaded {@link Tun.writeMany} makes
 * of `packets`, each virtio_net_hdr + IP packet, with how many input packets went into it.
 */
export function offloadCoalesce(packets: Uint8Array[]): { data: Buffer; count: number }[] {
  return native<Addon>().offloadCoalesce(packets);
}

/**
 * A numeric "ip:port" / "[ip6]:port" in the form {@link UdpSocket}'s reader gives peers (RFC 5952 for IPv6, an
 * IPv4-mapped address as plain IPv4), so a configured peer compares equal to the peer strings of its datagrams:
 * "[2001:0002:0::1]:4433" → "[2001:2::1]:4433", "[::ffff:198.18.1.1]:4433" → "198.18.1.1:4433". Anything else
 * (names, scoped addresses) is returned as it is.
 */
export function canonicalPeer(peer: string): string {
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(peer);
  if (!m) return peer;
  let host: string;
  try {
    host = new URL(`http://[${m[1]}]/`).hostname.slice(1, -1);
  } catch {
    return peer;
  }
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(host);
  if (mapped) {
    const hi = parseInt(mapped[1]!, 16);
    const lo = parseInt(mapped[2]!, 16);
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}:${m[2]}`;
  }
  return `[${host}]:${m[2]}`;
}
