/** The SQLite store (one gateway) through the conformance suite. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
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
