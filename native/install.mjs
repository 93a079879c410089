// The package's install script: builds the native addon (binding.gyp) with node-gyp. Plain JavaScript because it
// runs before anything is compiled, also from the published tarball (which has no TypeScript toolchain).
//
// Two things node-gyp does not do well on its own are done here: Node's C headers are taken from where Node is
// installed (node-gyp would download them from nodejs.org, which a gateway host often cannot reach), and the Debian
// packages the build needs are named when they are missing, instead of a compiler error pages later.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { delimiter, join, resolve } from "node:path";

const say = (line) => process.stderr.write(`seng: install: ${line}\n`);

const onPath = (prog) =>
  (process.env.PATH ?? "").split(delimiter).some((d) => d && existsSync(join(d, prog)));

const missing = [];
if (!onPath("g++")) missing.push("g++");
if (!onPath("make")) missing.push("make");
if (!onPath("python3")) missing.push("python3");
if (!existsSync("/usr/include/lwip/lwip/init.h")) missing.push("liblwip-dev");
if (missing.length) {
  say(`the native addon cannot be built: missing ${missing.join(", ")}`);
  say(`on Debian/Ubuntu: apt-get install ${missing.join(" ")}   (docs/INSTALL.md)`);
  process.exit(1);
}

const args = ["rebuild"];
if (!process.env.npm_config_nodedir) {
  // Node's headers live under its own prefix: /usr for Debian's and NodeSource's packages, /usr/local or the
  // tarball's folder for the official builds.
  const prefix = resolve(process.execPath, "../..");
  const dir = [prefix, "/usr"].find((p) => existsSync(join(p, "include/node/node.h")));
  if (dir) args.push(`--nodedir=${dir}`);
  else
    say(
      `Node's C headers (include/node/node.h) are not next to ${process.execPath}: node-gyp will download them`,
    );
}

// npm names the node-gyp it bundles; outside npm, the one on PATH.
const gyp = process.env.npm_config_node_gyp;
const r = gyp
  ? spawnSync(process.execPath, [gyp, ...args], { stdio: "inherit" })
  : spawnSync("node-gyp", args, { stdio: "inherit" });
if (r.error) {
  say(`cannot run node-gyp (${r.error.message}): install npm, which bundles it`);
  process.exit(1);
}
if (r.status !== 0) say("the native addon's build failed (the compiler's messages are above)");
process.exit(r.status ?? 1);
