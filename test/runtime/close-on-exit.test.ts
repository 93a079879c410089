/**
 * A runtime that ends tells the gateway (issue 14): Ctrl-C (SIGINT) or SIGTERM on an app without its own handler
 * closes the tunnel with CLOSE, so the gateway takes the address out of the app's set at once instead of after the
 * idle timeout (60 s); a runtime that refuses the gateway's certificate (pin) says so, and the gateway releases the
 * lease it had granted instead of keeping it for the tunnel's grace period.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Lab, waitLine } from "../helpers/lab.js";
import { ROOT } from "../helpers/netns.js";

const REGISTER = join(ROOT, "src/runtime/register.ts");
const MR = "c1".repeat(32);
let lab: Lab;

before(async () => {
  lab = await Lab.create({
    apps: [{ name: "app", subnet: "100.64.9.0/24", identities: [{ mrenclave: MR }] }],
  });
  await lab.startGateway();
});
after(async () => {
  await lab?.destroy();
});

function app(pin: string) {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    SENG_GATEWAY: lab.gatewayAddr(0),
    SENG_PIN: pin,
    SENG_TEE: "sim",
    SENG_SIM_DIR: lab.simDir,
    SENG_MRENCLAVE: MR,
    SENG_LOG: "json",
    SENG_LEASE_TIMEOUT: "5",
  };
  delete env.NODE_TEST_CONTEXT;
  // An app that lives until a signal ends it (no handler of its own).
  return lab.clients[0]!.spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "--import",
      REGISTER,
      "-e",
      "console.log(JSON.stringify({ running: true })); setInterval(() => {}, 1000)",
    ],
    { env },
  );
}

for (const sig of ["SIGINT", "SIGTERM"] as const)
  test(`${sig} on the app closes its tunnel at the gateway at once`, async () => {
    const from = lab.gateway!.stdout.length;
    const p = app(lab.pin);
    await waitLine(p, (o) => o.running === true, 30_000);
    const up = await waitLine<{ address: string }>(
      lab.gateway!,
      (o) => o.event === "tunnel-up",
      10_000,
      from,
    );
    const at = Date.now();
    p.child.kill(sig);
    const down = await waitLine<{ reason: string; message: string; address: string }>(
      lab.gateway!,
      (o) => o.event === "tunnel-down" && o.address === up.address,
      10_000,
      from,
    );
    assert.equal(down.reason, "client-closed");
    assert.match(down.message, new RegExp(`process ending \\(${sig}\\)`));
    assert.ok(Date.now() - at < 10_000);
    const r = await p.exited;
    assert.equal(r.signal, sig, "the app still ends by the signal, as without the runtime");
    const set = (await lab.gw.exec("nft", ["list", "set", "inet", "seng", "seng_app_app"])).stdout;
    assert.ok(!set.includes(up.address), `the address left the app's set:\n${set}`);
  });

test("a refused pin: the runtime says so and the gateway releases the lease", async () => {
  const from = lab.gateway!.stdout.length;
  const p = app("ee".repeat(32));
  const r = await p.exited;
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /does not match the pinned/);
  const down = await waitLine<{ reason: string; message: string; address: string }>(
    lab.gateway!,
    (o) => o.event === "tunnel-down",
    10_000,
    from,
  );
  assert.match(down.message, /policy-rejected: gateway certificate does not match the pin/);
  const who = await lab.gw.exec(
    process.execPath,
    [
      "--import",
      "tsx",
      join(ROOT, "src/cli/main.ts"),
      "audit",
      "who",
      down.address,
      "--config",
      lab.configFile,
      "--json",
    ],
    { check: false },
  );
  const holder = JSON.parse(who.stdout) as { holder?: unknown; previous?: { releaseReason?: string } };
  assert.equal(holder.holder ?? null, null, `released, not kept for a reconnect: ${who.stdout}`);
});
