/**
 * TUN primitive (native/src/tun.cc through src/native/io.ts), inside a namespace this test creates: a child
 * process opens the TUN, gives it 100.64.1.1/24 and reflects what it reads (ICMP echo → echo reply, UDP → swapped
 * back); `ping` and a UDP burst from the namespace check that every packet is read whole, in batches, and written
 * back one packet per write. Needs root, iproute2 and ping (iputils-ping).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { Tun, tunConfigure } from "../../src/native/io.js";
import { Netns, nsChildRole, serveRpc, type NsProcess } from "../helpers/netns.js";

const TUN_ADDR = "100.64.1.1";
const PEER_ADDR = "100.64.1.2"; // on the TUN's subnet: the kernel routes it into the TUN, the child answers for it

// ---- packet helpers ---------------------------------------------------------------------------------------------

function checksum(buf: Buffer, start = 0, end = buf.length): number {
  let sum = 0;
  for (let i = start; i + 1 < end; i += 2) sum += buf.readUInt16BE(i);
  if ((end - start) % 2 === 1) sum += buf[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** What is wrong with an IPv4 packet read from the TUN, or undefined. Catches merged and cut packets. */
function ipv4Problem(p: Buffer): string | undefined {
  if (p.length < 20) return `short packet (${p.length} bytes)`;
  const ihl = (p[0]! & 0x0f) * 4;
  if (ihl < 20 || ihl > p.length) return `bad IHL ${ihl}`;
  const total = p.readUInt16BE(2);
  if (total !== p.length) return `total length ${total} but ${p.length} bytes read (merged or cut)`;
  if (checksum(p, 0, ihl) !== 0) return "bad IPv4 header checksum";
  return undefined;
}

function swapAddresses(p: Buffer): void {
  const src = Buffer.from(p.subarray(12, 16));
  p.copy(p, 12, 16, 20);
  src.copy(p, 16);
  p.writeUInt16BE(0, 10);
  p.writeUInt16BE(checksum(p, 0, (p[0]! & 0x0f) * 4), 10);
}

/** The reply the peer would send, or undefined when the packet is not answered. */
function reflect(pkt: Buffer): Buffer | undefined {
  const ihl = (pkt[0]! & 0x0f) * 4;
  const proto = pkt[9];
  if (proto === 1 && pkt[ihl] === 8) {
    const r = Buffer.from(pkt); // own copy: never write into the batch
    swapAddresses(r);
    r[ihl] = 0; // echo reply
    r.writeUInt16BE(0, ihl + 2);
    r.writeUInt16BE(checksum(r, ihl), ihl + 2);
    return r;
  }
  if (proto === 17) {
    const r = Buffer.from(pkt);
    swapAddresses(r);
    const sport = r.readUInt16BE(ihl);
    r.writeUInt16BE(r.readUInt16BE(ihl + 2), ihl);
    r.writeUInt16BE(sport, ihl + 2);
    r.writeUInt16BE(0, ihl + 6); // no UDP checksum (allowed over IPv4)
    return r;
  }
  return undefined;
}

// ---- child: runs in the namespace -----------------------------------------------------------------------------

interface ReflectorStats {
  batches: number;
  packets: number;
  maxBatch: number;
  ipv4: number;
  other: number;
  echoRequests: number;
  udp: number;
  problems: string[];
  replied: number;
  written: number;
}

