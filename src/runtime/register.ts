/**
 * The SENG preload: `node --import seng/register app.js` runs an unmodified app with its network traffic shielded.
 *
 *  1. Node's networking entry points are replaced first, before anything can connect (see `installShield`):
 *     TCP (net.connect/createConnection, net.Socket.prototype.connect, net.createServer, net.Server.prototype.listen
 *     — so http/https/tls/http2 servers too), TLS clients (tls.connect), HTTP agents (http/https.globalAgent and
 *     http.Agent.prototype.createConnection), DNS (dns.lookup and every resolve method, dns.promises and the
 *     Resolver classes, through the tunnel's DNS; lookupService fails closed), UDP (dgram.createSocket), the network
 *     bindings of process.binding, and Node's host-handle exports (host-handles.ts). `fetch` is Node's own (its
 *     bundled undici), which opens its connections with net.connect and tls.connect at call time and so goes through
 *     the SDK sockets as well. Before all this, the Node internals the runtime relies on are probed
 *     (node-internals.ts): a Node where they changed is refused.
 *  2. An RA-TLS identity is made in this process (SENG_TEE: gramine, tsm, sim or auto) and the tunnel to
 *     SENG_GATEWAY (pinned by SENG_PIN) is opened; the app starts once the lease has arrived (or after
 *     SENG_LEASE_TIMEOUT seconds, with sockets waiting for it).
 *
 * Whatever still tries the host's network fails with "SENG: host networking is disabled in a shielded app: ...".
 * Before both, ./guards.ts closes the ways around the shield: no debugger, no non-Node child programs unless the
 * config allows them, native addons logged or pinned (`allowAddons`).
 *
 * Environment:
 *   SENG_GATEWAY        gateway host:port (required)
 *   SENG_PIN            gateway certificate SHA-256, or a file with it or the certificate (required)
 *   SENG_TEE            auto (default) | gramine | tsm | sim
 *   SENG_CONFIG         a runtime config file (YAML, see ./config.ts); the variables here override its keys
 *   SENG_SIM_DIR, SENG_MRENCLAVE, SENG_MRSIGNER, SENG_ISVPRODID, SENG_ISVSVN, SENG_DEBUG_ENCLAVE
 *                       simulated TEE (INSECURE)
 *   SENG_LEASE_TIMEOUT  seconds to wait for the lease before the app starts (default 30)
 *   SENG_DEAD_SECONDS   tunnel considered lost after this long without an answer (default 30)
 *   SENG_LOG            "json": lease and tunnel events as JSON lines on stderr
 *   SENG_ALLOW_HOST_PROGRAMS, SENG_ALLOW_ADDONS
 *                       comma-separated: host programs the app may start (unshielded), addons it may load
 *
 * `seng runtime run -- node app.js` sets these from its flags and config file and starts node with this preload.
 */
import dgram from "node:dgram";
import dns from "node:dns";
import http from "node:http";
import https from "node:https";
import { syncBuiltinESMExports } from "node:module";
import net from "node:net";
import tls from "node:tls";
import workerThreads, { isMainThread } from "node:worker_threads";
import { linkRef, makeGlobalAgents, ShieldedHttpAgent } from "./agents.js";
import { AttesterError, detectAttester, makeIdentity } from "./attesters.js";
import { configFromEnv, RuntimeConfigError, type RuntimeConfig } from "./config.js";
import * as sdkDgram from "./dgram.js";
import * as sdkResolve from "./dns-resolve.js";
import * as sdkDns from "./dns.js";
import * as sdkNet from "./net.js";
import { decideDebugger, installAddonGuard, installChildGuard, installDebuggerGuard } from "./guards.js";
import { guardWorkerClass, workerGuardsSource } from "./worker-guard.js";
import { hostNetworkingError, ShieldedStack, ShieldedStackError } from "./stack.js";
import { checkNodeInternals } from "./node-internals.js";
import { closeHostHandles } from "./host-handles.js";

export { ShieldedStack, shieldedStack } from "./stack.js";

