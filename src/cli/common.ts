/**
 * What every `seng` command shares: where the gateway configuration comes from (`--config`, then `SENG_CONFIG`, then
 * /etc/seng/gateway.yaml), loading it with one-line errors, the log flag, and the examples and exit codes at the
 * end of each `--help`.
 */
import { Command, Option } from "commander";
import { checkConfigFiles, ConfigError, loadConfig, type GatewayConfig } from "../policy/config.js";
import { UsageError } from "./errors.js";

/** Where a gateway installed as docs/INSTALL.md describes keeps its configuration. */
export const DEFAULT_GATEWAY_CONFIG = "/etc/seng/gateway.yaml";

/** Exit codes of every command (README, docs/GATEWAY.md). */
export const EXIT_CODES =
  "Exit codes: 0 ok (allowed, verified), 1 a negative answer (denied, rejected, not found), 2 usage, configuration or I/O error.";

/**
 * The gateway configuration file of a command: `--config`, else a positional argument (`policy check <config>`,
 * deprecated), else `SENG_CONFIG`, else /etc/seng/gateway.yaml.
 */
export function gatewayConfigFile(flag: string | undefined, positional?: string): string {
  if (flag !== undefined && positional !== undefined && flag !== positional)
    throw new UsageError(`give the configuration once: --config ${flag} or ${positional}, not both`);
  if (positional !== undefined)
    process.stderr.write(`seng: warning: a positional <config> is deprecated: use --config ${positional}\n`);
  return flag ?? positional ?? (process.env.SENG_CONFIG || DEFAULT_GATEWAY_CONFIG);
}

/**
 * Loads and validates a gateway configuration; every problem is a UsageError (exit 2) naming the file and key.
 * `files`: also check the files and folders it names (what the gateway reads or creates at start).
 */
export function loadGatewayConfig(file: string, opts: { files?: boolean } = {}): GatewayConfig {
  try {
    const c = loadConfig(file);
    if (opts.files) checkConfigFiles(c);
    return c;
  } catch (e) {
    if (e instanceof ConfigError) throw new UsageError(e.message);
    throw e;
  }
}

/** The `--config <file>` option of commands that read the gateway configuration. */
export const configOption = () =>
  new Option(
    "--config <file>",
    `gateway configuration (YAML; default $SENG_CONFIG, else ${DEFAULT_GATEWAY_CONFIG})`,
  );

/** The log levels of `--log` (gateway and runtime alike); `off` writes nothing. */
export const LOG_LEVELS = ["debug", "info", "warn", "error", "off"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** `--log <level>`: one flag for the gateway and the runtime. */
export const logOption = (dflt: LogLevel, where: string) =>
  new Option("--log <level>", `lowest level of the JSON log lines ${where}`)
    .choices(LOG_LEVELS)
    .default(dflt);

/** Commands whose --help has examples already (the rest get theirs from main.ts's table). */
export const withExamples = new WeakSet<Command>();

/** Appends examples and the exit codes to a command's --help. */
export function helpText(c: Command, examples: string[], exits = EXIT_CODES): Command {
  withExamples.add(c);
  return c.addHelpText("after", `\nExamples:\n${examples.map((e) => `  $ ${e}`).join("\n")}\n\n${exits}\n`);
}
