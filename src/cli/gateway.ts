/**
 * `seng gateway --config <file>` runs the gateway; `seng gateway keygen` makes its certificate and prints the
 * fingerprint runtimes pin.
 */
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { Command } from "commander";
import { selfSignedCert } from "../attest/x509gen.js";
import { Gateway } from "../gateway/server.js";
import { jsonLogger, LEVELS, type Level } from "../gateway/log.js";
import { AdminServer } from "../admin/server.js";
import { gatewayBackend } from "../admin/backend.js";
import { RecentEvents } from "../admin/recent.js";
import { GatewayMetrics } from "../metrics/metrics.js";
import { MetricsServer } from "../metrics/server.js";
import { ConfigError, loadConfig } from "../policy/config.js";
import { action, UsageError } from "./errors.js";

function gatewayRun(): Command {
  return new Command("gateway")
    .description("run the SENG gateway")
    .option("--config <file>", "gateway configuration (YAML); required")
    .option("--log-level <level>", `lowest log level written: ${LEVELS.join(", ")}`, "info")
    .action(
      action(async (f: { config?: string; logLevel: string }) => {
        // Not a requiredOption: commander would demand it of the subcommands (keygen) too.
        if (!f.config) throw new UsageError("gateway: --config <file> is required");
        let config;
        try {
          config = loadConfig(f.config);
        } catch (e) {
          if (e instanceof ConfigError) throw new UsageError(e.message);
          throw e;
        }
        if (!LEVELS.includes(f.logLevel as Level))
          throw new UsageError(`gateway: --log-level: expected one of ${LEVELS.join(", ")}`);
        const recent = new RecentEvents();
        const logger = jsonLogger({ level: f.logLevel as Level, onEntry: recent.add });
        const gw = new Gateway(config, { logger });
        const metrics = new GatewayMetrics(gw);
        gw.observe(metrics);
        const admin = new AdminServer({
          config: config.admin,
          configFile: config.file,
          backend: gatewayBackend(gw, metrics, recent),
        });
        const scrape = config.metrics && new MetricsServer(metrics, config.metrics.listen);
        await gw.start();
        try {
          await admin.start();
          await scrape?.start(`${config.file}: metrics.listen`);
        } catch (e) {
          await admin.stop();
          await gw.stop();
          // Listening and token-file failures: one line naming the configuration key.
          throw new UsageError((e as Error).message);
        }
        logger.log("info", "admin-started", {
          socket: config.admin.socket,
          tcp: config.admin.tcp ? `${config.admin.tcp.replace(/:\d+$/, "")}:${admin.tcpPort}` : undefined,
          tls: Boolean(config.admin.tls),
          metrics: scrape ? `${config.metrics!.listen.replace(/:\d+$/, "")}:${scrape.port}` : undefined,
        });
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
        await scrape?.stop();
        await admin.stop();
        await gw.stop();
        return 0;
      }),
    )
    .addCommand(keygen())
    .addCommand(adminToken());
}

function adminToken(): Command {
  return new Command("admin-token")
    .description("create a random admin API token file (mode 600) for admin.tokenFile")
    .requiredOption("--file <path>", "where to write the token")
    .action(
      action((f: { file: string }) => {
        if (existsSync(f.file)) throw new UsageError(`${f.file} exists; remove it first`);
        writeFileSync(f.file, randomBytes(32).toString("hex") + "\n", { mode: 0o600, flag: "wx" });
      }),
    );
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
