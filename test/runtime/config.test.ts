/**
 * The runtime's settings (src/runtime/config.ts) and the `seng runtime` commands' error paths: where a setting comes
 * from (file < SENG_* variables < flags), errors that name the file or variable, the key and what was expected, and
 * one-line messages with exit code 2 from the CLI, never a stack trace.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { configFromEnv, RuntimeConfigError } from "../../src/runtime/config.js";
import { flagsToEnv } from "../../src/cli/runtime.js";
import { createSimSnp, saveSimSnp } from "../../src/attest/sim-snp.js";
import { ROOT } from "../helpers/netns.js";

const dir = mkdtempSync(join(tmpdir(), "seng-rtcfg-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const FP = "ab".repeat(32);
const MR = "a1".repeat(32);

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe("runtime config", () => {
  test("a config file gives every setting; relative paths are resolved against its folder", () => {
    writeFileSync(join(dir, "gw.fp"), FP.toUpperCase() + "\n");
    const f = file(
      "full.yaml",
      [
        "gateway: 198.18.1.1:4433",
        "pin: gw.fp",
        "tee: sim",
        `sim: { dir: simdir, mrenclave: "${MR}", isvsvn: 3, debug: true }`,
        "leaseTimeoutSeconds: 5",
        "deadSeconds: 7",
        "log: json",
        "tun: { name: seng-t1, routes: [default, 198.18.2.0/24] }",
      ].join("\n"),
    );
    const c = configFromEnv({ SENG_CONFIG: f });
    assert.equal(c.gateway, "198.18.1.1:4433");
    assert.equal(c.pin, FP);
    assert.equal(c.tee, "sim");
    assert.deepEqual(c.sim, {
      dir: join(dir, "simdir"),
      claims: { mrenclave: MR, mrsigner: "00".repeat(32), isvprodid: 0, isvsvn: 3, debug: true },
    });
    assert.equal(c.leaseTimeoutMs, 5000);
    assert.equal(c.deadSeconds, 7);
    assert.equal(c.log, true);
    assert.deepEqual(c.tun, { name: "seng-t1", routes: ["default", "198.18.2.0/24"] });
  });

  test("variables override the file, flags (as variables) override both", () => {
    const f = file("base.yaml", `gateway: 198.18.1.1:4433\npin: "${FP}"\ndeadSeconds: 7\n`);
    const env = { SENG_CONFIG: f, SENG_DEAD_SECONDS: "9", SENG_GATEWAY: "198.18.9.9:1" };
    assert.equal(configFromEnv(env).deadSeconds, 9);
    assert.equal(configFromEnv(env).gateway, "198.18.9.9:1");
    const flags = flagsToEnv({ gateway: "198.18.3.3:44", route: ["a", "b"], tun: "x0" });
    const c = configFromEnv({ ...env, ...flags });
    assert.equal(c.gateway, "198.18.3.3:44");
    assert.deepEqual(c.tun, { name: "x0", routes: ["a", "b"] });
    // Flags not given leave the file's values alone (no defaults sneak in from the command line).
    assert.deepEqual(Object.keys(flagsToEnv({})), []);
  });

  test("defaults", () => {
    const c = configFromEnv({ SENG_GATEWAY: "gw.example:4433", SENG_PIN: FP });
    assert.equal(c.tee, "auto");
    assert.equal(c.sim, undefined);
    assert.equal(c.leaseTimeoutMs, 30_000);
    assert.equal(c.deadSeconds, 30);
    assert.equal(c.log, false);
    assert.deepEqual(c.tun, { name: "seng-rt0", routes: [] });
  });

  test("allowHostPrograms and allowAddons: file, variables, flags; unset addons means any (warned)", () => {
    const f = file(
      "allow.yaml",
      `gateway: a:1\npin: "${FP}"\nallowHostPrograms: [/usr/bin/git]\nallowAddons: [lib/x.node, "${"AB".repeat(32)}"]\n`,
    );
    const c = configFromEnv({ SENG_CONFIG: f });
    assert.deepEqual(c.allowHostPrograms, ["/usr/bin/git"]);
    assert.deepEqual(c.allowAddons, [join(dir, "lib/x.node"), "ab".repeat(32)]);
    const v = configFromEnv({
      SENG_CONFIG: f,
      SENG_ALLOW_HOST_PROGRAMS: "/bin/a,/bin/b",
      SENG_ALLOW_ADDONS: "none",
    });
    assert.deepEqual(v.allowHostPrograms, ["/bin/a", "/bin/b"]);
    assert.deepEqual(v.allowAddons, [], "none: SENG's own addon only");
    const flags = flagsToEnv({ allowHostProgram: ["/usr/bin/curl"], allowAddon: ["cd".repeat(32)] });
    assert.deepEqual(flags, {
      SENG_ALLOW_HOST_PROGRAMS: "/usr/bin/curl",
      SENG_ALLOW_ADDONS: "cd".repeat(32),
    });
    const d = configFromEnv({ SENG_GATEWAY: "a:1", SENG_PIN: FP });
    assert.deepEqual(d.allowHostPrograms, []);
    assert.equal(d.allowAddons, undefined);
    assert.throws(
      () => configFromEnv({ SENG_GATEWAY: "a:1", SENG_PIN: FP, SENG_ALLOW_HOST_PROGRAMS: "git" }),
      /SENG_ALLOW_HOST_PROGRAMS: expected absolute paths such as \/usr\/bin\/git, got git/,
    );
    assert.throws(
      () => configFromEnv({ SENG_GATEWAY: "a:1", SENG_PIN: FP, SENG_ALLOW_ADDONS: "x.node" }),
      /SENG_ALLOW_ADDONS: expected absolute paths or SHA-256 hashes \(64 hex\), got x\.node/,
    );
  });

  test("a gateway list: comma-separated in SENG_GATEWAY or --gateway, a list or a string in the file", () => {
    assert.equal(configFromEnv({ SENG_GATEWAY: "a:1,b:2", SENG_PIN: FP }).gateway, "a:1,b:2");
    const f = file("list.yaml", `gateway: [198.18.1.1:4433, "[fd64::1]:4433"]\npin: "${FP}"\n`);
    assert.equal(configFromEnv({ SENG_CONFIG: f }).gateway, "198.18.1.1:4433,[fd64::1]:4433");
    assert.throws(
      () => configFromEnv({ SENG_GATEWAY: "a:1,b", SENG_PIN: FP }),
      /SENG_GATEWAY: expected host:port, got a:1,b \(several: separated by commas\)/,
    );
    const g = file("badlist.yaml", `gateway: [198.18.1.1:4433, nope]\npin: "${FP}"\n`);
    assert.throws(
      () => configFromEnv({ SENG_CONFIG: g }),
      /badlist\.yaml: gateway: expected host:port such as 198\.18\.1\.1:4433, or a list of them/,
    );
  });

  const bad: [string, string, RegExp][] = [
    ["unknown key", "gateway: a:1\npinn: x\n", /bad1\.yaml: \(top level\): unknown key\(s\) pinn/],
    ["gateway without port", "gateway: 198.18.1.1\n", /bad2\.yaml: gateway: expected host:port/],
    ["tee not a kind", "tee: sgx\n", /bad3\.yaml: tee: /],
    ["sim without mrenclave", "sim: { dir: x }\n", /bad4\.yaml: sim\.mrenclave: expected string/],
    ["negative seconds", "deadSeconds: -1\n", /bad5\.yaml: deadSeconds: /],
    [
      "interface name too long",
      "tun: { name: a-very-long-interface-name }\n",
      /bad6\.yaml: tun\.name: expected an interface name/,
    ],
    ["not YAML", "gateway: [\n", /bad7\.yaml:\d+:\d+: not valid YAML/],
    ["a list, not a map", "- a\n- b\n", /bad8\.yaml: \(top level\): expected object/],
    [
      "a program by name",
      "allowHostPrograms: [git]\n",
      /bad9\.yaml: allowHostPrograms\[0\]: expected an absolute path such as \/usr\/bin\/git, got git/,
    ],
    ["addons not a list", "allowAddons: x.node\n", /bad10\.yaml: allowAddons: expected array/],
  ];
  bad.forEach(([what, text, re], i) => {
    test(`a broken file is refused, naming file and key: ${what}`, () => {
      const f = file(`bad${i + 1}.yaml`, text);
      assert.throws(
        () => configFromEnv({ SENG_CONFIG: f }),
        (e: Error) => e instanceof RuntimeConfigError && re.test(e.message),
      );
    });
  });

  test("a simulated SEV-SNP directory takes a MEASUREMENT (and HOST_DATA) instead of an MRENCLAVE", async () => {
    const snpDir = join(dir, "sim-snp");
    saveSimSnp(await createSimSnp(), snpDir);
    const base = { SENG_GATEWAY: "x:1", SENG_PIN: FP, SENG_SIM_DIR: snpDir };
    const c = configFromEnv({ ...base, SENG_MEASUREMENT: "AB".repeat(48), SENG_HOST_DATA: "cd".repeat(32) });
    assert.deepEqual(c.sim, {
      dir: snpDir,
      snp: { measurement: "ab".repeat(48), hostData: "cd".repeat(32), debug: false },
    });
    const f = file(
      "snp.yaml",
      `gateway: a:1\npin: "${FP}"\nsim: { dir: sim-snp, measurement: "${"ef".repeat(48)}", debug: true }\n`,
    );
    assert.deepEqual(configFromEnv({ SENG_CONFIG: f }).sim, {
      dir: snpDir,
      snp: { measurement: "ef".repeat(48), debug: true },
    });
    assert.throws(
      () => configFromEnv({ ...base, SENG_MRENCLAVE: MR }),
      /simulated SEV-SNP platform: it needs a MEASUREMENT/,
    );
    assert.throws(
      () => configFromEnv({ ...base, SENG_MEASUREMENT: "ab".repeat(48), SENG_HOST_DATA: "12" }),
      /SENG_HOST_DATA: expected 32 bytes/,
    );
  });

  test("a missing file, a missing gateway or pin, a bad variable: each says what and where", () => {
    const cases: [NodeJS.ProcessEnv, RegExp][] = [
      [{ SENG_CONFIG: join(dir, "nope.yaml") }, /nope\.yaml: cannot read: no such file/],
      [{}, /no gateway: set SENG_GATEWAY/],
      [{ SENG_GATEWAY: "x:1" }, /no gateway pin: set SENG_PIN/],
      [{ SENG_GATEWAY: "x", SENG_PIN: FP }, /SENG_GATEWAY: expected host:port, got x/],
      [{ SENG_GATEWAY: "x:1", SENG_PIN: "/nonexistent" }, /SENG_PIN: \/nonexistent is neither/],
      [
        { SENG_GATEWAY: "x:1", SENG_PIN: FP, SENG_TEE: "sgx" },
        /SENG_TEE: expected auto, gramine, tsm or sim/,
      ],
      [{ SENG_GATEWAY: "x:1", SENG_PIN: FP, SENG_TEE: "sim" }, /needs its directory/],
      [
        { SENG_GATEWAY: "x:1", SENG_PIN: FP, SENG_SIM_DIR: "/x", SENG_MRENCLAVE: "12" },
        /MRENCLAVE of 32 bytes/,
      ],
      [
        { SENG_GATEWAY: "x:1", SENG_PIN: FP, SENG_DEAD_SECONDS: "soon" },
        /SENG_DEAD_SECONDS: expected a positive/,
      ],
      [
        { SENG_GATEWAY: "x:1", SENG_PIN: FP, SENG_SIM_DIR: "/x", SENG_MRENCLAVE: MR, SENG_ISVSVN: "70000" },
        /SENG_ISVSVN: expected an integer/,
      ],
    ];
    for (const [env, re] of cases)
      assert.throws(
        () => configFromEnv(env),
        (e: Error) => e instanceof RuntimeConfigError && re.test(e.message),
        JSON.stringify(env),
      );
  });
});

describe("seng runtime: usage errors are one line and exit 2", () => {
  const seng = async (args: string[]) => {
    const r = await promisify(execFile)(
      process.execPath,
      ["--import", "tsx", join(ROOT, "src/cli/main.ts"), ...args],
      { cwd: ROOT, env: { ...process.env, SENG_GATEWAY: "", SENG_PIN: "", SENG_CONFIG: "" } },
    ).then(
      (o) => ({ code: 0, stderr: o.stderr }),
      (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
    );
    assert.doesNotMatch(r.stderr, /^\s+at /m, "no stack trace");
    return r;
  };
  const cases: [string[], RegExp][] = [
    [["runtime", "run", "--", "ls", "-l"], /runtime run: ls is not node/],
    [["runtime", "run", "--gateway", "198.18.1.1:4433"], /give the app after --|missing required argument/],
    [
      ["runtime", "run", "--gateway", "198.18.1.1", "--pin", FP, "--", "node"],
      /--gateway: expected host:port/,
    ],
    [
      ["runtime", "run", "--gateway", "198.18.1.1:1", "--pin", "/nonexistent", "--", "node"],
      /is neither a SHA-256/,
    ],
    [["runtime", "up", "--gateway", "198.18.1.1:1", "--pin", FP], /--tun is required/],
    [["runtime", "up", "--tun", "--config", join(dir, "absent.yaml")], /absent\.yaml: cannot read/],
    [
      ["runtime", "up", "--tun", "--gateway", "198.18.1.1:1", "--pin", FP, "--tee", "gramine"],
      /attestation|Gramine/i,
    ],
  ];
  for (const [args, re] of cases)
    test(args.join(" "), async () => {
      const r = await seng(args);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, re);
    });
});
