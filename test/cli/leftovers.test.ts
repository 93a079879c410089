/**
 * Two refusals that keep what exists (issue 14): `seng demo` does not silently remove a network kept with --keep,
 * and a revocation of an address without flows is not a conntrack failure.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { DemoBusyError, DemoNet } from "../../src/demo/network.js";
import { deleteFlows } from "../../src/firewall/conntrack.js";

test("seng demo refuses to start over a kept demo network, and builds nothing", async () => {
  const before = readdirSync(tmpdir()).filter((d) => d.startsWith("seng-demo-"));
  await assert.rejects(
    DemoNet.create(undefined, () => ["seng-demo-gw", "/tmp/seng-demo-kept"]),
    (e: Error) =>
      e instanceof DemoBusyError &&
      /a demo network is still up .*seng-demo-gw.*remove it with `seng demo --clean` first/.test(e.message),
  );
  assert.deepEqual(
    readdirSync(tmpdir()).filter((d) => d.startsWith("seng-demo-")),
    before,
    "no demo folder made",
  );
});

test("conntrack: 'such conntrack doesn't exist' (no flows) is zero deleted, a real failure still fails", async () => {
  const bin = mkdtempSync(join(tmpdir(), "seng-fake-conntrack-"));
  const path = process.env.PATH;
  try {
    const fake = (stderr: string, code: number) => {
      writeFileSync(join(bin, "conntrack"), `#!/bin/sh\necho "${stderr}" >&2\nexit ${code}\n`);
      chmodSync(join(bin, "conntrack"), 0o755);
    };
    process.env.PATH = `${bin}${delimiter}${path}`;
    fake("conntrack v1.4.7 (conntrack-tools): Operation failed: such conntrack doesn't exist", 1);
    assert.equal(await deleteFlows("100.64.1.7"), 0);
    fake("conntrack v1.4.7 (conntrack-tools): 2 flow entries have been deleted.", 0);
    assert.equal(await deleteFlows("100.64.1.7"), 4, "two per direction");
    fake("conntrack v1.4.7 (conntrack-tools): Operation failed: Operation not permitted", 1);
    await assert.rejects(deleteFlows("100.64.1.7"), /Operation not permitted/);
  } finally {
    process.env.PATH = path;
    rmSync(bin, { recursive: true, force: true });
  }
});
