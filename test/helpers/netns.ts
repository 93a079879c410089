/**
 * Network namespaces for tests (needs root and iproute2).
 *
 * Rules this helper enforces or makes easy:
 * - every namespace is created here, with a unique name `seng-<prefix>-<pid>-<n>`, loopback up, and no link to the
 *   root namespace unless a test adds one (do not: {@link veth} joins two test namespaces, directly);
 * - everything created (namespaces, processes started in them) is in a registry that {@link cleanupAll} empties;
 *   it runs by itself on process exit and on SIGINT/SIGTERM/SIGHUP, and stale namespaces of dead test processes
 *   are removed when the next one is created;
 * - processes are ended by pid; a namespace's remaining processes (`ip netns pids`) are killed when it is deleted.
 *
 * Native code that must run inside a namespace runs in a child `node --import tsx <file>` under `ip netns exec`,
 * with an IPC channel: the child calls {@link serveRpc} with its handlers, the parent {@link NsProcess.call}s them.
 * A test file can be its own child: `if (nsChildRole() === "x") await serveRpc({...}); else { ...tests... }`.
 */
import { spawn, execFileSync, type ChildProcess, type SpawnOptions } from "node:child_process";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** What a finished process left. */
export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Kill (SIGKILL) and reject after this long (default 30 s). */
  timeoutMs?: number;
  /** Reject when the exit code is not 0 (default true). */
  check?: boolean;
  env?: NodeJS.ProcessEnv;
}

const namespaces = new Set<Netns>();
const processes = new Set<ChildProcess>();
let counter = 0;
let hooksInstalled = false;
let swept = false;

function ipSync(args: string[]): void {
  try {
    execFileSync("ip", args, { stdio: "ignore", timeout: 10_000 });
  } catch {
    // best effort during cleanup
  }
}

function killPid(pid: number | undefined, signal: NodeJS.Signals = "SIGKILL"): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function nsPidsSync(name: string): number[] {
  try {
    return execFileSync("ip", ["netns", "pids", name], { encoding: "utf8", timeout: 10_000 })
      .split(/\s+/)
      .filter(Boolean)
      .map(Number)
      .filter((p) => Number.isInteger(p) && p > 0 && p !== process.pid);
  } catch {
    return [];
  }
}

/** Synchronous last-resort cleanup: kills every registered process by pid, then deletes every namespace. */
export function cleanupAllSync(): void {
  for (const c of processes) killPid(c.pid);
  processes.clear();
  for (const ns of namespaces) {
    for (const pid of nsPidsSync(ns.name)) killPid(pid);
    ipSync(["netns", "del", ns.name]);
  }
  namespaces.clear();
}

/** Deletes every namespace (and their processes) this process created. For `after()` hooks. */
export async function cleanupAll(): Promise<void> {
  await Promise.allSettled([...namespaces].map((ns) => ns.delete()));
  for (const c of processes) killPid(c.pid);
  processes.clear();
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on("exit", cleanupAllSync);
  const signals: [NodeJS.Signals, number][] = [
    ["SIGINT", 130],
    ["SIGTERM", 143],
    ["SIGHUP", 129],
  ];
  for (const [sig, code] of signals) {
    process.once(sig, () => {
      cleanupAllSync();
      process.exit(code);
    });
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Removes `seng-*-<pid>-<n>` namespaces left by test processes that no longer exist (e.g. killed by SIGKILL). */
function sweepStale(): void {
  if (swept) return;
  swept = true;
  let list: string;
  try {
    list = execFileSync("ip", ["netns", "list"], { encoding: "utf8", timeout: 10_000 });
  } catch {
    return;
  }
  for (const line of list.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const m = /^seng-[a-z0-9-]+-(\d+)-\d+$/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || pidAlive(pid)) continue;
    for (const p of nsPidsSync(name)) killPid(p);
    ipSync(["netns", "del", name]);
  }
}

function run(cmd: string, args: string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: opts.env ?? process.env });
    processes.add(child);
    let stdout = "";
    let stderr = "";
    child.stdout?.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr?.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killPid(child.pid);
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      processes.delete(child);
      reject(new Error(`${cmd} ${args.join(" ")}: ${err.message}`, { cause: err }));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      processes.delete(child);
      const res = { code, signal, stdout, stderr };
      const line = `${cmd} ${args.join(" ")}`;
      if (timedOut) reject(new Error(`${line}: timed out after ${timeoutMs} ms\n${stderr}`));
      else if (opts.check !== false && code !== 0) {
        reject(
          Object.assign(new Error(`${line}: exit ${code ?? signal}\n${stderr.trim()}`), { result: res }),
        );
      } else resolvePromise(res);
    });
  });
}

/** A network namespace created by this process. */
export class Netns {
  readonly name: string;
  #deleted = false;
  readonly #procs = new Set<NsProcess>();

  private constructor(name: string) {
    this.name = name;
  }

