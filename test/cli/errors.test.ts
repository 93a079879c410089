/**
 * The CLI when things go wrong (issue 14): every case is one line starting with `seng:`, exit 2 (1 only for a
 * negative answer), no stack trace, and nothing changed on the machine. Plus the CLI's shared surface: --version,
 * `version`, `gateway init`, SENG_CONFIG, completion.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../helpers/netns.js";
import { LeaseStore } from "../../src/gateway/leases.js";
import { hasNetAdmin, interfaces } from "../../src/gateway/preflight.js";
import { flagNames } from "../../src/cli/runtime.js";

const CLI = join(ROOT, "src/cli/main.ts");

function seng(args: string[], env: NodeJS.ProcessEnv = {}, cwd = ROOT) {
  const r = spawnSync(process.execPath, ["--import", "tsx", CLI, ...args], {
    encoding: "utf8",
    cwd,
    timeout: 60_000,
    env: { ...process.env, SENG_CONFIG: "", ...env },
  });
  assert.notEqual(r.signal, "SIGTERM", `seng ${args.join(" ")} did not finish (spinning?)`);
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** One line, prefixed `seng:`, matching `re`, exit `code`, no stack trace. */
function fails(r: { code: number | null; stderr: string }, re: RegExp, code = 2): void {
  assert.equal(r.code, code, r.stderr);
  assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
  const lines = r.stderr
    .split("\n")
    .filter((l) => l && !l.startsWith("seng: warning:") && l !== "(run with --help for usage)");
  assert.equal(lines.length, 1, `one line:\n${r.stderr}`);
  assert.match(lines[0]!, /^seng: /);
  assert.match(lines[0]!, re);
}

