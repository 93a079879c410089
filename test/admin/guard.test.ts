/**
 * The admin listener's connection guard over its total cap: it evicts from the source that holds the most
 * connections, and never a connection younger than minAgeMs, so connects from many sources cannot cycle a
 * legitimate client's connection out (loopback only: 127.0.0.x sources).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { ConnectionGuard } from "../../src/admin/guard.js";

async function open(port: number, localAddress: string): Promise<Socket> {
  const s = connect({ port, host: "127.0.0.1", localAddress });
  s.on("error", () => undefined);
  await new Promise<void>((res, rej) => s.once("connect", () => res()).once("error", rej));
  return s;
}

const closed = (s: Socket) =>
  new Promise<boolean>((res) => (s.destroyed ? res(true) : s.once("close", () => res(true))));

test(
  "over the total cap the heaviest source's oldest old-enough waiting connection goes, never a lone client's",
  { timeout: 10_000 },
  async () => {
    const server = createServer(() => undefined);
    const guard = new ConnectionGuard({ perSource: 4, total: 6, minAgeMs: 300 });
    guard.attach(server);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    const all: Socket[] = [];
    try {
      const admin = await open(port, "127.0.0.2"); // the oldest connection of all
      all.push(admin);
      const flood: Socket[] = [];
      for (let i = 0; i < 4; i++) flood.push(await open(port, "127.0.0.1"));
      all.push(...flood, await open(port, "127.0.0.3"));
      await sleep(100);
      assert.equal(guard.stats().open, 6);
      // All younger than minAgeMs: a new connection is refused, nobody is evicted.
      const young = await open(port, "127.0.0.4");
      all.push(young);
      await closed(young);
      assert.deepEqual([guard.stats().evicted, guard.stats().refused], [0, 1]);
      await sleep(300);
      // Old enough now: a new connection from yet another source evicts the heaviest source's (127.0.0.1) oldest.
      all.push(await open(port, "127.0.0.5"));
      await closed(flood[0]!);
      await sleep(50);
      assert.equal(admin.destroyed, false, "the lone admin connection, the oldest of all, stays");
      assert.deepEqual([guard.stats().evicted, guard.stats().open], [1, 6]);
    } finally {
      for (const s of all) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    }
  },
);
