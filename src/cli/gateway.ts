/**
 * `seng gateway --config <file>` runs the gateway; `seng gateway keygen` makes its certificate and prints the
 * fingerprint runtimes pin.
 */
import { createHash, generateKeyPairSync } from "node:crypto";
import { mkdirSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { Command } from "commander";
import { selfSignedCert } from "../attest/x509gen.js";
import { Gateway } from "../gateway/server.js";
import { ConfigError, loadConfig } from "../policy/config.js";
import { action, UsageError } from "./errors.js";

function gatewayRun(): Command {
  return new Command("gateway")
    .description("run the SENG gateway")
    .option("--config <file>", "gateway configuration (YAML); required")
    .action(
      action(async (f: { config?: string }) => {
        // Not a requiredOption: commander would demand it of the subcommands (keygen) too.
        if (!f.config) throw new UsageError("gateway: --config <file> is required");
        let config;
        try {
          config = loadConfig(f.config);
        } catch (e) {
          if (e instanceof ConfigError) throw new UsageError(e.message);
          throw e;
        }
        const gw = new Gateway(config);
        await gw.start();
        process.on("SIGUSR1", () =>
          process.stdout.write(JSON.stringify({ event: "stats", ...gw.stats() }) + "\n"),
        );
        await new Promise<void>((resolve) => {
          const stop = () => {
            process.off("SIGINT", stop);
            process.off("SIGTERM", stop);
            resolve();
          };
          process.on("SIGINT", stop);
          process.on("SIGTERM", stop);
        });
        await gw.stop();
        return 0;
      }),
    )
    .addCommand(keygen());
}

function keygen(): Command {
  return new Command("keygen")
    .description("create the gateway's certificate and key; prints the fingerprint runtimes pin")
    .requiredOption("--dir <dir>", "where to write gateway.pem and gateway.key")
    .option("--name <cn>", "certificate common name", "SENG gateway")
    .action(
      action(async (f: { dir: string; name: string }) => {
        mkdirSync(f.dir, { recursive: true });
        const cert = join(f.dir, "gateway.pem");
        if (existsSync(cert)) throw new UsageError(`${cert} exists; remove it first`);
        const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
        const c = await selfSignedCert({ keys, name: `CN=${f.name.replace(/[,=+]/g, " ")}`, days: 5 * 365 });
        writeFileSync(join(f.dir, "gateway.key"), keys.privateKey.export({ type: "pkcs8", format: "pem" }), {
          mode: 0o600,
        });
        writeFileSync(cert, c.pem);
        const fp = createHash("sha256").update(c.der).digest("hex");
        process.stdout.write(`${fp}\n`);
      }),
    );
}

export function gatewayCommands(): Command[] {
  return [gatewayRun()];
}
