/**
 * Where lwIP's secrets come from (native/src/lwip.cc): local ports and TCP initial sequence numbers are taken from
 * getrandom(2), never from libc's rand()/random(), and the stack fails closed when the OS random source fails.
 *
 * To make getrandom fail on demand for the addon alone, a child Node runs with an LD_PRELOAD shim (compiled here with
 * cc) whose getrandom() returns ENOSYS for calls made from seng_native.node while a flag file exists, and calls the
 * kernel otherwise (Node's own OpenSSL and libuv keep working). No network: lwIP's packets are only looked at.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { LwipStack, type LwipEvent } from "../../src/native/lwip.js";
import { LwipErr, nodeCodeOf } from "../../src/native/lwip-errors.js";

const run = promisify(execFile);
const SELF = fileURLToPath(import.meta.url);

const SHIM = `
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>
ssize_t getrandom(void* buf, size_t len, unsigned int flags) {
  const char* flag = getenv("SENG_TEST_GETRANDOM_FAIL");
  Dl_info info;
  if (flag && access(flag, F_OK) == 0 && dladdr(__builtin_return_address(0), &info) && info.dli_fname &&
      strstr(info.dli_fname, "seng_native.node")) {
    errno = ENOSYS;
    return -1;
  }
  return syscall(SYS_getrandom, buf, len, flags);
}
`;

const LWIP_IP = "100.64.9.2";
const PEER_IP = "100.64.9.1";

const tick = () => new Promise((r) => setImmediate(r));

/** The TCP flags and ports of an IPv4/TCP packet. */
function tcpInfo(p: Buffer): { src: number; dst: number; syn: boolean; ack: boolean } {
  const ihl = (p[0]! & 0x0f) * 4;
  const flags = p[ihl + 13]!;
  return { src: p.readUInt16BE(ihl), dst: p.readUInt16BE(ihl + 2), syn: !!(flags & 2), ack: !!(flags & 16) };
}

/** lwIP's SYN to PEER_IP:port turned into one from PEER_IP to lwIP (addresses swapped: the checksums stay valid). */
function mirrored(syn: Buffer): Buffer {
  const p = Buffer.from(syn);
  p.copy(p, 12, 16, 20);
  syn.copy(p, 16, 12, 16);
  return p;
}

/** The child: runs under the shim; prints one JSON line of findings. */
async function child(flag: string): Promise<void> {
  const out: Record<string, unknown> = {};
  const code = (f: () => unknown) => {
    try {
      f();
      return "no error";
    } catch (e) {
      return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    }
  };
  if (process.argv.includes("--fail-from-start")) {
    out.create = code(() => LwipStack.create({ address: LWIP_IP, prefix: 24, gateway: PEER_IP, mtu: 1400 }));
    console.log(JSON.stringify(out));
    return;
  }
  const st = LwipStack.create({ address: LWIP_IP, prefix: 24, gateway: PEER_IP, mtu: 1400 });
  const pkts: Buffer[] = [];
  const events: LwipEvent[] = [];
  st.onOutput((ps) => pkts.push(...ps.map((p) => Buffer.from(p))));
  st.onEvent((ev) => events.push(ev));
  // Ports: 30 UDP binds to port 0 and one listener on port 0.
  const udp = Array.from({ length: 30 }, () => st.udpBind("0.0.0.0", 0));
  out.udpPorts = udp.map((id) => Number(st.localAddress(id)!.split(":")[1]));
  const l = st.tcpListen("0.0.0.0", 0);
  const port = Number(st.localAddress(l)!.split(":")[1]);
  out.listenPort = port;
  // Two outgoing connections to PEER_IP:port: their SYNs are what a peer would send us, mirrored.
  st.tcpConnect(PEER_IP, port);
  st.tcpConnect(PEER_IP, port);
  await tick();
  const syns = pkts.splice(0).filter((p) => tcpInfo(p).syn && !tcpInfo(p).ack);
  out.clientPorts = syns.map((p) => tcpInfo(p).src);
  // The OS random source works: a SYN to the listener is answered (SYN-ACK).
  const iss0 = st.stats().issHook!;
  st.input([mirrored(syns[0]!)]);
  await tick();
  out.answeredBefore = pkts.splice(0).filter((p) => tcpInfo(p).syn && tcpInfo(p).ack).length;
  // It fails: the next SYN's ISN cannot be random; nothing may leave.
  writeFileSync(flag, "");
  st.input([mirrored(syns[1]!)]);
  await tick();
  const s = st.stats();
  out.issCalls = s.issHook! - iss0;
  out.answeredAfter = pkts.splice(0).length;
  out.entropyFailures = s.entropyFailures;
  out.txDropped = s.txDropped;
  // From now on: no ports, no new stack (even after the source recovers: once failed, the process stays closed).
  out.connect = code(() => st.tcpConnect(PEER_IP, 80));
  out.udpBind = code(() => st.udpBind("0.0.0.0", 0));
  out.listen0 = code(() => st.tcpListen("0.0.0.0", 0));
  rmSync(flag);
  const u = st.udpBind("0.0.0.0", 5353); // an explicit port needs no randomness, but nothing is sent
  out.udpSent = st.udpSend(u, Buffer.from("x"), PEER_IP, 53);
  await tick();
  out.sentAfter = pkts.length;
  st.close();
  out.recreate = code(() => LwipStack.create({ address: LWIP_IP, prefix: 24, gateway: PEER_IP, mtu: 1400 }));
  console.log(JSON.stringify(out));
}

