/** The SQLite store (one gateway) through the conformance suite. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { intToIp } from "../../src/packet/ip.js";
import type { LeaseBackend } from "../../src/store/interface.js";
import { SqliteStore } from "../../src/store/sqlite.js";
import { conformance } from "./conformance.js";

conformance({
  name: "sqlite",
  crashBoundMs: 3000,
  async system() {
    const dir = mkdtempSync(join(tmpdir(), "seng-store-"));
    let current: LeaseBackend | undefined;
    return {
      // One gateway per database: every gateway name gets the open instance; after a crash, a restart on the file.
      async open(_gw, apps) {
        if (!current || !current.fence().held) current = new SqliteStore(join(dir, "leases.db"), apps);
        else await current.addApps(apps);
        return current;
      },
      async dispose() {
        await current?.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
});

test("sqlite store: a restart rebuilds the live sets from the audit log (grants minus releases)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-store-"));
  const apps = [{ name: "a", subnet: "100.64.1.0/29" }];
  try {
    let s = new SqliteStore(join(dir, "l.db"), apps);
    const x = (await s.acquire({ app: "a", keyFp: "k1", measurement: "m", outer: "o", now: 1, until: 100 }))!;
    const y = (await s.acquire({ app: "a", keyFp: "k2", measurement: "m", outer: "o", now: 1, until: 100 }))!;
    await s.acquire({ app: "a", keyFp: "k3", measurement: "m", outer: "o", now: 1, until: 5 });
    await s.release(x.id, 2);
    await s.close();
    s = new SqliteStore(join(dir, "l.db"), apps);
    assert.deepEqual(await s.members("a"), [intToIp(y.address), "100.64.1.3"]);
    await s.expire(10);
    assert.deepEqual(await s.members("a"), [intToIp(y.address)]);
    await s.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
