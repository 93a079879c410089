/**
 * IPv6 in the runtime without a network: the SDK over lwIP's own loopback with a dual-stack, an IPv4-only and an
 * IPv6-only lease (a stand-in tunnel hands them out and captures what lwIP sends into it).
 *  - lwIP: the leased IPv6 address, TCP and UDP over IPv6, IPv6 MSS = MTU - 60, nothing link-local or multicast
 *    sent, input other than TCP/UDP/ICMPv6 echo and errors to the leased address dropped (ND, RA, other
 *    destinations);
 *  - net: address formats and families as Node gives them (dual-stack listener: IPv4 peers as ::ffff:a.b.c.d),
 *    Happy Eyeballs (`autoSelectFamily`), ENETUNREACH for a family the lease lacks;
 *  - dns: AAAA through the lease's (IPv6) DNS server, family 0/4/6, `all`, order;
 *  - dgram: udp6, dual-stack and IPv6-only sockets.
 * The namespace end-to-end test (unmodified app, gateway, IPv6-only server) is test/runtime/ipv6-lab.test.ts.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { LwipStack } from "../../src/native/lwip.js";
import { createSocket, type RemoteInfo } from "../../src/runtime/dgram.js";
import { clearDnsCache, lookupAll, lookupPromise } from "../../src/runtime/dns.js";
import { createConnection, createServer, type Server, type Socket } from "../../src/runtime/net.js";
import { ShieldedStack, type DualLease } from "../../src/runtime/stack.js";
import { answer, ipv6Bytes, type Zone } from "../helpers/dns-zone.js";
import {
  LeaseOnlyTunnel,
  LOOPBACK_ADDRESS as ME4,
  LOOPBACK_ADDRESS6 as ME6,
} from "../helpers/loopback-tunnel.js";

const FAR6 = "2001:2:ff::99"; // swallowed by the stand-in tunnel: connections to it never answer
const ZONE: Zone = {
  "dual.test": { A: [ME4], AAAA: [ME6] },
  "v6only.test": { AAAA: [ME6] },
  "v4only.test": { A: [ME4] },
  "eyeballs.test": { A: [ME4], AAAA: [FAR6] },
};

/** A DNS server on the shielded stack itself (an SDK udp6 socket on the lease's address, port 53). */
async function dnsServer(
  bind: string,
  type: "udp4" | "udp6",
): Promise<{ queries: string[]; close: () => void }> {
  const queries: string[] = [];
  const s = createSocket(type);
  s.on("message", (m: Buffer, r: RemoteInfo) => {
    const a = answer(m, ZONE);
    if (!a) return;
    queries.push(`${a.type === 28 ? "AAAA" : "A"} ${a.name} from ${r.address}`);
    s.send(a.reply, r.port, r.address);
  });
  s.bind(53, bind);
  await once(s, "listening");
  return { queries, close: () => s.close() };
}

async function echoServer(host?: string): Promise<{ server: Server; port: number; peers: string[] }> {
  const peers: string[] = [];
  const server = createServer((c) => {
    peers.push(`${c.remoteAddress} ${c.remoteFamily} local ${c.localAddress}`);
    c.on("error", () => {}); // ends with the stack at the end of a suite
    c.pipe(c);
  });
  if (host) server.listen(0, host);
  else server.listen(0);
  await once(server, "listening");
  return { server, port: (server.address() as AddressInfo).port, peers };
}

function echo(sock: Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = "";
    sock.setEncoding("utf8");
    sock.on("data", (d: string) => {
      got += d;
      if (got.length >= text.length) {
        sock.end();
        resolve(got);
      }
    });
    sock.on("error", reject);
    sock.write(text);
  });
}

const connectError = (s: Socket): Promise<NodeJS.ErrnoException> =>
  new Promise((resolve, reject) => {
    s.on("connect", () => reject(new Error("connected")));
    s.on("error", resolve);
  });