if (process.env.SENG_TEST_GETRANDOM_FAIL) {
  await child(process.env.SENG_TEST_GETRANDOM_FAIL);
} else {
  test("ports and ISNs come from getrandom; when it fails the stack fails closed", async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "seng-rand-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, "shim.c"), SHIM);
    await run("cc", ["-shared", "-fPIC", "-O1", "-o", join(dir, "shim.so"), join(dir, "shim.c"), "-ldl"]);
    const flag = join(dir, "fail");
    const env = { ...process.env, LD_PRELOAD: join(dir, "shim.so"), SENG_TEST_GETRANDOM_FAIL: flag };
    const go = async (args: string[] = []) => {
      const r = await run(process.execPath, ["--import", "tsx", SELF, ...args], { env, timeout: 60_000 });
      return JSON.parse(r.stdout.trim().split("\n").pop()!) as Record<string, unknown>;
    };

    const o = await go();
    const ports = [...(o.udpPorts as number[]), ...(o.clientPorts as number[]), o.listenPort as number];
    assert.ok(
      ports.every((p) => p >= 49152 && p <= 65535),
      `ports in the dynamic range: ${ports.join(",")}`,
    );
    const udpPorts = o.udpPorts as number[];
    assert.equal(new Set(udpPorts).size, udpPorts.length, "no port twice");
    // lwIP's own allocator gives n, n+1, n+2...: random ports are almost never neighbours (30 draws of 16384).
    const steps = udpPorts.slice(1).map((p, i) => Math.abs(p - udpPorts[i]!));
    assert.ok(steps.filter((d) => d === 1).length <= 2, `sequential ports: ${udpPorts.join(",")}`);

    assert.equal(o.answeredBefore, 1, "a SYN-ACK while getrandom works");
    assert.equal(o.issCalls, 2, "the listener asked for an ISN for each SYN");
    assert.equal(o.answeredAfter, 0, "no SYN-ACK with a non-random ISN");
    assert.ok((o.entropyFailures as number) >= 1);
    assert.ok((o.txDropped as number) >= 1);
    assert.equal(o.connect, "ERR_SENG_ENTROPY");
    assert.equal(o.udpBind, "ERR_SENG_ENTROPY");
    assert.equal(o.listen0, "ERR_SENG_ENTROPY");
    assert.equal(o.sentAfter, 0, "nothing leaves a stack whose random source failed");
    assert.equal(o.recreate, "ERR_SENG_ENTROPY");
    assert.equal(existsSync(flag), false);

    // A stack is not even created when getrandom fails from the start.
    writeFileSync(flag, "");
    assert.deepEqual(await go(["--fail-from-start"]), { create: "ERR_SENG_ENTROPY" });
  });

  test("lwIP's err_t map to Node codes by table, with the socket's state where it decides", () => {
    const est = { connected: true, readShut: false, reconfiguring: false };
    const connecting = { connected: false, readShut: false, reconfiguring: false };
    assert.equal(nodeCodeOf(LwipErr.ERR_RST, est), "ECONNRESET");
    assert.equal(nodeCodeOf(LwipErr.ERR_RST, connecting), "ECONNREFUSED");
    assert.equal(nodeCodeOf(LwipErr.ERR_ABRT, est), "ETIMEDOUT");
    assert.equal(nodeCodeOf(LwipErr.ERR_ABRT, connecting), "ETIMEDOUT");
    assert.equal(nodeCodeOf(LwipErr.ERR_ABRT, { ...est, readShut: true }), "ECONNABORTED");
    assert.equal(nodeCodeOf(LwipErr.ERR_ABRT, { ...est, reconfiguring: true }), "EADDRNOTAVAIL");
    assert.equal(nodeCodeOf(LwipErr.ERR_USE), "EADDRINUSE");
    assert.equal(nodeCodeOf(LwipErr.ERR_MEM), "ENOBUFS");
    assert.equal(nodeCodeOf(LwipErr.ERR_RTE), "EHOSTUNREACH");
    assert.equal(nodeCodeOf(LwipErr.ERR_TIMEOUT), "ETIMEDOUT");
    assert.equal(nodeCodeOf(LwipErr.ERR_IF), "ENETDOWN");
    assert.equal(nodeCodeOf(-99), "EIO");
  });

  test("an error thrown by a call carries lwIP's err_t and Node's code (not parsed from its text)", () => {
    const st = LwipStack.create({ address: LWIP_IP, prefix: 24, gateway: PEER_IP, mtu: 1400 });
    try {
      st.tcpListen("0.0.0.0", 8080);
      assert.throws(
        () => st.tcpListen("0.0.0.0", 8080),
        (e: NodeJS.ErrnoException & { lwipErr?: number }) =>
          e.code === "EADDRINUSE" && e.lwipErr === LwipErr.ERR_USE,
      );
      st.udpBind("0.0.0.0", 5353);
      assert.throws(
        () => st.udpBind("0.0.0.0", 5353),
        (e: NodeJS.ErrnoException & { lwipErr?: number }) =>
          e.code === "EADDRINUSE" && e.lwipErr === LwipErr.ERR_USE,
      );
    } finally {
      st.close();
    }
  });
}
