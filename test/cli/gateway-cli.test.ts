/** `seng gateway reload` when no gateway runs: one line that says so, exit 2, never a stack trace. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../helpers/vectors.js";

test("gateway reload without a running gateway: no pid file, then a stale one", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-reload-"));
  try {
    const cfg = join(dir, "g.yaml");
    writeFileSync(
      cfg,
      [
        "listen: 0.0.0.0:4433",
        "certificate: gw.pem",
        "key: gw.key",
        "database: seng.db",
        "tun: { address: 100.64.0.1/32 }",
        `apps: [{ name: a, subnet: 100.64.1.0/24, identities: [{ mrenclave: "${"aa".repeat(32)}" }] }]`,
        "",
      ].join("\n"),
    );
    const reload = () =>
      spawnSync(
        process.execPath,
        ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "gateway", "reload", "--config", cfg],
        {
          encoding: "utf8",
        },
      );
    const none = reload();
    assert.equal(none.status, 2);
    assert.match(none.stderr, /seng\.db\.pid: no pid file: is the gateway running with this configuration\?/);
    // A pid that cannot be a live process (above the kernel's pid_max).
    writeFileSync(join(dir, "seng.db.pid"), "99999999\n");
    const stale = reload();
    assert.equal(stale.status, 2);
    assert.match(stale.stderr, /the gateway with pid 99999999 is not running \(a stale pid file/);
    for (const r of [none, stale]) assert.doesNotMatch(r.stderr, /^\s+at /m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
