/**
 * C heap primitives (src/native/mem.ts): statistics follow allocations, and trimming returns memory freed in the
 * middle of the heap to the kernel (RSS falls) while live memory stays.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { mallocInfo, trimMemory } from "../../src/native/mem.js";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;
const MB = 1 << 20;

test("mallocInfo counts live C heap; trimMemory gives freed pages back and keeps live ones", async () => {
  const before = mallocInfo();
  assert.ok(before, "glibc ≥ 2.33 (Debian 12) reports mallinfo2");
  assert.ok(before.inUse > 0 && before.free >= 0 && before.mmapped >= 0);
  // 64 MB in 32 KB blocks (below malloc's mmap threshold, so they come from the heap), written so their pages are
  // resident. A block allocated after them stays live, so free() alone cannot shrink the heap from the top.
  const blocks = Array.from({ length: 2048 }, () => Buffer.allocUnsafeSlow(32 * 1024).fill(1));
  const pin = Buffer.allocUnsafeSlow(32 * 1024).fill(2);
  const grown = mallocInfo()!;
  assert.ok(grown.inUse - before.inUse >= 60 * MB, `inUse grew by ${(grown.inUse - before.inUse) / MB} MB`);
  assert.equal(blocks.length, 2048);
  blocks.length = 0;
  // V8 frees array buffer memory after a collection, possibly on a helper thread: wait (bounded) until it has.
  let freed = mallocInfo()!;
  for (let i = 0; i < 100 && freed.inUse - before.inUse > 16 * MB; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
    freed = mallocInfo()!;
  }
  assert.ok(freed.inUse - before.inUse < 16 * MB, "blocks freed");
  assert.ok(freed.free >= 48 * MB, `free in the arenas: ${freed.free / MB} MB`);
  const rss0 = process.memoryUsage.rss();
  assert.equal(trimMemory(), true, "free pages were released");
  const rss1 = process.memoryUsage.rss();
  assert.ok(rss0 - rss1 >= 32 * MB, `RSS fell by ${(rss0 - rss1) / MB} MB`);
  assert.ok(mallocInfo()!.inUse >= freed.inUse - MB, "live allocations untouched");
  assert.equal(pin[0], 2);
  assert.equal(pin.at(-1), 2);
});
