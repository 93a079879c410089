/** The demo is the README's first command: it must pass, and say so in its final table. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { ROOT } from "../helpers/vectors.js";

test("seng demo attest --quiet: every case as expected, exit 0, only the table", () => {
  const r = spawnSync(
    process.execPath,
    ["--import", "tsx", join(ROOT, "src/cli/main.ts"), "demo", "attest", "--quiet"],
    { encoding: "utf8" },
  );
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /all \d+ cases as expected/);
  assert.match(
    r.stdout,
    /browser evidence on a stolen key\s+refused: key_binding_invalid\s+refused: key_binding_invalid/,
  );
  assert.doesNotMatch(r.stdout, /creating a simulated/);
});
