/**
 * `seng gateway` when it cannot or must not start (issue 14): one line naming the cause, exit 2, and the machine as
 * it was: no half-applied nftables table or TUN after a failed start, a refused second gateway leaves the running
 * one's admin socket alone, missing privileges are said before the database is touched. In a namespace of its own.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { Netns, ROOT, type NsProcess } from "../helpers/netns.js";
import { waitLine } from "../helpers/lab.js";

const CLI = join(ROOT, "src/cli/main.ts");
let ns: Netns;
let dir: string;

function config(
  name: string,
  o: { listen?: string; database?: string; socket?: string; tun?: string } = {},
): string {
  const f = join(dir, `${name}.yaml`);
  writeFileSync(
    f,
    [
      `listen: ${o.listen ?? "127.0.0.1:4433"}`,
      "certificate: gateway.pem",
      "key: gateway.key",
      `database: ${o.database ?? "seng.db"}`,
      ...(o.socket ? [`admin: { socket: ${o.socket} }`] : []),
      `tun: { name: ${o.tun ?? "seng0"}, address: 100.64.0.1/32 }`,
      `apps: [{ name: a, subnet: 100.64.1.0/24, identities: [{ mrenclave: "${"aa".repeat(32)}" }] }]`,
      "firewall: { unshielded: { drop: true, interfaces: [lan9] } }",
      "policy: { default: deny }",
      "",
    ].join("\n"),
  );
  return f;
}

async function gateway(cfg: string, wrap: string[] = []) {
  const r = await ns.exec(
    wrap[0] ?? process.execPath,
    [
      ...wrap.slice(1),
      ...(wrap.length ? [process.execPath] : []),
      "--import",
      "tsx",
      CLI,
      "gateway",
      "--config",
      cfg,
    ],
    {
      check: false,
      timeoutMs: 60_000,
    },
  );
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
  return r;
}

const oneLine = (stderr: string) => stderr.split("\n").filter(Boolean);

before(async () => {
  ns = await Netns.create("gwstart");
  dir = mkdtempSync(join(tmpdir(), "seng-gwstart-"));
  execFileSync(process.execPath, ["--import", "tsx", CLI, "gateway", "keygen", "--dir", dir], { cwd: ROOT });
});

after(async () => {
  await ns?.delete();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("seng gateway: failed and refused starts leave the machine as it was", () => {
  test("a start that fails after the TUN and the table were made removes both", async () => {
    // A valid address that is not this namespace's: the UDP bind fails after the TUN, routes and table exist.
    const r = await gateway(config("nonlocal", { listen: "198.18.0.99:4433", database: "nonlocal.db" }));
    assert.equal(r.code, 2, r.stderr);
    assert.deepEqual(oneLine(r.stderr).length, 1, r.stderr);
    assert.match(r.stderr, /^seng: gateway: cannot start: .*(EADDRNOTAVAIL|address not available)/i);
    const tables = (await ns.exec("nft", ["list", "tables"])).stdout;
    assert.doesNotMatch(tables, /inet seng/, "no half-applied policy table");
    const links = (await ns.exec("ip", ["-o", "link"])).stdout;
    assert.doesNotMatch(links, /seng0/, "no TUN left");
    assert.doesNotMatch((await ns.exec("ip", ["route"])).stdout, /100\.64\.1\.0/, "no route left");
  });

  test("without CAP_NET_ADMIN: said before the database is touched", async () => {
    const cfg = config("nocap", { database: "nocap.db" });
    const r = await gateway(cfg, ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /^seng: gateway: needs root or CAP_NET_ADMIN/);
    assert.ok(!existsSync(join(dir, "nocap.db")), "the database was not created");
  });

  describe("a second gateway next to a running one", () => {
    let first: NsProcess;
    before(async () => {
      first = ns.spawn(process.execPath, ["--import", "tsx", CLI, "gateway", "--config", config("first")]);
      await waitLine(first, (o) => o.event === "admin-started", 30_000);
    });
    after(async () => {
      await first?.kill("SIGTERM", 5000);
    });

    test("the same database: refused with the running gateway's pid", async () => {
      const r = await gateway(config("same-db", { listen: "127.0.0.1:4434" }));
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`database: another gateway \\(pid ${first.child.pid}`));
      assert.ok(existsSync(join(dir, "admin.sock")), "the running gateway's admin socket is still there");
    });

    test("the same admin socket: refused, and the socket is left alone", async () => {
      const r = await gateway(
        config("same-sock", { listen: "127.0.0.1:4434", database: "other.db", socket: "admin.sock" }),
      );
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /admin\.socket: .*admin\.sock is in use by a running gateway/);
      assert.ok(existsSync(join(dir, "admin.sock")), "the running gateway's admin socket is still there");
      assert.ok(!existsSync(join(dir, "other.db")), "the database was not created");
    });

    test("the same TUN: refused naming the pid that holds it, before the database is touched", async () => {
      const r = await gateway(
        config("same-tun", { listen: "127.0.0.1:4434", database: "tun.db", socket: "tun.sock" }),
      );
      assert.equal(r.code, 2, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(`tun\\.name: the interface seng0 exists already and is held by pid ${first.child.pid}`),
      );
      assert.ok(!existsSync(join(dir, "tun.db")), "the database was not created");
      // The running gateway still answers on its socket.
      const st = await ns.exec(process.execPath, [
        "--import",
        "tsx",
        CLI,
        "status",
        "--socket",
        join(dir, "admin.sock"),
        "--json",
      ]);
      assert.equal((JSON.parse(st.stdout) as { gateway: { tun: string } }).gateway.tun, "seng0");
      assert.equal(readFileSync(join(dir, "seng.db.pid"), "utf8").trim(), String(first.child.pid));
    });
  });
});