const dir = mkdtempSync(join(tmpdir(), "seng-cli-errors-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

describe("gateway init", () => {
  const gw = join(dir, "etc");
  const state = join(dir, "state");
  test("writes a commented config, keys and token with safe modes; the config passes policy check", () => {
    const r = seng(["gateway", "init", "--dir", gw, "--state", state, "--lan", "lan0", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as Record<string, string>;
    assert.match(out.fingerprint!, /^[0-9a-f]{64}$/);
    const mode = (p: string) => statSync(p).mode & 0o777;
    assert.equal(mode(gw), 0o700);
    assert.equal(mode(state), 0o700);
    assert.equal(mode(join(gw, "gateway.key")), 0o600);
    assert.equal(mode(join(gw, "admin.token")), 0o600);
    assert.equal(mode(join(gw, "gateway.yaml")), 0o600);
    const yaml = readFileSync(join(gw, "gateway.yaml"), "utf8");
    assert.match(yaml, /^\s+drop: true$/m, "unshielded traffic dropped by default");
    assert.match(yaml, /^# /m, "commented");
    const check = seng(["policy", "check", "--config", join(gw, "gateway.yaml"), "--json"]);
    assert.equal(check.code, 0, check.stderr);
    assert.deepEqual((JSON.parse(check.stdout) as { unshieldedDropped: string[] }).unshieldedDropped, [
      "lan0",
    ]);
    // SENG_CONFIG names the file for every command that reads it.
    assert.equal(seng(["policy", "check"], { SENG_CONFIG: join(gw, "gateway.yaml") }).code, 0);
  });
  test("refuses to overwrite anything, and writes nothing", () => {
    const key = readFileSync(join(gw, "gateway.key"), "utf8");
    const yaml = readFileSync(join(gw, "gateway.yaml"), "utf8");
    rmSync(join(gw, "gateway.yaml"));
    fails(seng(["gateway", "init", "--dir", gw, "--state", state]), /gateway\.pem.*exist/);
    assert.equal(readFileSync(join(gw, "gateway.key"), "utf8"), key);
    assert.ok(!existsSync(join(gw, "gateway.yaml")), "nothing written");
    writeFileSync(join(gw, "gateway.yaml"), yaml); // for the tests below
  });
});

describe("policy check validates what the gateway would die on", () => {
  const base = join(dir, "etc", "gateway.yaml");
  const variant = (from: RegExp, to: string): string => {
    const f = join(dir, "etc", "variant.yaml");
    const text = readFileSync(base, "utf8");
    assert.match(text, from);
    writeFileSync(f, text.replace(from, to));
    return f;
  };
  const cases: [RegExp, string, RegExp][] = [
    [/^listen: .*$/m, "listen: localhost:4433", /variant\.yaml: listen: .*IP address.*localhost/],
    [/^listen: .*$/m, "listen: 0.0.0.0:99999", /variant\.yaml: listen: .*port of 0-65535, got 99999/],
    [
      /^certificate: .*$/m,
      "certificate: absent.pem",
      /variant\.yaml: certificate: .*absent\.pem: no such file/,
    ],
    [/^key: .*$/m, "key: absent.key", /variant\.yaml: key: .*absent\.key: no such file/],
    [/^key: .*$/m, "key: gateway.pem", /variant\.yaml: key: .*not a PEM private key/],
    [
      /^database: .*$/m,
      "database: /nonexistent-seng/seng.db\ntrust: { simulatedRoots: [nope/root.pem] }",
      /variant\.yaml: trust\.simulatedRoots\[0\]: .*nope\/root\.pem: no such file/,
    ],
    [
      /^database: .*$/m,
      "database: /nonexistent-seng/seng.db",
      /database: the folder \/nonexistent-seng .*does not exist/,
    ],
  ];
  for (const [from, to, re] of cases)
    test(to.split("\n")[0]!, () => {
      const r = seng(["policy", "check", "--config", variant(from, to)]);
      fails(r, re);
      assert.equal(r.stdout, "");
    });
  test("the positional form still works, with a deprecation warning", () => {
    const r = seng(["policy", "check", base]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^seng: warning: a positional <config> is deprecated/);
  });
});

describe("exit codes: 0 allow, 1 deny, 2 broken", () => {
  test("policy explain", () => {
    const cfg = join(dir, "etc", "explain.yaml");
    writeFileSync(
      cfg,
      readFileSync(join(dir, "etc", "gateway.yaml"), "utf8").replace(
        "  rules: []",
        "  rules: [{ from: example-app, to: 192.0.2.10, proto: tcp, ports: [443], action: allow }]",
      ),
    );
    assert.equal(
      seng(["policy", "explain", "--config", cfg, "example-app", "192.0.2.10", "tcp/443"]).code,
      0,
    );
    const deny = seng(["policy", "explain", "--config", cfg, "example-app", "192.0.2.10", "tcp/80"]);
    assert.equal(deny.code, 1);
    assert.match(deny.stdout, /^DENY by policy\.default/);
    writeFileSync(cfg, "listen: [\n");
    fails(
      seng(["policy", "explain", "--config", cfg, "example-app", "192.0.2.10", "tcp/80"]),
      /not valid YAML/,
    );
    fails(
      seng(["policy", "explain", "--config", join(dir, "absent.yaml"), "a", "1.2.3.4", "tcp/1"]),
      /absent\.yaml: cannot read/,
    );
  });
});

describe("one clear line instead of a stack trace or a hang", () => {
  test("audit export --out into a missing folder", () => {
    const db = join(dir, "audit.db");
    new LeaseStore(db, [{ name: "a", subnet: "100.64.1.0/24" }]).close();
    fails(
      seng(["audit", "export", "--db", db, "--out", "/nonexistent-seng/dir/x"]),
      /--out \/nonexistent-seng\/dir\/x: cannot write: no such folder/,
    );
    const out = join(dir, "audit.jsonl");
    assert.equal(seng(["audit", "export", "--db", db, "--out", out]).code, 0);
    assert.ok(existsSync(out));
  });
  test("status --url notaurl", () => {
    fails(seng(["status", "--url", "notaurl", "--token-file", "x"]), /--url notaurl: expected a URL/);
  });
  test("keygen --dir under /proc (Node's recursive mkdir spun forever there)", () => {
    fails(seng(["gateway", "keygen", "--dir", "/proc/seng-nope/x"]), /--dir .*kernel file system/);
    fails(seng(["gateway", "keygen", "--dir", join(dir, "etc", "gateway.pem", "x")]), /is not a folder/);
  });
  test("an unknown --log value is refused (it used to mean off), for the runtime and the gateway", () => {
    fails(seng(["runtime", "run", "--log", "verbose", "--", "node", "-e", "1"]), /--log .*verbose.*invalid/);
    fails(seng(["gateway", "--log", "verbose"]), /--log .*verbose.*invalid/);
    fails(
      seng(
        ["runtime", "run", "--gateway", "198.18.1.1:1", "--pin", "aa".repeat(32), "--", "node", "-e", "1"],
        {
          SENG_LOG: "verbose",
          SENG_TEE: "tsm",
        },
      ),
      /SENG_LOG: expected json or off, got verbose/,
    );
  });
  test("a value given as a flag is reported under the flag's name, a variable's under its own", () => {
    fails(
      seng(["runtime", "run", "--gateway", "nowhere", "--pin", "aa".repeat(32), "--", "node"]),
      /--gateway: /,
    );
    assert.equal(
      flagNames("SENG_GATEWAY: bad; SENG_PIN: bad", { gateway: "x" }),
      "--gateway: bad; SENG_PIN: bad",
    );
  });
  test("unknown commands and options carry the prefix too", () => {
    const r = seng(["nosuchcommand"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^seng: unknown command 'nosuchcommand'/);
  });
});

describe("one CLI", () => {
  const version = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string })
    .version;
  test("--version and version print package.json's version", () => {
    assert.equal(seng(["--version"]).stdout.trim(), version);
    assert.equal(seng(["version"]).stdout.trim(), version);
  });
  test("every command's --help has examples and exit codes", () => {
    for (const args of [
      ["policy", "check"],
      ["policy", "explain"],
      ["gateway"],
      ["gateway", "init"],
      ["gateway", "reload"],
      ["gateway", "keygen"],
      ["audit", "who"],
      ["status"],
      ["runtime", "run"],
      ["completion"],
      ["attest", "verify"],
      ["demo"],
      ["test-client"],
      ["version"],
    ]) {
      const r = seng([...args, "--help"]);
      assert.equal(r.code, 0, args.join(" "));
      assert.match(r.stdout, /\nExamples:\n {2}\$ seng /, args.join(" "));
      assert.match(r.stdout, /\nExit codes: /, args.join(" "));
    }
  });
  test("bash completion completes subcommands and flags", () => {
    const script = seng(["completion", "bash"]);
    assert.equal(script.code, 0);
    const file = join(dir, "seng.bash");
    writeFileSync(file, script.stdout);
    const complete = (words: string[]) =>
      spawnSync(
        "bash",
        [
          "-c",
          `source ${file}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _seng; echo "\${COMPREPLY[*]}"`,
        ],
        { encoding: "utf8" },
      ).stdout.trim();
    assert.equal(complete(["seng", "pol"]), "policy");
    assert.deepEqual(complete(["seng", "policy", "c"]).split(" ").sort(), ["check", "compile"]);
    assert.match(complete(["seng", "gateway", "reload", "--j"]), /^--json$/);
  });
});

describe("preflight helpers", () => {
  test("CAP_NET_ADMIN is read from CapEff", () => {
    assert.equal(hasNetAdmin("Name:\tx\nCapEff:\t000001ffffffffff\n"), true);
    assert.equal(hasNetAdmin("CapEff:\t0000000000000000\n"), false);
    assert.equal(hasNetAdmin("CapEff:\t0000000000001000\n"), true, "bit 12 alone");
    assert.equal(hasNetAdmin("CapEff:\t0000000000000fff\n"), false, "bits 0-11 only");
  });
  test("interfaces of this namespace come from /proc/net/dev", () => {
    const dev = "Inter-|   Receive\n face |bytes\n    lo: 1 2 3\n seng0: 4 5 6\n";
    assert.deepEqual(interfaces(dev), ["lo", "seng0"]);
  });
});
