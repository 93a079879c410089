/**
 * Batched UDP primitive (native/src/udp.cc through src/native/io.ts) on loopback: sendmmsg/recvmmsg batches, UDP
 * GSO runs and GRO messages, exact delivery, peers, IPv6, argument and closed-socket errors. The exit-by-itself check and the GSO
 * fallback (loopback MTU lowered) run in namespaces.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { UdpSocket, type DatagramBatch, type UdpStats } from "../../src/native/io.js";
import { Netns, nsChildRole } from "../helpers/netns.js";

/** Collects datagrams until `want` arrived or `ms` passed. */
function collect(sock: UdpSocket): {
  batches: DatagramBatch[];
  until(want: number, ms?: number): Promise<number>;
} {
  const batches: DatagramBatch[] = [];
  let count = 0;
  let waiter: { want: number; res: (n: number) => void } | undefined;
  sock.onDatagrams((b) => {
    batches.push(b);
    count += b.data.length;
    if (waiter && count >= waiter.want) waiter.res(count);
  });
  return {
    batches,
    until(want, ms = 5000) {
      if (count >= want) return Promise.resolve(count);
      return new Promise((res) => {
        const t = setTimeout(() => res(count), ms);
        waiter = {
          want,
          res: (n) => {
            clearTimeout(t);
            res(n);
          },
        };
      });
    },
  };
}

function payload(i: number, tag = 0): Buffer {
  const b = Buffer.alloc(6 + ((i * 131) % 1450));
  b.writeUInt32BE(i, 0);
  b.writeUInt16BE(tag, 4);
  for (let k = 6; k < b.length; k++) b[k] = (i * 7 + k) & 0xff;
  return b;
}

/** Child: bind, read one datagram from itself, close — the process must then exit by itself. */
async function exitChild(mode: string): Promise<void> {
  const s = UdpSocket.bind("127.0.0.1", 0);
  s.onDatagrams(() => s.close());
  if (mode === "unref") s.unref();
  else s.send(Buffer.from("bye"), `127.0.0.1:${s.port}`);
}

/** One Buffer cut into adjacent views: `count` of `size` bytes and a shorter last one (a UDP GSO run). */
function run(count: number, size: number, last: number): Buffer[] {
  const all = Buffer.alloc(count * size + last);
  for (let k = 0; k < all.length; k++) all[k] = (k * 13 + (k >> 8)) & 0xff;
  const views: Buffer[] = [];
  for (let i = 0; i <= count; i++) views.push(all.subarray(i * size, Math.min(all.length, (i + 1) * size)));
  return views;
}

/** Child: loopback MTU is 1280 here, so a GSO run of 1400-byte datagrams is refused and must go one by one. */
async function gsoFallbackChild(): Promise<void> {
  const rx = UdpSocket.bind("127.0.0.1", 0);
  const tx = UdpSocket.bind("127.0.0.1", 0);
  const c = collect(rx);
  const views = run(3, 1400, 100);
  const sent = tx.sendMany(views, `127.0.0.1:${rx.port}`);
  const got = await c.until(views.length);
  const same = c.batches.flatMap((b) => b.data).every((d, i) => d.equals(views[i]!));
  process.stdout.write(JSON.stringify({ sent, got, same, stats: tx.stats() }) + "\n");
  rx.close();
  tx.close();
}

