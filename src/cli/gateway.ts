/**
 * `seng gateway [--config <file>]` runs the gateway; `seng gateway init` prepares a gateway host (starter config,
 * certificate, key, admin token); `seng gateway keygen` makes its certificate and prints the fingerprint runtimes
 * pin; `seng gateway reload` makes the running gateway reload (SIGHUP to the pid in `<database>.pid`) and prints the
 * result it writes to `<database>.reload.json`.
 */
import { randomBytes } from "node:crypto";
import { writeFileSync, existsSync, readFileSync, rmSync, statSync } from "node:fs";
import { Command, Option } from "commander";
import { Gateway } from "../gateway/server.js";
import { preflight, PreflightError, tunHolders } from "../gateway/preflight.js";
import { jsonLogger, type Level } from "../gateway/log.js";
import { listTable, removeTable } from "../firewall/nft.js";
import { AdminServer } from "../admin/server.js";
import { gatewayBackend } from "../admin/backend.js";
import { RecentEvents } from "../admin/recent.js";
import { GatewayMetrics } from "../metrics/metrics.js";
import { MetricsServer } from "../metrics/server.js";
import { startRouting, type RouteAnnouncer } from "../routing/announcer.js";
import { action, UsageError } from "./errors.js";
import {
  configOption,
  gatewayConfigFile,
  helpText,
  loadGatewayConfig,
  logOption,
  type LogLevel,
} from "./common.js";
import { gatewayInit, makeDir, writeGatewayKeys } from "./gateway-init.js";

/** One line for a failure of the gateway's start (the kernel's refusals said in terms of what to do). */
function startError(e: Error, tun: string): string {
  const m = e.message.split("\n")[0]!;
  if (/TUNSETIFF/.test(m) && /EBUSY/.test(m)) {
    const holders = tunHolders(tun);
    return `tun.name: the interface ${tun} is in use${holders.length ? ` by pid ${holders.join(", ")} (another gateway?)` : ""}: stop it first, or choose another tun.name`;
  }
  if (/EPERM|EACCES/.test(m) && /TUN|ioctl|nft|netlink/i.test(m))
    return `the gateway needs root or CAP_NET_ADMIN (${m})`;
  return m;
}

