/**
 * Tunnel setup load, run in a client namespace by bench/gateway.ts:
 *   setup-client.ts <gateway host:port> <pin> <sim dir> <count> <concurrency> [--hold]
 * Pre-makes `count` RA-TLS identities (runtime-side work, not timed), then opens that many tunnels with at most
 * `concurrency` handshakes in flight, timing each from connect to LEASE. Prints one JSON line
 * {"setups", "medianMs", "p90Ms", "perSecond"}; with --hold keeps the tunnels open until SIGTERM (memory
 * measurements), otherwise closes them.
 */
import { makeIdentity, SimAttester } from "../src/runtime/attesters.js";
import { TunnelClient } from "../src/tunnel/client.js";
import { median } from "./util.js";

const [gateway, pin, simDir, countS, concS] = process.argv.slice(2);
const hold = process.argv.includes("--hold");
const count = Number(countS);
const conc = Number(concS);
const ids: Awaited<ReturnType<typeof makeIdentity>>[] = [];
const attester = new SimAttester(simDir!, { mrenclave: "b0".repeat(32), mrsigner: "00".repeat(32) });
for (let i = 0; i < count; i++) ids.push(await makeIdentity(attester));

const times: number[] = [];
const clients: TunnelClient[] = [];
let next = 0;
let failed = 0;
const t0 = performance.now();
await new Promise<void>((done) => {
  const launch = (): void => {
    if (next >= count) {
      if (times.length + failed >= count) done();
      return;
    }
    const id = ids[next++]!;
    const c = new TunnelClient({
      gateway: gateway!,
      pin: pin!,
      ...id,
      reconnect: false,
      keepaliveSeconds: 3600,
      deadSeconds: 3600,
      probeSeconds: 3600,
    });
    clients.push(c);
    const start = performance.now();
    c.once("lease", () => {
      times.push(performance.now() - start);
      launch();
      if (times.length + failed >= count) done();
    });
    c.once("closed", () => {
      failed++;
      launch();
      if (times.length + failed >= count) done();
    });
    c.connect();
  };
  for (let i = 0; i < conc; i++) launch();
});
const elapsed = (performance.now() - t0) / 1000;
const sorted = [...times].sort((a, b) => a - b);
process.stdout.write(
  JSON.stringify({
    setups: times.length,
    failed,
    medianMs: median(times),
    p90Ms: sorted[Math.floor(sorted.length * 0.9)] ?? 0,
    perSecond: times.length / elapsed,
  }) + "\n",
);
if (hold) await new Promise((r) => process.once("SIGTERM", r));
for (const c of clients) c.close();
setTimeout(() => process.exit(0), 200);
