/**
 * `seng demo`: SENG's main job, shown end to end on this machine in network namespaces (src/demo/scenario.ts);
 * `seng demo attest`: the attestation stage alone, without a network (src/demo/attestation.ts).
 * Both end with a table and exit 1 if any case differs from what was expected.
 */
import { Command } from "commander";
import { attestTable, runDemo, table } from "../demo/attestation.js";
import { DemoBusyError, DemoNet } from "../demo/network.js";
import { keepHelp, runNetworkDemo } from "../demo/scenario.js";
import { ClusterDemoNet } from "../demo/cluster-net.js";
import { clusterKeepHelp, runClusterDemo } from "../demo/cluster.js";
import { action, UsageError } from "./errors.js";

function summary(total: number, bad: number): string {
  return bad ? `${bad} of ${total} case(s) differ from what was expected` : `all ${total} cases as expected`;
}

async function network(f: { quiet?: boolean; keep?: boolean; clean?: boolean }): Promise<number> {
  if (process.getuid?.() !== 0)
    throw new UsageError("demo: needs root (it builds a network in namespaces); run it as root or with sudo");
  if (f.clean) {
    const removed = await DemoNet.clean();
    process.stdout.write(removed.length ? `removed ${removed.join(", ")}\n` : "no demo network to remove\n");
    return 0;
  }
  let net: DemoNet | undefined;
  const interrupted = (sig: NodeJS.Signals) => {
    process.stderr.write(`\nseng demo: ${sig}: removing the demo network\n`);
    net?.destroySync();
    process.exit(130);
  };
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);
  const say = f.quiet ? () => {} : (s: string) => process.stdout.write(s + "\n");
  let r;
  try {
    r = await runNetworkDemo({ log: say, keep: !!f.keep, onNetwork: (n) => (net = n) });
  } catch (e) {
    if (e instanceof DemoBusyError) throw new UsageError(`demo: ${e.message}`);
    throw e;
  } finally {
    process.removeListener("SIGINT", interrupted);
    process.removeListener("SIGTERM", interrupted);
  }
  const bad = r.cases.filter((c) => !c.ok).length;
  const rows = r.cases.map((c) => [c.name, c.expected, c.happened, c.attributed, c.ok ? "ok" : "DIFFERS"]);
  process.stdout.write(
    `\n${table(["case", "expected", "happened", "attributed by the gateway", ""], rows)}\n\n` +
      `${summary(r.cases.length, bad)}\n`,
  );
  if (r.audit) process.stdout.write(`\n${r.audit}\n`);
  if (f.keep) process.stdout.write(`\n${keepHelp(r.net.dir)}\n`);
  else if (!f.quiet) process.stdout.write("\nthe demo network and everything it started are removed\n");
  return bad ? 1 : 0;
}

/** `seng demo cluster`: two gateways on a three-member etcd, BGP to a router, an app moving on kill -9. */
async function cluster(f: { quiet?: boolean; keep?: boolean; clean?: boolean }): Promise<number> {
  if (process.getuid?.() !== 0)
    throw new UsageError(
      "demo cluster: needs root (it builds a network in namespaces); run it as root or with sudo",
    );
  if (f.clean) {
    const removed = await ClusterDemoNet.clean();
    process.stdout.write(
      removed.length ? `removed ${removed.join(", ")}\n` : "no cluster demo network to remove\n",
    );
    return 0;
  }
  let net: ClusterDemoNet | undefined;
  const interrupted = (sig: NodeJS.Signals) => {
    process.stderr.write(`\nseng demo cluster: ${sig}: removing the demo network\n`);
    net?.destroySync();
    process.exit(130);
  };
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);
  const say = f.quiet ? () => {} : (s: string) => process.stdout.write(s + "\n");
  let r;
  try {
    r = await runClusterDemo({ log: say, keep: !!f.keep, onNetwork: (n) => (net = n) });
  } catch (e) {
    if (e instanceof DemoBusyError)
      throw new UsageError(
        `demo cluster: ${e.message.replace("seng demo --clean", "seng demo cluster --clean")}`,
      );
    throw e;
  } finally {
    process.removeListener("SIGINT", interrupted);
    process.removeListener("SIGTERM", interrupted);
  }
  const bad = r.cases.filter((c) => !c.ok).length;
  const rows = r.cases.map((c) => [c.name, c.expected, c.happened, c.attributed, c.ok ? "ok" : "DIFFERS"]);
  process.stdout.write(
    `\n${table(["case", "expected", "happened", "details", ""], rows)}\n\n${summary(r.cases.length, bad)}\n`,
  );
  if (f.keep) process.stdout.write(`\n${clusterKeepHelp(r.net.dir)}\n`);
  else if (!f.quiet) process.stdout.write("\nthe demo network and everything it started are removed\n");
  return bad ? 1 : 0;
}

export function demoCommand(): Command {
  const demo = new Command("demo")
    .description("show SENG's job end to end on this machine, in network namespaces (simulated TEE; root)")
    .option("--quiet", "print only the final table")
    .option("--keep", "leave the demo network running for exploration (remove it with --clean)")
    .option("--clean", "remove a demo network left by --keep")
    .enablePositionalOptions() // `demo attest --quiet` is the subcommand's option
    .action(action(network));
  demo.addCommand(
    new Command("cluster")
      .description(
        "two gateways on a three-member etcd, BGP to a router; an app moves when its gateway is killed",
      )
      .option("--quiet", "print only the final table")
      .option("--keep", "leave the network running for exploration (remove it with --clean)")
      .option("--clean", "remove a cluster demo network left by --keep")
      .action(action(cluster)),
  );
  demo.addCommand(
    new Command("attest")
      .description("the attestation stage alone (no network, no root)")
      .option("--quiet", "print only the final table")
      .action(
        action(async (f: { quiet?: boolean }) => {
          const cases = await runDemo(f.quiet ? () => {} : (s) => process.stdout.write(s + "\n"));
          const bad = cases.filter((c) => c.got !== c.expected).length;
          process.stdout.write(`\n${attestTable(cases)}\n\n${summary(cases.length, bad)}\n`);
          return bad ? 1 : 0;
        }),
      ),
  );
  return demo;
}
