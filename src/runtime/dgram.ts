/**
 * UDP sockets on the shielded stack, shaped as Node's `dgram.Socket`: createSocket('udp4' | 'udp6'), bind, send,
 * 'message', connect/disconnect, address, close, ref/unref. A udp6 socket bound to "::" (the default) also serves
 * IPv4 unless `ipv6Only`, its IPv4 peers shown as "::ffff:a.b.c.d" as Node shows them. Sending to a family the
 * lease has no address of fails with ENETUNREACH. Multicast and broadcast settings are accepted and do nothing (the
 * gateway forwards unicast).
 */
import { EventEmitter } from "node:events";
import { isIP, isIPv4, isIPv6 } from "node:net";
import { lookup } from "./dns.js";
import { parseEndpoint, shieldedStack, type NetStack, type ShieldedStack, type StackEvent } from "./stack.js";

export interface RemoteInfo {
  address: string;
  family: "IPv4" | "IPv6";
  port: number;
  size: number;
}

export interface SocketOptions {
  type: "udp4" | "udp6";
  reuseAddr?: boolean;
  ipv6Only?: boolean;
  recvBufferSize?: number;
  sendBufferSize?: number;
  lookup?: typeof lookup;
  signal?: AbortSignal;
}

type SendCallback = (err: Error | null, bytes?: number) => void;