function child(): void {
  const tuns: Tun[] = [];
  let main: Tun | undefined;
  const st: ReflectorStats = {
    batches: 0,
    packets: 0,
    maxBatch: 0,
    ipv4: 0,
    other: 0,
    echoRequests: 0,
    udp: 0,
    problems: [],
    replied: 0,
    written: 0,
  };

  serveRpc(
    {
      async open(arg: { name: string; address: string; mtu: number }) {
        const tun = Tun.open(arg.name);
        tuns.push(tun);
        main = tun;
        await tunConfigure(tun.name, { address: arg.address, mtu: arg.mtu });
        tun.onPackets((packets) => {
          st.batches++;
          st.packets += packets.length;
          st.maxBatch = Math.max(st.maxBatch, packets.length);
          const replies: Buffer[] = [];
          for (const p of packets) {
            if (p[0]! >> 4 !== 4) {
              st.other++; // e.g. IPv6 router solicitations of the new link
              continue;
            }
            st.ipv4++;
            const problem = ipv4Problem(p);
            if (problem) {
              if (st.problems.length < 10) st.problems.push(problem);
              continue;
            }
            if (p[9] === 1) st.echoRequests++;
            if (p[9] === 17) st.udp++;
            const r = reflect(p);
            if (r) replies.push(r);
          }
          if (replies.length > 0) {
            st.replied += replies.length;
            st.written += tun.writeMany(replies);
          }
        });
        return { name: tun.name };
      },

      stats() {
        return { ...st, tun: main?.stats() };
      },

      /** Sends `count` UDP datagrams of varying sizes to the reflected peer, `window` at a time; checks the echoes. */
      async udpBurst(arg: { count: number; window: number }) {
        const sock = createSocket({ type: "udp4", recvBufferSize: 4 << 20 });
        await new Promise<void>((res) => sock.bind(0, TUN_ADDR, res));
        const payload = (i: number): Buffer => {
          const b = Buffer.alloc(8 + ((i * 37) % 1300));
          b.writeUInt32BE(i, 0);
          for (let k = 4; k < b.length; k++) b[k] = (i + k) & 0xff;
          return b;
        };
        const seen = new Uint8Array(arg.count);
        let received = 0;
        let dups = 0;
        let mismatched = 0;
        let windowLeft = 0;
        let windowDone: () => void = () => {};
        sock.on("message", (msg, rinfo) => {
          const i = msg.length >= 4 ? msg.readUInt32BE(0) : -1;
          if (i < 0 || i >= arg.count || rinfo.address !== PEER_ADDR || !msg.equals(payload(i))) {
            mismatched++;
            return;
          }
          if (seen[i]) dups++;
          else {
            seen[i] = 1;
            received++;
          }
          if (--windowLeft === 0) windowDone();
        });
        const before = st.maxBatch;
        st.maxBatch = 0;
        const deadline = Date.now() + 15_000;
        for (let start = 0; start < arg.count && Date.now() < deadline; start += arg.window) {
          const end = Math.min(arg.count, start + arg.window);
          windowLeft = end - start;
          const done = new Promise<void>((res) => (windowDone = res));
          for (let i = start; i < end; i++) sock.send(payload(i), 9, PEER_ADDR);
          await Promise.race([done, new Promise((res) => setTimeout(res, 2000))]);
        }
        sock.close();
        const burstMaxBatch = st.maxBatch;
        st.maxBatch = Math.max(before, burstMaxBatch);
        return { received, dups, mismatched, burstMaxBatch };
      },

      /** Writes that must not crash: empty, not IP, truncated, wrong types, closed handle. */
      badWrites() {
        const tun = main!;
        const errors0 = tun.stats().txErrors;
        const out: Record<string, unknown> = {};
        out.empty = tun.write(Buffer.alloc(0));
        out.notIp = tun.write(
          Buffer.from([0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),
        );
        const cut = Buffer.alloc(10);
        cut[0] = 0x45;
        out.truncated = tun.write(cut); // the kernel may accept it and drop it later: either way, no crash
        const good = Buffer.alloc(28);
        good[0] = 0x45;
        good.writeUInt16BE(28, 2);
        good[8] = 64;
        good[9] = 17;
        Buffer.from([100, 64, 1, 2]).copy(good, 12);
        Buffer.from([100, 64, 1, 99]).copy(good, 16); // to nobody: dropped quietly by the namespace's stack
        good.writeUInt16BE(checksum(good, 0, 20), 10);
        good.writeUInt16BE(9, 20);
        good.writeUInt16BE(9, 22);
        good.writeUInt16BE(8, 24);
        out.manyMixed = tun.writeMany([good, Buffer.from([0xf0, 0, 0, 0]), good]);
        const typeErrors: string[] = [];
        for (const bad of ["string", 5, null, [1, 2], new Uint16Array(4)]) {
          try {
            tun.write(bad as unknown as Buffer);
          } catch (e) {
            typeErrors.push(`${(e as Error).name}: ${(e as Error).message}`);
          }
        }
        try {
          tun.writeMany([good, 7 as unknown as Buffer]);
        } catch (e) {
          typeErrors.push(`${(e as Error).name}: ${(e as Error).message}`);
        }
        out.typeErrors = typeErrors;
        out.txErrors = tun.stats().txErrors - errors0;
        out.lastError = tun.stats().lastError;
        return out;
      },

      /** A second handle: closed-handle errors, double close, multi-queue, refused TUNSETIFF. */
      handles() {
        const out: Record<string, unknown> = {};
        const t = Tun.open("sengx%d");
        out.patternName = t.name;
        t.close();
        t.close(); // harmless
        out.closed = t.closed;
        const closedErrors: string[] = [];
        for (const f of [
          () => t.write(Buffer.alloc(20)),
          () => t.writeMany([]),
          () => t.onPackets(() => {}),
          () => t.pause(),
          () => t.resume(),
        ]) {
          try {
            f();
            closedErrors.push("no error");
          } catch (e) {
            closedErrors.push((e as Error).message);
          }
        }
        out.closedErrors = closedErrors;
        const q1 = Tun.open("sengmq0", { multiQueue: true });
        const q2 = Tun.open("sengmq0", { multiQueue: true });
        out.queues = [q1.name, q2.name];
        try {
          Tun.open("sengmq0"); // single-queue open of a multi-queue device: refused by the kernel
          out.refused = "no error";
        } catch (e) {
          const err = e as NodeJS.ErrnoException;
          out.refused = { message: err.message, code: err.code, syscall: err.syscall };
        }
        q1.close();
        q2.close();
        return out;
      },

      /** The device is deleted under an active reader: onError gets a system error, nothing crashes. */
      async deleted() {
        const t = Tun.open("sengdel0");
        const err = new Promise<Error>((res) => t.onError(res));
        t.onPackets(() => {});
        await promisify(execFile)("ip", ["link", "del", "sengdel0"]);
        const e = await Promise.race([
          err,
          new Promise<undefined>((res) => setTimeout(() => res(undefined), 3000)),
        ]);
        const writeAfter = t.write(Buffer.alloc(20, 0x45));
        t.close();
        return { error: e?.message, code: (e as NodeJS.ErrnoException | undefined)?.code, writeAfter };
      },
    },
    () => {
      for (const t of tuns) t.close();
    },
  );
}

/** Opens a TUN, starts a reader, closes it: the process must then exit by itself. With unref, without close. */
async function exitChild(mode: string): Promise<void> {
  const t = Tun.open("sengexit0");
  t.onPackets(() => {});
  if (mode === "unref") t.unref();
  else setTimeout(() => t.close(), 50);
}

// ---- tests ----------------------------------------------------------------------------------------------------

const role = nsChildRole();
if (role === "tun") child();
else if (role === "exit-close" || role === "exit-unref") await exitChild(role.slice(5));
else {
  const self = fileURLToPath(import.meta.url);

  test("argument errors are thrown before anything is opened", () => {
    assert.throws(() => Tun.open(5 as unknown as string), TypeError);
    assert.throws(() => Tun.open("x".repeat(16)), /longer than 15 bytes/);
    assert.throws(() => Tun.open("bad/name"), /invalid interface name/);
    assert.throws(() => Tun.open("ok", { batch: 0 }), RangeError);
    assert.throws(() => Tun.open("ok", null as unknown as object), TypeError);
  });

  describe("TUN in a namespace", () => {
    let ns: Netns;
    let proc: NsProcess;

    before(async () => {
      ns = await Netns.create("tun");
      proc = ns.runTs(self, { role: "tun" });
      await proc.ready();
      const r = await proc.call<{ name: string }>("open", {
        name: "sengtun0",
        address: `${TUN_ADDR}/24`,
        mtu: 1400,
      });
      assert.equal(r.name, "sengtun0");
    });

    after(async () => {
      await proc?.close().catch(() => {});
      await ns?.delete();
    });

    test("ping through the TUN: the child reads echo requests and its replies come back", async () => {
      const r = await ns.exec("ping", ["-c", "3", "-i", "0.2", "-W", "2", "-w", "10", PEER_ADDR]);
      assert.match(r.stdout, /3 packets transmitted, 3 received/);
      const st = await proc.call<ReflectorStats>("stats");
      assert.deepEqual(st.problems, []);
      assert.ok(st.echoRequests >= 3, `echo requests seen: ${st.echoRequests}`);
    });

    test("flood ping: batches of more than one packet, none lost, merged or duplicated", async () => {
      const before = await proc.call<ReflectorStats>("stats");
      const r = await ns.exec("ping", ["-f", "-l", "32", "-c", "2000", "-q", "-w", "20", PEER_ADDR]);
      // ping stops once it has its 2000 replies: up to 31 preloaded requests are still in flight then
      const m = /(\d+) packets transmitted, (\d+) received/.exec(r.stdout);
      assert.ok(m, r.stdout);
      const [transmitted, received] = [Number(m[1]), Number(m[2])];
      assert.ok(received >= 2000 && transmitted - received < 32, r.stdout);
      assert.doesNotMatch(r.stdout, /duplicates/);
      // every request ping sent was read whole by the child and answered with one write each
      let st = await proc.call<ReflectorStats>("stats");
      for (let i = 0; i < 60 && st.echoRequests - before.echoRequests < transmitted; i++) {
        await new Promise((res) => setTimeout(res, 50));
        st = await proc.call<ReflectorStats>("stats");
      }
      assert.equal(st.echoRequests - before.echoRequests, transmitted);
      assert.deepEqual(st.problems, []);
      assert.ok(st.maxBatch > 1, `largest batch: ${st.maxBatch}`);
      assert.equal(st.written, st.replied);
    });

    test("UDP burst of varying sizes: every datagram reflected exactly once, byte for byte", async () => {
      const r = await proc.call<{
        received: number;
        dups: number;
        mismatched: number;
        burstMaxBatch: number;
      }>("udpBurst", { count: 2000, window: 100 });
      assert.deepEqual(r, { received: 2000, dups: 0, mismatched: 0, burstMaxBatch: r.burstMaxBatch });
      assert.ok(r.burstMaxBatch > 1, `largest batch: ${r.burstMaxBatch}`);
      const st = await proc.call<ReflectorStats>("stats");
      assert.deepEqual(st.problems, []);
    });

    test("bad packets and bad arguments do not crash; the TUN keeps working", async () => {
      const r = await proc.call<Record<string, unknown>>("badWrites");
      assert.equal(r.empty, false);
      assert.equal(r.notIp, false);
      assert.equal(r.manyMixed, 2);
      assert.ok((r.txErrors as number) >= 3, JSON.stringify(r));
      assert.match(String(r.lastError), /^write: .*\(E[A-Z]+\)$/);
      const typeErrors = r.typeErrors as string[];
      assert.equal(typeErrors.length, 6);
      for (const e of typeErrors) assert.match(e, /^TypeError: Tun\.write(Many)?: /);
      const p = await ns.exec("ping", ["-c", "1", "-W", "2", PEER_ADDR]);
      assert.match(p.stdout, /1 received/);
    });

    test("closed handles throw, close twice is harmless, multi-queue, refused open names the syscall", async () => {
      const r = await proc.call<Record<string, unknown>>("handles");
      assert.equal(r.patternName, "sengx0");
      assert.equal(r.closed, true);
      for (const m of r.closedErrors as string[]) assert.match(m, /the TUN handle is closed/);
      assert.deepEqual(r.queues, ["sengmq0", "sengmq0"]);
      const refused = r.refused as { message: string; code: string; syscall: string };
      assert.equal(refused.syscall, "ioctl(TUNSETIFF)");
      assert.match(refused.message, /^ioctl\(TUNSETIFF\): .+ \(E[A-Z]+\)$/);
    });

    test("a device deleted under the reader reports through onError", async () => {
      const r = await proc.call<{ error?: string; code?: string; writeAfter: boolean }>("deleted");
      // Which call sees the loss first depends on timing: the read itself, or epoll reporting the fd's error.
      assert.match(String(r.error), /^(read|uv_poll): .+\(E[A-Z]+\)$/);
      assert.equal(r.writeAfter, false);
    });

    test("the process exits by itself after close(), and with unref() while open", async () => {
      for (const mode of ["exit-close", "exit-unref"]) {
        const p = ns.runTs(self, { role: mode });
        const res = await p.wait(20_000);
        assert.equal(res.code, 0, `${mode}: ${res.stderr}`);
      }
    });
  });
}
