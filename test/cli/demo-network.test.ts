/**
 * `seng demo`, the README's first command, as CI runs it: every case as expected, and nothing left behind —
 * after a normal run, after Ctrl-C, and after `--keep` followed by `--clean`.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../helpers/netns.js";

const CLI = ["--import", "tsx", join(ROOT, "src/cli/main.ts")];
const CASES = [
  "browser app → web server",
  "browser app → IPv6-only web server",
  "db-client app → database",
  "db-client app → web server",
  "alice without runtime → web server",
  "tampered browser build",
  "internet → enclave server app",
  "db-client revoked while running",
];

function leftovers(): string[] {
  const ns = execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
    .split("\n")
    .map((l) => l.split(" ")[0]!)
    .filter((n) => n.startsWith("seng-demo-"));
  const dirs = readdirSync(tmpdir()).filter((d) => d.startsWith("seng-demo-"));
  return [
    ...ns,
    ...dirs.map((d) => join(tmpdir(), d)),
    ...(existsSync("/run/seng-demo.dir") ? ["state"] : []),
  ];
}

function seng(args: string[], timeout = 240_000) {
  return spawnSync(process.execPath, [...CLI, ...args], { encoding: "utf8", timeout, cwd: ROOT });
}

describe("seng demo (network)", { concurrency: false }, () => {
  test("--quiet: every case as expected, only the table, and nothing left behind", () => {
    const r = seng(["demo", "--quiet"]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    for (const c of CASES) assert.match(r.stdout, new RegExp(`${c}.*\\bok$`, "m"), `${c}:\n${r.stdout}`);
    assert.match(r.stdout, /all 8 cases as expected/);
    // The gateway attributed the browser's traffic to the browser app, and the audit log agrees.
    assert.match(r.stdout, /browser app → web server .* browser @ 100\.64\.1\.\d+/);
    assert.match(r.stdout, /\$ seng audit who 100\.64\.1\.\d+\n[^\n]*browser/);
    // The dual-stack browser reached the IPv6-only server with its IPv6 address, attributed and audited.
    assert.match(r.stdout, /browser app → IPv6-only web server .* browser @ fd64:1::[0-9a-f:]+ *ok$/m);
    assert.match(r.stdout, /\$ seng audit who fd64:1::[0-9a-f:]+\n[^\n]*browser/);
    assert.doesNotMatch(r.stdout, /building the network/, "quiet prints only the table");
    assert.deepEqual(leftovers(), []);
  });

  test("Ctrl-C in the middle removes everything", async () => {
    const p = spawn(process.execPath, [...CLI, "demo"], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    p.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    const end = Date.now() + 120_000;
    while (!/\[2\]/.test(out) && Date.now() < end && p.exitCode === null)
      await new Promise((r) => setTimeout(r, 100));
    assert.match(out, /\[2\]/, out);
    p.kill("SIGINT");
    const code = await new Promise<number | null>((r) => p.once("exit", (c) => r(c)));
    assert.equal(code, 130);
    assert.deepEqual(leftovers(), []);
  });

  test("--keep leaves the network up for exploration; --clean removes it", () => {
    try {
      const r = seng(["demo", "--quiet", "--keep"]);
      assert.equal(r.status, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /Remove it: seng demo --clean/);
      assert.ok(leftovers().includes("seng-demo-gw"));
      // The gateway still runs: the enclave server app is still reachable from the internet side.
      const addr = /internet → enclave server app .* intranet-api @ (100\.64\.3\.\d+)/.exec(r.stdout)?.[1];
      assert.ok(addr, r.stdout);
      const c = spawnSync(
        "ip",
        ["netns", "exec", "seng-demo-inet", "curl", "-sS", "--max-time", "5", `http://${addr}:8080/`],
        {
          encoding: "utf8",
        },
      );
      assert.equal(c.stdout.trim(), "hello from the enclave", c.stderr);
      // Another demo run does not silently remove the kept network: it refuses, and the network stays.
      const again = seng(["demo", "--quiet"], 60_000);
      assert.equal(again.status, 2, again.stdout + again.stderr);
      assert.match(again.stderr, /^seng: demo: a demo network is still up .*seng demo --clean/);
      assert.ok(leftovers().includes("seng-demo-gw"), "the kept network is still there");
    } finally {
      const c = seng(["demo", "--clean"], 60_000);
      assert.equal(c.status, 0, c.stderr);
    }
    assert.deepEqual(leftovers(), []);
  });
});
