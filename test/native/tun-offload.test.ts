/**
 * TUN offloads (native/src/offload.cc through src/native/io.ts).
 *
 * Splitting and coalescing on plain buffers (offloadSplit, offloadCoalesce: the code the TUN reader and writer
 * run): segments carry valid checksums, the payload bytes, the right sequence numbers, IDs and flags; what must not
 * be merged (other flows, other protocols, IP options, FIN, bad checksums, gaps) is written alone and unchanged;
 * split(coalesce(x)) gives x back; malformed reads and packets are dropped or passed, never crash.
 *
 * Then with the kernel, in namespaces this test creates: two offloaded TUN devices bridged by a child process (one
 * device moved to a second namespace), a TCP transfer between the namespaces through them arrives whole (SHA-256),
 * with super-packets read and merged writes made.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { offloadCoalesce, offloadSplit, Tun, tunConfigure, type TunStats } from "../../src/native/io.js";
import { Netns, nsChildRole, serveRpc, type NsProcess } from "../helpers/netns.js";
import { waitLine } from "../helpers/lab.js";

// ---- packet helpers -----------------------------------------------------------------------------------------------

const FIN = 0x01;
const SYN = 0x02;
const PSH = 0x08;
const ACK = 0x10;
const CWR = 0x80;

function sum16(buf: Buffer, start: number, end: number, init = 0): number {
  let s = init;
  for (let i = start; i + 1 < end; i += 2) s += buf.readUInt16BE(i);
  if ((end - start) % 2 === 1) s += buf[end - 1]! << 8;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

const csum = (buf: Buffer, start: number, end: number, init = 0): number =>
  ~sum16(buf, start, end, init) & 0xffff;

function pseudo(p: Buffer, tcpLen: number): number {
  const v6 = p[0]! >> 4 === 6;
  return sum16(p, v6 ? 8 : 12, v6 ? 40 : 20) + 6 + tcpLen;
}

const iphl = (p: Buffer): number => (p[0]! >> 4 === 6 ? 40 : (p[0]! & 0x0f) * 4);

/** Both checksums of an IPv4/IPv6 TCP packet are right. */
function checksumsOk(p: Buffer): boolean {
  const h = iphl(p);
  if (p[0]! >> 4 === 4 && csum(p, 0, h) !== 0) return false;
  return csum(p, h, p.length, pseudo(p, p.length - h)) === 0;
}

interface Seg {
  v6?: boolean;
  src?: string;
  dst?: string;
  sport?: number;
  dport?: number;
  seq: number;
  ack?: number;
  flags?: number;
  window?: number;
  id?: number;
  ttl?: number;
  tos?: number;
  tcpOptions?: Buffer;
  ipOptions?: Buffer;
  payload: Buffer;
}

const TS_OPTION = Buffer.from([1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78]); // NOP NOP timestamps

/** A TCP packet with correct checksums. */
function tcp(o: Seg): Buffer {
  const opts = o.tcpOptions ?? TS_OPTION;
  const thl = 20 + opts.length;
  const v6 = o.v6 === true;
  const ih = v6 ? 40 : 20 + (o.ipOptions?.length ?? 0);
  const p = Buffer.alloc(ih + thl + o.payload.length);
  if (v6) {
    p.writeUInt32BE(0x60012345, 0); // flow label 0x12345
    p.writeUInt16BE(thl + o.payload.length, 4);
    p[6] = 6;
    p[7] = o.ttl ?? 64;
    ip6(o.src ?? "fd00::1").copy(p, 8);
    ip6(o.dst ?? "fd00::2").copy(p, 24);
  } else {
    p[0] = 0x40 | (ih / 4);
    p[1] = o.tos ?? 0;
    p.writeUInt16BE(p.length, 2);
    p.writeUInt16BE(o.id ?? 1000, 4);
    p.writeUInt16BE(0x4000, 6); // DF
    p[8] = o.ttl ?? 64;
    p[9] = 6;
    Buffer.from((o.src ?? "100.64.0.2").split(".").map(Number)).copy(p, 12);
    Buffer.from((o.dst ?? "198.18.2.2").split(".").map(Number)).copy(p, 16);
    o.ipOptions?.copy(p, 20);
    p.writeUInt16BE(csum(p, 0, ih), 10);
  }
  const t = ih;
  p.writeUInt16BE(o.sport ?? 40000, t);
  p.writeUInt16BE(o.dport ?? 5201, t + 2);
  p.writeUInt32BE(o.seq >>> 0, t + 4);
  p.writeUInt32BE(o.ack ?? 777, t + 8);
  p[t + 12] = (thl / 4) << 4;
  p[t + 13] = o.flags ?? ACK;
  p.writeUInt16BE(o.window ?? 501, t + 14);
  opts.copy(p, t + 20);
  o.payload.copy(p, t + thl);
  p.writeUInt16BE(csum(p, t, p.length, pseudo(p, p.length - t)), t + 16);
  return p;
}

