/** The `seng` command. Each area (attest, gateway, runtime, …) registers its subcommands from its own file. */
import { Command, CommanderError } from "commander";
import { attestCommand } from "./attest.js";
import { auditCommand } from "./audit.js";
import { policyCommand } from "./policy.js";
import { demoCommand } from "./demo.js";
import { gatewayCommands } from "./gateway.js";
import { runtimeCommands } from "./runtime.js";
import { statusCommand } from "./status.js";

export function program(): Command {
  const p = new Command("seng")
    .description("SENG: app-grained firewall policies from TEE attestation")
    .version("0.1.0")
    // Options after a subcommand are that subcommand's (`gateway reload --config`, `runtime run -- node app.js --x`).
    .enablePositionalOptions();
  p.addCommand(attestCommand());
  p.addCommand(demoCommand());
  p.addCommand(policyCommand());
  p.addCommand(auditCommand());
  p.addCommand(statusCommand());
  for (const c of [...gatewayCommands(), ...runtimeCommands()]) p.addCommand(c);
  // Settings are not inherited by commands added with addCommand: apply them to the whole tree.
  const walk = (c: Command): void => {
    c.exitOverride().showHelpAfterError("(run with --help for usage)");
    c.commands.forEach(walk);
  };
  walk(p);
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
