/**
 * The runtime's commands:
 *   seng runtime run [flags] -- node app.js   an unmodified Node app, shielded: node runs with the SENG preload
 *   seng runtime up --tun [flags]             TUN mode for confidential VMs: the whole guest's traffic
 *   seng test-client [flags]                  `runtime up --tun` with the simulated TEE (tests and trials)
 *
 * Flags, a config file (`--config`, see src/runtime/config.ts) and `SENG_*` variables give the same settings; flags
 * win over variables, variables over the file. `run` passes them to the app's process as `SENG_*` variables, because
 * the preload runs inside that process (and, under Gramine, inside the enclave).
 */
import { spawn } from "node:child_process";
import { constants as osConstants } from "node:os";
import { basename, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, Option } from "commander";
import { AttesterError, detectAttester, makeIdentity } from "../runtime/attesters.js";
import { configFromEnv, readPin as readPinSetting, RuntimeConfigError } from "../runtime/config.js";
import {
  debuggerInNodeArgs,
  installDebuggerGuard,
  nodeArgsOptions,
  requestedDebugger,
} from "../runtime/guards.js";
import { TunMode } from "../runtime/tun-mode.js";
import { action, UsageError } from "./errors.js";
import { helpText, LOG_LEVELS } from "./common.js";

/** A pin is a SHA-256 fingerprint, a file holding one, or the gateway's certificate (PEM/DER). */
export function readPin(pin: string): string {
  try {
    return readPinSetting(pin);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

interface RuntimeFlags {
  config?: string;
  gateway?: string;
  pin?: string;
  tee?: string;
  simDir?: string;
  mrenclave?: string;
  measurement?: string;
  hostData?: string;
  mrsigner?: string;
  isvprodid?: string;
  isvsvn?: string;
  debugEnclave?: boolean;
  tun?: string | boolean;
  route?: string[];
  deadSeconds?: string;
  leaseTimeout?: string;
  log?: string;
  json?: boolean;
  /** commander's --no-offload: false when given. */
  offload?: boolean;
  allowHostProgram?: string[];
  allowAddon?: string[];
  debugTee?: boolean;
}

/** The flag of each `SENG_*` variable, so that an error about a value given as a flag names the flag. */
const FLAG_OF: Record<string, string> = {
  SENG_CONFIG: "--config",
  SENG_GATEWAY: "--gateway",
  SENG_PIN: "--pin",
  SENG_TEE: "--tee",
  SENG_SIM_DIR: "--sim-dir",
  SENG_MRENCLAVE: "--mrenclave",
  SENG_MEASUREMENT: "--measurement",
  SENG_HOST_DATA: "--host-data",
  SENG_MRSIGNER: "--mrsigner",
  SENG_ISVPRODID: "--isvprodid",
  SENG_ISVSVN: "--isvsvn",
  SENG_DEBUG_ENCLAVE: "--debug-enclave",
  SENG_TUN: "--tun",
  SENG_TUN_ROUTES: "--route",
  SENG_DEAD_SECONDS: "--dead-seconds",
  SENG_LEASE_TIMEOUT: "--lease-timeout",
  SENG_LOG: "--log",
};

/** `message` with the names of the variables that came from flags replaced by those flags. */
export function flagNames(message: string, f: RuntimeFlags): string {
  const given = flagsToEnv(f);
  return message.replace(/\bSENG_[A-Z_]+\b/g, (v) => (v in given && FLAG_OF[v] ? FLAG_OF[v] : v));
}

/** The `SENG_*` variables that carry `f` (only flags actually given, so the config file's keys still count). */
export function flagsToEnv(f: RuntimeFlags): Record<string, string> {
  const e: Record<string, string> = {};
  const put = (k: string, v: string | undefined) => {
    if (v !== undefined) e[k] = v;
  };
  if (f.config !== undefined) e.SENG_CONFIG = resolve(f.config);
  put("SENG_GATEWAY", f.gateway);
  if (f.pin !== undefined) e.SENG_PIN = /^[0-9a-fA-F]{64}$/.test(f.pin) ? f.pin : resolve(f.pin);
  put("SENG_TEE", f.tee);
  if (f.simDir !== undefined) e.SENG_SIM_DIR = resolve(f.simDir);
  put("SENG_MRENCLAVE", f.mrenclave);
  put("SENG_MEASUREMENT", f.measurement);
  put("SENG_HOST_DATA", f.hostData);
  put("SENG_MRSIGNER", f.mrsigner);
  put("SENG_ISVPRODID", f.isvprodid);
  put("SENG_ISVSVN", f.isvsvn);
  if (f.debugEnclave) e.SENG_DEBUG_ENCLAVE = "1";
  if (typeof f.tun === "string") e.SENG_TUN = f.tun;
  if (f.route) e.SENG_TUN_ROUTES = f.route.join(",");
  put("SENG_DEAD_SECONDS", f.deadSeconds);
  put("SENG_LEASE_TIMEOUT", f.leaseTimeout);
  // --log <level>: the runtime has one kind of log line (events at info), so any level but off turns them on.
  if (f.log !== undefined)
    e.SENG_LOG = f.log === "off" || f.log === "error" || f.log === "warn" ? "off" : "json";
  if (f.allowHostProgram?.length)
    e.SENG_ALLOW_HOST_PROGRAMS = f.allowHostProgram.map((p) => resolve(p)).join(",");
  if (f.allowAddon?.length)
    e.SENG_ALLOW_ADDONS = f.allowAddon.map((a) => (/^[0-9a-fA-F]{64}$/.test(a) ? a : resolve(a))).join(",");
  return e;
}

function settings(env: NodeJS.ProcessEnv, f: RuntimeFlags) {
  try {
    return configFromEnv(env);
  } catch (e) {
    if (e instanceof RuntimeConfigError) throw new UsageError(flagNames(e.message.replace(/^SENG: /, ""), f));
    throw e;
  }
}

/** One event of `runtime up`: a JSON line (--json), else a short line for people. */
function eventLine(o: Record<string, unknown>): string {
  const { event, ...rest } = o;
  const fields = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(" ");
  return `seng: ${String(event)}${fields ? ` ${fields}` : ""}`;
}

async function up(f: RuntimeFlags): Promise<number> {
  const say = (o: object) =>
    process.stdout.write((f.json ? JSON.stringify(o) : eventLine(o as Record<string, unknown>)) + "\n");
  if (f.tun === undefined && f.config === undefined)
    throw new UsageError("runtime up: --tun is required (TUN mode is the only mode of `up`)");
  const cfg = settings({ ...process.env, ...flagsToEnv(f) }, f);
  let identity;
  try {
    identity = await makeIdentity(detectAttester(cfg.tee, cfg.sim));
  } catch (e) {
    if (e instanceof AttesterError) throw new UsageError(e.message);
    throw e;
  }
  if (identity.provider.startsWith("sim"))
    process.stderr.write("seng: warning: simulated TEE: INSECURE, for development and tests only\n");
  say({ event: "identity", provider: identity.provider });
  const mode = new TunMode({
    gateway: cfg.gateway,
    pin: cfg.pin,
    identity,
    tun: cfg.tun.name,
    routes: cfg.tun.routes,
    deadSeconds: cfg.deadSeconds,
    offload: f.offload !== false,
    log: say,
  });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await mode.stop();
  };
  process.once("SIGTERM", () => void stop().then(() => (process.exitCode = 0)));
  process.once("SIGINT", () => void stop().then(() => (process.exitCode = 0)));
  mode.start();
  const closed = await mode.closed;
  await stop();
  return closed.reason === "client-closed" ? 0 : 1;
}

/** The preload's module, next to this file (compiled JavaScript, or TypeScript when run through tsx). */
function preload(): string[] {
  const here = fileURLToPath(import.meta.url);
  const ts = here.endsWith(".ts");
  const register = resolve(here, "../../runtime/register" + (ts ? ".ts" : ".js"));
  // tsx is resolved here: the app may run from any folder.
  return ts ? ["--import", import.meta.resolve("tsx"), "--import", register] : ["--import", register];
}

/** `seng runtime run -- node app.js`: starts node with the preload; the exit code is the app's. */
async function run(command: string[], f: RuntimeFlags): Promise<number> {
  if (!command.length) throw new UsageError("runtime run: give the app after --, e.g. -- node app.js");
  const [prog, ...args] = command as [string, ...string[]];
  if (prog !== "node" && prog !== process.execPath && basename(prog) !== "node")
    throw new UsageError(
      `runtime run: ${prog} is not node: run shields Node apps from inside their process; ` +
        "for other programs use `seng runtime up --tun` in a confidential VM",
    );
  // No debugger, in this launcher or the app: --inspect-brk/--inspect-wait wait for one before any JavaScript (the
  // preload too) runs, so they are refused here, before node starts. Only a debug TEE may have one (--debug-tee;
  // the preload then checks that the evidence really is debug).
  const own = requestedDebugger();
  const theirs = debuggerInNodeArgs(args);
  if ((own || theirs.length) && !f.debugTee)
    throw new UsageError(
      `runtime run: ${own ? `${own} (this launcher)` : theirs.join(" ")}: no debugger in a shielded process: ` +
        "a debugger can run any code inside the attested app; remove it (a debug TEE: --debug-tee)",
    );
  if (nodeArgsOptions(args).some((a) => /^--expose[-_]internals$/.test(a)))
    throw new UsageError(
      "runtime run: --expose-internals gives the app Node's raw socket bindings; remove the flag",
    );
  if (f.debugTee)
    process.stderr.write(
      "seng: warning: --debug-tee: the app may have a debugger; the runtime allows it only when the TEE's " +
        "evidence is debug, which production policies refuse\n",
    );
  const env = { ...process.env, ...flagsToEnv(f) };
  settings(env, f); // fail here, with the CLI's message, rather than inside the app's process
  // SIGUSR1 would open an inspector in this launcher: it is handled, and passed on to the app (which handles it too).
  const app: { child?: ReturnType<typeof spawn> } = {};
  installDebuggerGuard(() => app.child?.kill("SIGUSR1"));
  const child = spawn(process.execPath, [...preload(), ...args], { env, stdio: "inherit" });
  app.child = child;
  // The app is in our process group: a terminal's Ctrl-C or hangup reaches it directly, so those are passed on only
  // when no terminal sent them (a second SIGINT makes many apps skip their graceful shutdown). SIGTERM (kill, a
  // service manager) reaches only us, and is always passed on.
  const fromTerminal = process.stdin.isTTY === true;
  const forwarded = (
    ["SIGTERM", ...(fromTerminal ? [] : (["SIGINT", "SIGHUP"] as const))] as NodeJS.Signals[]
  ).map((sig) => [sig, () => child.kill(sig)] as const);
  // Our own handlers keep a terminal's signals from ending this launcher before the app.
  const ignore = () => {};
  for (const [sig, fn] of forwarded) process.on(sig, fn);
  if (fromTerminal) for (const sig of ["SIGINT", "SIGHUP"] as const) process.on(sig, ignore);
  return new Promise((done, fail) => {
    child.once("error", (e) => fail(new UsageError(`runtime run: cannot start node: ${e.message}`)));
    child.once("exit", (code, signal) => {
      for (const [sig, fn] of forwarded) process.off(sig, fn);
      for (const sig of ["SIGINT", "SIGHUP"] as const) process.off(sig, ignore);
      done(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 1) : 1));
    });
  });
}