/** `p` (IPv6 + TCP) with an 8-byte hop-by-hop header (PadN) between the IPv6 header and TCP. */
function withHopByHop(p: Buffer): Buffer {
  const out = Buffer.concat([p.subarray(0, 40), Buffer.from([6, 0, 1, 4, 0, 0, 0, 0]), p.subarray(40)]);
  out[6] = 0; // next header: hop-by-hop options
  out.writeUInt16BE(out.length - 40, 4);
  return out;
}

function ip6(s: string): Buffer {
  const [head, tail] = s.split("::");
  const h = head ? head.split(":") : [];
  const tl = tail ? tail.split(":") : [];
  const words = [...h, ...Array<string>(8 - h.length - tl.length).fill("0"), ...tl];
  const b = Buffer.alloc(16);
  words.forEach((w, i) => b.writeUInt16BE(parseInt(w, 16), i * 2));
  return b;
}

function udp4(payload: Buffer): Buffer {
  const p = Buffer.alloc(28 + payload.length);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p[8] = 64;
  p[9] = 17;
  Buffer.from([100, 64, 0, 2]).copy(p, 12);
  Buffer.from([198, 18, 2, 2]).copy(p, 16);
  p.writeUInt16BE(csum(p, 0, 20), 10);
  p.writeUInt16BE(5000, 20);
  p.writeUInt16BE(5001, 22);
  p.writeUInt16BE(8 + payload.length, 24);
  payload.copy(p, 28);
  return p;
}