/** Bindings through which code could reach the host's sockets or resolver directly. */
const NETWORK_BINDINGS = new Set([
  "tcp_wrap",
  "udp_wrap",
  "pipe_wrap",
  "cares_wrap",
  "stream_wrap",
  "tls_wrap",
]);

/** The preload's settings (see ./config.ts for where they come from). */
export type RegisterConfig = RuntimeConfig;

/** Thrown when the runtime cannot start (no evidence, no lease); the app does not start. */
export class RegisterError extends Error {
  override readonly name = "RegisterError";
}

export { configFromEnv };

// ---- patching -------------------------------------------------------------------------------------------------------

type AnyFn = (...args: never[]) => unknown;

/** Replaces `obj[key]`, keeping the name Node gave the original for stack traces and `fn.name`. */
function replace(obj: object, key: string, fn: (...args: never[]) => unknown): void {
  const o = obj as Record<string, unknown>;
  const d = Object.getOwnPropertyDescriptor(obj, key);
  Object.defineProperty(fn, "name", { value: (o[key] as AnyFn | undefined)?.name || key });
  if (d && !d.writable && !d.set && !d.configurable) return; // frozen: nothing to do (reported by tests)
  Object.defineProperty(obj, key, {
    value: fn,
    writable: true,
    configurable: true,
    enumerable: d?.enumerable ?? true,
  });
}

/** A function that always throws the fail-closed error (for callback APIs: delivers it to the callback). */
function refuse(
  what: string,
  style: "throw" | "callback" | "promise" = "throw",
): (...args: unknown[]) => unknown {
  return (...args: unknown[]) => {
    const err = hostNetworkingError(what);
    if (style === "promise") return Promise.reject(err);
    const cb = args[args.length - 1];
    if (style === "callback" && typeof cb === "function") {
      process.nextTick(cb as (e: Error) => void, err);
      return undefined;
    }
    throw err;
  };
}

let installed: "shield" | "refuse" | undefined;

/**
 * Puts the SDK in place of Node's networking (idempotent). With `refuseAll` (worker threads, which have no stack of
 * their own), every entry point fails closed instead.
 */