/** commander: a repeatable option's values. */
function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

function commonOptions(c: Command): Command {
  return c
    .option("--config <file>", "runtime config file (YAML); flags and SENG_* variables override its keys")
    .option(
      "--gateway <host:port[,…]>",
      "gateway address, or several comma-separated (a cluster: after a loss the runtime moves to the next)",
    )
    .option(
      "--pin <fingerprint|file>",
      "gateway certificate: SHA-256 fingerprint, or a file with it or the certificate",
    )
    .option("--dead-seconds <n>", "consider the tunnel lost after this long without an answer (default 30)")
    .option("--sim-dir <dir>", "simulated TEE (seng attest sim init): INSECURE")
    .option("--mrenclave <hex>", "simulated TEE: MRENCLAVE to claim")
    .option("--measurement <hex>", "simulated SEV-SNP VM (sim init --snp): MEASUREMENT to claim (48 bytes)")
    .option("--host-data <hex>", "simulated SEV-SNP VM: HOST_DATA to claim (32 bytes, default zeros)")
    .option("--mrsigner <hex>", "simulated TEE: MRSIGNER (default zeros)")
    .option("--isvprodid <n>", "simulated TEE: ISVPRODID (default 0)")
    .option("--isvsvn <n>", "simulated TEE: ISVSVN (default 0)")
    .option("--debug-enclave", "simulated TEE: claim a debug enclave (SEV-SNP: a debug guest policy)");
}