/** The 16-bit ones' complement checksum of an ICMPv6 message with its pseudo-header. */
function icmp6Checksum(src: Buffer, dst: Buffer, msg: Buffer): number {
  const len = Buffer.alloc(8);
  len.writeUInt32BE(msg.length, 0);
  len[7] = 58;
  const all = Buffer.concat([src, dst, len, msg, Buffer.alloc(msg.length % 2)]);
  let sum = 0;
  for (let i = 0; i < all.length; i += 2) sum += all.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** An IPv6 packet carrying an ICMPv6 message of `type` (with a 4-byte body after the header), src → dst. */
function icmp6(src: string, dst: string, type: number, body = Buffer.alloc(4)): Buffer {
  const msg = Buffer.concat([Buffer.from([type, 0, 0, 0]), body]);
  const s = ipv6Bytes(src);
  const d = ipv6Bytes(dst);
  msg.writeUInt16BE(icmp6Checksum(s, d, msg), 2);
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(msg.length, 4);
  h[6] = 58;
  h[7] = 255;
  s.copy(h, 8);
  d.copy(h, 24);
  return Buffer.concat([h, msg]);
}

const linkLocalOrMulticast = (b: Buffer): boolean =>
  b[0] === 0xff || (b[0] === 0xfe && (b[1]! & 0xc0) === 0x80);

async function start(lease: Partial<DualLease>): Promise<{ stack: ShieldedStack; tunnel: LeaseOnlyTunnel }> {
  const tunnel = new LeaseOnlyTunnel(lease);
  const stack = ShieldedStack.start({ tunnelClient: tunnel });
  await stack.ready(5000);
  clearDnsCache();
  return { stack, tunnel };
}

const stats = (s: ShieldedStack) => s.stack.stats() as Record<string, number>;

test("lwIP refuses IPv6 configurations it cannot serve, with the key named", () => {
  assert.throws(() => LwipStack.create({ mtu: 1400 }), /cfg needs an address \(IPv4\) or address6 \(IPv6\)/);
  assert.throws(
    () => LwipStack.create({ address6: "fe80::2", prefix6: 64, mtu: 1400 }),
    /cfg\.address6 must be a global or unique-local unicast IPv6 address/,
  );
  assert.throws(() => LwipStack.create({ address6: "ff02::1", prefix6: 64, mtu: 1400 }), /cfg\.address6/);
  assert.throws(() => LwipStack.create({ address6: "fd64::%eth0", prefix6: 64, mtu: 1400 }), /cfg\.address6/);
  assert.throws(
    () => LwipStack.create({ address6: ME6, prefix6: 64, mtu: 1000 }),
    /cfg\.mtu must be an integer from 1280/,
  );
  assert.throws(() => LwipStack.create({ address6: ME6, prefix6: 129, mtu: 1400 }), /cfg\.prefix6/);
});

describe("dual-stack lease", { concurrency: false }, () => {
  let stack: ShieldedStack;
  let tunnel: LeaseOnlyTunnel;
  let dns: Awaited<ReturnType<typeof dnsServer>>;
  const servers: Server[] = [];

  before(async () => {
    ({ stack, tunnel } = await start({ address6: ME6, prefix6: 64, gateway6: "fd64:99::1", dns: [ME6] }));
    tunnel.capture = true;
    dns = await dnsServer(ME6, "udp6");
  });
  after(() => {
    dns?.close();
    for (const s of servers) s.close();
    stack?.close();
  });

  test("TCP over IPv6: addresses and families as Node gives them; the listener without host is [::], both families", async () => {
    const { server, port, peers } = await echoServer();
    servers.push(server);
    assert.deepEqual(server.address(), { address: "::", family: "IPv6", port });
    const c6 = createConnection(port, ME6);
    await once(c6, "connect");
    assert.equal(c6.remoteAddress, ME6);
    assert.equal(c6.remoteFamily, "IPv6");
    assert.equal(c6.localAddress, ME6);
    assert.equal((c6.address() as AddressInfo).family, "IPv6");
    assert.equal(await echo(c6, "over IPv6"), "over IPv6");
    const c4 = createConnection(port, ME4);
    assert.equal(await echo(c4, "over IPv4"), "over IPv4");
    assert.equal(c4.remoteFamily, "IPv4");
    assert.deepEqual(peers, [`${ME6} IPv6 local ${ME6}`, `::ffff:${ME4} IPv6 local ::ffff:${ME4}`]);
  });

  test("a listener on [::] with ipv6Only, and one on the IPv4 wildcard, share the port as on Linux", async () => {
    const v6 = createServer((c) => c.end("v6"));
    v6.listen({ port: 0, host: "::", ipv6Only: true });
    await once(v6, "listening");
    servers.push(v6);
    const port = (v6.address() as AddressInfo).port;
    const v4 = createServer((c) => c.end("v4"));
    v4.listen(port, "0.0.0.0");
    await once(v4, "listening");
    servers.push(v4);
    const read = async (host: string) => {
      const c = createConnection(port, host);
      let got = "";
      for await (const d of c) got += String(d);
      return got;
    };
    assert.equal(await read(ME6), "v6");
    assert.equal(await read(ME4), "v4");
    const dup = createServer();
    dup.listen(port, "::"); // dual-stack: collides with both
    const [err] = (await once(dup, "error")) as [NodeJS.ErrnoException];
    assert.equal(err.code, "EADDRINUSE");
  });

  test("DNS: AAAA and A through the lease's IPv6 DNS server; family 0/4/6, all, order", async () => {
    assert.deepEqual(await lookupAll("dual.test", 0), [
      { address: ME6, family: 6 },
      { address: ME4, family: 4 },
    ]);
    assert.deepEqual(await lookupPromise("dual.test", { all: true, order: "ipv4first" }), [
      { address: ME4, family: 4 },
      { address: ME6, family: 6 },
    ]);
    assert.deepEqual(await lookupPromise("dual.test", { family: 6 }), { address: ME6, family: 6 });
    assert.deepEqual(await lookupPromise("dual.test", 4), { address: ME4, family: 4 });
    assert.deepEqual(await lookupPromise("v6only.test"), { address: ME6, family: 6 });
    assert.deepEqual(await lookupPromise("v4only.test", { all: true }), [{ address: ME4, family: 4 }]);
    await assert.rejects(lookupPromise("v4only.test", { family: 6 }), { code: "ENOTFOUND" });
    await assert.rejects(lookupPromise("nope.test"), { code: "ENOTFOUND" });
    assert.ok(dns.queries.includes(`AAAA dual.test from ${ME6}`), dns.queries.join("\n"));
  });

  test("connect by name: Happy Eyeballs tries the next family when the first does not answer", async () => {
    const { server, port } = await echoServer();
    servers.push(server);
    const c = createConnection({ host: "eyeballs.test", port, autoSelectFamilyAttemptTimeout: 100 });
    const attempts: string[] = [];
    c.on("connectionAttempt", (a: string) => attempts.push(`try ${a}`));
    c.on("connectionAttemptTimeout", (a: string) => attempts.push(`timeout ${a}`));
    await once(c, "connect");
    assert.equal(c.remoteAddress, ME4);
    assert.deepEqual(attempts, [`try ${FAR6}`, `timeout ${FAR6}`, `try ${ME4}`]);
    assert.deepEqual(
      (c as unknown as { autoSelectFamilyAttemptedAddresses: string[] }).autoSelectFamilyAttemptedAddresses,
      [`${FAR6}:${port}`, `${ME4}:${port}`],
    );
    assert.equal(await echo(c, "eyeballs"), "eyeballs");
    // The abandoned IPv6 attempt went into the tunnel from the leased address.
    assert.ok(tunnel.packets.some((p) => p[0]! >> 4 === 6 && p.subarray(24, 40).equals(ipv6Bytes(FAR6))));
    // Without autoSelectFamily: the first address only, which never answers.
    const d = createConnection({ host: "eyeballs.test", port, autoSelectFamily: false });
    let tried = false;
    d.on("connectionAttempt", () => (tried = true));
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(d.connecting, true);
    assert.equal(tried, false);
    d.destroy();
    // A refused attempt moves on at once (no timeout): IPv6 is refused by a listener on the IPv4 wildcard only.
    const v4only = createServer((x) => x.end("v4 only"));
    v4only.listen(0, "0.0.0.0");
    await once(v4only, "listening");
    servers.push(v4only);
    const p4 = (v4only.address() as AddressInfo).port;
    const f = createConnection({ host: "dual.test", port: p4, autoSelectFamilyAttemptTimeout: 5000 });
    const failed: string[] = [];
    f.on("connectionAttemptFailed", (a: string, _p: number, _f: number, e: NodeJS.ErrnoException) =>
      failed.push(`${a} ${e.code}`),
    );
    let timedOut = false;
    f.on("connectionAttemptTimeout", () => (timedOut = true));
    await once(f, "connect");
    assert.equal(timedOut, false, "moved on at the refusal, not at the attempt timeout");
    assert.deepEqual(failed, [`${ME6} ECONNREFUSED`]);
    assert.equal(f.remoteAddress, ME4);
    f.destroy();
    // By name to a dual-stack server: IPv6 first (verbatim order with an IPv6 lease).
    const e = createConnection(port, "dual.test");
    await once(e, "connect");
    assert.equal(e.remoteAddress, ME6);
    e.destroy();
  });

  test("an IPv6 SYN into the tunnel: leased source, MSS = MTU - 60; nothing link-local or multicast ever sent", async () => {
    tunnel.packets.length = 0;
    const c = createConnection(443, FAR6);
    c.on("error", () => {});
    await new Promise((r) => setTimeout(r, 100));
    c.destroy();
    const syn = tunnel.packets.find((p) => p[0]! >> 4 === 6 && p[6] === 6);
    assert.ok(syn, "a TCP/IPv6 packet was sent");
    assert.ok(syn.subarray(8, 24).equals(ipv6Bytes(ME6)), "source is the leased address");
    const tcp = syn.subarray(40);
    assert.equal(tcp[13]! & 0x02, 0x02, "SYN");
    // options: kind 2 (MSS), length 4
    const opts = tcp.subarray(20, (tcp[12]! >> 4) * 4);
    let mss = 0;
    for (let i = 0; i < opts.length;) {
      if (opts[i] === 0) break;
      if (opts[i] === 1) {
        i++;
        continue;
      }
      if (opts[i] === 2) mss = opts.readUInt16BE(i + 2);
      i += opts[i + 1]!;
    }
    assert.equal(mss, 1400 - 60);
    assert.equal(stats(stack).mss6, 1340);
    assert.equal(stats(stack).mss, 1360);
  });

  test("input: only TCP/UDP/ICMPv6 echo and errors to the leased address reach lwIP (ND, RA, other destinations dropped)", async () => {
    tunnel.packets.length = 0;
    const before = stats(stack).rx6Filtered!;
    tunnel.inject([
      icmp6("fe80::1", "ff02::1", 134), // router advertisement
      icmp6("fd64:99::1", ME6, 135, Buffer.alloc(20)), // neighbour solicitation
      icmp6("fd64:99::1", ME6, 137, Buffer.alloc(36)), // redirect
      icmp6("2001:2:ff::1", "fd64:99::3", 128), // echo request to another address
    ]);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(stats(stack).rx6Filtered! - before, 4);
    assert.equal(tunnel.packets.length, 0, "nothing answered");
    // An echo request to the leased address is answered through the tunnel.
    tunnel.inject([icmp6("2001:2:ff::1", ME6, 128, Buffer.from([0, 1, 0, 7]))]);
    await new Promise((r) => setTimeout(r, 50));
    const reply = tunnel.packets.find((p) => p[0]! >> 4 === 6 && p[6] === 58 && p[40] === 129);
    assert.ok(reply, "echo reply");
    assert.ok(reply.subarray(24, 40).equals(ipv6Bytes("2001:2:ff::1")));
    assert.equal(stats(stack).tx6Filtered, 0);
  });

  test("output: nothing to a multicast or link-local address goes into the tunnel (dropped and counted)", async () => {
    tunnel.packets.length = 0;
    const before = stats(stack).tx6Filtered!;
    const u = createSocket("udp6");
    const err = await new Promise<NodeJS.ErrnoException | null>((r) =>
      u.send("to a group", 9, "ff0e::1", (e: Error | null) => r(e)),
    );
    u.close();
    assert.ok(err, "the send failed");
    assert.equal(stats(stack).tx6Filtered! - before, 1);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(
      tunnel.packets.filter(
        (p) => linkLocalOrMulticast(p.subarray(8, 24)) || linkLocalOrMulticast(p.subarray(24, 40)),
      ),
      [],
    );
  });

  test(
    "a new lease with another IPv6 address: connections on the old one end with EADDRNOTAVAIL, the new one works",
    { timeout: 15_000 },
    async () => {
      const { server, port } = await echoServer();
      servers.push(server);
      const old = createConnection(port, ME6);
      await once(old, "connect");
      const ended = new Promise<NodeJS.ErrnoException>((r) => old.on("error", r));
      const keep4 = createConnection(port, ME4);
      await once(keep4, "connect");
      const moved = "fd64:99::3";
      tunnel.emit("lease", { ...tunnel.lease, address6: moved });
      assert.equal((await ended).code, "EADDRNOTAVAIL");
      assert.equal(await echo(keep4, "IPv4 untouched"), "IPv4 untouched");
      const c = createConnection(port, moved);
      await once(c, "connect");
      assert.equal(c.localAddress, moved);
      assert.equal(await echo(c, "new address"), "new address");
      tunnel.emit("lease", tunnel.lease); // back, for the tests after this one
      await new Promise((r) => setTimeout(r, 50));
    },
  );

  test("a new lease with another MTU: the IPv6 MSS follows (MTU - 60)", async () => {
    tunnel.emit("lease", { ...tunnel.lease, mtu: 1300 });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(stats(stack).mss6, 1240);
    tunnel.emit("lease", { ...tunnel.lease, mtu: 1400 });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(stats(stack).mss6, 1340);
  });

  test("dgram udp6: a dual-stack socket on [::] hears both families; an ipv6Only one hears IPv6 only", async () => {
    const srv = createSocket("udp6");
    const got: RemoteInfo[] = [];
    srv.on("message", (m: Buffer, r: RemoteInfo) => {
      got.push(r);
      srv.send(m, r.port, r.address);
    });
    srv.bind(0);
    await once(srv, "listening");
    const port = srv.address().port;
    assert.deepEqual(srv.address(), { address: "::", family: "IPv6", port });
    const ask = async (type: "udp4" | "udp6", to: string) => {
      const c = createSocket(type);
      const reply = once(c, "message") as Promise<[Buffer, RemoteInfo]>;
      c.send(`hi over ${type}`, port, to);
      const [m, r] = await reply;
      c.close();
      return { m: m.toString(), r };
    };
    const v6 = await ask("udp6", ME6);
    assert.equal(v6.m, "hi over udp6");
    assert.deepEqual(
      { address: v6.r.address, family: v6.r.family, port: v6.r.port },
      {
        address: ME6,
        family: "IPv6",
        port,
      },
    );
    const v4 = await ask("udp4", ME4);
    assert.equal(v4.m, "hi over udp4");
    assert.equal(v4.r.address, ME4);
    assert.equal(got[0]!.address, ME6);
    assert.equal(got[1]!.address, `::ffff:${ME4}`);
    assert.equal(got[1]!.family, "IPv6");
    srv.close();
    const only = createSocket({ type: "udp6", ipv6Only: true });
    only.bind(0);
    await once(only, "listening");
    const err = await new Promise<NodeJS.ErrnoException | null>((r) =>
      only.send("x", 9, ME4, (e: Error | null) => r(e)),
    );
    assert.equal(err?.code, "EINVAL");
    only.close();
  });
});

describe("IPv4-only lease: IPv6 destinations fail as on a host without IPv6", { concurrency: false }, () => {
  let stack: ShieldedStack;
  let dns: Awaited<ReturnType<typeof dnsServer>>;
  before(async () => {
    ({ stack } = await start({ dns: [ME4, ME6] }));
    dns = await dnsServer(ME4, "udp4");
  });
  after(() => {
    dns?.close();
    stack?.close();
  });

  test("net.connect to an IPv6 literal: ENETUNREACH; by name: the IPv4 address (AAAA left out as ADDRCONFIG does)", async () => {
    const err = await connectError(createConnection(80, FAR6));
    assert.equal(err.code, "ENETUNREACH");
    assert.equal(err.syscall, "connect");
    assert.match(err.message, /^connect ENETUNREACH 2001:2:ff::99:80 .*no IPv6 address/);
    const { server, port } = await echoServer();
    assert.deepEqual(server.address(), { address: "0.0.0.0", family: "IPv4", port });
    const c = createConnection(port, "dual.test");
    await once(c, "connect");
    assert.equal(c.remoteAddress, ME4);
    c.destroy();
    assert.deepEqual(
      dns.queries.filter((q) => q.startsWith("AAAA")),
      [],
      "no AAAA query without an IPv6 address (ADDRCONFIG)",
    );
    // Asked for IPv6 by name: the AAAA answer, then ENETUNREACH.
    const e6 = await connectError(createConnection({ host: "dual.test", port, family: 6 }));
    assert.equal(e6.code, "ENETUNREACH");
    // The IPv6 DNS server of the lease is skipped: every query went to the IPv4 one.
    assert.ok(
      dns.queries.length > 0 && dns.queries.every((q) => q.endsWith(`from ${ME4}`)),
      dns.queries.join(),
    );
    server.close();
  });

  test("dgram udp6 send to IPv6: ENETUNREACH in the callback", async () => {
    const s = createSocket("udp6");
    const err = await new Promise<NodeJS.ErrnoException | null>((r) =>
      s.send("x", 53, FAR6, (e: Error | null) => r(e)),
    );
    assert.equal(err?.code, "ENETUNREACH");
    s.close();
  });
});

describe("IPv6-only lease: IPv4 destinations fail, IPv6 works", { concurrency: false }, () => {
  let stack: ShieldedStack;
  let tunnel: LeaseOnlyTunnel;
  before(async () => {
    ({ stack, tunnel } = await start({
      address: undefined,
      prefix: undefined,
      gateway: undefined,
      address6: ME6,
      prefix6: 64,
      gateway6: "fd64:99::1",
    }));
    tunnel.capture = true;
  });
  after(() => stack?.close());

  test("IPv4: ENETUNREACH from the SDK, EHOSTUNREACH from lwIP itself, nothing sent; IPv6: echo", async () => {
    const err = await connectError(createConnection(80, "198.18.2.2"));
    assert.equal(err.code, "ENETUNREACH");
    assert.throws(() => stack.stack.tcpConnect("198.18.2.2", 80), { code: "EHOSTUNREACH" });
    const u = createSocket("udp4");
    const uerr = await new Promise<NodeJS.ErrnoException | null>((r) =>
      u.send("x", 53, "198.18.2.2", (e: Error | null) => r(e)),
    );
    assert.equal(uerr?.code, "ENETUNREACH");
    u.close();
    const { server, port } = await echoServer();
    assert.equal(await echo(createConnection(port, ME6), "v6 only"), "v6 only");
    server.close();
    assert.equal(tunnel.packets.filter((p) => p[0]! >> 4 === 4).length, 0, "no IPv4 packet left");
    for (const p of tunnel.packets) {
      assert.ok(!linkLocalOrMulticast(p.subarray(8, 24)) && !linkLocalOrMulticast(p.subarray(24, 40)));
    }
  });
});