interface Vnet {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

function vnet(v: Vnet): Buffer {
  const b = Buffer.alloc(10);
  b[0] = v.flags ?? 0;
  b[1] = v.gsoType ?? 0;
  b.writeUInt16LE(v.hdrLen ?? 0, 2);
  b.writeUInt16LE(v.gsoSize ?? 0, 4);
  b.writeUInt16LE(v.csumStart ?? 0, 6);
  b.writeUInt16LE(v.csumOffset ?? 0, 8);
  return b;
}

function readVnet(b: Buffer): Required<Vnet> {
  return {
    flags: b[0]!,
    gsoType: b[1]!,
    hdrLen: b.readUInt16LE(2),
    gsoSize: b.readUInt16LE(4),
    csumStart: b.readUInt16LE(6),
    csumOffset: b.readUInt16LE(8),
  };
}

/** What the kernel hands over for a TSO send: one packet with every byte, the pseudo-header sum in the field. */
function superPacket(first: Seg, gsoSize: number): Buffer {
  const p = tcp(first);
  const h = iphl(p);
  if (p[0]! >> 4 === 4) {
    p.writeUInt16BE(p.length, 2);
    p.writeUInt16BE(0, 10);
    p.writeUInt16BE(csum(p, 0, h), 10);
  }
  p.writeUInt16BE(sum16(Buffer.alloc(0), 0, 0, pseudo(p, p.length - h)), h + 16);
  const thl = (p[h + 12]! >> 4) * 4;
  return Buffer.concat([
    vnet({
      flags: 1,
      gsoType: first.v6 ? 4 : 1,
      hdrLen: h + thl,
      gsoSize,
      csumStart: h,
      csumOffset: 16,
    }),
    p,
  ]);
}

const payloadOf = (p: Buffer): Buffer => {
  const h = iphl(p);
  return p.subarray(h + (p[h + 12]! >> 4) * 4);
};
const seqOf = (p: Buffer): number => p.readUInt32BE(iphl(p) + 4);
const flagsOf = (p: Buffer): number => p[iphl(p) + 13]!;

/** Consecutive segments of one flow, `sizes` payload bytes each. */
function stream(sizes: number[], base: Partial<Seg> = {}, seq0 = 1_000_000, id0 = 500): Buffer[] {
  let seq = seq0;
  return sizes.map((n, i) => {
    const p = tcp({ ...base, seq, id: id0 + i, payload: randomBytes(n) });
    seq += n;
    return p;
  });
}

// ---- child: bridges two offloaded TUNs (runs in namespace A; device B is moved to namespace B) -----------------

function bridgeChild(): void {
  const tuns: Tun[] = [];
  serveRpc(
    {
      async open(arg: { nsB: string; offload: boolean }) {
        const a = Tun.open("sengoa0", { offload: arg.offload });
        const b = Tun.open("sengob0", { offload: arg.offload });
        tuns.push(a, b);
        await promisify(execFile)("ip", ["link", "set", "dev", "sengob0", "netns", arg.nsB]);
        await tunConfigure("sengoa0", { address: "100.64.7.1/24", mtu: 1400 });
        await tunConfigure("sengob0", { address: "100.64.7.2/24", mtu: 1400, netns: arg.nsB });
        a.onPackets((p) => b.writeMany(p));
        b.onPackets((p) => a.writeMany(p));
        return { offload: [a.offload, b.offload] };
      },
      stats() {
        return { a: tuns[0]!.stats(), b: tuns[1]!.stats() };
      },
    },
    () => {
      for (const t of tuns) t.close();
    },
  );
}

// ---- tests ----------------------------------------------------------------------------------------------------

if (nsChildRole() === "bridge") bridgeChild();
else {
  describe("offload split (TUN reads)", () => {
    test("a TSO super-packet becomes MTU-sized segments: checksums, IDs, sequence numbers, flags, payload", () => {
      const payload = randomBytes(10_000);
      const read = superPacket(
        { seq: 0xfffff000, id: 0xfffe, flags: ACK | PSH | FIN | CWR, payload }, // seq and id wrap around
        1348,
      );
      const segs = offloadSplit(read);
      assert.equal(segs.length, Math.ceil(10_000 / 1348));
      segs.forEach((s, i) => {
        assert.ok(checksumsOk(s), `segment ${i}: checksums`);
        assert.equal(s.readUInt16BE(2), s.length, `segment ${i}: total length`);
        assert.equal(s.readUInt16BE(4), (0xfffe + i) & 0xffff, `segment ${i}: IP ID`);
        assert.equal(seqOf(s), (0xfffff000 + i * 1348) >>> 0, `segment ${i}: seq`);
        assert.ok(payloadOf(s).length <= 1348);
        const last = i === segs.length - 1;
        const want = ACK | (last ? PSH | FIN : 0) | (i === 0 ? CWR : 0);
        assert.equal(flagsOf(s), want, `segment ${i}: flags`);
        assert.ok(s.subarray(40, 52).equals(TS_OPTION), "TCP options copied");
      });
      assert.ok(Buffer.concat(segs.map(payloadOf)).equals(payload), "payload bytes identical, in order");
    });

    test("IPv6 super-packets split too (payload length, no IDs)", () => {
      const payload = randomBytes(5000);
      const segs = offloadSplit(superPacket({ v6: true, seq: 5, payload }, 1328));
      assert.equal(segs.length, 4);
      for (const s of segs) {
        assert.ok(checksumsOk(s));
        assert.equal(s.readUInt16BE(4), s.length - 40);
      }
      assert.ok(Buffer.concat(segs.map(payloadOf)).equals(payload));
    });

    test("IPv6 split: sizes, sequence numbers, flags, the header kept, checksums verified independently", () => {
      const payload = randomBytes(5000);
      const read = superPacket({ v6: true, seq: 0xffffff00, flags: ACK | PSH | CWR, payload }, 1328);
      const head = read.subarray(10, 50);
      const segs = offloadSplit(read);
      assert.deepEqual(
        segs.map((s) => payloadOf(s).length),
        [1328, 1328, 1328, 1016],
      );
      segs.forEach((s, i) => {
        assert.ok(
          checksumsOk(s),
          `segment ${i}: TCP checksum with the IPv6 pseudo-header (sum16 here, not the addon's)`,
        );
        assert.ok(s.subarray(0, 4).equals(head.subarray(0, 4)), "version, class, flow label kept");
        assert.ok(s.subarray(6, 40).equals(head.subarray(6, 40)), "next header, hop limit, addresses kept");
        assert.equal(seqOf(s), (0xffffff00 + i * 1328) >>> 0, `segment ${i}: seq wraps`);
        assert.equal(flagsOf(s), ACK | (i === 3 ? PSH : 0) | (i === 0 ? CWR : 0));
      });
      // The checker is not vacuous: one changed payload byte or a changed address fails it.
      const bad = Buffer.from(segs[1]!);
      bad[bad.length - 1]! ^= 1;
      assert.equal(checksumsOk(bad), false);
      const moved = Buffer.from(segs[1]!);
      moved[39]! ^= 1;
      assert.equal(checksumsOk(moved), false, "the pseudo-header covers the addresses");
    });

    test("a TCPv6 super-packet behind an extension header is dropped with its reason, never cut at a guess", () => {
      // seq 0x50…: where a parser that skipped the chain would look for TCP's data offset, it finds 0x50 (20 bytes),
      // so only the next-header check stands between this read and segments cut 8 bytes off.
      const read = superPacket({ v6: true, seq: 0x50000000, payload: randomBytes(4000) }, 1328);
      const ext = Buffer.concat([read.subarray(0, 10), withHopByHop(read.subarray(10))]);
      assert.throws(() => offloadSplit(ext), /GSO packet without valid IP\/TCP headers/);
      // Without GSO the same packet passes unchanged (it is the kernel's, whole).
      const plain = withHopByHop(tcp({ v6: true, seq: 1, payload: randomBytes(100) }));
      const [out] = offloadSplit(Buffer.concat([vnet({}), plain]));
      assert.ok(out!.equals(plain));
    });

    test("a super-packet with IPv4 options copies them to every segment", () => {
      const ipOptions = Buffer.from([1, 1, 1, 0]); // NOPs and end of options
      const segs = offloadSplit(superPacket({ seq: 1, ipOptions, payload: randomBytes(3000) }, 1000));
      assert.equal(segs.length, 3);
      for (const s of segs) {
        assert.equal(iphl(s), 24);
        assert.ok(s.subarray(20, 24).equals(ipOptions));
        assert.ok(checksumsOk(s));
      }
    });

    test("a packet that needs its checksum gets it (TCP and UDP); complete packets pass unchanged", () => {
      const t = tcp({ seq: 9, payload: randomBytes(333) });
      const partial = Buffer.from(t);
      partial.writeUInt16BE(sum16(Buffer.alloc(0), 0, 0, pseudo(t, t.length - 20)), 36);
      const [out] = offloadSplit(Buffer.concat([vnet({ flags: 1, csumStart: 20, csumOffset: 16 }), partial]));
      assert.ok(out!.equals(t));
      const u = udp4(randomBytes(101));
      const uPartial = Buffer.from(u);
      uPartial.writeUInt16BE(sum16(Buffer.alloc(0), 0, 0, sum16(u, 12, 20) + 17 + u.length - 20), 26);
      const [uo] = offloadSplit(Buffer.concat([vnet({ flags: 1, csumStart: 20, csumOffset: 6 }), uPartial]));
      assert.equal(csum(uo!, 20, uo!.length, sum16(uo!, 12, 20) + 17 + uo!.length - 20), 0);
      assert.notEqual(uo!.readUInt16BE(26), 0, "a UDP checksum is never stored as 0");
      const [plain] = offloadSplit(Buffer.concat([vnet({}), u]));
      assert.ok(plain!.equals(u));
    });

    test("malformed reads are dropped with a reason", () => {
      const good = superPacket({ seq: 1, payload: randomBytes(3000) }, 1000);
      const cases: [string, Buffer, RegExp][] = [
        ["empty", Buffer.alloc(0), /shorter/],
        ["header only", vnet({}), /shorter/],
        ["UDP GSO", Buffer.concat([vnet({ gsoType: 3, gsoSize: 100 }), udp4(randomBytes(400))]), /gso_type/],
        ["unknown GSO", Buffer.concat([vnet({ gsoType: 0x45 }), good.subarray(10)]), /gso_type/],
        ["gso_size 0", Buffer.concat([vnet({ gsoType: 1 }), good.subarray(10)]), /gso_size/],
        [
          "TCPV4 on IPv6",
          Buffer.concat([
            vnet({ gsoType: 1, gsoSize: 100 }),
            tcp({ v6: true, seq: 1, payload: randomBytes(300) }),
          ]),
          /headers/,
        ],
        [
          "TCPV4 on UDP",
          Buffer.concat([vnet({ gsoType: 1, gsoSize: 100 }), udp4(randomBytes(300))]),
          /headers/,
        ],
        [
          "csum_start past the end",
          Buffer.concat([vnet({ flags: 1, csumStart: 5000, csumOffset: 16 }), udp4(randomBytes(10))]),
          /csum/,
        ],
        [
          "csum field past the end",
          Buffer.concat([vnet({ flags: 1, csumStart: 20, csumOffset: 30 }), udp4(randomBytes(10))]),
          /csum/,
        ],
        ["headers cut", good.subarray(0, 10 + 30), /headers/],
      ];
      for (const [name, read, why] of cases) assert.throws(() => offloadSplit(read), why, name);
    });
  });

  describe("offload coalesce (TUN writes)", () => {
    test("in-order segments of one flow become one GSO write that splits back into the same packets", () => {
      const segs = stream([1348, 1348, 1348, 1348, 700]);
      segs[4] = tcp({ seq: seqOf(segs[4]!), id: 504, flags: ACK | PSH, payload: payloadOf(segs[4]!) });
      const writes = offloadCoalesce(segs);
      assert.equal(writes.length, 1);
      assert.equal(writes[0]!.count, 5);
      const w = writes[0]!.data;
      assert.deepEqual(readVnet(w), {
        flags: 1,
        gsoType: 1,
        hdrLen: 52,
        gsoSize: 1348,
        csumStart: 20,
        csumOffset: 16,
      });
      const ip = w.subarray(10);
      assert.equal(ip.readUInt16BE(2), ip.length);
      assert.equal(csum(ip, 0, 20), 0, "IPv4 header checksum");
      assert.equal(
        ip.readUInt16BE(36),
        sum16(Buffer.alloc(0), 0, 0, pseudo(ip, ip.length - 20)),
        "pseudo sum",
      );
      assert.equal(flagsOf(ip), ACK | PSH, "PSH of the last segment");
      assert.ok(payloadOf(ip).equals(Buffer.concat(segs.map(payloadOf))));
      // the kernel's segmentation of it (the same rules as the reader's split) reproduces the input exactly
      const back = offloadSplit(w);
      assert.equal(back.length, 5);
      back.forEach((b, i) => assert.ok(b.equals(segs[i]!), `segment ${i} byte for byte`));
    });

    test("IPv6 segments merge too", () => {
      const segs = stream([1328, 1328, 1328], { v6: true });
      const writes = offloadCoalesce(segs);
      assert.equal(writes.length, 1);
      assert.equal(readVnet(writes[0]!.data).gsoType, 4);
      offloadSplit(writes[0]!.data).forEach((b, i) => assert.ok(b.equals(segs[i]!)));
    });

    test("IPv6 with an extension header is never merged and is a barrier: no flow crosses it", () => {
      const a = stream([1000, 1000, 1000, 1000], { v6: true });
      const b = stream([1000, 1000], { v6: true, sport: 2222 }, 5_000_000);
      const ext1 = withHopByHop(stream([1000], { v6: true, sport: 3333 }, 9_000_000)[0]!);
      const ext2 = withHopByHop(stream([1000], { v6: true, sport: 3333 }, 9_001_000)[0]!);
      const input = [a[0]!, b[0]!, a[1]!, ext1, ext2, a[2]!, b[1]!, a[3]!];
      const writes = offloadCoalesce(input);
      assert.deepEqual(
        writes.map((w) => w.count),
        [2, 1, 1, 1, 2, 1],
        "a0+a1, b0 | ext1 | ext2 | a2+a3, b1: nothing merged across the extension headers",
      );
      assert.ok(writes[2]!.data.subarray(10).equals(ext1), "alone and unchanged");
      assert.ok(
        writes[3]!.data.subarray(10).equals(ext2),
        "consecutive extension-header segments are not merged",
      );
      const out = writes.flatMap((w) => (w.count > 1 ? offloadSplit(w.data) : [w.data.subarray(10)]));
      assert.deepEqual(
        out.map((p) => input.findIndex((q) => q.equals(p))),
        [0, 2, 1, 3, 4, 5, 7, 6],
      );
    });

    test("PSH ends a group; FIN, SYN, pure ACKs, other protocols and IP options go alone, unchanged", () => {
      const a = stream([1000, 1000, 1000, 1000, 1000, 1000]);
      a[1] = tcp({ seq: seqOf(a[1]!), id: 501, flags: ACK | PSH, payload: payloadOf(a[1]!) });
      const fin = tcp({ seq: seqOf(a[5]!) + 1000, id: 506, flags: ACK | FIN, payload: Buffer.alloc(0) });
      const pureAck = tcp({ sport: 1, seq: 5, payload: Buffer.alloc(0) });
      const syn = tcp({ sport: 2, seq: 5, flags: SYN, payload: Buffer.alloc(0) });
      const u = udp4(randomBytes(50));
      const withOpts = tcp({
        sport: 3,
        seq: 1,
        ipOptions: Buffer.from([1, 1, 1, 0]),
        payload: randomBytes(100),
      });
      const withOpts2 = tcp({
        sport: 3,
        seq: 101,
        id: 1001,
        ipOptions: Buffer.from([1, 1, 1, 0]),
        payload: randomBytes(100),
      });
      const input = [a[0]!, a[1]!, u, a[2]!, a[3]!, pureAck, syn, a[4]!, a[5]!, fin, withOpts, withOpts2];
      const writes = offloadCoalesce(input);
      assert.deepEqual(
        writes.map((w) => w.count),
        [2, 1, 4, 1, 1, 1, 1, 1],
      );
      const alone = writes.filter((w) => w.count === 1).map((w) => w.data);
      for (const w of alone) assert.ok(w.subarray(0, 10).equals(Buffer.alloc(10)), "zero virtio_net_hdr");
      assert.deepEqual(
        alone.map((w) => w.subarray(10)),
        [u, pureAck, syn, fin, withOpts, withOpts2],
      );
      assert.ok(Buffer.concat(offloadSplit(writes[2]!.data)).equals(Buffer.concat(a.slice(2))));
    });

    test("different flows are never merged; each flow keeps its order", () => {
      const a = stream([1000, 1000, 1000], { sport: 1111 });
      const b = stream([1000, 1000, 1000], { sport: 2222 });
      const c = stream([1000, 1000], { dst: "198.18.2.3", sport: 1111 });
      const writes = offloadCoalesce([a[0]!, b[0]!, c[0]!, a[1]!, b[1]!, c[1]!, a[2]!, b[2]!]);
      assert.deepEqual(
        writes.map((w) => w.count),
        [3, 3, 2],
      );
      const split = writes.map((w) => offloadSplit(w.data));
      assert.deepEqual(split[0], a);
      assert.deepEqual(split[1], b);
      assert.deepEqual(split[2], c);
    });

    test("gaps, reordering, other ACKs, windows, TTLs, IDs, larger segments and bad checksums stop a merge", () => {
      const base = stream([1000, 1000, 1000, 1000]);
      const variants: [string, Buffer[], number[]][] = [
        ["gap", [base[0]!, base[2]!], [1, 1]],
        ["reordered", [base[1]!, base[0]!, base[2]!], [1, 1, 1]],
        ["duplicate", [base[0]!, base[0]!], [1, 1]],
        [
          "other ack",
          [base[0]!, tcp({ seq: seqOf(base[1]!), id: 501, ack: 778, payload: payloadOf(base[1]!) })],
          [1, 1],
        ],
        [
          "other window",
          [base[0]!, tcp({ seq: seqOf(base[1]!), id: 501, window: 502, payload: payloadOf(base[1]!) })],
          [1, 1],
        ],
        [
          "other TTL",
          [base[0]!, tcp({ seq: seqOf(base[1]!), id: 501, ttl: 63, payload: payloadOf(base[1]!) })],
          [1, 1],
        ],
        [
          "other TOS",
          [base[0]!, tcp({ seq: seqOf(base[1]!), id: 501, tos: 4, payload: payloadOf(base[1]!) })],
          [1, 1],
        ],
        [
          "IDs not consecutive",
          [base[0]!, tcp({ seq: seqOf(base[1]!), id: 9, payload: payloadOf(base[1]!) })],
          [1, 1],
        ],
        [
          "other TCP options",
          [
            base[0]!,
            tcp({
              seq: seqOf(base[1]!),
              id: 501,
              tcpOptions: Buffer.from([1, 1, 8, 10, 0, 0, 0x12, 0x35, 0, 0, 0x56, 0x78]),
              payload: payloadOf(base[1]!),
            }),
          ],
          [1, 1],
        ],
        ["larger after smaller", stream([500, 1000]), [1, 1]],
        ["short then more", stream([1000, 500, 500]), [2, 1]],
      ];
      for (const [name, input, counts] of variants) {
        const writes = offloadCoalesce(input);
        assert.deepEqual(
          writes.map((w) => w.count),
          counts,
          name,
        );
        assert.deepEqual(
          writes.flatMap((w) => offloadSplit(w.data)),
          input,
          `${name}: packets unchanged, in order`,
        );
      }
      const bad = Buffer.from(base[1]!);
      bad[bad.length - 1]! ^= 0xff; // payload corrupted: TCP checksum wrong
      const writes = offloadCoalesce([base[0]!, bad, base[2]!, base[3]!]);
      assert.deepEqual(
        writes.map((w) => w.count),
        [1, 1, 2],
      );
      assert.ok(writes[1]!.data.subarray(10).equals(bad), "a bad packet is passed as it is, not repaired");
      const badIp = Buffer.from(base[1]!);
      badIp[8] = 1; // TTL changed without fixing the header checksum
      assert.deepEqual(
        offloadCoalesce([base[0]!, badIp]).map((w) => w.count),
        [1, 1],
      );
    });

    test("a super-packet never exceeds 64 KiB", () => {
      const segs = stream(Array<number>(120).fill(1348));
      const writes = offloadCoalesce(segs);
      assert.ok(writes.length >= 3);
      for (const w of writes) assert.ok(w.data.length - 10 <= 65535);
      assert.deepEqual(
        writes.flatMap((w) => offloadSplit(w.data)),
        segs,
      );
    });
  });

  describe("offload fuzz", () => {
    // A fixed-seed generator, so a failure repeats.
    let x = 0x9e3779b9;
    const rnd = (n: number): number => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) % n;
    };
    const mutate = (b: Buffer): Buffer => {
      const m = Buffer.from(b);
      for (let k = rnd(4) + 1; k > 0; k--) m[rnd(m.length)] = rnd(256);
      return rnd(8) === 0 ? m.subarray(0, rnd(m.length + 1)) : m;
    };

    test("split: random virtio headers and mangled packets are dropped or split, never crash", () => {
      let dropped = 0;
      let split = 0;
      for (let i = 0; i < 3000; i++) {
        const p =
          rnd(2) === 0
            ? tcp({ v6: rnd(3) === 0, seq: rnd(1 << 30), payload: randomBytes(rnd(4000)) })
            : randomBytes(rnd(200));
        const h = vnet({
          flags: rnd(4),
          gsoType: [0, 1, 3, 4, 5, 0x81, rnd(256)][rnd(7)],
          hdrLen: rnd(200),
          gsoSize: [0, 1, 7, 536, 1348, 65535, rnd(65536)][rnd(7)]!,
          csumStart: [0, 20, 40, rnd(65536)][rnd(4)]!,
          csumOffset: [6, 16, rnd(65536)][rnd(3)]!,
        });
        const read = rnd(3) === 0 ? mutate(Buffer.concat([h, p])) : Buffer.concat([h, p]);
        try {
          const segs = offloadSplit(read);
          split++;
          for (const s of segs) assert.ok(s.length > 0 && s.length <= 65535);
        } catch (e) {
          assert.match((e as Error).message, /^dropped: /);
          dropped++;
        }
      }
      assert.ok(dropped > 0 && split > 0, `dropped ${dropped}, split ${split}`);
    });

    test("coalesce: any batch comes back as the same packets, each flow in order", () => {
      for (let round = 0; round < 300; round++) {
        const flows = [1, 2, 3].map((f) =>
          stream(
            Array.from({ length: 6 }, () => [1348, 1348, 1348, 200][rnd(4)]!),
            { sport: f, v6: f === 3 },
          ),
        );
        const input: Buffer[] = [];
        const cursors = [0, 0, 0];
        for (let k = 0; k < 24; k++) {
          const f = rnd(3);
          const next = flows[f]![cursors[f]!];
          if (next === undefined) continue;
          cursors[f]!++;
          const r = rnd(10);
          if (r === 0) input.push(mutate(next));
          else if (r === 1) input.push(randomBytes(rnd(100)));
          else input.push(next);
        }
        const writes = offloadCoalesce(input);
        assert.equal(
          writes.reduce((s, w) => s + w.count, 0),
          input.length,
        );
        // every merged write splits back into its input packets; single writes carry their packet unchanged
        const out = writes.flatMap((w) => (w.count > 1 ? offloadSplit(w.data) : [w.data.subarray(10)]));
        const key = (b: Buffer) => createHash("sha256").update(b).digest("hex");
        assert.deepEqual(out.map(key).sort(), input.map(key).sort(), `round ${round}: same packets`);
        // within a flow (same ports), the order of the input
        for (const sport of [1, 2, 3]) {
          const of = (list: Buffer[]) =>
            list
              .filter(
                (b) =>
                  b.length >= 60 &&
                  (b[0]! >> 4 === 4 || b[0]! >> 4 === 6) &&
                  b.readUInt16BE(iphl(b)) === sport,
              )
              .map(key);
          assert.deepEqual(of(out), of(input), `round ${round}: flow ${sport} in order`);
        }
      }
    });
  });

  describe("offloaded TUNs with the kernel", () => {
    let nsA: Netns;
    let nsB: Netns;
    let proc: NsProcess;
    const self = fileURLToPath(import.meta.url);
    const tool = fileURLToPath(new URL("../helpers/tcp-tool.ts", import.meta.url));

    before(async () => {
      nsA = await Netns.create("offa");
      nsB = await Netns.create("offb");
      proc = nsA.runTs(self, { role: "bridge" });
      await proc.ready();
      const r = await proc.call<{ offload: boolean[] }>("open", { nsB: nsB.name, offload: true });
      assert.deepEqual(r.offload, [true, true]);
    });

    after(async () => {
      await proc?.close().catch(() => {});
      await nsA?.delete();
      await nsB?.delete();
    });

    test("a 20 MB TCP transfer through two bridged offloaded TUNs arrives whole, in super-packets", async () => {
      const sink = nsB.spawn(process.execPath, ["--import", "tsx", tool, "sink", "100.64.7.2", "7000"]);
      await waitLine(sink, (o) => o.listening === true);
      const src = await nsA.exec(
        process.execPath,
        ["--import", "tsx", tool, "source", "100.64.7.2", "7000", String(20e6)],
        {
          timeoutMs: 60_000,
        },
      );
      const sent = JSON.parse(src.stdout.trim().split("\n").pop()!) as { bytes: number; sha256: string };
      const got = await waitLine<{ bytes: number; sha256: string }>(
        sink,
        (o) => typeof o.sha256 === "string",
      );
      assert.equal(got.bytes, 20e6);
      assert.equal(got.sha256, sent.sha256);
      const st = await proc.call<{ a: TunStats; b: TunStats }>("stats");
      // the sender's kernel handed over super-packets (fewer reads than packets); the writer merged them again
      assert.ok(st.a.rxReads < st.a.rxPackets / 4, `reads ${st.a.rxReads}, packets ${st.a.rxPackets}`);
      assert.ok(st.b.txWrites < st.b.txPackets / 4, `writes ${st.b.txWrites}, packets ${st.b.txPackets}`);
      assert.equal(st.a.rxDropped, 0);
      assert.equal(st.b.txErrors + st.b.txDropped, 0, st.b.lastError);
    });
  });
}
