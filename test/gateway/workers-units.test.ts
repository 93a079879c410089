/**
 * The `workers` setting, and the TUN steering program (native/src/steer.cc) in a namespace of its own: a packet to
 * an address in the map is read on the queue the map names, and on queue 0 once the address is deleted.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { Tun, tunConfigure } from "../../src/native/io.js";
import { TunSteering } from "../../src/native/steer.js";
import { ipToInt } from "../../src/packet/ip.js";
import { ConfigError, parseConfig } from "../../src/policy/config.js";
import { workerCount } from "../../src/gateway/workers/pool.js";
import { Netns, nsChildRole, serveRpc, type NsProcess } from "../helpers/netns.js";

const BASE = [
  "listen: 0.0.0.0:4433",
  "certificate: gw.pem",
  "key: gw.key",
  "tun: { address: 100.64.0.1/32 }",
  "apps: [{ name: a, subnet: 100.64.1.0/24, identities: [{ mrenclave: " + "ab".repeat(32) + " }] }]",
].join("\n");

function child(): void {
  let queues: Tun[] = [];
  let steering: TunSteering | undefined;
  const seen = [0, 0];
  serveRpc(
    {
      async open() {
        // Two queues as two workers open them (offload off: the steering queue must use the same flags).
        queues = [0, 1].map((i) => {
          const t = Tun.open("steer0", { multiQueue: true, napi: true });
          t.onPackets((p) => (seen[i]! += p.length));
          return t;
        });
        await tunConfigure("steer0", { address: "10.99.0.1/24", mtu: 1400, up: true });
        steering = TunSteering.attach("steer0", { napi: true, offload: false, maxEntries: 16 });
        return {};
      },
      set(a: unknown) {
        const { address, queue } = a as { address: string; queue: number };
        return { ok: steering!.set(ipToInt(address), queue) };
      },
      del(a: unknown) {
        return { ok: steering!.delete(ipToInt((a as { address: string }).address)) };
      },
      seen() {
        return [...seen];
      },
    },
    () => {
      steering?.close();
      for (const q of queues) q.close();
    },
  );
}

const role = nsChildRole();
if (role === "steer") child();
else {
  test("workers: auto is one per core; N is N; anything else names the key", () => {
    assert.equal(workerCount(parseConfig(BASE, "g.yaml")), 1, "default: one thread");
    assert.equal(workerCount(parseConfig(`${BASE}\nworkers: auto`, "g.yaml")), availableParallelism());
    assert.equal(workerCount(parseConfig(`${BASE}\nworkers: 2`, "g.yaml")), 2);
    for (const bad of ["0", "many", "1.5", "65"])
      assert.throws(
        () => parseConfig(`${BASE}\nworkers: ${bad}`, "g.yaml"),
        (e: unknown) =>
          e instanceof ConfigError && /^g\.yaml: workers: expected "auto" or a whole number/.test(e.message),
        bad,
      );
  });

  test("workers with an IPv6 app are refused, naming the key (the workers lease IPv4 only)", () => {
    const six = BASE.replace(
      "tun: { address: 100.64.0.1/32 }",
      "tun: { address: 100.64.0.1/32, address6: fd64::1/128 }",
    ).replace("subnet: 100.64.1.0/24,", "subnet: 100.64.1.0/24, subnet6: fd64:1::/64,");
    assert.equal(workerCount(parseConfig(six, "g.yaml")), 1, "IPv6 with one thread is fine");
    for (const w of ["2", "auto"])
      assert.throws(
        () => parseConfig(`${six}\nworkers: ${w}`, "g.yaml"),
        (e: unknown) =>
          e instanceof ConfigError && /^g\.yaml: workers: expected 1 when an app has IPv6/.test(e.message),
        w,
      );
  });

  describe("TUN steering by destination address", () => {
    let ns: Netns;
    let proc: NsProcess;

    before(async () => {
      ns = await Netns.create("steer");
      proc = ns.runTs(fileURLToPath(import.meta.url), { role: "steer" });
      await proc.ready();
      await proc.call("open", {});
    });

    after(async () => {
      await proc?.close().catch(() => {});
      await ns?.delete();
    });

    /**
     * Sends `n` UDP datagrams into the TUN (to `address`, routed to it), each from a new socket (a new flow, which
     * the kernel's own hash would spread over the queues); returns how many each queue read.
     */
    async function send(address: string, n: number): Promise<number[]> {
      const before = await proc.call<number[]>("seen");
      await ns.exec(process.execPath, [
        "-e",
        `let i=0;const f=()=>{const s=require("dgram").createSocket("udp4");` +
          `s.send("x",9,"${address}",()=>{s.close();if(++i<${n})f()})};f()`,
      ]);
      for (let k = 0; k < 40; k++) {
        const now = await proc.call<number[]>("seen");
        if (now[0]! + now[1]! - before[0]! - before[1]! >= n)
          return [now[0]! - before[0]!, now[1]! - before[1]!];
        await new Promise((r) => setTimeout(r, 50));
      }
      const now = await proc.call<number[]>("seen");
      return [now[0]! - before[0]!, now[1]! - before[1]!];
    }

    test("an address in the map goes to its queue, every packet; deleted, to queue 0", async () => {
      assert.deepEqual(await proc.call("set", { address: "10.99.0.7", queue: 1 }), { ok: true });
      assert.deepEqual(await proc.call("set", { address: "10.99.0.8", queue: 0 }), { ok: true });
      assert.deepEqual(await send("10.99.0.7", 20), [0, 20]);
      assert.deepEqual(await send("10.99.0.8", 20), [20, 0]);
      assert.deepEqual(await proc.call("del", { address: "10.99.0.7" }), { ok: true });
      assert.deepEqual(await send("10.99.0.7", 20), [20, 0]);
    });
  });
}
