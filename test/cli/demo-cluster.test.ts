/**
 * `seng demo cluster`: every case as expected (the app keeps its address and its TCP connection when its gateway is
 * killed, BGP moves its route), and nothing left behind: namespaces, the demo's folder, the state file, and every
 * process it started (etcd members, BIRD daemons, gateways, apps), after a normal run and after Ctrl-C.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../helpers/netns.js";

const CLI = ["--import", "tsx", join(ROOT, "src/cli/main.ts")];
const CASES = [
  "app → server",
  "server → app \\(its listener\\)",
  "kill -9 gw1: the app comes back",
  "the router's route for the app",
  "gw1's BIRD",
  "server → app after the move",
  "the app's TCP connection across the move",
  "one etcd member killed: a new instance",
];
const skip = process.getuid?.() !== 0 ? "needs root" : !existsSync("/usr/sbin/bird") ? "needs bird2" : false;

/** Processes whose command line names a cluster demo folder (etcd, BIRD, gateways, apps all do). */
function demoProcesses(): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " ");
      if (cmd.includes(join(tmpdir(), "seng-dcluster-"))) out.push(`${pid}: ${cmd}`);
    } catch {
      // gone
    }
  }
  return out;
}

function leftovers(): string[] {
  const ns = execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
    .split("\n")
    .map((l) => l.split(" ")[0]!)
    .filter((n) => n.startsWith("seng-dc-"));
  const dirs = readdirSync(tmpdir()).filter((d) => d.startsWith("seng-dcluster-"));
  return [
    ...ns,
    ...dirs.map((d) => join(tmpdir(), d)),
    ...(existsSync("/run/seng-demo-cluster.dir") ? ["state"] : []),
    ...demoProcesses(),
  ];
}

describe("seng demo cluster", { concurrency: false, skip }, () => {
  test("--quiet: every case as expected, and nothing left behind", () => {
    const r = spawnSync(process.execPath, [...CLI, "demo", "cluster", "--quiet"], {
      encoding: "utf8",
      timeout: 240_000,
      cwd: ROOT,
    });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    for (const c of CASES) assert.match(r.stdout, new RegExp(`^${c} .*\\bok$`, "m"), `${c}:\n${r.stdout}`);
    assert.match(r.stdout, /all 8 cases as expected/);
    assert.match(r.stdout, /svc @ (100\.64\.1\.\d+), first packet after \d+ ms/);
    assert.deepEqual(leftovers(), []);
  });

  test("Ctrl-C in the middle removes everything", async () => {
    const p = spawn(process.execPath, [...CLI, "demo", "cluster"], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    p.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    const end = Date.now() + 120_000;
    while (!/\[1\]/.test(out) && Date.now() < end && p.exitCode === null)
      await new Promise((r) => setTimeout(r, 100));
    assert.match(out, /\[1\]/, out);
    p.kill("SIGINT");
    const code = await new Promise<number | null>((r) => p.once("exit", (c) => r(c)));
    assert.equal(code, 130);
    assert.deepEqual(leftovers(), []);
  });
});
