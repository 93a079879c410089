/**
 * lwIP stack primitive (native/src/lwip.cc through src/native/lwip.ts) against the real Linux stack, inside a
 * namespace this test creates: child "lwip" opens a TUN (kernel side 100.64.9.1/24, MTU 1400), runs an LwipStack at
 * 100.64.9.2/24 and pumps packets TUN ↔ lwIP; child "kernel" uses ordinary kernel sockets (node:net, node:dgram) in
 * the same namespace. lwIP is global (one stack per process), hence one lwIP process.
 *
 * Also, in this process and without any network: argument checks, one stack per process, TCP over lwIP's own
 * loopback, close and create again. Needs root, iproute2 and ping (iputils-ping) for the namespace part.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer, createConnection, type Server, type Socket } from "node:net";
import { createSocket } from "node:dgram";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { once } from "node:events";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { fileURLToPath } from "node:url";
import { Tun, tunConfigure } from "../../src/native/io.js";
import { LwipStack, lwipBuildOptions, type LwipEvent, type LwipStats } from "../../src/native/lwip.js";
import { Netns, nsChildRole, serveRpc, type NsProcess } from "../helpers/netns.js";

const KERNEL_IP = "100.64.9.1";
const LWIP_IP = "100.64.9.2";
const MTU = 1400;
const MB20 = 20 * 1024 * 1024;

// ---- shared helpers ---------------------------------------------------------------------------------------------

/** Deterministic bytes: xorshift32 from `seed`. */
function chunk(seed: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size + 3);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  return b.subarray(0, size);
}

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 4294967296;
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((res) => setTimeout(res, ms));
}

/** What one end of a TCP exchange saw. */
interface StreamResult {
  sentBytes: number;
  sentSha: string;
  recvBytes: number;
  recvSha: string;
  ms: number;
  error?: string;
  /** Event types in order (lwIP side), consecutive repeats folded. */
  events?: string[];
  /** Bytes received before the peer's FIN, and whether our sending started only after it. */
  sentAfterEnd?: boolean;
  /** lwIP side with holdMs: bytes received while nothing was consumed. */
  heldBytes?: number;
}

/**
 * Modes: "transfer" sends `bytes` while receiving, then half-closes; "respondAfterEnd" receives until the peer's
 * FIN, then sends `bytes` and closes; "requestThenRead" sends `bytes`, half-closes, then reads until the peer's FIN.
 */
type Mode = "transfer" | "respondAfterEnd" | "requestThenRead";

interface StreamSpec {
  mode: Mode;
  bytes: number;
  seed: number;
  /** lwIP side: consume nothing (no tcpRecved) for this long, then everything held. */
  holdMs?: number;
}

// ---- child "lwip": TUN + LwipStack --------------------------------------------------------------------------------

interface SynInfo {
  isn: number;
  mss: number | undefined;
  ack: boolean;
  dport: number;
}

