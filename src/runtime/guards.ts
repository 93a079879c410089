/**
 * What keeps a shielded process the code that was measured, beyond its sockets (docs/THREAT-MODEL.md):
 *
 *  - no debugger: `inspector.open()`, `process._debugProcess`, the `inspector` binding throw `ERR_SENG_DEBUGGER`;
 *    SIGUSR1 (which makes Node open an inspector on 127.0.0.1:9229) is handled, so it opens nothing; `--inspect*`
 *    flags in `execArgv` or `NODE_OPTIONS` stop the process before it has an identity. Only a debug TEE identity
 *    (one the gateway refuses unless a policy says `allowDebug`) may have a debugger, and it is said at startup.
 *  - no unshielded children by default: a `child_process` program other than this Node runs on the host's network
 *    stack, so it is refused with `ERR_SENG_HOST_NETWORKING` unless the runtime config lists it
 *    (`allowHostPrograms`); then it runs with a warning. Node children get the preload (their own tunnel).
 *  - native addons: each one the app loads is logged with its path and SHA-256; with `allowAddons` any other is
 *    refused (`ERR_SENG_ADDON`), without it they load with a warning. SENG's own addon always loads.
 *
 * The preload (register.ts) installs these in the main thread; worker threads get `workerGuardsSource`
 * (worker-guard.ts).
 * `seng runtime run` uses {@link debuggerInNodeArgs} and {@link installDebuggerGuard} for itself.
 */
import { createHash } from "node:crypto";
import childProcess from "node:child_process";
import { accessSync, constants as fsConstants, readFileSync, realpathSync } from "node:fs";
import inspector from "node:inspector";
import { syncBuiltinESMExports } from "node:module";
import { resolve } from "node:path";
import { nativeAddonPath } from "../native/load.js";
import { hostNetworkingError } from "./stack.js";

/** The message every refusal of a debugger starts with. */
export const DEBUGGER_REFUSED = "SENG: no debugger in a shielded app";

/** An Error for an attempt to open a debugger. `code` is ERR_SENG_DEBUGGER. */
export function debuggerError(what: string): Error & { code: string } {
  return Object.assign(new Error(`${DEBUGGER_REFUSED}: ${what}`), { code: "ERR_SENG_DEBUGGER" });
}

/** An Error for a native addon outside `allowAddons`. `code` is ERR_SENG_ADDON. */
export function addonError(what: string): Error & { code: string } {
  return Object.assign(new Error(`SENG: native addon refused: ${what}`), { code: "ERR_SENG_ADDON" });
}

// ---- debugger -------------------------------------------------------------------------------------------------------

/** Node's options that open (or prepare) an inspector; `--debug-port` is `--inspect-port`'s alias. */
const DEBUG_OPTIONS = new Set([
  "--inspect",
  "--inspect-brk",
  "--inspect-wait",
  "--inspect-port",
  "--debug-port",
  "--inspect-publish-uid",
  "--inspect-brk-node",
]);

