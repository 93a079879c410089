/** SetSync against real nftables in a namespace: batching, cancellation, and recovery from a failed batch. */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Netns } from "../helpers/netns.js";
import { SetSync } from "../../src/firewall/sets.js";

let ns: Netns;
const A = "inet seng seng_app_a";
const C = "inet seng seng_cat_c";

before(async () => {
  ns = await Netns.create("fwsets");
  await ns.exec("sh", [
    "-c",
    "nft add table inet seng && nft add set inet seng seng_app_a '{ type ipv4_addr; }' && nft add set inet seng seng_cat_c '{ type ipv4_addr; }'",
  ]);
});

after(async () => {
  await ns?.delete();
});

async function members(set: string): Promise<string[]> {
  const out = (await ns.exec("nft", ["-j", "list", "set", ...set.split(" ")])).stdout;
  const j = JSON.parse(out) as { nftables: { set?: { elem?: string[] } }[] };
  return (j.nftables.find((i) => i.set)?.set?.elem ?? []).sort();
}

test("adds and removes reach the kernel in batches; a failed batch is reported and repaired by a resync", async () => {
  const errors: string[] = [];
  const sync = new SetSync((m) => errors.push(m), ["ip", "netns", "exec", ns.name]);
  try {
    for (let i = 1; i <= 300; i++) sync.set(`100.64.1.${i % 250}`, [A, C]);
    sync.set("100.64.2.1", [A]);
    sync.set("100.64.2.1", []); // added and removed in one window: cancels out
    await sync.flushed();
    assert.equal((await members(A)).length, 250);
    assert.deepEqual(await members(C), await members(A));
    assert.ok(sync.stats.batches < 10, `batched: ${sync.stats.batches} batches`);
    assert.deepEqual(errors, []);

    // Someone else deletes an element; our later delete of it fails in nft and the whole batch is refused.
    await ns.exec("nft", ["delete", "element", "inet", "seng", "seng_app_a", "{ 100.64.1.7 }"]);
    sync.set("100.64.1.7", []);
    sync.set("100.64.1.8", [A]); // leaves C
    sync.set("100.64.3.3", [A]);
    await sync.flushed();
    assert.equal(errors.length, 1, `${errors.join("\n")} ${JSON.stringify(sync.stats)}`);
    assert.match(errors[0]!, /No such file or directory/);
    assert.equal(sync.stats.resyncs, 1);
    const a = await members(A);
    assert.ok(!a.includes("100.64.1.7") && a.includes("100.64.1.8") && a.includes("100.64.3.3"));
    assert.ok(!(await members(C)).includes("100.64.1.8"));
    assert.ok(sync.getStats().addLatencyMedianMs > 0);
  } finally {
    await sync.close();
  }
});

test("a change while its address's batch is in flight is not lost (tunnel down or back up during the update)", async () => {
  const sync = new SetSync(() => {}, ["ip", "netns", "exec", ns.name]);
  try {
    await sync.flushed();
    // Up, and down again while the add is in flight: the delete must follow.
    sync.set("100.64.9.1", [A]);
    await new Promise((r) => setImmediate(r)); // the add batch is written now
    sync.set("100.64.9.1", []);
    // Down, and up again while the delete is in flight: the add must follow.
    sync.set("100.64.9.2", [A]);
    await sync.flushed();
    sync.set("100.64.9.2", []);
    await new Promise((r) => setImmediate(r));
    sync.set("100.64.9.2", [A]);
    await sync.flushed();
    const a = await members(A);
    assert.ok(!a.includes("100.64.9.1"), `100.64.9.1 stayed in the set: ${a.join(" ")}`);
    assert.ok(a.includes("100.64.9.2"), `100.64.9.2 is missing: ${a.join(" ")}`);
    assert.deepEqual(sync.members().get(A)?.includes("100.64.9.2"), true);
  } finally {
    await sync.close();
  }
});

test("a transaction that rebuilt the sets: changes made while it ran are diffed against what it wrote", async () => {
  const sync = new SetSync(() => {}, ["ip", "netns", "exec", ns.name]);
  try {
    let written: Map<string, string[]> | undefined;
    await sync.withExclusive(
      async () => {
        sync.set("100.64.8.1", [A]);
        sync.set("100.64.8.2", [A]);
        written = sync.snapshot();
        await ns.exec("nft", ["add", "element", ...A.split(" "), "{ 100.64.8.1, 100.64.8.2 }"]);
        // Meanwhile: one tunnel goes down, another comes up.
        sync.set("100.64.8.1", []);
        sync.set("100.64.8.3", [A]);
      },
      () => written,
    );
    await sync.flushed();
    const a = await members(A);
    assert.ok(!a.includes("100.64.8.1") && a.includes("100.64.8.2") && a.includes("100.64.8.3"), a.join(" "));
  } finally {
    await sync.close();
  }
});