  /** Creates `seng-<prefix>-<pid>-<n>` with loopback up. `prefix`: lowercase letters, digits, dashes. */
  static async create(prefix: string): Promise<Netns> {
    if (!/^[a-z0-9-]{1,24}$/.test(prefix)) throw new TypeError(`Netns.create: bad prefix "${prefix}"`);
    installHooks();
    sweepStale();
    const ns = new Netns(`seng-${prefix}-${process.pid}-${++counter}`);
    namespaces.add(ns);
    try {
      await run("ip", ["netns", "add", ns.name]);
      await run("ip", ["-n", ns.name, "link", "set", "lo", "up"]);
    } catch (e) {
      await ns.delete();
      throw e;
    }
    return ns;
  }

  /** True until {@link Netns.delete}. */
  get alive(): boolean {
    return !this.#deleted;
  }

  /** Runs `cmd args` in the namespace to completion; rejects on non-zero exit unless `check: false`. */
  exec(cmd: string, args: string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    this.#assertAlive();
    return run("ip", ["netns", "exec", this.name, cmd, ...args], opts);
  }

  /** `ip -n <ns> <args>`: configure this namespace's links, addresses and routes. */
  ip(...args: string[]): Promise<ExecResult> {
    this.#assertAlive();
    return run("ip", ["-n", this.name, ...args]);
  }

  /**
   * Starts `cmd args` in the namespace (`ip netns exec` execs into it, so the pid is the command's own) with an
   * IPC channel. It is killed when the namespace is deleted.
   */
  spawn(cmd: string, args: string[] = [], opts: SpawnOptions = {}): NsProcess {
    this.#assertAlive();
    const child = spawn("ip", ["netns", "exec", this.name, cmd, ...args], {
      cwd: ROOT,
      ...opts,
      stdio: ["ignore", "pipe", "pipe", "ipc"],
    });
    const p = new NsProcess(child);
    processes.add(child);
    this.#procs.add(p);
    void p.exited.then(() => {
      processes.delete(child);
      this.#procs.delete(p);
    });
    return p;
  }

