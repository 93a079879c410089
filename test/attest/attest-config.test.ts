/**
 * The attestation part of the gateway configuration (issue 13): trust.clockSkewSeconds, the SEV-SNP identity keys
 * and the site-wide SNP minimum TCB, and the warning for TDX identities that pin no RTMR (at load, and printed by
 * `seng policy check`).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, parseConfig } from "../../src/policy/config.js";
import { ROOT, VECTORS } from "../helpers/vectors.js";

const MRTD = "ab".repeat(48);
const config = (identities: string, trust = ""): string => `
listen: 198.18.1.1:4433
certificate: gw.pem
key: gw.key
tun: { name: seng0, address: 100.64.0.1/32 }
${trust}
apps:
  - name: td
    subnet: 100.64.1.0/24
    identities: ${identities}
`;

function configError(text: string): string {
  try {
    parseConfig(text, "g.yaml");
  } catch (e) {
    assert.ok(e instanceof ConfigError, String(e));
    return e.message;
  }
  return "no error";
}

test("trust.clockSkewSeconds: default 60, configurable, bounded", () => {
  assert.equal(
    parseConfig(config(`[{ mrenclave: ${"ab".repeat(32)} }]`), "g.yaml").trust.clockSkewSeconds,
    60,
  );
  const c = parseConfig(
    config(`[{ mrenclave: ${"ab".repeat(32)} }]`, "trust: { clockSkewSeconds: 5 }"),
    "g.yaml",
  );
  assert.equal(c.trust.clockSkewSeconds, 5);
  assert.match(
    configError(config(`[{ mrenclave: ${"ab".repeat(32)} }]`, "trust: { clockSkewSeconds: -1 }")),
    /^g\.yaml: trust\.clockSkewSeconds: /,
  );
});

test("an mrtd identity without rtmr1-3 loads with a warning naming the key; pinned RTMRs do not warn", () => {
  const weak = parseConfig(
    config(`[{ mrtd: ${MRTD} }, { mrtd: ${MRTD}, rtmr0: ${"a1".repeat(48)} }]`),
    "g.yaml",
  );
  assert.equal(weak.warnings.length, 2);
  assert.match(
    weak.warnings[0]!,
    /^g\.yaml: apps\[0\]\.identities\[0\]: an mrtd identity without rtmr1-rtmr3 admits any TD/,
  );
  assert.match(weak.warnings[1]!, /^g\.yaml: apps\[0\]\.identities\[1\]: /);
  const pinned = parseConfig(
    config(`[{ mrtd: ${MRTD}, rtmr1: ${"a1".repeat(48)}, rtmr2: ${"a2".repeat(48)} }]`),
    "g.yaml",
  );
  assert.deepEqual(pinned.warnings, []);
  assert.deepEqual(parseConfig(config(`[{ mrenclave: ${"ab".repeat(32)} }]`), "g.yaml").warnings, []);
});

test("seng policy check prints the mrtd-only warning on stderr and still exits 0", () => {
  const dir = mkdtempSync(join(tmpdir(), "seng-attest-config-"));
  try {
    const file = join(dir, "gateway.yaml");
    // policy check also checks the files the gateway needs at start: a real key pair next to the config.
    const cli = ["--import", "tsx", join(ROOT, "src/cli/main.ts")];
    assert.equal(
      spawnSync(process.execPath, [...cli, "gateway", "keygen", "--dir", dir], { cwd: ROOT }).status,
      0,
    );
    writeFileSync(
      file,
      config(`[{ mrtd: ${MRTD} }]`)
        .replace("gw.pem", join(dir, "gateway.pem"))
        .replace("gw.key", join(dir, "gateway.key")),
    );
    const r = spawnSync(process.execPath, [...cli, "policy", "check", "--config", file], {
      cwd: ROOT,
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /: ok: 1 apps/);
    assert.match(
      r.stderr,
      /^seng: warning: .*gateway\.yaml: apps\[0\]\.identities\[0\]: an mrtd identity without rtmr1-rtmr3/m,
    );
    assert.match(r.stderr, /pin rtmr1 and rtmr2/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const SNP = "5e".repeat(48);

test("SEV-SNP identity keys and trust.snpMinTcb load; bad values name the key", () => {
  const c = parseConfig(
    config(
      `[{ measurement: ${SNP}, minTcb: { bootloader: 3, snp: 8 }, maxVmpl: 1, allowMigrationAgent: true }]`,
      "trust: { snpMinTcb: { Milan: { microcode: 115 }, Genoa: { microcode: 84 } } }",
    ),
    "g.yaml",
  );
  assert.deepEqual(c.apps[0]!.identities[0]!.minTcb, { bootloader: 3, snp: 8 });
  assert.equal(c.apps[0]!.identities[0]!.maxVmpl, 1);
  assert.deepEqual(c.trust.snpMinTcb, { Milan: { microcode: 115 }, Genoa: { microcode: 84 } });
  assert.deepEqual(c.warnings, [], "a site-wide minimum covers identities without their own");
  const none = parseConfig(config(`[{ measurement: ${SNP} }]`), "g.yaml");
  assert.match(
    none.warnings.join(),
    /identities\[0\]: an SEV-SNP identity without minTcb, and no trust\.snpMinTcb/,
  );
  const flat = parseConfig(config(`[{ measurement: ${SNP} }]`, "trust: { snpMinTcb: { snp: 8 } }"), "g.yaml");
  assert.deepEqual(flat.trust.snpMinTcb, { snp: 8 });
  const cases: [string, RegExp][] = [
    [config(`[{ measurement: ${SNP}, maxVmpl: 4 }]`), /^g\.yaml: apps\[0\]\.identities\[0\]\.maxVmpl: /],
    [
      config(`[{ measurement: ${SNP}, minTcb: { ucode: 1 } }]`),
      /^g\.yaml: apps\[0\]\.identities\[0\]\.minTcb: unknown key\(s\) ucode/,
    ],
    [
      config(`[{ measurement: ${SNP}, minTcb: { snp: 300 } }]`),
      /minTcb\.snp: expected a security patch level 0-255/,
    ],
    [
      config(`[{ mrtd: ${MRTD}, maxVmpl: 1 }]`),
      /apps\[0\]\.identities\[0\]\.maxVmpl: maxVmpl only applies to a measurement/,
    ],
    [
      config(`[{ measurement: ${SNP} }]`, "trust: { snpMinTcb: { Milan: { snp: 1 }, snp: 2 } }"),
      /^g\.yaml: trust\.snpMinTcb: expected SPLs .* not both/,
    ],
    [
      config(`[{ measurement: ${SNP} }]`, "trust: { snpMinTcb: { Rome: { snp: 1 } } }"),
      /^g\.yaml: trust\.snpMinTcb: unknown key\(s\) Rome/,
    ],
  ];
  for (const [text, re] of cases) assert.match(configError(text), re);
});

test("seng attest verify --snp-min-tcb: SNP TCB status in the JSON; a bad value is a usage error", () => {
  const dir = join(VECTORS, "amd/virtee-sev");
  const run = (...more: string[]) =>
    spawnSync(
      process.execPath,
      [
        "--import",
        "tsx",
        join(ROOT, "src/cli/main.ts"),
        "attest",
        "verify",
        join(dir, "report_milan.hex"),
        "--vcek",
        join(dir, "vcek_milan.der"),
        "--at",
        "2025-01-01T00:00:00Z",
        "--json",
        ...more,
      ],
      { cwd: ROOT, encoding: "utf8" },
    );
  const up = run("--snp-min-tcb", "bootloader=3,tee=0,snp=8,microcode=115");
  assert.equal(up.status, 0, up.stderr);
  assert.equal(JSON.parse(up.stdout).tcbStatus, "UpToDate");
  const out = run("--snp-min-tcb", "microcode=116");
  assert.equal(out.status, 0, "verified: the status is for the policy to judge");
  assert.equal(JSON.parse(out.stdout).tcbStatus, "OutOfDate");
  const bad = run("--snp-min-tcb", "ucode=1");
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--snp-min-tcb: expected SPL=value pairs/);
});
