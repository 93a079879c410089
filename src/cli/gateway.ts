/**
 * `seng gateway --config <file>` runs the gateway; `seng gateway keygen` makes its certificate and prints the
 * fingerprint runtimes pin; `seng gateway reload --config <file>` makes the running gateway reload (SIGHUP to the
 * pid in `<database>.pid`) and prints the result it writes to `<database>.reload.json`.
 */
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync, existsSync, readFileSync, rmSync, statSync } from "node:fs";
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
  // Positional options: `seng gateway reload --config f` gives --config to reload, not to the gateway itself.
  return new Command("gateway")
    .description("run the SENG gateway")
    .enablePositionalOptions()
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
        gw.onSetUpdate((seconds) => metrics.observeSetUpdate("add", seconds));
        const backend = gatewayBackend(gw, metrics, recent);
        const admin = new AdminServer({ config: config.admin, configFile: config.file, backend });
        // A reload through the API re-reads the token file too, as SIGHUP does (a rotated token takes effect).
        const reload = backend.reload.bind(backend);
        backend.reload = () => {
          rotateToken();
          return reload();
        };
        const rotateToken = () => {
          try {
            if (admin.reloadToken()) logger.log("info", "admin-token-rotated", {});
          } catch (e) {
            logger.log("error", "admin-token-reload-failed", { error: (e as Error).message });
          }
        };
        const scrape = config.metrics && new MetricsServer(metrics, config.metrics.listen);
        metrics.addConnectionGuard("admin", () => admin.connectionStats());
        if (scrape) metrics.addConnectionGuard("metrics", () => scrape.connectionStats());
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
        const pidFile = `${config.database}.pid`;
        writeFileSync(pidFile, `${process.pid}\n`);
        process.on("SIGUSR1", () => {
          void gw
            .firewallCounters()
            .catch(() => ({}))
            .then((firewallCounters) =>
              process.stdout.write(
                JSON.stringify({ event: "stats", ...gw.stats(), firewallCounters }) + "\n",
              ),
            );
        });
        process.on("SIGHUP", () => {
          rotateToken();
          void gw.reload(f.config).then((r) => {
            try {
              writeFileSync(
                `${config.database}.reload.json`,
                JSON.stringify({ at: Date.now(), ...r }) + "\n",
              );
            } catch (e) {
              logger.log("error", "reload-result-write-failed", { error: (e as Error).message });
            }
          });
        });
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
        rmSync(pidFile, { force: true });
        return 0;
      }),
    )
    .addCommand(keygen())
    .addCommand(reload())
    .addCommand(adminToken());
}

function reload(): Command {
  return new Command("reload")
    .description("make the running gateway reload its configuration (SIGHUP) and print the result")
    .requiredOption("--config <file>", "the gateway's configuration (YAML)")
    .option("--timeout <seconds>", "how long to wait for the result", "15")
    .action(
      action(async (f: { config: string; timeout: string }) => {
        let config;
        try {
          config = loadConfig(f.config); // a broken file is reported here, before the gateway is disturbed
        } catch (e) {
          if (e instanceof ConfigError) throw new UsageError(e.message, 1);
          throw e;
        }
        const pidFile = `${config.database}.pid`;
        let pid: number;
        try {
          pid = Number(readFileSync(pidFile, "utf8").trim());
        } catch {
          throw new UsageError(`${pidFile}: no pid file: is the gateway running with this configuration?`);
        }
        const resultFile = `${config.database}.reload.json`;
        const mtime = () => (existsSync(resultFile) ? statSync(resultFile).mtimeMs : 0);
        const before = mtime();
        try {
          process.kill(pid, "SIGHUP");
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          throw new UsageError(
            code === "ESRCH"
              ? `${pidFile}: the gateway with pid ${pid} is not running (a stale pid file: start the gateway)`
              : `cannot signal gateway pid ${pid}: ${code}`,
          );
        }
        const end = Date.now() + Number(f.timeout) * 1000;
        while (mtime() === before) {
          if (Date.now() > end)
            throw new UsageError(`no reload result in ${resultFile} after ${f.timeout} s`);
          await new Promise((r) => setTimeout(r, 50));
        }
        const text = readFileSync(resultFile, "utf8");
        process.stdout.write(text);
        return (JSON.parse(text) as { ok: boolean }).ok ? 0 : 1;
      }),
    );
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