  /**
   * Runs a TypeScript file in the namespace: `node --import tsx <file> <args>` from the repository root, with
   * `SENG_NS_CHILD=<role>` in its environment (see {@link nsChildRole}). Wait for {@link NsProcess.ready} when the
   * child uses {@link serveRpc}.
   */
  runTs(file: string, opts: { args?: string[]; role?: string; env?: NodeJS.ProcessEnv } = {}): NsProcess {
    const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env, SENG_NS_CHILD: opts.role ?? "1" };
    delete env.NODE_TEST_CONTEXT; // the child is not a test-runner subprocess
    return this.spawn(process.execPath, ["--import", "tsx", file, ...(opts.args ?? [])], { env });
  }

  /** Ends this namespace's processes (by pid: ours, then any left in it) and deletes it. Idempotent. */
  async delete(): Promise<void> {
    if (this.#deleted) return;
    this.#deleted = true;
    await Promise.allSettled([...this.#procs].map((p) => p.kill("SIGKILL")));
    for (const pid of nsPidsSync(this.name)) killPid(pid);
    await run("ip", ["netns", "del", this.name], { check: false });
    namespaces.delete(this);
  }

  #assertAlive(): void {
    if (this.#deleted) throw new Error(`netns ${this.name} was deleted`);
  }
}

/**
 * Connects two test namespaces with a veth pair created directly inside them (it never exists in the root
 * namespace), adds the CIDR addresses and brings both ends up. Goes away with either namespace.
 */
export async function veth(
  a: Netns,
  aIf: string,
  aAddr: string,
  b: Netns,
  bIf: string,
  bAddr: string,
): Promise<void> {
  await a.ip("link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.name);
  await a.ip("addr", "add", aAddr, "dev", aIf);
  await b.ip("addr", "add", bAddr, "dev", bIf);
  await a.ip("link", "set", aIf, "up");
  await b.ip("link", "set", bIf, "up");
}

interface RpcRequest {
  rpc: number;
  method: string;
  arg: unknown;
}

interface RpcReply {
  rpc: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}

/** A process started in a namespace, with its output, exit and an RPC channel to {@link serveRpc}. */
export class NsProcess {
  readonly child: ChildProcess;
  stdout = "";
  stderr = "";
  /** Settles when the process has exited (never rejects). */
  readonly exited: Promise<ExecResult>;
  #result: ExecResult | undefined;
  #next = 0;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  readonly #ready: Promise<void>;

  constructor(child: ChildProcess) {
    this.child = child;
    child.stdout?.setEncoding("utf8").on("data", (d: string) => (this.stdout += d));
    child.stderr?.setEncoding("utf8").on("data", (d: string) => (this.stderr += d));
    let readyResolve: () => void = () => {};
    let readyReject: (e: Error) => void = () => {};
    this.#ready = new Promise<void>((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    this.#ready.catch(() => {}); // observed through ready()
    child.on("message", (m: unknown) => {
      const msg = m as Partial<RpcReply> & { ready?: boolean };
      if (msg.ready) return readyResolve();
      if (typeof msg.rpc !== "number") return;
      const p = this.#pending.get(msg.rpc);
      if (!p) return;
      this.#pending.delete(msg.rpc);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`child ${String(msg.error)}`));
    });
    this.exited = new Promise((res) => {
      const done = (code: number | null, signal: NodeJS.Signals | null): void => {
        this.#result ??= { code, signal, stdout: this.stdout, stderr: this.stderr };
        const err = new Error(`child exited (${code ?? signal}) with calls pending\n${this.stderr.trim()}`);
        for (const p of this.#pending.values()) p.reject(err);
        this.#pending.clear();
        readyReject(new Error(`child exited (${code ?? signal}) before it was ready\n${this.stderr.trim()}`));
        res(this.#result);
      };
      child.on("close", done);
      child.on("error", (e) => {
        this.stderr += String(e);
        done(null, null);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Resolves when the child's {@link serveRpc} is listening; rejects if it exits first or after `timeoutMs`. */
  ready(timeoutMs = 20_000): Promise<void> {
    return withTimeout(this.#ready, timeoutMs, () => `child not ready after ${timeoutMs} ms\n${this.stderr}`);
  }

  /** Calls a handler of the child's {@link serveRpc}; rejects with the child's error text. */
  call<T = unknown>(method: string, arg?: unknown, timeoutMs = 30_000): Promise<T> {
    if (this.#result || !this.child.connected) return Promise.reject(new Error(`child is gone (${method})`));
    const rpc = ++this.#next;
    const p = new Promise<T>((resolvePromise, reject) => {
      this.#pending.set(rpc, { resolve: resolvePromise as (v: unknown) => void, reject });
    });
    this.child.send({ rpc, method, arg } satisfies RpcRequest);
    return withTimeout(p, timeoutMs, () => `call ${method} timed out after ${timeoutMs} ms\n${this.stderr}`);
  }

  /** Waits for exit; kills (SIGKILL) and rejects after `timeoutMs`. */
  async wait(timeoutMs = 30_000): Promise<ExecResult> {
    try {
      return await withTimeout(
        this.exited,
        timeoutMs,
        () => `process ${this.pid} still running after ${timeoutMs}`,
      );
    } catch (e) {
      await this.kill("SIGKILL");
      throw e;
    }
  }

  /** Asks a {@link serveRpc} child to exit, then waits; SIGKILL if it does not within `timeoutMs`. */
  async close(timeoutMs = 10_000): Promise<ExecResult> {
    if (!this.#result && this.child.connected) {
      this.child.send({ rpc: 0, method: "__exit", arg: null } satisfies RpcRequest);
    }
    return this.wait(timeoutMs);
  }

  /** Sends `signal` by pid (SIGKILL after `graceMs` if still running) and waits for the exit. */
  async kill(signal: NodeJS.Signals = "SIGTERM", graceMs = 3_000): Promise<ExecResult> {
    if (this.#result) return this.#result;
    killPid(this.pid, signal);
    const t = setTimeout(() => killPid(this.pid, "SIGKILL"), graceMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(what())), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

// ---- child side ---------------------------------------------------------------------------------------------------

/** The role given to {@link Netns.runTs} when this process is such a child, else undefined. */
export function nsChildRole(): string | undefined {
  return process.env.SENG_NS_CHILD;
}

/** Handlers a child serves; results must be structured-clonable (IPC uses the "json" serialization). */
export type RpcHandlers = Record<string, (arg: never) => unknown>;

/**
 * Serves `handlers` to the parent over IPC and tells it this child is ready. The child exits when the parent
 * disconnects (so it never outlives the test) or calls {@link NsProcess.close}; `onExit` runs first (close handles).
 */
export function serveRpc(handlers: RpcHandlers, onExit?: () => void | Promise<void>): void {
  if (!process.send) throw new Error("serveRpc: no IPC channel (run this file through Netns.runTs)");
  const send = process.send.bind(process);
  const finish = async (code: number): Promise<void> => {
    try {
      await onExit?.();
    } finally {
      process.exit(code);
    }
  };
  process.on("disconnect", () => void finish(0));
  process.on("message", (m: unknown) => {
    const req = m as RpcRequest;
    if (typeof req?.rpc !== "number") return;
    if (req.method === "__exit") {
      void finish(0);
      return;
    }
    const h = handlers[req.method];
    void (async () => {
      try {
        if (!h) throw new Error(`no handler "${req.method}"`);
        const result = await (h as (a: unknown) => unknown)(req.arg);
        send({ rpc: req.rpc, ok: true, result } satisfies RpcReply);
      } catch (e) {
        send({ rpc: req.rpc, ok: false, error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
      }
    })();
  });
  send({ ready: true });
}
