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