function errorWith(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

const familyName = (a: string): "IPv4" | "IPv6" => (isIPv6(a) ? "IPv6" : "IPv4");

/** "::ffff:a.b.c.d" → "a.b.c.d" (what lwIP speaks); anything else as it is. */
function unmap(a: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  return m ? m[1]! : a;
}

function sendError(code: string, address: string, port: number, detail: string): Error {
  return Object.assign(new Error(`send ${code} ${address}:${port} (${detail})`), {
    code,
    syscall: "send",
    address,
    port,
  });
}

function toBuffer(msg: unknown): Buffer {
  if (typeof msg === "string") return Buffer.from(msg);
  if (Buffer.isBuffer(msg)) return msg;
  if (ArrayBuffer.isView(msg)) return Buffer.from(msg.buffer, msg.byteOffset, msg.byteLength);
  if (Array.isArray(msg)) return Buffer.concat(msg.map(toBuffer));
  throw Object.assign(new TypeError('The "msg" argument must be a string, Buffer, TypedArray or DataView'), {
    code: "ERR_INVALID_ARG_TYPE",
  });
}

/** A UDP socket on the shielded stack. */
export class Socket extends EventEmitter {
  readonly type: "udp4" | "udp6";
  readonly #ipv6Only: boolean;
  /** Bound to "::" for both families: IPv4 peers are shown IPv4-mapped. */
  #dual = false;
  #shield: ShieldedStack;
  #stack: NetStack | undefined;
  #id = -1;
  #state: "unbound" | "binding" | "bound" | "closed" = "unbound";
  #local: { address: string; port: number } | undefined;
  #remote: { address: string; port: number } | undefined;
  #queue: (() => void)[] = [];
  #release: (() => void) | undefined;
  #refd = true;
  readonly #lookup: typeof lookup;
  readonly #onEvent = (ev: StackEvent) => this.#event(ev);

  constructor(options: SocketOptions | "udp4" | "udp6", listener?: (msg: Buffer, rinfo: RemoteInfo) => void) {
    super();
    const o = typeof options === "string" ? { type: options } : options;
    if (o.type !== "udp4" && o.type !== "udp6")
      throw errorWith("ERR_SOCKET_BAD_TYPE", "Bad socket type specified. Valid types are: udp4, udp6");
    this.type = o.type;
    this.#ipv6Only = o.ipv6Only === true;
    this.#shield = shieldedStack();
    this.#lookup = o.lookup ?? lookup;
    if (listener) this.on("message", listener);
    o.signal?.addEventListener("abort", () => this.close(), { once: true });
  }

  /** bind([port][, address][, cb]) | bind(options[, cb]). Port 0: an ephemeral port. */
  bind(...args: unknown[]): this {
    const cb = typeof args[args.length - 1] === "function" ? (args.pop() as () => void) : undefined;
    let port = 0;
    let address = this.type === "udp6" ? "::" : "0.0.0.0";
    if (args[0] !== null && typeof args[0] === "object") {
      const o = args[0] as { port?: number; address?: string; fd?: number; exclusive?: boolean };
      if (o.fd !== undefined)
        throw errorWith(
          "ERR_SENG_HOST_NETWORKING",
          "SENG: host networking is disabled in a shielded app: dgram bind to a host file descriptor",
        );
      port = o.port ?? 0;
      address = o.address ?? address;
    } else {
      if (typeof args[0] === "number") port = args[0];
      if (typeof args[1] === "string") address = args[1];
    }
    if (this.#state !== "unbound") throw errorWith("ERR_SOCKET_ALREADY_BOUND", "Socket is already bound");
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw errorWith("ERR_SOCKET_BAD_PORT", `Port should be >= 0 and < 65536. Received ${port}.`);
    if (cb) this.once("listening", cb);
    this.#state = "binding";
    if (this.#refd) this.#release = this.#shield.hold();
    void (async () => {
      try {
        if (address === "") address = this.type === "udp6" ? "::" : "0.0.0.0";
        if (isIP(address) === 0) address = await this.#resolve(address);
        if (this.type === "udp4" && isIP(address) === 6)
          throw errorWith("EINVAL", `bind EINVAL ${address} (a udp4 socket cannot bind an IPv6 address)`);
        const stack = await this.#shield.ready();
        if (this.#state === "closed") return;
        this.#dual = address === "::" && !this.#ipv6Only;
        const id = stack.udpBind(address, port, this.#dual);
        this.#stack = stack;
        this.#id = id;
        this.#shield.register(id, this.#onEvent);
        let local: { port: number } | undefined;
        try {
          local = parseEndpoint(stack.localAddress?.(id));
        } catch {
          // not known to the binding
        }
        this.#local = {
          address: address === "0.0.0.0" ? (this.#shield.lease?.address ?? address) : address,
          port: local?.port || port,
        };
        this.#state = "bound";
        this.emit("listening");
        for (const f of this.#queue.splice(0)) f();
      } catch (e) {
        this.#state = "unbound";
        this.#release?.();
        this.#release = undefined;
        this.emit("error", e);
      }
    })();
    return this;
  }

  /**
   * send(msg[, offset, length][, port][, address][, cb]). On a connected socket, port and address are left out.
   * Binds to an ephemeral port first when the socket is not bound.
   */
  send(msg: unknown, ...rest: unknown[]): void {
    const cb = typeof rest[rest.length - 1] === "function" ? (rest.pop() as SendCallback) : undefined;
    let data = toBuffer(msg);
    if (typeof rest[0] === "number" && typeof rest[1] === "number" && rest.length >= (this.#remote ? 2 : 3)) {
      const [offset, length] = rest as [number, number];
      data = data.subarray(offset, offset + length);
      rest = rest.slice(2);
    }
    let port: number;
    let address: string;
    if (this.#remote) {
      if (rest[0] !== undefined && rest[0] !== null)
        throw errorWith("ERR_SOCKET_DGRAM_IS_CONNECTED", "Already connected");
      ({ port, address } = this.#remote);
    } else {
      port = Number(rest[0]);
      address = typeof rest[1] === "string" ? rest[1] : this.type === "udp6" ? "::1" : "127.0.0.1";
      if (!Number.isInteger(port) || port <= 0 || port > 65535)
        throw errorWith(
          "ERR_SOCKET_BAD_PORT",
          `Port should be > 0 and < 65536. Received ${String(rest[0])}.`,
        );
    }
    if (this.#state === "closed") throw errorWith("ERR_SOCKET_DGRAM_NOT_RUNNING", "Not running");
    const go = () => {
      void (async () => {
        try {
          const ip = unmap(isIP(address) ? address : await this.#resolve(address));
          if (this.#state !== "bound" || !this.#stack)
            throw errorWith("ERR_SOCKET_DGRAM_NOT_RUNNING", "Not running");
          const fam = isIP(ip) === 6 ? 6 : 4;
          if (fam === 6 && this.type === "udp4")
            throw sendError("EINVAL", ip, port, "a udp4 socket cannot send to an IPv6 address");
          if (fam === 4 && this.type === "udp6" && !this.#dual)
            throw sendError("EINVAL", ip, port, "an IPv6-only udp6 socket cannot send to an IPv4 address");
          if (!this.#shield.hasFamily(fam))
            throw sendError("ENETUNREACH", ip, port, `SENG: the app's lease has no IPv${fam} address`);
          if (!this.#stack.udpSend(this.#id, data, ip, port))
            throw sendError("ENOBUFS", ip, port, "lwIP did not take the datagram");
          if (cb) process.nextTick(cb, null, data.length);
        } catch (e) {
          if (cb) cb(e as Error);
          else this.emit("error", e);
        }
      })();
    };
    if (this.#state === "unbound") this.bind(0);
    if (this.#state === "bound") go();
    else this.#queue.push(go);
  }

  /** connect(port[, address][, cb]): the default destination of send(), and only its datagrams are received. */
  connect(port: number, address?: string | (() => void), cb?: () => void): void {
    if (typeof address === "function") {
      cb = address;
      address = undefined;
    }
    if (this.#remote) throw errorWith("ERR_SOCKET_DGRAM_IS_CONNECTED", "Already connected");
    const host = address ?? (this.type === "udp6" ? "::1" : "127.0.0.1");
    if (cb) this.once("connect", cb);
    const go = () =>
      void (async () => {
        try {
          const ip = unmap(isIP(host) ? host : await this.#resolve(host));
          this.#remote = { address: ip, port };
          this.emit("connect");
        } catch (e) {
          this.emit("error", e);
        }
      })();
    if (this.#state === "unbound") this.bind(0);
    if (this.#state === "bound") go();
    else this.#queue.push(go);
  }

  disconnect(): void {
    if (!this.#remote) throw errorWith("ERR_SOCKET_DGRAM_NOT_CONNECTED", "Not connected");
    this.#remote = undefined;
  }

  remoteAddress(): { address: string; family: "IPv4" | "IPv6"; port: number } {
    if (!this.#remote) throw errorWith("ERR_SOCKET_DGRAM_NOT_CONNECTED", "Not connected");
    const address = this.#shown(this.#remote.address);
    return { address, family: familyName(address), port: this.#remote.port };
  }

  address(): { address: string; family: "IPv4" | "IPv6"; port: number } {
    if (!this.#local) throw errorWith("ERR_SOCKET_DGRAM_NOT_RUNNING", "Not running");
    return { ...this.#local, family: familyName(this.#local.address) };
  }

  /** An address as Node shows it on this socket: IPv4-mapped on a dual-stack udp6 socket. */
  #shown(a: string): string {
    return this.#dual && isIPv4(a) ? `::ffff:${a}` : a;
  }

  close(cb?: () => void): this {
    if (this.#state === "closed") {
      if (cb) process.nextTick(cb);
      return this;
    }
    if (cb) this.once("close", cb);
    const id = this.#id;
    this.#state = "closed";
    if (id >= 0) {
      this.#shield.unregister(id, this.#onEvent);
      try {
        this.#stack?.udpClose(id);
      } catch {
        // the stack is gone
      }
    }
    this.#release?.();
    this.#release = undefined;
    this.#queue = [];
    process.nextTick(() => this.emit("close"));
    return this;
  }

  ref(): this {
    this.#refd = true;
    if (!this.#release && (this.#state === "binding" || this.#state === "bound"))
      this.#release = this.#shield.hold();
    return this;
  }

  unref(): this {
    this.#refd = false;
    this.#release?.();
    this.#release = undefined;
    return this;
  }

  // Accepted for compatibility; the tunnel forwards unicast IPv4 only.
  setBroadcast(_flag: boolean): void {}
  setTTL(ttl: number): number {
    return ttl;
  }
  setMulticastTTL(ttl: number): number {
    return ttl;
  }
  setMulticastLoopback(flag: boolean): boolean {
    return flag;
  }
  setMulticastInterface(_iface: string): void {}
  addMembership(_group: string, _iface?: string): void {
    throw errorWith("ERR_SENG_MULTICAST", "SENG: multicast is not available through the tunnel");
  }
  dropMembership(_group: string, _iface?: string): void {}
  setRecvBufferSize(_size: number): void {}
  setSendBufferSize(_size: number): void {}
  getRecvBufferSize(): number {
    return 65536;
  }
  getSendBufferSize(): number {
    return 65536;
  }
  getSendQueueSize(): number {
    return 0;
  }
  getSendQueueCount(): number {
    return 0;
  }

  #resolve(host: string): Promise<string> {
    const family = this.type === "udp6" ? 6 : 4;
    return new Promise((resolve, reject) =>
      this.#lookup(host, { family }, (err, address) => (err ? reject(err) : resolve(address as string))),
    );
  }

  #event(ev: StackEvent): void {
    if (ev.type === "message" && ev.data) {
      const from = parseEndpoint(ev.remote) ?? { address: "0.0.0.0", port: 0 };
      if (this.#remote && (from.address !== this.#remote.address || from.port !== this.#remote.port)) return;
      const address = this.#shown(from.address);
      const rinfo: RemoteInfo = {
        address,
        family: familyName(address),
        port: from.port,
        size: ev.data.length,
      };
      this.emit("message", Buffer.from(ev.data), rinfo);
    } else if (ev.type === "error") {
      this.emit(
        "error",
        ev.error instanceof Error ? ev.error : new Error(`SENG: UDP socket: ${String(ev.error)}`),
      );
    }
  }
}

/** `dgram.createSocket` on the shielded stack ('udp4' or 'udp6'). */
export function createSocket(
  options: SocketOptions | "udp4" | "udp6",
  listener?: (msg: Buffer, rinfo: RemoteInfo) => void,
): Socket {
  return new Socket(options, listener);
}