export function installShield(refuseAll?: string): void {
  if (installed) return;
  installed = refuseAll ? "refuse" : "shield";
  const why = (what: string) => (refuseAll ? `${what} (${refuseAll})` : what);

  // --- TCP
  if (refuseAll) {
    replace(net, "connect", refuse(why("net.connect")));
    replace(net, "createConnection", refuse(why("net.createConnection")));
    replace(net.Socket.prototype, "connect", refuse(why("net.Socket#connect")));
    replace(net.Server.prototype, "listen", refuse(why("net.Server#listen")));
    replace(tls, "connect", refuse(why("tls.connect")));
  } else {
    replace(net, "connect", sdkNet.createConnection as AnyFn);
    replace(net, "createConnection", sdkNet.createConnection as AnyFn);
    replace(net, "createServer", sdkNet.createServer as AnyFn);
    // A socket made with `new net.Socket()` (libraries do this) becomes an SDK socket when it connects.
    replace(net.Socket.prototype, "connect", function (this: net.Socket, ...args: unknown[]) {
      return sdkNet.adoptHostSocket(this).connect(...args);
    });
    // Every net.Server (http, https, tls, http2 servers are net.Servers) listens on the shielded stack.
    replace(net.Server.prototype, "listen", sdkNet.shieldedListen as AnyFn);
    // TLS clients: without a `socket`, tls.connect would open a host TCP socket; give it an SDK one.
    const tlsConnect = tls.connect;
    replace(tls, "connect", function (...args: unknown[]) {
      const [opts, cb] = normalizeTlsArgs(args);
      if (opts.socket) {
        const t = tlsConnect(opts as tls.ConnectionOptions, cb);
        if (opts.socket instanceof sdkNet.Socket) sdkNet.announceEstablished(opts.socket);
        return t;
      }
      if (opts.path != null)
        throw hostNetworkingError(`tls.connect to the local socket ${String(opts.path)}`);
      const socket = sdkNet.createConnection({
        host: (opts.host as string | undefined) ?? "localhost",
        port: opts.port as number,
        lookup: opts.lookup as sdkNet.ConnectOptions["lookup"],
        highWaterMark: opts.highWaterMark as number | undefined,
      });
      const tlsSock = tlsConnect({ ...(opts as tls.ConnectionOptions), socket }, cb);
      linkRef(tlsSock, socket);
      if (typeof opts.timeout === "number" && opts.timeout > 0) tlsSock.setTimeout(opts.timeout);
      return tlsSock;
    });
  }

  // --- HTTP clients
  if (!refuseAll) {
    const agents = makeGlobalAgents();
    http.globalAgent = agents.http;
    (https as { globalAgent: https.Agent }).globalAgent = agents.https;
    // `new http.Agent()` made by the app: its createConnection was captured from net before we ran.
    replace(http.Agent.prototype, "createConnection", function (this: http.Agent, ...args: unknown[]) {
      return ShieldedHttpAgent.prototype.createConnection.apply(this, args as [http.ClientRequestArgs]);
    });
  }

  // --- DNS: lookups and every resolve method through the tunnel's DNS (never c-ares on the host's network);
  // lookupService (getnameinfo on the host) refused.
  const dnsP = dns.promises as unknown as Record<string, unknown>;
  const dnsC = dns as unknown as Record<string, unknown>;
  if (refuseAll) {
    replace(dns, "lookup", refuse(why("dns.lookup"), "callback"));
    replace(dnsP, "lookup", refuse(why("dns.promises.lookup"), "promise"));
  } else {
    replace(dns, "lookup", sdkDns.lookup as AnyFn);
    replace(dnsP, "lookup", sdkDns.lookupPromise as AnyFn);
  }
  const resolvers = [
    [dnsC, "callback", "dns."],
    [dnsP, "promise", "dns.promises."],
    [dns.Resolver.prototype as unknown as Record<string, unknown>, "callback", "dns.Resolver#"],
    [
      (dns.promises as unknown as { Resolver: typeof dns.Resolver }).Resolver.prototype as unknown as Record<
        string,
        unknown
      >,
      "promise",
      "dns.promises.Resolver#",
    ],
  ] as const;
  for (const [target, style, prefix] of resolvers) {
    const cb = style === "callback";
    for (const m of Object.keys(sdkResolve.RESOLVE_METHODS) as sdkResolve.ResolveMethod[])
      replace(
        target,
        m,
        refuseAll
          ? refuse(why(`${prefix}${m}`), style)
          : cb
            ? sdkResolve.callbackResolver(m)
            : (sdkResolve.promiseResolver(m) as AnyFn),
      );
    replace(
      target,
      "resolve",
      refuseAll
        ? refuse(why(`${prefix}resolve`), style)
        : cb
          ? (sdkResolve.resolveCallback as AnyFn)
          : (sdkResolve.resolvePromise as AnyFn),
    );
    replace(
      target,
      "reverse",
      refuseAll
        ? refuse(why(`${prefix}reverse`), style)
        : cb
          ? (sdkResolve.reverseCallback as AnyFn)
          : (sdkResolve.reverse as AnyFn),
    );
  }
  replace(dns, "lookupService", refuse("dns.lookupService through the host's resolver", "callback"));
  replace(dnsP, "lookupService", refuse("dns.promises.lookupService through the host's resolver", "promise"));

  // --- UDP
  if (refuseAll) replace(dgram, "createSocket", refuse(why("dgram.createSocket")));
  else replace(dgram, "createSocket", sdkDgram.createSocket as AnyFn);
  // Sockets of Node's own class (`new dgram.Socket()`) would use the host's network.
  for (const m of ["bind", "send", "connect", "addMembership", "setBroadcast"])
    replace(
      dgram.Socket.prototype,
      m,
      refuse(`dgram.Socket#${m} on a host UDP socket (use dgram.createSocket)`),
    );

  // --- bindings
  const proc = process as unknown as { binding: (name: string) => unknown };
  const binding = proc.binding.bind(process);
  replace(process, "binding", ((name: string) => {
    if (NETWORK_BINDINGS.has(name)) throw hostNetworkingError(`process.binding("${name}")`);
    return binding(name);
  }) as AnyFn);

  // --- worker threads: Node 20 runs --import preloads in the main thread only; every worker runs the guard first.
  if (!refuseAll) {
    const guard = `${workerGuardSource()}\n${workerGuardsSource(guardedConfig?.allowAddons)}`;
    replace(workerThreads, "Worker", guardWorkerClass(workerThreads.Worker, guard) as unknown as AnyFn);
  }

  // --- host socket handles (net._createServerHandle, new net.Socket({ handle })...), TLS sockets' addresses
  if (!refuseAll) closeHostHandles();

  // ESM named imports of node:net, node:dns... see the replacements too.
  syncBuiltinESMExports();
}