const role = nsChildRole();
if (role === "exit-close" || role === "exit-unref") await exitChild(role.slice(5));
else if (role === "gso-fallback") await gsoFallbackChild();
else {
  describe("UdpSocket on loopback", () => {
    test("10,000 datagrams of varying sizes by sendMany: each received once, intact, in batches, peer right", async (t) => {
      const rx = UdpSocket.bind("127.0.0.1", 0, { rcvbuf: 8 << 20 });
      const tx = UdpSocket.bind("127.0.0.1", 0, { sndbuf: 4 << 20 });
      t.after(() => {
        rx.close();
        tx.close();
      });
      assert.ok(rx.rcvbuf >= 8 << 20, `effective rcvbuf ${rx.rcvbuf}`);
      assert.ok(tx.sndbuf >= 4 << 20, `effective sndbuf ${tx.sndbuf}`);
      const c = collect(rx);
      const N = 10_000;
      const CHUNK = 1000; // flow control: the receiver drains between chunks (same thread)
      let sent = 0;
      for (let start = 0; start < N; start += CHUNK) {
        const chunk = Array.from({ length: CHUNK }, (_, k) => payload(start + k));
        sent += tx.sendMany(chunk, `127.0.0.1:${rx.port}`);
        await c.until(start + CHUNK);
      }
      assert.equal(sent, N);
      assert.equal(await c.until(N), N);
      const seen = new Uint8Array(N);
      const me = `127.0.0.1:${tx.port}`;
      for (const b of c.batches) {
        assert.equal(b.data.length, b.peers.length);
        for (let k = 0; k < b.data.length; k++) {
          const d = b.data[k]!;
          const i = d.readUInt32BE(0);
          assert.equal(seen[i], 0, `datagram ${i} twice`);
          seen[i] = 1;
          assert.ok(d.equals(payload(i)), `datagram ${i} altered`);
          assert.equal(b.peers[k], me);
        }
      }
      const maxBatch = Math.max(...c.batches.map((b) => b.data.length));
      assert.ok(maxBatch > 1 && maxBatch <= 64, `largest batch ${maxBatch}`);
      const rs = rx.stats();
      const ts = tx.stats();
      assert.equal(rs.rxPackets, N);
      assert.equal(rs.rxBatches, c.batches.length);
      assert.equal(ts.txPackets, N);
      assert.equal(ts.txDropped + ts.txErrors, 0);
      assert.equal(rs.rxBytes, ts.txBytes);
    });

    test("peers: several senders, and sendMany with a peer per datagram", async (t) => {
      const rx1 = UdpSocket.bind("127.0.0.1", 0);
      const rx2 = UdpSocket.bind("127.0.0.1", 0);
      const txs = [0, 1, 2].map(() => UdpSocket.bind("127.0.0.1", 0));
      t.after(() => [rx1, rx2, ...txs].forEach((s) => s.close()));
      const c1 = collect(rx1);
      const c2 = collect(rx2);
      for (const [tag, tx] of txs.entries()) {
        const d = Array.from({ length: 20 }, (_, i) => payload(i, tag));
        const peers = d.map((_, i) => `127.0.0.1:${(i % 2 ? rx2 : rx1).port}`);
        assert.equal(tx.sendMany(d, peers), 20);
      }
      assert.equal(await c1.until(30), 30);
      assert.equal(await c2.until(30), 30);
      for (const [c, parity] of [
        [c1, 0],
        [c2, 1],
      ] as const) {
        for (const b of c.batches) {
          b.data.forEach((d, k) => {
            const tag = d.readUInt16BE(4);
            assert.equal(d.readUInt32BE(0) % 2, parity);
            assert.equal(b.peers[k], `127.0.0.1:${txs[tag]!.port}`);
          });
        }
      }
    });

    test("IPv6 on ::1, and a dual-stack socket shows IPv4 peers as IPv4", async (t) => {
      const rx = UdpSocket.bind("::1", 0);
      const tx = UdpSocket.bind("[::1]", 0);
      const dual = UdpSocket.bind("::", 0);
      const v4 = UdpSocket.bind("127.0.0.1", 0);
      t.after(() => [rx, tx, dual, v4].forEach((s) => s.close()));
      assert.equal(rx.family, 6);
      assert.equal(rx.address, "::1");
      const c = collect(rx);
      assert.equal(
        tx.sendMany([Buffer.from("a"), Buffer.from("bb"), Buffer.alloc(0)], `[::1]:${rx.port}`),
        3,
      );
      assert.equal(await c.until(3), 3);
      const all = c.batches.flatMap((b) => b.data.map((d, k) => [d.toString(), b.peers[k]]));
      assert.deepEqual(all, [
        ["a", `[::1]:${tx.port}`],
        ["bb", `[::1]:${tx.port}`],
        ["", `[::1]:${tx.port}`],
      ]);
      const cd = collect(dual);
      const c4 = collect(v4);
      assert.equal(v4.send(Buffer.from("to-dual"), `127.0.0.1:${dual.port}`), true);
      assert.equal(await cd.until(1), 1);
      assert.deepEqual(cd.batches[0]!.peers, [`127.0.0.1:${v4.port}`]);
      assert.equal(dual.send(Buffer.from("back"), cd.batches[0]!.peers[0]!), true); // IPv4 peer from an IPv6 socket
      assert.equal(await c4.until(1), 1);
      assert.deepEqual(c4.batches[0]!.peers, [`127.0.0.1:${dual.port}`]);
    });

    test("sending to a port nobody listens on, closed sockets, closing twice", async (t) => {
      const a = UdpSocket.bind("127.0.0.1", 0);
      const b = UdpSocket.bind("127.0.0.1", 0);
      t.after(() => a.close());
      const gone = b.port;
      b.close();
      b.close(); // harmless
      assert.equal(b.closed, true);
      assert.throws(
        () => b.send(Buffer.from("x"), `127.0.0.1:${a.port}`),
        /UdpSocket\.send: the socket is closed/,
      );
      assert.throws(() => b.sendMany([Buffer.from("x")], `127.0.0.1:${a.port}`), /the socket is closed/);
      assert.throws(() => b.onDatagrams(() => {}), /the socket is closed/);
      assert.throws(() => b.pause(), /the socket is closed/);
      // the kernel answers with ICMP port unreachable; an unconnected socket is not disturbed by it
      const c = collect(a);
      assert.equal(a.send(Buffer.from("nobody"), `127.0.0.1:${gone}`), true);
      assert.equal(a.sendMany([Buffer.from("x"), Buffer.from("y")], `127.0.0.1:${gone}`), 2);
      assert.equal(a.send(Buffer.from("self"), `127.0.0.1:${a.port}`), true);
      assert.equal(await c.until(1), 1);
      assert.equal(c.batches[0]!.data[0]!.toString(), "self");
    });

    test("refused datagrams are counted, not thrown; oversized ones are dropped on receive", async (t) => {
      const rx = UdpSocket.bind("127.0.0.1", 0, { maxDatagram: 100 });
      const tx = UdpSocket.bind("127.0.0.1", 0);
      t.after(() => [rx, tx].forEach((s) => s.close()));
      const c = collect(rx);
      const to = `127.0.0.1:${rx.port}`;
      // 70,000 bytes cannot be one UDP datagram: EMSGSIZE for that one, the others go
      assert.equal(tx.sendMany([Buffer.from("1"), Buffer.alloc(70_000), Buffer.from("3")], to), 2);
      assert.equal(tx.stats().txErrors, 1);
      assert.match(tx.stats().lastError ?? "", /^sendmmsg: .+ \(EMSGSIZE\)$/);
      assert.equal(tx.send(Buffer.alloc(70_000), to), false);
      assert.equal(tx.stats().txErrors, 2);
      assert.equal(tx.send(Buffer.alloc(200), to), true); // larger than rx's maxDatagram
      assert.equal(tx.send(Buffer.from("4"), to), true);
      assert.equal(await c.until(3), 3);
      assert.deepEqual(
        c.batches.flatMap((b) => b.data.map(String)),
        ["1", "3", "4"],
      );
      assert.equal(rx.stats().rxTruncated, 1);
    });

    test("pause and resume", async (t) => {
      const rx = UdpSocket.bind("127.0.0.1", 0);
      const tx = UdpSocket.bind("127.0.0.1", 0);
      t.after(() => [rx, tx].forEach((s) => s.close()));
      const c = collect(rx);
      rx.pause();
      tx.sendMany([Buffer.from("p1"), Buffer.from("p2")], `127.0.0.1:${rx.port}`);
      assert.equal(await c.until(1, 200), 0);
      rx.resume();
      assert.equal(await c.until(2), 2);
    });

    test("bad arguments throw TypeError/RangeError with a clear message", (t) => {
      const s = UdpSocket.bind("127.0.0.1", 0);
      t.after(() => s.close());
      assert.throws(() => UdpSocket.bind("localhost", 0), /not a numeric IPv4 or IPv6 address/);
      assert.throws(() => UdpSocket.bind("127.0.0.1", 70000), RangeError);
      assert.throws(() => UdpSocket.bind("127.0.0.1", 1.5), RangeError);
      assert.throws(() => UdpSocket.bind("127.0.0.1", 0, { batch: 5000 }), RangeError);
      assert.throws(() => UdpSocket.bind(5 as unknown as string, 0), TypeError);
      assert.throws(
        () => UdpSocket.bind("192.0.2.1", 0),
        (e: NodeJS.ErrnoException) =>
          e.syscall === "bind" && e.code === "EADDRNOTAVAIL" && /^bind: /.test(e.message),
      );
      const to = `127.0.0.1:${s.port}`;
      assert.throws(() => s.send("text" as unknown as Buffer, to), TypeError);
      for (const peer of [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "host:53",
        "[::1]:53",
        "::1:53",
        "",
      ]) {
        assert.throws(() => s.send(Buffer.from("x"), peer), /bad peer/, peer);
      }
      assert.throws(() => s.send(Buffer.from("x"), 53 as unknown as string), /peer must be a string/);
      assert.throws(() => s.sendMany([Buffer.from("x")], [to, to]), /1 datagrams but 2 peers/);
      assert.throws(() => s.sendMany([Buffer.from("x"), "y" as unknown as Buffer], to), /datagrams\[1\]/);
      assert.throws(() => s.sendMany([Buffer.from("x"), Buffer.from("y")], [to, "nope"]), /bad peer "nope"/);
      assert.throws(() => s.onDatagrams(5 as unknown as () => void), TypeError);
      assert.equal(s.stats().txPackets, 0); // nothing went out from a call that threw
    });

    test("adjacent equal-sized datagrams go as UDP GSO and arrive one by one, byte for byte, in order", async (t) => {
      const rx = UdpSocket.bind("127.0.0.1", 0);
      const tx = UdpSocket.bind("127.0.0.1", 0);
      t.after(() => [rx, tx].forEach((s) => s.close()));
      const c = collect(rx);
      const views = [...run(40, 1000, 300), Buffer.from("apart")]; // the last is not adjacent: sent alone
      assert.equal(tx.sendMany(views, `127.0.0.1:${rx.port}`), views.length);
      assert.equal(await c.until(views.length), views.length);
      const got = c.batches.flatMap((b) => b.data);
      got.forEach((d, i) => assert.ok(d.equals(views[i]!), `datagram ${i}`));
      const st = tx.stats();
      assert.ok(st.txGsoMessages >= 1, JSON.stringify(st));
      assert.equal(st.txPackets, views.length);
      assert.equal(st.txGsoRefused, 0);
    });

    test("UDP GRO: a GSO run arrives as one message, split back into the same datagrams; off with gro: false", async (t) => {
      const rx = UdpSocket.bind("127.0.0.1", 0, { batch: 4 });
      const plain = UdpSocket.bind("127.0.0.1", 0, { gro: false });
      const tx = UdpSocket.bind("127.0.0.1", 0);
      t.after(() => [rx, plain, tx].forEach((s) => s.close()));
      assert.equal(rx.stats().gro, true);
      assert.equal(plain.stats().gro, false);
      const c = collect(rx);
      const p = collect(plain);
      // Three GSO runs (the last datagram of each shorter) and single datagrams between them.
      const views = [
        ...run(40, 1000, 300),
        Buffer.from("apart"),
        ...run(63, 17, 5),
        Buffer.alloc(0),
        ...run(10, 1400, 1400),
      ];
      assert.equal(tx.sendMany(views, `127.0.0.1:${rx.port}`), views.length);
      assert.equal(tx.sendMany(views, `127.0.0.1:${plain.port}`), views.length);
      assert.equal(await c.until(views.length), views.length);
      assert.equal(await p.until(views.length), views.length);
      for (const [name, got] of [
        ["gro", c.batches.flatMap((b) => b.data)],
        ["plain", p.batches.flatMap((b) => b.data)],
      ] as const) {
        assert.equal(got.length, views.length, name);
        got.forEach((d, i) => assert.ok(d.equals(views[i]!), `${name} datagram ${i}`));
      }
      // More datagrams than the batch of 4 in one callback: the kernel merged them.
      assert.ok(Math.max(...c.batches.map((b) => b.data.length)) > 4);
      const st = rx.stats();
      assert.ok(st.rxGroMessages >= 3, JSON.stringify(st));
      assert.equal(st.rxPackets, views.length);
      assert.equal(st.rxTruncated, 0);
      assert.equal(plain.stats().rxGroMessages, 0);
    });

    test("a GSO run the kernel refuses (above the MTU) is sent datagram by datagram", async (t) => {
      const ns = await Netns.create("udpgso");
      t.after(() => ns.delete());
      await ns.ip("link", "set", "lo", "mtu", "1280");
      const res = await ns.runTs(fileURLToPath(import.meta.url), { role: "gso-fallback" }).wait(20_000);
      assert.equal(res.code, 0, res.stderr);
      const r = JSON.parse(res.stdout.trim()) as {
        sent: number;
        got: number;
        same: boolean;
        stats: UdpStats;
      };
      assert.deepEqual([r.sent, r.got, r.same], [4, 4, true]);
      assert.equal(r.stats.txGsoRefused, 1);
      assert.equal(r.stats.txErrors, 0);
    });

    test("the process exits by itself after close(), and with unref() while open", async (t) => {
      const ns = await Netns.create("udp");
      t.after(() => ns.delete());
      const self = fileURLToPath(import.meta.url);
      for (const mode of ["exit-close", "exit-unref"]) {
        const res = await ns.runTs(self, { role: mode }).wait(20_000);
        assert.equal(res.code, 0, `${mode}: ${res.stderr}`);
      }
    });
  });
}
