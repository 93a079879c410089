/** The `seng` command. Each area (attest, gateway, runtime, …) registers its subcommands from its own file. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Command, CommanderError } from "commander";
import { attestCommand } from "./attest.js";
import { auditCommand } from "./audit.js";
import { clusterCommand } from "./cluster.js";
import { policyCommand } from "./policy.js";
import { demoCommand } from "./demo.js";
import { gatewayCommands } from "./gateway.js";
import { runtimeCommands } from "./runtime.js";
import { statusCommand } from "./status.js";
import { completionCommand } from "./completion.js";
import { EXIT_CODES, helpText, withExamples } from "./common.js";
import { packageRoot } from "../native/load.js";

/** The package's version (package.json of the checkout or the installed package). */
export function version(): string {
  try {
    return (JSON.parse(readFileSync(join(packageRoot(), "package.json"), "utf8")) as { version: string })
      .version;
  } catch {
    return "unknown";
  }
}

/** Examples of the commands whose own file gives none (by their path). */
const EXAMPLES: Record<string, string[]> = {
  "seng attest verify": [
    "seng attest verify quote.bin --collateral collateral.json --json",
    "seng attest verify report.bin --vcek vcek.der",
    "seng attest verify ratls-cert.pem --collateral pcs-responses/",
  ],
  "seng attest sim init": ["seng attest sim init --dir sim", "seng attest sim init --dir sim-snp --snp"],
  "seng attest sim quote": [
    "seng attest sim quote --dir sim --mrenclave $(printf 'ab%.0s' {1..32}) > quote.bin",
  ],
  "seng demo": [
    "seng demo                       # as root",
    "seng demo --keep                # then: seng demo --clean",
  ],
  "seng demo attest": ["seng demo attest --quiet"],
  "seng version": ["seng version", "seng --version"],
  "seng test-client": [
    "seng test-client --gateway 198.18.1.1:4433 --pin gateway.pem --sim-dir sim --mrenclave <hex>",
  ],
};

/** Commander's own messages (`error: unknown option …`) get the prefix every other message has. */
const prefixed = (s: string) => s.replace(/^error: /gm, "seng: ");

export function program(): Command {
  const p = new Command("seng")
    .description("SENG: app-grained firewall policies from TEE attestation")
    .version(version(), "-V, --version", "print the version")
    // Options after a subcommand are that subcommand's (`gateway reload --config`, `runtime run -- node app.js --x`).
    .enablePositionalOptions();
  p.addCommand(attestCommand());
  p.addCommand(demoCommand());
  p.addCommand(policyCommand());
  p.addCommand(auditCommand());
  p.addCommand(clusterCommand());
  p.addCommand(statusCommand());
  for (const c of [...gatewayCommands(), ...runtimeCommands()]) p.addCommand(c);
  p.addCommand(
    new Command("version").description("print the version").action(() => {
      process.stdout.write(`${version()}\n`);
    }),
  );
  p.addCommand(completionCommand(p));
  helpText(
    p,
    [
      "seng demo                                      # the whole job on this machine, in namespaces (root)",
      "seng gateway init && seng policy check         # a gateway host: /etc/seng, /var/lib/seng",
      "seng runtime run --config runtime.yaml -- node app.js",
      "seng <command> --help                          # each command's flags and examples",
    ],
    `${EXIT_CODES}\nThe gateway configuration is --config, else $SENG_CONFIG, else /etc/seng/gateway.yaml.`,
  );
  // Settings are not inherited by commands added with addCommand: apply them to the whole tree.
  const walk = (c: Command): void => {
    c.exitOverride()
      .showHelpAfterError("(run with --help for usage)")
      .configureOutput({ writeErr: (s) => process.stderr.write(prefixed(s)) });
    c.commands.forEach(walk);
  };
  walk(p);
  // Examples and exit codes at the end of every --help: groups point to their commands'.
  const help = (c: Command, path: string): void => {
    if (!withExamples.has(c)) {
      if (EXAMPLES[path]) helpText(c, EXAMPLES[path]);
      else if (c.commands.length)
        c.addHelpText(
          "after",
          `\nExamples: \`${path} <command> --help\` shows each command's.\n\n${EXIT_CODES}\n`,
        );
    }
    for (const s of c.commands) help(s, `${path} ${s.name()}`);
  };
  help(p, "seng");
  return p;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await program().parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version exit 0; every usage error exits 2 (commander's own default would be 1).
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    process.stderr.write(`seng: ${(e as Error).message}\n`);
    process.exitCode = 2;
  }
}

await main(process.argv);