function lwipChild(): void {
  let tun: Tun | undefined;
  let stack: LwipStack | undefined;
  const handlers = new Map<number, (ev: LwipEvent) => void>();
  const pongs: { seq: number; remote: string }[] = [];
  const syns: SynInfo[] = [];
  const listeners = new Map<
    number,
    { id: number; results: StreamResult[]; waiters: ((r: StreamResult) => void)[] }
  >();

  const route = (ev: LwipEvent): void => {
    if (ev.type === "pong") {
      pongs.push({ seq: ev.n!, remote: ev.remote! });
      return;
    }
    handlers.get(ev.id)?.(ev);
    if (ev.type === "closed") handlers.delete(ev.id);
  };

  const inspect = (p: Buffer): void => {
    if (syns.length >= 200 || p.length < 40 || p[9] !== 6) return;
    const ihl = (p[0]! & 0x0f) * 4;
    const flags = p[ihl + 13]!;
    if (!(flags & 0x02)) return;
    const doff = (p[ihl + 12]! >> 4) * 4;
    let mss: number | undefined;
    for (let o = ihl + 20; o < ihl + doff;) {
      const kind = p[o]!;
      if (kind === 0) break;
      if (kind === 1) {
        o++;
        continue;
      }
      if (kind === 2) mss = p.readUInt16BE(o + 2);
      o += Math.max(2, p[o + 1]!);
    }
    syns.push({
      isn: p.readUInt32BE(ihl + 4),
      mss,
      ack: (flags & 0x10) !== 0,
      dport: p.readUInt16BE(ihl + 2),
    });
  };

  const s = (): LwipStack => {
    if (!stack) throw new Error("stack not open");
    return stack;
  };

  const createStack = (): LwipStack => {
    const st = LwipStack.create({ address: LWIP_IP, prefix: 24, gateway: KERNEL_IP, mtu: MTU });
    st.onOutput((packets) => {
      for (const p of packets) inspect(p);
      tun!.writeMany(packets);
    });
    st.onEvent(route);
    return st;
  };

  /** One lwIP TCP connection running a {@link StreamSpec}; resolves once the socket is closed. */
  const runStream = (id: number, spec: StreamSpec, t0 = Date.now()): Promise<StreamResult> => {
    const st = s();
    const recvHash = createHash("sha256");
    let recvBytes = 0;
    let error: string | undefined;
    const events: string[] = [];
    let wake: (() => void) | undefined;
    let ended = false;
    let closed = false;
    let onEnd: () => void = () => {};
    const endP = new Promise<void>((res) => (onEnd = res));
    let onClosed: () => void = () => {};
    const closedP = new Promise<void>((res) => (onClosed = res));
    let sentAfterEnd = false;
    let holding = (spec.holdMs ?? 0) > 0;
    let held = 0;
    let heldBytes: number | undefined;
    if (holding) {
      setTimeout(() => {
        holding = false;
        heldBytes = held;
        if (!closed) st.tcpRecved(id, held);
      }, spec.holdMs);
    }
    handlers.set(id, (ev) => {
      if (events[events.length - 1] !== ev.type) events.push(ev.type);
      switch (ev.type) {
        case "data":
          recvHash.update(ev.data!);
          recvBytes += ev.data!.length;
          if (holding) held += ev.data!.length;
          else st.tcpRecved(id, ev.data!.length);
          break;
        case "sent":
          wake?.();
          break;
        case "end":
          ended = true;
          onEnd();
          break;
        case "error":
          error = ev.error;
          break;
        case "closed":
          closed = true;
          wake?.();
          onEnd();
          onClosed();
          break;
      }
    });
    const send = async (): Promise<{ bytes: number; sha: string }> => {
      const h = createHash("sha256");
      let sent = 0;
      let seed = spec.seed;
      let pending: Buffer | undefined;
      while (sent < spec.bytes && !closed) {
        if (!pending) {
          pending = chunk(seed++, Math.min(65536, spec.bytes - sent));
          h.update(pending);
        }
        const n = st.tcpWrite(id, pending);
        if (n === 0) {
          await new Promise<void>((res) => {
            const t = setTimeout(res, 200); // belt and braces: never stall on a missed wake-up
            wake = () => {
              clearTimeout(t);
              wake = undefined;
              res();
            };
          });
          continue;
        }
        sent += n;
        pending = n < pending.length ? pending.subarray(n) : undefined;
      }
      if (!closed) st.tcpShutdown(id, false, true);
      return { bytes: sent, sha: h.digest("hex") };
    };
    return (async () => {
      let out: { bytes: number; sha: string };
      if (spec.mode === "respondAfterEnd") {
        await endP;
        sentAfterEnd = ended;
        out = await send();
      } else {
        out = await send();
      }
      await closedP;
      return {
        sentBytes: out.bytes,
        sentSha: out.sha,
        recvBytes,
        recvSha: recvHash.digest("hex"),
        ms: Date.now() - t0,
        error,
        events,
        sentAfterEnd,
        heldBytes,
      };
    })();
  };

  const awaitEvents = (id: number, until: LwipEvent["type"], ms: number): Promise<LwipEvent[]> =>
    new Promise((res) => {
      const seen: LwipEvent[] = [];
      const t = setTimeout(() => res(seen), ms);
      handlers.set(id, (ev) => {
        seen.push(ev);
        if (ev.type === until) {
          clearTimeout(t);
          res(seen);
        }
      });
    });

  serveRpc(
    {
      async open() {
        tun = Tun.open("sengl0");
        await tunConfigure(tun.name, { address: `${KERNEL_IP}/24`, mtu: MTU });
        stack = createStack();
        tun.onPackets((packets) => {
          stack?.input(packets);
        });
        return { tun: tun.name, options: lwipBuildOptions() };
      },

      stats(): LwipStats {
        return s().stats();
      },

      syns(): SynInfo[] {
        return syns.splice(0);
      },

      async connect(arg: { ip: string; port: number } & StreamSpec): Promise<StreamResult> {
        const t0 = Date.now();
        const id = s().tcpConnect(arg.ip, arg.port);
        return runStream(id, arg, t0);
      },

      listen(arg: { port: number } & StreamSpec): number {
        const st = s();
        const id = st.tcpListen(LWIP_IP, arg.port);
        const entry = { id, results: [] as StreamResult[], waiters: [] as ((r: StreamResult) => void)[] };
        listeners.set(arg.port, entry);
        handlers.set(id, (ev) => {
          if (ev.type !== "accept") return;
          void runStream(ev.child!, arg).then((r) => {
            const w = entry.waiters.shift();
            if (w) w(r);
            else entry.results.push(r);
          });
        });
        return id;
      },

      next(arg: { port: number }): Promise<StreamResult> {
        const entry = listeners.get(arg.port)!;
        const r = entry.results.shift();
        if (r) return Promise.resolve(r);
        return new Promise((res) => entry.waiters.push(res));
      },

      unlisten(arg: { port: number }) {
        const entry = listeners.get(arg.port)!;
        s().tcpClose(entry.id);
        listeners.delete(arg.port);
      },

      async connectRefused(arg: { ip: string; port: number }) {
        const id = s().tcpConnect(arg.ip, arg.port);
        const evs = await awaitEvents(id, "closed", 10_000);
        return evs.map((e) => ({ type: e.type, error: e.error }));
      },

      async ping(arg: { ip: string; count: number }) {
        pongs.length = 0;
        for (let i = 1; i <= arg.count; i++) {
          s().ping(arg.ip, i);
          await sleep(50);
        }
        for (let i = 0; i < 40 && pongs.length < arg.count; i++) await sleep(50);
        return pongs.slice();
      },

      /** lwIP echoes every datagram to its sender. */
      udpEcho(arg: { port: number }) {
        const st = s();
        const id = st.udpBind(LWIP_IP, arg.port);
        handlers.set(id, (ev) => {
          if (ev.type !== "message") return;
          const [ip, port] = ev.remote!.split(":");
          st.udpSend(id, ev.data!, ip!, Number(port));
        });
        return id;
      },

      /** lwIP sends `sizes.length` datagrams to a kernel echo server and checks what comes back. */
      async udpSendRecv(arg: { ip: string; port: number; sizes: number[] }) {
        const st = s();
        const id = st.udpBind("0.0.0.0", 0);
        const local = st.localAddress(id);
        const got = new Set<number>();
        let bad = 0;
        let remoteSeen = "";
        handlers.set(id, (ev) => {
          if (ev.type !== "message") return;
          remoteSeen = ev.remote!;
          const i = ev.data!.readUInt32BE(0);
          if (ev.data!.equals(udpPayload(i, arg.sizes[i]!))) got.add(i);
          else bad++;
        });
        let accepted = 0;
        for (let i = 0; i < arg.sizes.length; i++) {
          if (st.udpSend(id, udpPayload(i, arg.sizes[i]!), arg.ip, arg.port)) accepted++;
          if (i % 20 === 19) await sleep(5);
        }
        for (let i = 0; i < 60 && got.size < arg.sizes.length; i++) await sleep(50);
        st.udpClose(id);
        return { accepted, received: got.size, bad, local, remoteSeen };
      },

      /** Garbage into input(): random bytes, and IPv4 packets with valid header checksums and random contents. */
      fuzz(arg: { count: number; seed: number; ports: number[] }) {
        const st = s();
        const before = st.stats();
        const rand = rng(arg.seed);
        const int = (n: number): number => Math.floor(rand() * n);
        const kinds = { random: 0, ipv4: 0 };
        for (let i = 0; i < arg.count; i++) {
          let p: Buffer;
          if (i % 4 === 0) {
            p = Buffer.alloc(int(1600));
            for (let k = 0; k < p.length; k++) p[k] = int(256);
            kinds.random++;
          } else {
            p = fuzzIpv4(int, arg.ports);
            kinds.ipv4++;
          }
          st.input([p]);
        }
        const after = st.stats();
        return {
          kinds,
          rx: after.rxPackets! - before.rxPackets!,
          dropped: after.rxDropped! - before.rxDropped!,
        };
      },

      /** Many short connections to a kernel server, then: sockets, pcbs and malloc'd bytes compared. */
      async churn(arg: {
        ip: string;
        port: number;
        rounds: number;
        bytes: number;
        parallel: number;
        mode: Mode;
      }) {
        const one = async (i: number): Promise<StreamResult> => {
          const id = s().tcpConnect(arg.ip, arg.port);
          return runStream(id, { mode: arg.mode, bytes: arg.bytes, seed: 1000 + i });
        };
        let errors = 0;
        let bytes = 0;
        for (let i = 0; i < arg.rounds; i += arg.parallel) {
          const rs = await Promise.all(
            Array.from({ length: Math.min(arg.parallel, arg.rounds - i) }, (_, k) => one(i + k)),
          );
          for (const r of rs) {
            if (r.error || r.recvBytes !== arg.bytes) errors++;
            bytes += r.recvBytes + r.sentBytes;
          }
        }
        await sleep(300);
        collectGarbage();
        return { errors, bytes, stats: s().stats(), rss: process.memoryUsage().rss };
      },

      /** Connects, receives `waitBytes` without consuming them, then closes (graceful) or aborts. */
      async endEarly(arg: { ip: string; port: number; waitBytes: number; abort: boolean }) {
        const st = s();
        const id = st.tcpConnect(arg.ip, arg.port);
        let got = 0;
        const evs: string[] = [];
        await new Promise<void>((res) => {
          const t = setTimeout(res, 5000);
          handlers.set(id, (ev) => {
            evs.push(ev.type);
            if (ev.type === "data") got += ev.data!.length;
            if (got >= arg.waitBytes || ev.type === "closed") {
              clearTimeout(t);
              res();
            }
          });
        });
        if (arg.abort) st.tcpAbort(id);
        else st.tcpClose(id);
        const after = await awaitEvents(id, "closed", 5000);
        return { got, events: [...evs, ...after.map((e) => e.type)] };
      },

      reconfigure(arg: { mtu: number }) {
        s().reconfigure({ address: LWIP_IP, prefix: 24, gateway: KERNEL_IP, mtu: arg.mtu });
        return s().stats();
      },

      /** Closes the stack under a live connection, then creates a new one. */
      async restart(arg: { ip: string; port: number }) {
        const st = s();
        const id = st.tcpConnect(arg.ip, arg.port);
        const evs = await awaitEvents(id, "connected", 5000);
        const sent = st.tcpWrite(id, Buffer.from("hello"));
        await sleep(100);
        st.close();
        const closedTwice = (() => {
          st.close();
          return st.closed;
        })();
        let afterClose = "";
        try {
          st.tcpConnect(arg.ip, arg.port);
        } catch (e) {
          afterClose = (e as Error).message;
        }
        stack = createStack();
        return { connected: evs.some((e) => e.type === "connected"), sent, closedTwice, afterClose };
      },
    },
    () => {
      stack?.close();
      tun?.close();
    },
  );
}