function gatewayRun(): Command {
  // Positional options: `seng gateway reload --config f` gives --config to reload, not to the gateway itself.
  const c = new Command("gateway")
    .description("run the SENG gateway (as root or with CAP_NET_ADMIN)")
    .enablePositionalOptions()
    .addOption(configOption())
    .addOption(logOption("info", "written on stdout"))
    .addOption(new Option("--log-level <level>", "deprecated: use --log").hideHelp())
    .action(
      action(async (f: { config?: string; log: LogLevel; logLevel?: string }) => {
        const file = gatewayConfigFile(f.config);
        let level = f.log;
        if (f.logLevel !== undefined) {
          if (!["debug", "info", "warn", "error"].includes(f.logLevel))
            throw new UsageError(
              `--log-level: expected one of debug, info, warn, error (got ${f.logLevel}); use --log`,
            );
          level = f.logLevel as LogLevel;
        }
        // Everything the start would trip over, checked before anything on the machine is changed.
        const config = loadGatewayConfig(file, { files: true });
        try {
          await preflight(config);
        } catch (e) {
          if (e instanceof PreflightError) throw new UsageError(e.message);
          throw e;
        }
        const recent = new RecentEvents();
        const logger = jsonLogger({
          level: level === "off" ? "warn" : (level as Level), // off: nothing written, warnings still reach status
          onEntry: recent.add,
          ...(level === "off" ? { write: () => {} } : {}),
        });
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
        // A start that fails half-way removes the policy table it made: left alone, its unshielded-drop and
        // default-deny rules would cut traffic with no gateway running. (A table from an earlier run stays, as on
        // a normal stop: the firewall fails closed.)
        const table = config.model.table;
        const hadTable = !config.model.enabled || (await listTable(table)).chains.length > 0;
        const undoTable = async () => {
          if (!hadTable) await removeTable(table).catch(() => undefined);
        };
        try {
          await gw.start();
          if (gw.cluster)
            gw.cluster.onAcquire = (s) => metrics.etcdSeconds.observe({ operation: "acquire" }, s);
        } catch (e) {
          await undoTable();
          throw new UsageError(`gateway: cannot start: ${startError(e as Error, config.tun.name)}`);
        }
        let routing: RouteAnnouncer | undefined;
        try {
          await admin.start();
          await scrape?.start(`${config.file}: metrics.listen`);
          if (config.routing)
            routing = await startRouting(
              gw,
              config.routing,
              { configFile: config.file, database: config.database },
              logger,
              () => gw.leases.fence(), // a fenced cluster gateway withdraws its routes at once
            );
        } catch (e) {
          await routing?.stop().catch(() => undefined);
          await scrape?.stop().catch(() => undefined);
          await admin.stop();
          await gw.stop();
          await undoTable();
          // Listening and token-file failures: one line naming the configuration key.
          throw new UsageError((e as Error).message.split("\n")[0]!);
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
          void gw.reload(file).then((r) => {
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
        await routing?.stop();
        await scrape?.stop();
        await admin.stop();
        await gw.stop();
        rmSync(pidFile, { force: true });
        return 0;
      }),
    )
    .addCommand(gatewayInit())
    .addCommand(keygen())
    .addCommand(reload())
    .addCommand(adminToken());
  return helpText(c, [
    "seng gateway --config /etc/seng/gateway.yaml",
    "SENG_CONFIG=/etc/seng/gateway.yaml seng gateway --log warn",
    "systemctl start seng-gateway   # packaging/systemd/seng-gateway.service",
  ]);
}

function reload(): Command {
  const c = new Command("reload")
    .description("make the running gateway reload its configuration (SIGHUP) and print the result")
    .addOption(configOption())
    .option("--timeout <seconds>", "how long to wait for the result", "15")
    .option("--json", "print the gateway's result as JSON")
    .action(
      action(async (f: { config?: string; timeout: string; json?: boolean }) => {
        const timeout = Number(f.timeout);
        if (!(timeout > 0))
          throw new UsageError(`--timeout: expected a number of seconds (got ${f.timeout})`);
        // A broken file is reported here, before the gateway is disturbed.
        const config = loadGatewayConfig(gatewayConfigFile(f.config));
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
        const end = Date.now() + timeout * 1000;
        while (mtime() === before) {
          if (Date.now() > end)
            throw new UsageError(`no reload result in ${resultFile} after ${f.timeout} s`);
          await new Promise((r) => setTimeout(r, 50));
        }
        const text = readFileSync(resultFile, "utf8");
        const r = JSON.parse(text) as {
          ok: boolean;
          error?: string;
          revoked?: { app: string; address: string }[];
        };
        if (f.json) process.stdout.write(text);
        else if (r.ok) {
          const revoked = r.revoked ?? [];
          process.stdout.write(
            `reloaded ${config.file}` +
              (revoked.length
                ? `; revoked ${revoked.map((x) => `${x.app} @ ${x.address}`).join(", ")}\n`
                : "; nothing revoked\n"),
          );
        } else
          process.stderr.write(
            `seng: reload refused, the old configuration stays: ${r.error ?? "unknown error"}\n`,
          );
        return r.ok ? 0 : 1;
      }),
    );
  return helpText(c, ["seng gateway reload --config /etc/seng/gateway.yaml", "seng gateway reload --json"]);
}

function adminToken(): Command {
  const c = new Command("admin-token")
    .description("create a random admin API token file (mode 600) for admin.tokenFile")
    .requiredOption("--file <path>", "where to write the token")
    .action(
      action((f: { file: string }) => {
        if (existsSync(f.file)) throw new UsageError(`${f.file} exists; remove it first`);
        try {
          writeFileSync(f.file, randomBytes(32).toString("hex") + "\n", { mode: 0o600, flag: "wx" });
        } catch (e) {
          throw new UsageError(`--file ${f.file}: cannot write (${(e as NodeJS.ErrnoException).code})`);
        }
      }),
    );
  return helpText(c, ["seng gateway admin-token --file /etc/seng/admin.token"]);
}

function keygen(): Command {
  const c = new Command("keygen")
    .description("create the gateway's certificate and key; prints the fingerprint runtimes pin")
    .requiredOption(
      "--dir <dir>",
      "where to write gateway.pem and gateway.key (made with mode 700 if missing)",
    )
    .option("--name <cn>", "certificate common name", "SENG gateway")
    .option("--json", "print the files and the fingerprint as JSON")
    .action(
      action(async (f: { dir: string; name: string; json?: boolean }) => {
        makeDir(f.dir, "--dir");
        const r = await writeGatewayKeys(f.dir, f.name);
        process.stdout.write(
          f.json
            ? JSON.stringify({ certificate: r.cert, key: r.key, fingerprint: r.fingerprint }) + "\n"
            : `${r.fingerprint}\n`,
        );
      }),
    );
  return helpText(c, ["seng gateway keygen --dir /etc/seng", "seng gateway keygen --dir ./gw --json"]);
}

export function gatewayCommands(): Command[] {
  return [gatewayRun()];
}
