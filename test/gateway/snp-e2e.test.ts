/**
 * A simulated SEV-SNP VM end to end in network namespaces: `seng test-client` with the simulated SNP platform makes
 * an RA-TLS certificate carrying a report and its VCEK/ASK, and a real `seng gateway` whose app identity is
 * `measurement: <hex>` (trusting the simulated ARK through trust.simulatedRoots) leases it an address; traffic
 * flows; another measurement and a debug guest are refused.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Lab, SERVER_IP, TCP_TOOL, waitLine } from "../helpers/lab.js";

const VM = "5e".repeat(48);
const HOST = "d4".repeat(32);
const UNUSED_MRENCLAVE = "00".repeat(32); // startClient's SGX claim; an SNP sim directory ignores it

describe("a simulated SEV-SNP VM through the gateway", { concurrency: false }, () => {
  let lab: Lab;

  before(async () => {
    lab = await Lab.create({
      clients: 1,
      apps: [
        {
          name: "cvm",
          subnet: "100.64.3.0/24",
          identities: [
            { measurement: VM, hostData: HOST, minTcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 } },
          ],
        },
      ],
    });
    await lab.startGateway();
  });

  after(async () => {
    await lab?.destroy();
  });

  const snpArgs = (measurement: string, ...more: string[]): string[] => [
    "--sim-dir",
    lab.simSnpDir,
    "--measurement",
    measurement,
    "--host-data",
    HOST,
    ...more,
  ];

  test("the VM gets a lease for its measurement, and its traffic reaches the server from that address", async () => {
    const c = lab.startClient(UNUSED_MRENCLAVE, { args: snpArgs(VM) });
    const identity = await waitLine<{ provider: string }>(c, (o) => o.event === "identity");
    assert.equal(identity.provider, "sim-snp");
    const lease = await waitLine<{ address: string; app: string }>(c, (o) => o.event === "lease");
    assert.equal(lease.app, "cvm");
    assert.match(lease.address, /^100\.64\.3\.\d+$/);

    const echo = lab.server(process.execPath, ["--import", "tsx", TCP_TOOL, "echo", SERVER_IP, "7003"]);
    await waitLine(echo, (o) => o.listening === true);
    await lab.clients[0]!.exec(
      process.execPath,
      [
        "-e",
        `const s=require("net").connect(7003,"${SERVER_IP}",()=>s.end("hi"));s.on("data",()=>{});s.on("close",()=>process.exit(0))`,
      ],
      { timeoutMs: 15_000 },
    );
    const remote = await waitLine<{ remote: string }>(echo, (o) => typeof o.remote === "string");
    assert.equal(remote.remote, lease.address);
    await echo.kill("SIGKILL");
    await c.kill();
  });

  test("another measurement is refused with policy-rejected", async () => {
    const other = "77".repeat(48);
    const c = lab.startClient(UNUSED_MRENCLAVE, { args: snpArgs(other) });
    const closed = await waitLine<{ reason: string; final: boolean }>(c, (o) => o.event === "closed");
    assert.equal(closed.reason, "policy-rejected");
    assert.equal(closed.final, true);
    const refused = await waitLine(
      lab.gateway!,
      (o) => o.event === "tunnel-refused" && o.measurement === other,
    );
    assert.ok(refused);
    await c.wait(10_000);
  });

  test("a debug guest with the right measurement is refused (allowDebug is not set)", async () => {
    const c = lab.startClient(UNUSED_MRENCLAVE, { args: snpArgs(VM, "--debug-enclave") });
    const closed = await waitLine<{ reason: string; message: string }>(c, (o) => o.event === "closed");
    assert.equal(closed.reason, "policy-rejected");
    const refused = await waitLine(
      lab.gateway!,
      (o) => o.event === "tunnel-refused" && o.measurement === VM && JSON.stringify(o).includes("debug"),
    );
    assert.ok(refused, "the gateway says the guest was refused for being a debug guest");
    await c.wait(10_000);
  });
});
