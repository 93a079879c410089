/**
 * `npm run bench [-- --quick] [-- --json] [-- --only=attest,gateway,flood,runtime,firewall,cluster]`: runs every
 * benchmark (the gateway, runtime and firewall ones need root, iperf3, openvpn, wireguard-go, wireguard-tools,
 * sockperf, wrk and nft; the cluster one Debian's etcd-server: bench/tools.ts names what is missing) and prints one JSON object of named figures (with --json) or a readable table. Figures and the machine
 * they were taken on go to docs/BENCHMARKS.md.
 */
import { cpus } from "node:os";
import { resolve } from "node:path";
import { benchAttest } from "./attest.js";
import { benchCluster, benchClusterFailover } from "./cluster.js";
import { benchFirewall } from "./firewall.js";
import { benchFlood } from "./flood.js";
import { benchGateway, GATEWAY_PARTS } from "./gateway.js";
import { benchRuntime } from "./runtime.js";
import { missingTools } from "./tools.js";

const args = new Set(process.argv.slice(2));
const quick = args.has("--quick");
const json = args.has("--json");
const vectors =
  process.env.SENG_VECTORS ?? resolve(import.meta.dirname ?? ".", "../../shared/attestation-vectors");

// `--only attest,gateway` runs a subset.
const only = process.argv
  .find((a) => a.startsWith("--only="))
  ?.slice(7)
  .split(",");
const want = (name: string): boolean => !only || only.includes(name);

const chosen = ["attest", "gateway", "flood", "runtime", "firewall", "cluster"].filter(
  (b) => want(b) || (b === "gateway" && only?.some((o) => o.startsWith("gateway:"))),
);
const missing = missingTools(chosen);
if (missing) {
  process.stderr.write(missing + "\n");
  process.exit(2);
}

const figures: Record<string, number> = {};
if (want("attest")) Object.assign(figures, await benchAttest(vectors, quick));
// "gateway" runs all of its parts; "gateway:memory" (or :throughput, :rr, :tcp4, :setup) one of them.
const gatewayParts = new Set(
  (only ?? ["gateway"])
    .filter((o) => o.startsWith("gateway"))
    .flatMap((o) => (o === "gateway" ? [...GATEWAY_PARTS] : [o.slice(8)])),
);
if (gatewayParts.size) Object.assign(figures, await benchGateway(quick, gatewayParts));
if (want("flood")) Object.assign(figures, await benchFlood(quick));
if (want("runtime")) Object.assign(figures, await benchRuntime(quick));
if (want("firewall")) Object.assign(figures, await benchFirewall(quick));
if (want("cluster")) Object.assign(figures, await benchCluster(quick));
if (want("cluster") || want("cluster:failover")) Object.assign(figures, await benchClusterFailover(quick));

if (json) {
  process.stdout.write(JSON.stringify(figures) + "\n");
} else {
  process.stdout.write(`machine: ${cpus()[0]?.model ?? "?"} x${cpus().length}, node ${process.version}\n`);
  for (const [k, v] of Object.entries(figures)) process.stdout.write(`${k.padEnd(28)} ${v}\n`);
  if (figures.attest_sgx_verify_ms && figures.dcapqvl_sgx_verify_ms) {
    process.stdout.write(
      `${"speedup vs dcap-qvl".padEnd(28)} ${(figures.dcapqvl_sgx_verify_ms / figures.attest_sgx_verify_ms).toFixed(1)}x\n`,
    );
  }
}