/**
 * JavaScript run first in every worker thread (self-contained: no import of this package). Workers have no tunnel
 * of their own, so each network entry point fails closed there.
 */
export function workerGuardSource(): string {
  const msg = JSON.stringify(
    "SENG: host networking is disabled in a shielded app: worker threads have no shielded stack; " +
      "use the network from the main thread",
  );
  return `{
  const fail = (what) => Object.assign(new Error(${msg} + " (" + what + ")"), { code: "ERR_SENG_HOST_NETWORKING" });
  const put = (o, k, style) => {
    const f = (...a) => {
      const e = fail(k);
      if (style === "promise") return Promise.reject(e);
      const cb = a[a.length - 1];
      if (style === "callback" && typeof cb === "function") return void process.nextTick(cb, e);
      throw e;
    };
    try { Object.defineProperty(o, k, { value: f, writable: true, configurable: true }); } catch {}
  };
  const net = require("node:net"), tls = require("node:tls"), dgram = require("node:dgram"), dns = require("node:dns");
  for (const k of ["connect", "createConnection"]) put(net, k);
  put(net.Socket.prototype, "connect");
  put(net.Server.prototype, "listen");
  put(net, "_createServerHandle");
  put(dgram, "_createSocketHandle");
  put(tls, "connect");
  put(dgram, "createSocket");
  for (const k of ["bind", "send", "connect"]) put(dgram.Socket.prototype, k);
  for (const k of Object.keys(dns)) if (/^(lookup|resolve|reverse)/.test(k)) put(dns, k, "callback");
  for (const k of Object.keys(dns.promises)) if (/^(lookup|resolve|reverse)/.test(k)) put(dns.promises, k, "promise");
  for (const R of [dns.Resolver, dns.promises.Resolver])
    for (const k of Object.getOwnPropertyNames(R.prototype)) if (/^(resolve|reverse)/.test(k)) put(R.prototype, k, R === dns.Resolver ? "callback" : "promise");
  const binding = process.binding.bind(process);
  const bad = new Set(${JSON.stringify([...NETWORK_BINDINGS])});
  process.binding = (n) => { if (bad.has(n)) throw fail("process.binding(" + n + ")"); return binding(n); };
  require("node:module").syncBuiltinESMExports();
}`;
}

/** tls.connect's argument forms: (options[, cb]) | (port[, host][, options][, cb]) | (path[, options][, cb]). */
function normalizeTlsArgs(args: unknown[]): [Record<string, unknown>, (() => void) | undefined] {
  const a = [...args];
  const cb = typeof a[a.length - 1] === "function" ? (a.pop() as () => void) : undefined;
  if (a[0] !== null && typeof a[0] === "object") return [{ ...(a[0] as Record<string, unknown>) }, cb];
  if (typeof a[0] === "string" && !(Number(a[0]) >= 0))
    return [{ ...(a[1] as Record<string, unknown> | undefined), path: a[0] }, cb];
  const rest = a.slice(1);
  const host = typeof rest[0] === "string" ? (rest.shift() as string) : undefined;
  const opts: Record<string, unknown> = { ...(rest[0] as Record<string, unknown> | undefined), port: a[0] };
  if (host !== undefined) opts.host = host;
  return [opts, cb];
}