const teeOption = () =>
  new Option("--tee <kind>", "where evidence comes from (default auto)").choices([
    "auto",
    "gramine",
    "tsm",
    "sim",
  ]);

function tunOptions(c: Command): Command {
  return c
    .option("--tun [name]", "TUN mode: create this TUN interface (default seng-rt0)")
    .option(
      "--route <cidr...>",
      'destinations to send through the tunnel (IPv4 or IPv6 prefixes); "default" takes over the default route of each leased family (0.0.0.0/0, ::/0)',
    )
    .option("--no-offload", "TUN mode: no TUN offloads (one packet per read and write)");
}

export function runtimeCommands(): Command[] {
  const runtime = new Command("runtime").description(
    "the SENG runtime: attest, open the tunnel, shield the app's traffic",
  );
  runtime.enablePositionalOptions();
  runtime.addCommand(
    commonOptions(
      new Command("run")
        .description(
          "run an unmodified Node app with its network shielded: seng runtime run [flags] -- node app.js",
        )
        .argument("<command...>", "node and its arguments")
        .passThroughOptions(),
    )
      .addOption(teeOption())
      .option("--lease-timeout <s>", "start the app after this long even without a lease (default 30)")
      .addOption(
        new Option(
          "--log <level>",
          "runtime events as JSON lines on stderr: info or debug; off (default) writes none",
        ).choices([...LOG_LEVELS, "json"]),
      )
      .option(
        "--allow-host-program <path>",
        "a non-Node program the app may start; its traffic is NOT shielded (repeatable)",
        collect,
      )
      .option(
        "--allow-addon <path|sha256>",
        "a native addon the app may load; with any, every other addon is refused (repeatable)",
        collect,
      )
      .option(
        "--debug-tee",
        "let the app have a debugger (--inspect…): allowed only when the TEE's evidence is debug, which production policies refuse",
      )
      .action(action((command: string[], f: RuntimeFlags) => run(command, f))),
  );
  helpText(
    runtime.commands.at(-1)!,
    [
      "seng runtime run --gateway gw.example.net:4433 --pin gateway.pem -- node app.js",
      "seng runtime run --config runtime.yaml --log info -- node server.js --port 8080",
      "SENG_CONFIG=runtime.yaml seng runtime run -- node app.js",
    ],
    "Exit codes: the app's own; 2 usage or configuration error before the app starts.",
  );
  runtime.addCommand(
    tunOptions(
      commonOptions(
        new Command("up").description(
          "TUN mode for confidential VMs: route the guest's traffic through the tunnel",
        ),
      ),
    )
      .addOption(teeOption())
      .option("--json", "print the runtime's events as JSON lines")
      .action(action((f: RuntimeFlags) => up(f))),
  );
  helpText(
    runtime.commands.at(-1)!,
    [
      "seng runtime up --tun --route default --gateway gw.example.net:4433 --pin gateway.pem",
      "seng runtime up --config runtime.yaml --json",
    ],
    "Exit codes: 0 closed by the client (SIGINT/SIGTERM), 1 the tunnel closed otherwise, 2 usage or configuration error.",
  );
  const testClient = tunOptions(
    commonOptions(
      new Command("test-client").description(
        "runtime up --tun with the simulated TEE (tests and trials; INSECURE)",
      ),
    ),
  ).action(action((f: RuntimeFlags) => up({ ...f, tee: "sim", tun: f.tun ?? true, json: true })));
  return [runtime, testClient];
}
