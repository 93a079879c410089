/**
 * The package as users get it: `npm pack`, then `npm install <tarball>` in a fresh folder outside the repository,
 * then from that folder the CLI (`npx seng`), the gateway, the preload (`node --import seng/register`) with a real
 * tunnel, and the SDK (`import … from "seng/…"`, typings included). Needs root (namespaces) and the npm registry
 * (or a warm npm cache) for the dependencies.
 *
 * better-sqlite3 is copied from this checkout into the fresh folder before the install, so that npm keeps it instead
 * of compiling SQLite again (minutes on a busy 2-core machine); it is a dependency, not what is tested here. SENG's
 * own install script (the native addon's build) runs as it does for users.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { Netns, ROOT, veth } from "../helpers/netns.js";
import { waitLine } from "../helpers/lab.js";

const run = promisify(execFile);
const MR = "ab".repeat(32);
const SERVER = "198.18.0.1";

let dir: string;
let app: string;
let files: string[] = [];

/** Runs a command in the installed folder; returns code and output (never throws). */
function inApp(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(cmd, args, {
    cwd: app,
    encoding: "utf8",
    timeout: 120_000,
    env: { ...process.env, ...env },
  });
  return { code: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "" };
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "seng-pack-"));
  assert.ok(relative(ROOT, dir).startsWith(".."), "the install folder is outside the repository");
  const out = await run("npm", ["pack", "--json", "--pack-destination", dir], {
    cwd: ROOT,
    maxBuffer: 64 << 20,
    timeout: 600_000,
  });
  const packed = (JSON.parse(out.stdout) as { filename: string; files: { path: string }[] }[])[0]!;
  files = packed.files.map((f) => f.path);
  app = join(dir, "app");
  mkdirSync(join(app, "node_modules"), { recursive: true });
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  for (const m of ["better-sqlite3", "bindings", "file-uri-to-path"])
    cpSync(join(ROOT, "node_modules", m), join(app, "node_modules", m), { recursive: true });
  await run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", join(dir, packed.filename)], {
    cwd: app,
    maxBuffer: 64 << 20,
    timeout: 900_000,
  });
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("the packed tarball", () => {
  test("carries the compiled code, typings, native sources, LICENSE and the systemd unit; no sources or tests", () => {
    for (const f of [
      "LICENSE",
      "binding.gyp",
      "native/install.mjs",
      "native/src/lwip.cc",
      "bin/seng.js",
      "dist/src/cli/main.js",
      "dist/src/runtime/register.js",
      "dist/src/sdk/index.d.ts",
      "packaging/systemd/seng-gateway.service",
      "docs/INSTALL.md",
    ])
      assert.ok(files.includes(f), `${f} is in the tarball`);
    assert.deepEqual(
      files.filter((f) => f.startsWith("test/") || f.startsWith("src/") || /(?<!\.d)\.ts$/.test(f)),
      [],
    );
    assert.match(readFileSync(join(ROOT, "LICENSE"), "utf8"), /Apache License\s+Version 2\.0/);
  });

  test("installing it built the native addon; the CLI runs from the install folder", () => {
    assert.ok(existsSync(join(app, "node_modules/seng/build/Release/seng_native.node")));
    const v = inApp("npx", ["seng", "--version"]);
    assert.equal(v.code, 0, v.stderr);
    assert.equal(
      v.stdout.trim(),
      (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version,
    );
    const demo = inApp("npx", ["seng", "demo", "attest", "--quiet"]);
    assert.equal(demo.code, 0, demo.stderr);
    assert.match(demo.stdout, /all \d+ cases as expected/);
  });

  test("the SDK imports by package name, with typings", () => {
    writeFileSync(
      join(app, "sdk.ts"),
      `import { ShieldedStack, net } from "seng/sdk";
import { createConnection } from "seng/net";
import { createSocket } from "seng/dgram";
import { lookup } from "seng/dns";
import { ShieldedHttpAgent } from "seng/http";
import { createShieldedDispatcher } from "seng/fetch";
const s: typeof ShieldedStack = ShieldedStack;
const c: (port: number, host?: string) => net.Socket = createConnection;
console.log([s, c, createSocket, lookup, ShieldedHttpAgent, createShieldedDispatcher].map((f) => typeof f).join(","));
`,
    );
    writeFileSync(
      join(app, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          module: "nodenext",
          moduleResolution: "nodenext",
          target: "es2022",
          strict: true,
          noEmit: true,
          skipLibCheck: true,
          types: ["node"],
          typeRoots: [join(ROOT, "node_modules/@types")],
        },
        files: ["sdk.ts"],
      }),
    );
    const tsc = inApp(process.execPath, [
      join(ROOT, "node_modules/typescript/bin/tsc"),
      "-p",
      "tsconfig.json",
    ]);
    assert.equal(tsc.code, 0, `the typings resolve:\n${tsc.stdout}${tsc.stderr}`);
    writeFileSync(
      join(app, "sdk.mjs"),
      readFileSync(join(app, "sdk.ts"), "utf8").replace(/^const (s|c):.*$/gm, "const $1 = ShieldedStack;"),
    );
    const r = inApp(process.execPath, ["sdk.mjs"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "function,function,function,function,function,function");
  });

  test("the preload refuses to start an app without a gateway, in one line", () => {
    writeFileSync(join(app, "hello.mjs"), 'console.log("app ran");\n');
    const r = inApp(process.execPath, ["--import", "seng/register", "hello.mjs"], {
      SENG_GATEWAY: "",
      SENG_CONFIG: "",
    });
    assert.equal(r.code, 2, "a configuration error");
    assert.equal(r.stdout, "", "the app did not run");
    assert.match(r.stderr, /^seng: no gateway: set SENG_GATEWAY/);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
  });

  test("gateway init, the gateway and a shielded app through a real tunnel, all from the install folder", async () => {
    const seng = join(app, "node_modules/.bin/seng");
    assert.equal(inApp(seng, ["attest", "sim", "init", "--dir", "sim"]).code, 0);
    const init = inApp(seng, [
      "gateway",
      "init",
      "--dir",
      "etc",
      "--state",
      "state",
      "--listen",
      "127.0.0.1:4433",
      "--lan",
      "nolan0",
    ]);
    assert.equal(init.code, 0, init.stderr);
    assert.equal(statSync(join(app, "etc/gateway.key")).mode & 0o777, 0o600);
    const cfg = join(app, "etc/gateway.yaml");
    writeFileSync(
      cfg,
      readFileSync(cfg, "utf8")
        .replace(`mrenclave: "${"00".repeat(32)}"`, `mrenclave: "${MR}"`)
        .replace(
          "dns: []",
          "dns: []\ntrust: { simulatedRoots: [../sim/root.pem], collateral: [../sim/collateral.json] }",
        )
        .replace(
          "  rules: []",
          `  rules: [{ from: example-app, to: ${SERVER}, proto: tcp, ports: [8080], action: allow }]`,
        ),
    );
    const check = inApp(seng, ["policy", "check", "--config", cfg]);
    assert.equal(check.code, 0, check.stderr);
    const gw = await Netns.create("pack-gw");
    const srv = await Netns.create("pack-srv");
    try {
      await veth(gw, "v0", "198.18.0.2/24", srv, "v1", `${SERVER}/24`);
      await srv.ip("route", "add", "100.64.0.0/10", "via", "198.18.0.2");
      const g = gw.spawn(seng, ["gateway", "--config", cfg], { cwd: app });
      await waitLine(g, (o) => o.event === "gateway-started", 30_000);
      const web = srv.spawn(process.execPath, [
        "-e",
        `require("http").createServer((q,s)=>s.end("hello "+q.socket.remoteAddress)).listen(8080,"${SERVER}",()=>console.log(JSON.stringify({listening:true})))`,
      ]);
      await waitLine(web, (o) => o.listening === true);
      writeFileSync(
        join(app, "fetch.mjs"),
        `console.log(await (await fetch("http://${SERVER}:8080/")).text());\n`,
      );
      // `env -C`: the app runs in the install folder, where `seng/register` resolves to the installed package.
      const shielded = await gw.exec(
        "env",
        ["-C", app, process.execPath, "--import", "seng/register", "fetch.mjs"],
        {
          timeoutMs: 60_000,
          env: {
            ...process.env,
            SENG_GATEWAY: "127.0.0.1:4433",
            SENG_PIN: join(app, "etc/gateway.pem"),
            SENG_TEE: "sim",
            SENG_SIM_DIR: join(app, "sim"),
            SENG_MRENCLAVE: MR,
            SENG_CONFIG: "",
          },
        },
      );
      assert.equal(shielded.stdout.trim(), "hello 100.64.1.1", "the server saw the app's leased address");
      const status = await gw.exec(seng, ["status", "--config", cfg, "--json"]);
      assert.equal(
        (JSON.parse(status.stdout) as { gateway: { listen: string } }).gateway.listen,
        "127.0.0.1:4433",
      );
    } finally {
      await gw.delete();
      await srv.delete();
    }
  });
});