/** Refuses to run with flags that reach Node's internals (and so its raw network bindings). */
function checkFlags(): void {
  const flags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? "").split(/\s+/)];
  if (flags.some((f) => f === "--expose-internals" || f === "--expose_internals"))
    throw hostNetworkingError("--expose-internals gives the app Node's raw socket bindings; remove the flag");
}

// ---- guards beyond the sockets (./guards.ts) ----------------------------------------------------------------------

let guardedConfig: RegisterConfig | undefined;

/** No debugger, no unshielded child programs unless allowed, addons logged or pinned; before the app runs. */
function installGuards(cfg: RegisterConfig): void {
  guardedConfig = cfg;
  const say = (m: string, o: Record<string, unknown>) => {
    process.stderr.write(`seng: ${m}\n`);
    if (cfg.log) process.stderr.write(JSON.stringify({ seng: true, ...o }) + "\n");
  };
  installDebuggerGuard();
  installChildGuard({ allowHostPrograms: cfg.allowHostPrograms, warn: (m, o) => say(`warning: ${m}`, o) });
  installAddonGuard({ allowAddons: cfg.allowAddons, say });
}

// ---- start ----------------------------------------------------------------------------------------------------------

/** Starts the shielded stack from `cfg` (identity, tunnel) and waits for the lease. */
export async function startFromConfig(cfg: RegisterConfig): Promise<ShieldedStack> {
  const say = (o: Record<string, unknown>) => {
    if (cfg.log) process.stderr.write(JSON.stringify({ seng: true, ...o }) + "\n");
  };
  let identity;
  try {
    identity = await makeIdentity(detectAttester(cfg.tee, cfg.sim));
  } catch (e) {
    if (e instanceof AttesterError) throw new RegisterError(`SENG: ${e.message}`);
    throw e;
  }
  if (identity.provider.startsWith("sim"))
    process.stderr.write("seng: warning: simulated TEE: INSECURE, for development and tests only\n");
  // A debugger (flags, an open inspector) stops the app here, before any tunnel, unless the TEE is a debug one.
  if (decideDebugger(identity, (m) => process.stderr.write(`seng: warning: ${m}\n`)))
    say({ event: "debugger-allowed", provider: identity.provider });
  say({ event: "identity", provider: identity.provider });
  const stack = ShieldedStack.start({
    gateway: cfg.gateway,
    pin: cfg.pin,
    identity,
    tunnel: { deadSeconds: cfg.deadSeconds },
    log: say,
  });
  try {
    await stack.ready(cfg.leaseTimeoutMs);
  } catch (e) {
    if (e instanceof ShieldedStackError && e.code === "ERR_SENG_NO_LEASE") {
      process.stderr.write(`seng: warning: ${e.message}; starting the app, its sockets wait for the lease\n`);
    } else {
      stack.close();
      throw e;
    }
  }
  return stack;
}

if (!isMainThread) {
  // A worker thread has no tunnel of its own: its networking fails closed.
  installShield("worker threads have no shielded stack; use the network from the main thread");
} else {
  // When the runtime began (after module loading): benchmarks read it to time start → first byte.
  (globalThis as Record<symbol, unknown>)[Symbol.for("seng.runtime.startMs")] = performance.now();
  try {
    checkFlags();
    checkNodeInternals(); // fail closed on a Node whose internals the shield relies on changed (node-internals.ts)
    const cfg = configFromEnv();
    installGuards(cfg);
    installShield();
    await startFromConfig(cfg);
  } catch (e) {
    // The app must not start without its shield; the user gets one line, not a stack trace (SENG_DEBUG=1 for it).
    // Prefixed as every seng message; exit 2 for a configuration error, 1 when the gateway or the TEE said no.
    const err = e as Error;
    process.stderr.write(`seng: ${err.message.replace(/^SENG: /, "")}; the app is not started\n`);
    if (process.env.SENG_DEBUG) process.stderr.write(`${err.stack}\n`);
    process.exit(err instanceof RuntimeConfigError ? 2 : 1);
  }
}