/** Node's name for an option token: `--inspect_brk=9230` is `--inspect-brk` (Node reads `_` as `-`). */
function optionName(token: string): string {
  const name = token.replace(/"/g, "").split("=", 1)[0]!;
  return name.startsWith("--") ? "--" + name.slice(2).replace(/_/g, "-") : name;
}

/** The debugger options among Node option tokens (execArgv, or NODE_OPTIONS split on blanks). */
export function debuggerOptions(tokens: readonly string[]): string[] {
  return tokens.filter((t) => DEBUG_OPTIONS.has(optionName(t)));
}

/** NODE_OPTIONS as tokens (Node allows double quotes around a token). */
export function nodeOptionsTokens(value: string | undefined): string[] {
  return (value ?? "")
    .split(/\s+/)
    .filter(Boolean)
    .map((t) => t.replace(/"/g, ""));
}

/** Node options that take their value as the next argument (so that value is not the script). */
const VALUE_OPTIONS = new Set([
  "-r",
  "--require",
  "--import",
  "--loader",
  "--experimental-loader",
  "-C",
  "--conditions",
  "--input-type",
  "--title",
  "--env-file",
  "--stack-trace-limit",
]);

/**
 * Node options that run code before the app, so before a preload's guards (or, `--env-file`, set NODE_OPTIONS).
 */
const LOADER_OPTIONS = new Set([
  "-r",
  "--require",
  "--import",
  "--loader",
  "--experimental-loader",
  "--env-file",
]);

/**
 * The loader options among Node option tokens, each as `name=value` (`--import x`, `--import=x` and
 * `--experimental_loader x` are `--import=x`, `--experimental-loader=x`). `commandLine`: the tokens are a `node …`
 * command line, whose options end at the script, `-e`/`-p` or `--`.
 */
export function loaderOptions(tokens: readonly string[], commandLine = false): string[] {
  const out: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (commandLine && (t === "--" || !t.startsWith("-") || t === "-")) break;
    const name = optionName(t);
    const eq = t.indexOf("=");
    if (LOADER_OPTIONS.has(name))
      out.push(`${name}=${eq >= 0 ? t.slice(eq + 1).replace(/"/g, "") : (tokens[++i] ?? "")}`);
    else if (commandLine && ["-e", "--eval", "-p", "--print"].includes(t)) break;
    else if (VALUE_OPTIONS.has(name) && eq < 0) i++;
  }
  return out;
}

/**
 * The Node options of a `node …` command line (the arguments after `node`, up to the script or `--`), for the
 * launcher, which must refuse a debugger before Node opens it: `--inspect-brk` and `--inspect-wait` wait for a
 * debugger before any JavaScript (the preload too) runs.
 */
export function nodeArgsOptions(args: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--" || !a.startsWith("-") || a === "-") break;
    out.push(a);
    if (a === "-e" || a === "--eval" || a === "-p" || a === "--print") break; // the code is the program
    if (VALUE_OPTIONS.has(optionName(a)) && !a.includes("=")) i++;
  }
  return out;
}

/** The debugger options of a `node …` command line (see {@link nodeArgsOptions}). */
export function debuggerInNodeArgs(args: readonly string[]): string[] {
  return debuggerOptions(nodeArgsOptions(args));
}

/** What asks for a debugger in this process (flags, or an inspector already open), or undefined. */
export function requestedDebugger(): string | undefined {
  const flags = [
    ...debuggerOptions(process.execArgv),
    ...debuggerOptions(nodeOptionsTokens(process.env.NODE_OPTIONS)),
  ];
  if (flags.length) return flags.join(" ");
  const url = inspector.url();
  return url ? `an inspector is open (${url})` : undefined;
}

type AnyFn = (...args: never[]) => unknown;

/** Replaces `obj[key]` (own property, writable again), keeping `fn.name`. */
function put(obj: object, key: string, fn: AnyFn): void {
  const original = (obj as Record<string, unknown>)[key] as AnyFn | undefined;
  Object.defineProperty(fn, "name", { value: original?.name || key });
  Object.defineProperty(obj, key, { value: fn, writable: true, configurable: true, enumerable: true });
}

let debuggerAllowed = false;
let debuggerGuarded = false;
const BLOCKED_BINDINGS = new Map<string, () => Error>();

/** Wraps process.binding once, for the bindings the guards close (`inspector`, `process_wrap`, `spawn_sync`). */
let bindingsGuarded = false;
function guardBindings(): void {
  if (bindingsGuarded) return;
  bindingsGuarded = true;
  const proc = process as unknown as { binding: (name: string) => unknown };
  const binding = proc.binding;
  put(process, "binding", ((name: string) => {
    const refuse = BLOCKED_BINDINGS.get(name);
    if (refuse) throw refuse();
    return binding.call(process, name);
  }) as AnyFn);
}

/**
 * Closes the ways a process can open an inspector at run time: `inspector.open()`, `process._debugProcess`, the
 * `inspector` binding, and SIGUSR1 (Node opens an inspector on it when no JavaScript listener handles it;
 * `onSignal`, if given, is called instead, e.g. to pass the signal on). Idempotent.
 */
export function installDebuggerGuard(onSignal?: () => void): void {
  if (debuggerGuarded) return;
  debuggerGuarded = true;
  // A listener replaces Node's own SIGUSR1 handler (libuv's takes the signal). If the app removes it, SIGUSR1's
  // default action (the process ends) applies: still no inspector.
  process.on("SIGUSR1", onSignal ?? (() => {}));
  const open = inspector.open;
  put(inspector, "open", function (this: unknown, ...args: unknown[]) {
    if (!debuggerAllowed) throw debuggerError("inspector.open() would give the host a debugger");
    return (open as (...a: unknown[]) => unknown).apply(this, args);
  } as AnyFn);
  const proc = process as unknown as Record<string, unknown>;
  const debugProcess = proc._debugProcess as ((pid: number) => void) | undefined;
  put(process, "_debugProcess", ((pid: number) => {
    if (!debuggerAllowed) throw debuggerError("process._debugProcess() opens a debugger in a Node process");
    return debugProcess?.(pid);
  }) as AnyFn);
  BLOCKED_BINDINGS.set("inspector", () => debuggerError('process.binding("inspector") can open a debugger'));
  guardBindings();
  syncBuiltinESMExports();
}

/**
 * The debugger decision once the identity is known: a requested debugger (flags, an open inspector) is allowed
 * only for a debug TEE identity, with a warning; otherwise it throws {@link debuggerError} and the app must not
 * start. Returns whether a debugger is allowed.
 */
export function decideDebugger(identity: { debug: boolean; provider: string }, warn: (m: string) => void) {
  const asked = requestedDebugger();
  if (!asked) return false;
  if (!identity.debug)
    throw debuggerError(
      `${asked}: a debugger can run any code inside the attested app; remove it (only a debug TEE, which ` +
        "production policies refuse, may have one)",
    );
  debuggerAllowed = true;
  BLOCKED_BINDINGS.delete("inspector");
  warn(
    `debugger allowed (${asked}): the identity is a debug TEE (${identity.provider}); ` +
      "a gateway admits it only where an identity sets allowDebug, never in production",
  );
  return true;
}

// ---- child processes ------------------------------------------------------------------------------------------------

/** What the child guard needs to know. */
export interface ChildGuardOptions {
  /** Absolute paths of host programs the app may start (their traffic is unshielded). */
  allowHostPrograms: readonly string[];
  /** Warnings (stderr line and, with SENG_LOG=json, an event). */
  warn: (message: string, event: Record<string, unknown>) => void;
}

/** The real path of `p`, or `p` when it has none (not there yet). */
export function real(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

/** Resolves a program name as execvp does: a name with a slash is a path, else the first executable in PATH. */
export function resolveProgram(file: string, path: string | undefined, cwd?: string): string {
  if (file.includes("/")) return resolve(cwd ?? process.cwd(), file);
  for (const dir of (path ?? "/usr/local/bin:/usr/bin:/bin").split(":")) {
    const p = resolve(cwd ?? process.cwd(), dir || ".", file);
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return file; // not found: spawn fails with ENOENT, but only after the policy refused it
}

/** The `--import`/`--require`/`--loader` arguments of this process: what a Node child needs to run the preload. */
export function preloadArgs(execArgv: readonly string[] = process.execArgv): string[] {
  const out: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const a = execArgv[i]!;
    const name = optionName(a);
    if (!["--import", "--require", "-r", "--loader", "--experimental-loader"].includes(name)) continue;
    if (a.includes("=")) out.push(a);
    else if (i + 1 < execArgv.length) out.push(a, execArgv[++i]!);
  }
  return out;
}

/**
 * A Node child's arguments (after argv0) with the preload in front (unless they already hold all of it). Loader
 * options (`-r`, `--require`, `--import`, `--loader`, `--experimental-loader`, `--env-file`, any spelling) in its
 * options or its NODE_OPTIONS would run code before the preload's guards: only the preload's own and those this
 * process was started with (`allowed`, as {@link loaderOptions} spells them) pass; any other throws
 * `ERR_SENG_HOST_NETWORKING`.
 */
export function nodeChildArgs(
  args: readonly string[],
  nodeOptions: string | undefined,
  preload: readonly string[],
  allowed: readonly string[],
): string[] {
  const own = loaderOptions(preload);
  const ok = new Set([...own, ...allowed]);
  const inArgs = loaderOptions(args, true);
  const foreign = [
    ...inArgs.filter((l) => !ok.has(l)),
    ...loaderOptions(nodeOptionsTokens(nodeOptions))
      .filter((l) => !ok.has(l))
      .map((l) => `NODE_OPTIONS ${l}`),
  ];
  if (foreign.length)
    throw hostNetworkingError(
      `a Node child with ${foreign.join(", ")} would run code before SENG's preload; only the preload this ` +
        "process runs with may load code in a Node child",
    );
  return own.length && own.every((l) => inArgs.includes(l)) ? [...args] : [...preload, ...args];
}

let childPolicy:
  | (ChildGuardOptions & { node: string; preload: string[]; allowed: string[]; warned: Set<string> })
  | undefined;

/**
 * Decides about one child: returns the program to start (the resolved path that was judged, so PATH is not looked
 * up twice) and its arguments (after argv0; with the preload for a Node child), or throws
 * `ERR_SENG_HOST_NETWORKING`. `shellCommand` is the command line a shell was asked to run.
 */
function admitChild(
  file: string,
  args: readonly string[],
  env: Record<string, string | undefined> | undefined,
  cwd: string | undefined,
  shellCommand?: string,
): { file: string; args: string[] } {
  const p = childPolicy!;
  const resolved = resolveProgram(file, (env ?? process.env).PATH, cwd);
  const program = real(resolved);
  if (program === p.node) {
    // A Node child with a debugger would wait for it (--inspect-brk) before its own preload runs: refused here.
    const asked = [
      ...debuggerInNodeArgs(args),
      ...debuggerOptions(nodeOptionsTokens((env ?? process.env).NODE_OPTIONS)),
    ];
    if (asked.length && !debuggerAllowed)
      throw debuggerError(`a Node child with ${asked.join(" ")} would give the host a debugger`);
    return {
      file: resolved,
      args: nodeChildArgs(args, (env ?? process.env).NODE_OPTIONS, p.preload, p.allowed),
    };
  }
  const what =
    shellCommand !== undefined ? `${program}, a shell running "${shellCommand.slice(0, 80)}",` : program;
  if (p.allowHostPrograms.some((a) => real(a) === program)) {
    if (!p.warned.has(program)) {
      p.warned.add(program);
      p.warn(
        `child process ${what} runs on the host's network stack: its traffic is NOT shielded (allowHostPrograms)`,
        { event: "unshielded-child", program },
      );
    }
    return { file: resolved, args: [...args] };
  }
  throw hostNetworkingError(
    `child process ${what} would run on the host's network stack; only Node children (with the preload) are ` +
      "shielded: list the program in the runtime config's allowHostPrograms to run it unshielded",
  );
}

interface SpawnOpts {
  argv0?: string;
  shell?: boolean | string;
  env?: Record<string, string | undefined>;
  cwd?: string | URL;
}

/** (file, args?, options?) as child_process's functions take them. */
function splitArgs(a: unknown[]): [string[], SpawnOpts] {
  if (Array.isArray(a[1])) return [a[1] as string[], (a[2] as SpawnOpts | undefined) ?? {}];
  return [[], (a[1] !== null && typeof a[1] === "object" ? (a[1] as SpawnOpts) : {}) ?? {}];
}

function shellOf(o: SpawnOpts): string {
  return typeof o.shell === "string" ? o.shell : "/bin/sh";
}

function cwdOf(o: SpawnOpts): string | undefined {
  return o.cwd === undefined ? undefined : o.cwd instanceof URL ? o.cwd.pathname : String(o.cwd);
}

/**
 * Puts the policy in front of child_process: `ChildProcess.prototype.spawn` (which spawn, exec, execFile and fork
 * all end in) and spawnSync, execSync, execFileSync (which Node runs through an internal binding), and closes the
 * `process_wrap` and `spawn_sync` bindings. A shell (`exec`, `shell: true`) is the program judged: what it runs
 * cannot be seen, so allowing a shell allows everything it starts. Idempotent.
 */
export function installChildGuard(opts: ChildGuardOptions): void {
  if (childPolicy) return;
  childPolicy = {
    ...opts,
    node: real(process.execPath),
    preload: preloadArgs(),
    // What this process was started with (the operator's command line) may reach a child (fork's execArgv, env).
    allowed: [
      ...loaderOptions(process.execArgv),
      ...loaderOptions(nodeOptionsTokens(process.env.NODE_OPTIONS)),
    ],
    warned: new Set(),
  };
  const proto = childProcess.ChildProcess.prototype as unknown as Record<string, AnyFn>;
  const spawn = proto.spawn as unknown as (this: unknown, o: Record<string, unknown>) => unknown;
  put(proto, "spawn", function (this: unknown, o: Record<string, unknown>) {
    const args = (o.args as string[] | undefined) ?? [String(o.file)];
    const env: Record<string, string> = {};
    for (const kv of (o.envPairs as string[] | undefined) ?? []) {
      const i = kv.indexOf("=");
      env[kv.slice(0, i)] = kv.slice(i + 1);
    }
    const shell = args[1] === "-c" && args.length === 3 ? args[2] : undefined;
    const admitted = admitChild(
      String(o.file),
      args.slice(1),
      o.envPairs ? env : undefined,
      o.cwd as string | undefined,
      shell,
    );
    return spawn.call(this, { ...o, file: admitted.file, args: [args[0]!, ...admitted.args] });
  } as AnyFn);

  const cp = childProcess as unknown as Record<string, (...a: unknown[]) => unknown>;
  const spawnSync = cp.spawnSync!;
  put(childProcess, "spawnSync", ((...a: unknown[]) => {
    const [args, o] = splitArgs(a);
    if (o.shell) {
      admitChild(shellOf(o), [], o.env, cwdOf(o), [String(a[0]), ...args].join(" "));
      return spawnSync(...a);
    }
    const admitted = admitChild(String(a[0]), args, o.env, cwdOf(o));
    return spawnSync(admitted.file, admitted.args, { ...o, argv0: o.argv0 ?? String(a[0]) });
  }) as AnyFn);
  const execSync = cp.execSync!;
  put(childProcess, "execSync", ((cmd: unknown, o: SpawnOpts = {}) => {
    admitChild(shellOf(o), [], o.env, cwdOf(o), String(cmd));
    return execSync(cmd, o);
  }) as AnyFn);
  const execFileSync = cp.execFileSync!;
  put(childProcess, "execFileSync", ((...a: unknown[]) => {
    const [args, o] = splitArgs(a);
    if (o.shell) {
      admitChild(shellOf(o), [], o.env, cwdOf(o), [String(a[0]), ...args].join(" "));
      return execFileSync(...a);
    }
    const admitted = admitChild(String(a[0]), args, o.env, cwdOf(o));
    return execFileSync(admitted.file, admitted.args, { ...o, argv0: o.argv0 ?? String(a[0]) });
  }) as AnyFn);

  const raw = () =>
    hostNetworkingError("process.binding of process_wrap/spawn_sync starts programs past the child guard");
  BLOCKED_BINDINGS.set("process_wrap", raw);
  BLOCKED_BINDINGS.set("spawn_sync", raw);
  guardBindings();
  syncBuiltinESMExports();
}

// ---- native addons --------------------------------------------------------------------------------------------------

/** What the addon guard needs to know. */
export interface AddonGuardOptions {
  /** Absolute paths or SHA-256 (hex) of the addons the app may load; undefined: any, with a warning. */
  allowAddons: readonly string[] | undefined;
  say: (message: string, event: Record<string, unknown>) => void;
}

/** Whether `path` (real) with `sha256` is in `allow` (paths compared by their real path, hashes in lower case). */
export function addonAllowed(allow: readonly string[], path: string, sha256: string): boolean {
  return allow.some((a) => (/^[0-9a-fA-F]{64}$/.test(a) ? a.toLowerCase() === sha256 : real(a) === path));
}

/** SHA-256 (hex) of the file at `path`; throws as readFileSync does. Replaceable in tests (hashing faults). */
let addonHash = (path: string): string => createHash("sha256").update(readFileSync(path)).digest("hex");

/** For tests: the hash function the addon guard uses. */
export function setAddonHashForTest(fn: (path: string) => string): void {
  addonHash = fn;
}

let addonsGuarded = false;

/**
 * Puts the addon policy in front of `process.dlopen` (what `require` of a `.node` file and `module.createRequire`
 * end in): each addon is logged once with its real path and SHA-256 of the bytes about to be loaded; with
 * `allowAddons` any addon not listed is refused. SENG's own addon always loads. Idempotent.
 */
export function installAddonGuard(opts: AddonGuardOptions): void {
  if (addonsGuarded) return;
  addonsGuarded = true;
  const own = real(nativeAddonPath());
  const seen = new Set<string>();
  const dlopen = process.dlopen;
  put(process, "dlopen", function (this: unknown, module: unknown, filename: string, ...rest: unknown[]) {
    const path = real(String(filename));
    if (path !== own) {
      let sha256: string;
      try {
        sha256 = addonHash(path);
      } catch (e) {
        // With an allow list an addon that cannot be hashed (gone, unreadable, > 2 GiB) is not known: refused.
        if (opts.allowAddons)
          throw addonError(
            `${path} cannot be hashed to check it against allowAddons (${(e as Error).message})`,
          );
        return (dlopen as (...a: unknown[]) => unknown).call(this, module, filename, ...rest); // Node's own error
      }
      // Known limit (docs/THREAT-MODEL.md): the file may change between this hash and dlopen (TOCTOU).
      const allowed = opts.allowAddons ? addonAllowed(opts.allowAddons, path, sha256) : undefined;
      if (allowed === false)
        throw addonError(
          `${path} (sha256 ${sha256}) is not in the runtime config's allowAddons (add its path or hash)`,
        );
      if (!seen.has(path)) {
        seen.add(path);
        opts.say(
          allowed
            ? `native addon ${path} sha256 ${sha256} (in allowAddons)`
            : `warning: native addon ${path} sha256 ${sha256} loaded without allowAddons: an addon can use ` +
                "the host's network unshielded; pin the set with allowAddons",
          { event: "addon", path, sha256, allowed: allowed ?? "no-allow-list" },
        );
      }
    }
    return (dlopen as (...a: unknown[]) => unknown).call(this, module, filename, ...rest);
  } as AnyFn);
}