function udpPayload(i: number, size: number): Buffer {
  const b = Buffer.alloc(Math.max(4, size), i & 0xff);
  b.writeUInt32BE(i, 0);
  return b;
}

function csum(buf: Buffer, start: number, end: number, initial = 0): number {
  let sum = initial;
  for (let i = start; i + 1 < end; i += 2) sum += buf.readUInt16BE(i);
  if ((end - start) % 2 === 1) sum += buf[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** A random IPv4 packet aimed at lwIP (mostly) with a correct header checksum and, for TCP/UDP, often a correct one. */
function fuzzIpv4(int: (n: number) => number, ports: number[]): Buffer {
  const ihl = int(4) === 0 ? 5 + int(11) : 5;
  const protos = [1, 6, 17, 6, 17, 2, int(256)];
  const proto = protos[int(protos.length)]!;
  const payloadLen = int(5) === 0 ? int(1500) : int(120);
  const total = ihl * 4 + payloadLen;
  const p = Buffer.alloc(total);
  for (let k = 0; k < total; k++) p[k] = int(256);
  p[0] = 0x40 | ihl;
  const lenField = int(8) === 0 ? int(65536) : total; // sometimes a lying total length
  p.writeUInt16BE(lenField, 2);
  if (int(3) !== 0) p.writeUInt16BE(int(4) === 0 ? int(65536) : 0x4000, 6); // mostly DF, sometimes fragments
  p[8] = 1 + int(255);
  p[9] = proto;
  Buffer.from([100, 64, 9, 1]).copy(p, 12);
  const dsts = [
    [100, 64, 9, 2],
    [100, 64, 9, 2],
    [100, 64, 9, 255],
    [255, 255, 255, 255],
    [224, 0, 0, 1],
    [int(256), int(256), int(256), int(256)],
  ];
  Buffer.from(dsts[int(dsts.length)]!).copy(p, 16);
  if (int(2) === 0) Buffer.from([int(256), int(256), int(256), int(256)]).copy(p, 12);
  p.writeUInt16BE(0, 10);
  p.writeUInt16BE(~csum(p, 0, ihl * 4) & 0xffff, 10);
  const l4 = ihl * 4;
  if ((proto === 6 || proto === 17) && payloadLen >= 20 && int(2) === 0) {
    // a transport checksum that passes, sometimes to a port in use
    if (int(2) === 0) p.writeUInt16BE(ports[int(ports.length)]!, l4 + 2);
    const sumOff = proto === 6 ? l4 + 16 : l4 + 6;
    if (proto === 17) p.writeUInt16BE(payloadLen, l4 + 4);
    if (proto === 6) p[l4 + 12] = ((5 + int(11)) << 4) | (p[l4 + 12]! & 0x0f);
    p.writeUInt16BE(0, sumOff);
    const pseudo = Buffer.alloc(12);
    p.copy(pseudo, 0, 12, 20);
    pseudo[9] = proto;
    pseudo.writeUInt16BE(payloadLen, 10);
    const sum = csum(p, l4, total, csum(pseudo, 0, 12));
    p.writeUInt16BE(~sum & 0xffff || 0xffff, sumOff);
  } else if (proto === 1 && payloadLen >= 8) {
    p.writeUInt16BE(0, l4 + 2);
    p.writeUInt16BE(~csum(p, l4, total) & 0xffff, l4 + 2);
  }
  return p;
}

function collectGarbage(): void {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  gc();
  gc();
}

// ---- child "kernel": ordinary sockets -------------------------------------------------------------------------------

async function kernelStream(sock: Socket, spec: StreamSpec, t0 = Date.now()): Promise<StreamResult> {
  const recvHash = createHash("sha256");
  let recvBytes = 0;
  let error: string | undefined;
  sock.on("data", (d: Buffer) => {
    recvHash.update(d);
    recvBytes += d.length;
  });
  sock.on("error", (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
  const endP = new Promise<void>((res) => {
    sock.once("end", res);
    sock.once("close", res);
  });
  const closeP = new Promise<void>((res) => sock.once("close", res));
  const send = async (): Promise<{ bytes: number; sha: string }> => {
    const h = createHash("sha256");
    let sent = 0;
    let seed = spec.seed;
    while (sent < spec.bytes && !sock.destroyed) {
      const c = chunk(seed++, Math.min(65536, spec.bytes - sent));
      h.update(c);
      sent += c.length;
      if (!sock.write(c)) await Promise.race([once(sock, "drain"), closeP]);
    }
    sock.end();
    return { bytes: sent, sha: h.digest("hex") };
  };
  let out: { bytes: number; sha: string };
  let sentAfterEnd = false;
  if (spec.mode === "respondAfterEnd") {
    await endP;
    sentAfterEnd = !sock.destroyed;
    out = await send();
  } else {
    out = await send();
  }
  await closeP;
  return {
    sentBytes: out.bytes,
    sentSha: out.sha,
    recvBytes,
    recvSha: recvHash.digest("hex"),
    ms: Date.now() - t0,
    error,
    sentAfterEnd,
  };
}

function kernelChild(): void {
  const servers = new Map<
    number,
    { srv: Server; results: StreamResult[]; waiters: ((r: StreamResult) => void)[] }
  >();
  const udps: ReturnType<typeof createSocket>[] = [];
  serveRpc(
    {
      async listen(arg: { port: number } & StreamSpec) {
        const entry = {
          srv: createServer({ allowHalfOpen: true }, (sock) => {
            void kernelStream(sock, arg).then((r) => {
              const w = entry.waiters.shift();
              if (w) w(r);
              else entry.results.push(r);
            });
          }),
          results: [] as StreamResult[],
          waiters: [] as ((r: StreamResult) => void)[],
        };
        servers.set(arg.port, entry);
        entry.srv.listen(arg.port, KERNEL_IP);
        await once(entry.srv, "listening");
      },

      next(arg: { port: number }): Promise<StreamResult> {
        const entry = servers.get(arg.port)!;
        const r = entry.results.shift();
        if (r) return Promise.resolve(r);
        return new Promise((res) => entry.waiters.push(res));
      },

      async unlisten(arg: { port: number }) {
        const entry = servers.get(arg.port)!;
        servers.delete(arg.port);
        await new Promise((res) => entry.srv.close(res));
      },

      async connect(arg: { ip: string; port: number } & StreamSpec): Promise<StreamResult> {
        const t0 = Date.now();
        const sock = createConnection({ host: arg.ip, port: arg.port, allowHalfOpen: true });
        await once(sock, "connect");
        return kernelStream(sock, arg, t0);
      },

      async connectRefused(arg: { ip: string; port: number }) {
        const sock = createConnection({ host: arg.ip, port: arg.port });
        const [e] = (await once(sock, "error")) as [NodeJS.ErrnoException];
        return e.code;
      },

      /** A kernel UDP echo server. */
      async udpEcho(arg: { port: number }) {
        const u = createSocket("udp4");
        udps.push(u);
        u.on("message", (msg, rinfo) => u.send(msg, rinfo.port, rinfo.address));
        u.bind(arg.port, KERNEL_IP);
        await once(u, "listening");
      },

      /** Sends datagrams of the given sizes to lwIP's echo and checks the replies. */
      async udpSendRecv(arg: { ip: string; port: number; sizes: number[] }) {
        const u = createSocket("udp4");
        u.bind(0, KERNEL_IP);
        await once(u, "listening");
        const got = new Set<number>();
        let bad = 0;
        let from = "";
        u.on("message", (msg, rinfo) => {
          from = `${rinfo.address}:${rinfo.port}`;
          const i = msg.readUInt32BE(0);
          if (msg.equals(udpPayload(i, arg.sizes[i]!))) got.add(i);
          else bad++;
        });
        for (let i = 0; i < arg.sizes.length; i++) {
          u.send(udpPayload(i, arg.sizes[i]!), arg.port, arg.ip);
          if (i % 20 === 19) await sleep(5);
        }
        for (let i = 0; i < 60 && got.size < arg.sizes.length; i++) await sleep(50);
        u.close();
        return { received: got.size, bad, from };
      },
    },
    () => {
      for (const { srv } of servers.values()) srv.close();
      for (const u of udps) u.close();
    },
  );
}

// ---- tests ----------------------------------------------------------------------------------------------------

function mbit(bytes: number, ms: number): number {
  return Math.round((bytes * 8) / (ms / 1000) / 1e6);
}

/** A stack with an open loopback connection; the process must end by itself (close, unref) or by exit(). */
function exitChild(mode: string): void {
  const st = LwipStack.create({ address: LWIP_IP, prefix: 24, gateway: KERNEL_IP, mtu: MTU });
  st.onOutput(() => {});
  st.onEvent(() => {});
  st.tcpListen("0.0.0.0", 80);
  st.tcpConnect(LWIP_IP, 80);
  if (mode === "close") setTimeout(() => st.close(), 100);
  else if (mode === "unref")
    st.unref(); // no close(): the environment is torn down with the stack open
  else setTimeout(() => process.exit(0), 100);
}

const role = nsChildRole();
if (role === "lwip") lwipChild();
else if (role === "kernel") kernelChild();
else if (role?.startsWith("exit-")) exitChild(role.slice(5));
else {
  const self = fileURLToPath(import.meta.url);

  describe("in this process, without a network", () => {
    test("build options: Debian's threaded lwIP 2.1.3 with malloc and a 64 KiB window", () => {
      const o = lwipBuildOptions();
      assert.equal(o.version, "2.1.3");
      assert.equal(o.NO_SYS, 0);
      assert.equal(o.LWIP_TCPIP_CORE_LOCKING, 1);
      assert.equal(o.MEM_LIBC_MALLOC, 1);
      assert.equal(o.TCP_WND, 0xffff);
      assert.equal(o.TCP_SND_BUF, 0xffff);
      assert.equal(o.TCP_MSS, 1460);
    });

    test("argument errors are thrown", () => {
      const good = { address: "100.64.9.2", prefix: 24, gateway: "100.64.9.1", mtu: 1400 };
      assert.throws(() => LwipStack.create(null as unknown as typeof good), TypeError);
      assert.throws(() => LwipStack.create({ ...good, address: "nope" }), /cfg.address/);
      assert.throws(() => LwipStack.create({ ...good, gateway: "1.2.3" }), /cfg.gateway/);
      assert.throws(() => LwipStack.create({ ...good, prefix: 33 }), RangeError);
      assert.throws(() => LwipStack.create({ ...good, mtu: 100 }), RangeError);
      const st = LwipStack.create(good);
      try {
        assert.throws(() => LwipStack.create(good), /already open/);
        assert.throws(() => st.tcpConnect("x", 1), TypeError);
        assert.throws(() => st.tcpConnect("100.64.9.1", 70000), RangeError);
        assert.throws(() => st.tcpWrite(12345, Buffer.alloc(1)), /unknown socket/);
        const u = st.udpBind("0.0.0.0", 0);
        assert.throws(() => st.tcpWrite(u, Buffer.alloc(1)), /is a udp socket/);
        assert.throws(() => st.udpSend(u, "x" as unknown as Buffer, "1.2.3.4", 1), TypeError);
        assert.throws(() => st.udpSend(u, Buffer.alloc(70000), "1.2.3.4", 1), RangeError);
        assert.throws(() => st.input([Buffer.alloc(20), 5 as unknown as Buffer]), TypeError);
        assert.equal(st.input([Buffer.alloc(0), Buffer.alloc(30, 0x60), Buffer.alloc(10, 0x45)]), 0);
        const l = st.tcpListen("100.64.9.2", 7000);
        assert.throws(
          () => st.tcpListen("100.64.9.2", 7000),
          (e: NodeJS.ErrnoException) => e.code === "EADDRINUSE",
        );
        st.tcpClose(l);
      } finally {
        st.close();
      }
      assert.equal(st.closed, true);
      assert.throws(() => st.input([]), /closed/);
    });

    test("a UDP-Lite packet whose checksum coverage exceeds it (aborts Debian's lwIP) is not passed on", () => {
      const st = LwipStack.create({ address: "100.64.9.2", prefix: 24, gateway: "100.64.9.1", mtu: 1400 });
      try {
        const p = Buffer.alloc(28);
        p[0] = 0x45;
        p.writeUInt16BE(28, 2);
        p[8] = 64;
        p[9] = 136; // UDP-Lite
        Buffer.from([100, 64, 9, 1, 100, 64, 9, 2]).copy(p, 12);
        p.writeUInt16BE(~csum(p, 0, 20) & 0xffff, 10);
        p.writeUInt16BE(1234, 20);
        p.writeUInt16BE(53, 22);
        p.writeUInt16BE(0xffff, 24); // coverage 65535 bytes of a 8-byte datagram
        assert.equal(st.input([p]), 0);
        assert.equal(st.stats().rxProtoDropped, 1);
      } finally {
        st.close();
      }
    });

    test("an empty UDP datagram is a message of 0 bytes, not a crash", async () => {
      const st = LwipStack.create({ address: "100.64.9.2", prefix: 24, gateway: "100.64.9.1", mtu: 1400 });
      try {
        const got: { type: string; data?: Buffer }[] = [];
        st.onEvent((ev) => got.push({ type: ev.type, data: ev.data }));
        st.onOutput(() => {});
        st.udpBind("100.64.9.2", 53);
        // 100.64.9.1:1234 → 100.64.9.2:53, UDP with no payload (checksum 0: none)
        const p = Buffer.alloc(28);
        p[0] = 0x45;
        p.writeUInt16BE(28, 2);
        p[8] = 64;
        p[9] = 17;
        Buffer.from([100, 64, 9, 1, 100, 64, 9, 2]).copy(p, 12);
        p.writeUInt16BE(~csum(p, 0, 20) & 0xffff, 10);
        p.writeUInt16BE(1234, 20);
        p.writeUInt16BE(53, 22);
        p.writeUInt16BE(8, 24);
        assert.equal(st.input([p]), 1);
        for (let i = 0; i < 50 && !got.some((e) => e.type === "message"); i++)
          await new Promise((r) => setTimeout(r, 10));
        const m = got.find((e) => e.type === "message");
        assert.ok(m, JSON.stringify(got));
        assert.equal(m.data?.length, 0);
      } finally {
        st.close();
      }
    });

    test("output handlers that call back into the stack (flush inside a delivery) lose nothing", async () => {
      const st = LwipStack.create({ address: "100.64.9.2", prefix: 24, gateway: "100.64.9.1", mtu: 1400 });
      try {
        let syns = 0;
        st.onEvent(() => {});
        st.onOutput((packets) => {
          syns += packets.length;
          // Re-entrant: a new connection from inside the output callback, whose SYN must still come out.
          if (syns < 20) st.tcpConnect("100.64.9.1", 1000 + syns);
        });
        st.tcpConnect("100.64.9.1", 999);
        for (let i = 0; i < 100 && syns < 20; i++) await new Promise((r) => setTimeout(r, 10));
        assert.ok(syns >= 20, `${syns} SYNs came out`);
      } finally {
        st.close();
      }
    });

    test("a call's output is delivered at the end of its job, not from inside it; the send buffer exceeds 64 KiB", async () => {
      const st = LwipStack.create({ address: "100.64.9.2", prefix: 24, gateway: "100.64.9.1", mtu: 1400 });
      try {
        const out: Buffer[] = [];
        st.onOutput((packets) => out.push(...packets.map((p) => Buffer.from(p))));
        const wakeups = st.stats().asyncWakeups; // counted per process, across stacks
        const id = st.tcpConnect("100.64.9.1", 80); // no peer: the SYN goes out and nothing comes back
        assert.equal(out.length, 0, "nothing is delivered from inside the call");
        await null; // the flush was queued first, so it has run before this continuation
        assert.equal(out.length, 1, "the SYN, before the event loop turned");
        assert.equal(out[0]![33]! & 0x02, 0x02, "SYN flag");
        assert.equal(st.stats().asyncWakeups, wakeups, "no wake-up through the event loop");
        // Before the handshake the MSS is 536: the 180-pbuf queue holds about 94 KB, more than Debian's 64 KiB.
        const big = Buffer.alloc(1 << 20);
        let taken = 0;
        for (let n = st.tcpWrite(id, big); n > 0; n = st.tcpWrite(id, big)) taken += n;
        assert.ok(taken > 65535, `took ${taken} bytes`);
      } finally {
        st.close();
      }
    });

    test("TCP over lwIP's own loopback: connect, echo, half-close, close; then a new stack", async () => {
      for (let round = 0; round < 2; round++) {
        const st = LwipStack.create({ address: "100.64.9.2", prefix: 24, gateway: "100.64.9.1", mtu: 1400 });
        const log: LwipEvent[] = [];
        const out: Buffer[] = [];
        st.onOutput((p) => out.push(...p));
        try {
          const got = new Map<number, Buffer[]>();
          let done: () => void = () => {};
          const finished = new Promise<void>((res) => (done = res));
          let closed = 0;
          st.onEvent((ev) => {
            log.push(ev);
            if (ev.type === "data") {
              got.set(ev.id, [...(got.get(ev.id) ?? []), ev.data!]);
              st.tcpRecved(ev.id, ev.data!.length);
            }
            if (ev.type === "accept") st.tcpWrite(ev.child!, Buffer.from("hello from the listener"));
            if (ev.type === "connected") {
              st.tcpWrite(ev.id, Buffer.from("hello from the client"));
              st.tcpShutdown(ev.id, false, true);
            }
            if (ev.type === "end") {
              const child = log.find((e) => e.type === "accept")?.child;
              if (ev.id === child) st.tcpShutdown(ev.id, false, true);
            }
            if (ev.type === "closed" && ++closed === 2) done();
          });
          const l = st.tcpListen("0.0.0.0", 8080);
          const c = st.tcpConnect("100.64.9.2", 8080);
          await Promise.race([finished, sleep(5000)]);
          const child = log.find((e) => e.type === "accept")!.child!;
          assert.equal(Buffer.concat(got.get(child) ?? []).toString(), "hello from the client");
          assert.equal(Buffer.concat(got.get(c) ?? []).toString(), "hello from the listener");
          assert.deepEqual(
            log.filter((e) => e.type === "error"),
            [],
          );
          assert.equal(closed, 2);
          assert.equal(out.length, 0, "loopback traffic never reaches onOutput");
          st.tcpClose(l);
          await sleep(50);
          const stats = st.stats();
          assert.equal(stats.tcpSockets, 0);
          assert.equal(stats.tcpListeners, 0);
          assert.ok(stats.issHook! >= 2, `tcp_next_iss replaced: ${stats.issHook}`);
        } finally {
          st.close();
        }
      }
    });
  });

  test("the process ends by itself after close(), with unref() while open, and on process.exit()", async () => {
    for (const mode of ["close", "unref", "exit"]) {
      const env: NodeJS.ProcessEnv = { ...process.env, SENG_NS_CHILD: `exit-${mode}` };
      delete env.NODE_TEST_CONTEXT;
      const r = await promisify(execFile)(process.execPath, ["--import", "tsx", self], {
        env,
        timeout: 20_000,
      });
      assert.equal(r.stderr, "", mode);
    }
  });

  describe("lwIP against the kernel through a TUN, in a namespace", () => {
    let ns: Netns;
    let lw: NsProcess;
    let kn: NsProcess;
    const figures: string[] = [];

    before(async () => {
      ns = await Netns.create("lwip");
      lw = ns.runTs(self, { role: "lwip" });
      kn = ns.runTs(self, { role: "kernel" });
      await Promise.all([lw.ready(), kn.ready()]);
      const r = await lw.call<{ tun: string; options: Record<string, number | string> }>("open");
      assert.equal(r.tun, "sengl0");
    });

    after(async () => {
      if (figures.length) console.log(figures.join("\n"));
      await lw?.close().catch(() => {});
      await kn?.close().catch(() => {});
      await ns?.delete();
    });

    test("kernel pings lwIP; lwIP pings the kernel", async () => {
      const r = await ns.exec("ping", ["-c", "3", "-i", "0.2", "-W", "2", "-w", "10", LWIP_IP]);
      assert.match(r.stdout, /3 packets transmitted, 3 received/);
      const pongs = await lw.call<{ seq: number; remote: string }[]>("ping", { ip: KERNEL_IP, count: 3 });
      assert.deepEqual(pongs.map((p) => p.seq).sort(), [1, 2, 3]);
      assert.ok(pongs.every((p) => p.remote === KERNEL_IP));
    });

    test("lwIP client ↔ kernel server: 20 MB each way at once, SHA-256 match; MSS = MTU - 40; random ISNs", async () => {
      await kn.call("listen", { port: 5001, mode: "transfer", bytes: MB20, seed: 7 });
      await lw.call("syns");
      const [l, k] = await Promise.all([
        lw.call<StreamResult>(
          "connect",
          { ip: KERNEL_IP, port: 5001, mode: "transfer", bytes: MB20, seed: 3 },
          120_000,
        ),
        kn.call<StreamResult>("next", { port: 5001 }, 120_000),
      ]);
      assert.equal(l.error, undefined, JSON.stringify(l));
      assert.equal(k.error, undefined);
      assert.equal(l.sentBytes, MB20);
      assert.equal(k.recvBytes, MB20);
      assert.equal(k.recvSha, l.sentSha);
      assert.equal(l.recvBytes, MB20);
      assert.equal(l.recvSha, k.sentSha);
      assert.equal(l.events!.at(-1), "closed");
      figures.push(
        `lwIP client → kernel server, 20 MiB each way concurrently: ${l.ms} ms, ` +
          `${mbit(MB20, l.ms)} Mbit/s per direction, ${mbit(2 * MB20, l.ms)} Mbit/s total`,
      );
      const syns = await lw.call<SynInfo[]>("syns");
      const syn = syns.find((x) => !x.ack && x.dport === 5001);
      assert.ok(syn, JSON.stringify(syns));
      assert.equal(syn.mss, MTU - 40);
      const st = await lw.call<LwipStats>("stats");
      assert.equal(st.mss, MTU - 40);
      await kn.call("unlisten", { port: 5001 });
    });

    test("kernel client ↔ lwIP listener: 20 MB each way at once, SHA-256 match", async () => {
      await lw.call("listen", { port: 5002, mode: "transfer", bytes: MB20, seed: 11 });
      const [k, l] = await Promise.all([
        kn.call<StreamResult>(
          "connect",
          { ip: LWIP_IP, port: 5002, mode: "transfer", bytes: MB20, seed: 5 },
          120_000,
        ),
        lw.call<StreamResult>("next", { port: 5002 }, 120_000),
      ]);
      assert.equal(l.error, undefined);
      assert.equal(k.error, undefined);
      assert.equal(l.recvBytes, MB20);
      assert.equal(l.recvSha, k.sentSha);
      assert.equal(k.recvBytes, MB20);
      assert.equal(k.recvSha, l.sentSha);
      figures.push(
        `kernel client → lwIP listener, 20 MiB each way concurrently: ${k.ms} ms, ` +
          `${mbit(MB20, k.ms)} Mbit/s per direction, ${mbit(2 * MB20, k.ms)} Mbit/s total`,
      );
      const syns = await lw.call<SynInfo[]>("syns");
      const synAck = syns.filter((x) => x.ack);
      assert.ok(synAck.length >= 1 && synAck.every((x) => x.mss === MTU - 40), JSON.stringify(synAck));
      await lw.call("unlisten", { port: 5002 });
    });

    test("one-way 20 MB each direction (throughput figures)", async () => {
      await kn.call("listen", { port: 5003, mode: "transfer", bytes: 0, seed: 1 });
      const [up] = await Promise.all([
        lw.call<StreamResult>(
          "connect",
          { ip: KERNEL_IP, port: 5003, mode: "transfer", bytes: MB20, seed: 2 },
          120_000,
        ),
        kn.call<StreamResult>("next", { port: 5003 }, 120_000),
      ]);
      await kn.call("unlisten", { port: 5003 });
      await kn.call("listen", { port: 5004, mode: "transfer", bytes: MB20, seed: 4 });
      const [down, kd] = await Promise.all([
        lw.call<StreamResult>(
          "connect",
          { ip: KERNEL_IP, port: 5004, mode: "transfer", bytes: 0, seed: 2 },
          120_000,
        ),
        kn.call<StreamResult>("next", { port: 5004 }, 120_000),
      ]);
      await kn.call("unlisten", { port: 5004 });
      assert.equal(up.sentBytes, MB20);
      assert.equal(down.recvBytes, MB20);
      assert.equal(down.recvSha, kd.sentSha);
      figures.push(
        `lwIP sends 20 MiB to the kernel: ${up.ms} ms, ${mbit(MB20, up.ms)} Mbit/s; ` +
          `lwIP receives 20 MiB: ${down.ms} ms, ${mbit(MB20, down.ms)} Mbit/s`,
      );
    });

    test("half-close: kernel FINs first and lwIP still sends; lwIP FINs first and still receives", async () => {
      // kernel client sends a request and FIN; the lwIP listener answers after the FIN (CLOSE-WAIT → LAST-ACK)
      await lw.call("listen", { port: 5005, mode: "respondAfterEnd", bytes: 300_000, seed: 21 });
      const [k1, l1] = await Promise.all([
        kn.call<StreamResult>("connect", {
          ip: LWIP_IP,
          port: 5005,
          mode: "requestThenRead",
          bytes: 100_000,
          seed: 22,
        }),
        lw.call<StreamResult>("next", { port: 5005 }),
      ]);
      assert.equal(l1.sentAfterEnd, true);
      assert.equal(l1.recvBytes, 100_000);
      assert.equal(l1.recvSha, k1.sentSha);
      assert.equal(k1.recvBytes, 300_000);
      assert.equal(k1.recvSha, l1.sentSha);
      assert.equal(l1.error, undefined);
      assert.equal(k1.error, undefined);
      assert.deepEqual(l1.events!.slice(-3), ["end", "sent", "closed"], JSON.stringify(l1.events));
      await lw.call("unlisten", { port: 5005 });

      // lwIP client sends a request and FIN; the kernel answers after it (lwIP in FIN-WAIT-2 receives)
      await kn.call("listen", { port: 5006, mode: "respondAfterEnd", bytes: 300_000, seed: 23 });
      const [l2, k2] = await Promise.all([
        lw.call<StreamResult>("connect", {
          ip: KERNEL_IP,
          port: 5006,
          mode: "requestThenRead",
          bytes: 100_000,
          seed: 24,
        }),
        kn.call<StreamResult>("next", { port: 5006 }),
      ]);
      assert.equal(k2.sentAfterEnd, true);
      assert.equal(k2.recvBytes, 100_000);
      assert.equal(k2.recvSha, l2.sentSha);
      assert.equal(l2.recvBytes, 300_000);
      assert.equal(l2.recvSha, k2.sentSha);
      assert.equal(l2.error, undefined);
      assert.deepEqual(l2.events!.slice(-2), ["end", "closed"]);
      await kn.call("unlisten", { port: 5006 });
    });

    test("flow control: data not consumed keeps the window closed; tcpRecved reopens it", async () => {
      const MB = 1 << 20;
      await kn.call("listen", { port: 5011, mode: "transfer", bytes: 4 * MB, seed: 71 });
      const [l, k] = await Promise.all([
        lw.call<StreamResult>("connect", {
          ip: KERNEL_IP,
          port: 5011,
          mode: "transfer",
          bytes: 0,
          seed: 72,
          holdMs: 800,
        }),
        kn.call<StreamResult>("next", { port: 5011 }),
      ]);
      // while nothing was consumed, no more than the 64 KiB window came in
      assert.ok(l.heldBytes! > 0 && l.heldBytes! <= 65535, `received while holding: ${l.heldBytes}`);
      assert.equal(l.recvBytes, 4 * MB);
      assert.equal(l.recvSha, k.sentSha);
      figures.push(`flow control: ${l.heldBytes} bytes arrived in 800 ms while nothing was consumed`);
      await kn.call("unlisten", { port: 5011 });
    });

    test("tcpClose with unconsumed data ends gracefully; tcpAbort resets", async () => {
      await kn.call("listen", { port: 5012, mode: "transfer", bytes: 20_000, seed: 81 });
      const c = await lw.call<{ got: number; events: string[] }>("endEarly", {
        ip: KERNEL_IP,
        port: 5012,
        waitBytes: 20_000,
        abort: false,
      });
      assert.equal(c.got, 20_000);
      assert.equal(c.events.at(-1), "closed");
      assert.ok(!c.events.includes("error"));
      const kc = await kn.call<StreamResult>("next", { port: 5012 });
      assert.equal(kc.error, undefined);
      await kn.call("unlisten", { port: 5012 });

      await kn.call("listen", { port: 5013, mode: "respondAfterEnd", bytes: 10, seed: 82 });
      const a = await lw.call<{ got: number; events: string[] }>("endEarly", {
        ip: KERNEL_IP,
        port: 5013,
        waitBytes: 0,
        abort: true,
      });
      assert.deepEqual(a.events, ["connected", "closed"]);
      const ka = await kn.call<StreamResult>("next", { port: 5013 });
      assert.equal(ka.error, "ECONNRESET");
      await kn.call("unlisten", { port: 5013 });
    });

    test("UDP both ways, including datagrams that need fragmentation", async () => {
      const sizes = Array.from({ length: 200 }, (_, i) =>
        i === 7 ? 3000 : i === 8 ? 9000 : 4 + ((i * 97) % 1300),
      );
      await lw.call("udpEcho", { port: 5301 });
      const k = await kn.call<{ received: number; bad: number; from: string }>("udpSendRecv", {
        ip: LWIP_IP,
        port: 5301,
        sizes,
      });
      assert.deepEqual(k, { received: 200, bad: 0, from: `${LWIP_IP}:5301` });
      await kn.call("udpEcho", { port: 5302 });
      const l = await lw.call<{
        accepted: number;
        received: number;
        bad: number;
        local: string;
        remoteSeen: string;
      }>("udpSendRecv", { ip: KERNEL_IP, port: 5302, sizes });
      assert.equal(l.accepted, 200);
      assert.equal(l.received, 200);
      assert.equal(l.bad, 0);
      assert.equal(l.remoteSeen, `${KERNEL_IP}:5302`);
      assert.match(l.local, /^0\.0\.0\.0:\d+$/);
    });

    test("closed ports: RST gives ECONNREFUSED on both sides", async () => {
      const evs = await lw.call<{ type: string; error?: string }[]>("connectRefused", {
        ip: KERNEL_IP,
        port: 9,
      });
      assert.deepEqual(evs, [{ type: "error", error: "ECONNREFUSED" }, { type: "closed" }]);
      const code = await kn.call<string>("connectRefused", { ip: LWIP_IP, port: 9 });
      assert.equal(code, "ECONNREFUSED");
    });

    test("1000 garbage packets into input() do not crash; the stack keeps working", async () => {
      await lw.call("listen", { port: 5007, mode: "transfer", bytes: 10_000, seed: 31 });
      const r = await lw.call<{ kinds: Record<string, number>; rx: number; dropped: number }>("fuzz", {
        count: 1000,
        seed: 0x5e9,
        ports: [5007, 5301],
      });
      assert.equal(r.rx, 1000);
      assert.ok(r.dropped >= 200, JSON.stringify(r)); // the not-IPv4 ones never reach lwIP
      const p = await ns.exec("ping", ["-c", "2", "-i", "0.2", "-W", "2", "-w", "10", LWIP_IP]);
      assert.match(p.stdout, /2 received/);
      const [k, l] = await Promise.all([
        kn.call<StreamResult>("connect", {
          ip: LWIP_IP,
          port: 5007,
          mode: "transfer",
          bytes: 10_000,
          seed: 32,
        }),
        lw.call<StreamResult>("next", { port: 5007 }),
      ]);
      assert.equal(k.recvSha, l.sentSha);
      assert.equal(l.recvSha, k.sentSha);
      await lw.call("unlisten", { port: 5007 });
    });

    test("no leaks: 3 × 300 connections with 32 KiB each way; sockets, pcbs and memory come back", async () => {
      // The kernel sends its FIN first, so lwIP never holds TIME-WAIT pcbs (those are freed by lwIP after 2 MSL).
      await kn.call("listen", { port: 5008, mode: "requestThenRead", bytes: 32_768, seed: 41 });
      await lw.call("syns");
      const tw0 = (await lw.call<LwipStats>("stats")).pcbTimeWait!; // left by earlier tests, freed after 2 MSL
      type Churn = { errors: number; bytes: number; stats: LwipStats; rss: number };
      const arg = {
        ip: KERNEL_IP,
        port: 5008,
        rounds: 300,
        bytes: 32_768,
        parallel: 10,
        mode: "respondAfterEnd",
      };
      const a = await lw.call<Churn>("churn", arg, 120_000);
      const syns = (await lw.call<SynInfo[]>("syns")).filter((x) => !x.ack && x.dport === 5008);
      const b = await lw.call<Churn>("churn", arg, 120_000);
      const c = await lw.call<Churn>("churn", arg, 120_000);
      for (const r of [a, b, c]) {
        assert.equal(r.errors, 0);
        assert.equal(r.stats.tcpSockets, 0);
        assert.equal(r.stats.pcbActive, 0);
        assert.ok(r.stats.pcbTimeWait! <= tw0, `TIME-WAIT pcbs ${r.stats.pcbTimeWait} (before: ${tw0})`);
        assert.equal(r.stats.queuedPackets, 0);
        assert.equal(r.stats.queuedEvents, 0);
      }
      const growth = c.stats.mallocInUse! - a.stats.mallocInUse!;
      figures.push(
        `churn: malloc in use ${(a.stats.mallocInUse! / 1e6).toFixed(2)} → ${(b.stats.mallocInUse! / 1e6).toFixed(2)}` +
          ` → ${(c.stats.mallocInUse! / 1e6).toFixed(2)} MB, rss ${(a.rss / 1e6).toFixed(0)} → ${(c.rss / 1e6).toFixed(0)} MB,` +
          ` ${(c.bytes / 1e6).toFixed(1)} MB moved per round of 300 connections`,
      );
      // 600 more connections moved 39 MB: a per-connection or per-pbuf leak would show here
      assert.ok(growth < 1e6, `malloc'd bytes grew by ${growth}`);
      // RFC 6528: initial sequence numbers are not guessable (lwIP's own would step by its 500 ms tick counter)
      assert.ok(syns.length >= 100, `SYNs seen: ${syns.length}`);
      const steps = syns.slice(1).map((x, i) => (x.isn - syns[i]!.isn) >>> 0);
      const small = steps.filter((d) => d < 1 << 24 || d > 2 ** 32 - (1 << 24)).length;
      assert.ok(small < steps.length / 10, `ISN steps: ${steps.slice(0, 10).join(", ")}`);
      assert.ok(c.stats.issHook! >= 900);
      await kn.call("unlisten", { port: 5008 });
    });

    test("reconfigure: a new MTU gives new connections the new MSS", async () => {
      const st = await lw.call<LwipStats>("reconfigure", { mtu: 1280 });
      assert.equal(st.mss, 1240);
      await kn.call("listen", { port: 5009, mode: "transfer", bytes: 1000, seed: 51 });
      await lw.call("syns");
      const r = await lw.call<StreamResult>("connect", {
        ip: KERNEL_IP,
        port: 5009,
        mode: "transfer",
        bytes: 100_000,
        seed: 52,
      });
      assert.equal(r.error, undefined);
      const syn = (await lw.call<SynInfo[]>("syns")).find((x) => !x.ack && x.dport === 5009);
      assert.equal(syn?.mss, 1240);
      await kn.call("next", { port: 5009 });
      await kn.call("unlisten", { port: 5009 });
      await lw.call("reconfigure", { mtu: MTU });
    });

    test("close() resets live connections; a new stack works", async () => {
      await kn.call("listen", { port: 5010, mode: "respondAfterEnd", bytes: 10, seed: 61 });
      const r = await lw.call<{ connected: boolean; sent: number; closedTwice: boolean; afterClose: string }>(
        "restart",
        { ip: KERNEL_IP, port: 5010 },
      );
      assert.deepEqual(r, {
        connected: true,
        sent: 5,
        closedTwice: true,
        afterClose: "LwipStack.tcpConnect: the stack is closed",
      });
      const k = await kn.call<StreamResult>("next", { port: 5010 });
      assert.equal(k.error, "ECONNRESET");
      assert.equal(k.recvBytes, 5);
      await kn.call("unlisten", { port: 5010 });
      const p = await ns.exec("ping", ["-c", "2", "-i", "0.2", "-W", "2", "-w", "10", LWIP_IP]);
      assert.match(p.stdout, /2 received/);
    });
  });
}
