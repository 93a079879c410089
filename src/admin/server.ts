/**
 * The admin API: HTTP with JSON (docs/admin-openapi.yaml), on a Unix socket and optionally on TCP.
 *
 * Authentication:
 * - Unix socket: whoever can open the socket (mode 0600, owned by the gateway's user) is the administrator.
 * - TCP (plain or TLS): every request needs `Authorization: Bearer <token>` or a dashboard session cookie. The
 *   dashboard's login form exchanges the token for a random session id in an HttpOnly, SameSite=Strict cookie
 *   (Secure with TLS); a state-changing request with the cookie must also carry `X-SENG-Request: 1`, which a
 *   cross-site form cannot send. TCP without a token is refused when the configuration is read.
 *
 * Slow clients: headers must arrive within HEADERS_MS and a whole request within REQUEST_MS (checked every second,
 * not Node's default 30 s), a TLS handshake within HANDSHAKE_MS, and on TCP a ConnectionGuard (guard.ts) caps the
 * connections per source and in total, making room by closing the oldest connection still waiting for its headers.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { chmodSync, lstatSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { connect } from "node:net";
import type { AdminConfig } from "../policy/config.js";
import type { AdminBackend, AuditQuery } from "./backend.js";
import { ADMIN_LIMITS, ConnectionGuard, type GuardLimits, type GuardStats } from "./guard.js";
import { DASHBOARD_CSS, DASHBOARD_HTML, DASHBOARD_JS, loginPage } from "./dashboard.js";

/** The cookie that carries a dashboard session on TCP. */
export const SESSION_COOKIE = "seng_session";
const SESSION_MS = 12 * 3600_000;
const MAX_SESSIONS = 1000;
const MAX_BODY = 64 * 1024;
/** A client's request headers must be complete this long after it connected (or after its previous request). */
const HEADERS_MS = 5_000;
/** A whole request, body included. */
const REQUEST_MS = 15_000;
const HANDSHAKE_MS = 5_000;
/** Timeouts are enforced by a sweep this often (Node's default is every 30 s, far too slow under attack). */
const SWEEP_MS = 1_000;
const HTTP_OPTIONS = {
  headersTimeout: HEADERS_MS,
  requestTimeout: REQUEST_MS,
  connectionsCheckingInterval: SWEEP_MS,
  keepAliveTimeout: 5_000,
};
/** Tokens shorter than this are refused: `openssl rand -hex 32` or `seng gateway admin-token` make 64 characters. */
export const MIN_TOKEN_LENGTH = 32;

export class AdminError extends Error {
  override readonly name = "AdminError";
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    detail: string,
  ) {
    super(detail);
  }
}

/** Reads and checks the token file; errors name the configuration key and the file. */
export function readTokenFile(file: string, configFile = "gateway.yaml"): string {
  let text: string;
  try {
    const st = statSync(file);
    // Like ssh with its keys: a token others can read is not a secret.
    if (st.mode & 0o077)
      throw new AdminError(
        `${configFile}: admin.tokenFile: ${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}); expected mode 600`,
      );
    text = readFileSync(file, "utf8").trim();
  } catch (e) {
    if (e instanceof AdminError) throw e;
    throw new AdminError(
      `${configFile}: admin.tokenFile: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  if (text.length < MIN_TOKEN_LENGTH || /\s/.test(text))
    throw new AdminError(
      `${configFile}: admin.tokenFile: ${file}: expected one token of at least ${MIN_TOKEN_LENGTH} characters without spaces`,
    );
  return text;
}

const digest = (s: string) => createHash("sha256").update(s).digest();

/** Constant-time comparison (hashing first makes the lengths equal). */
export function tokenEquals(given: string, expected: string): boolean {
  return timingSafeEqual(digest(given), digest(expected));
}

export interface AdminServerOptions {
  config: AdminConfig;
  /** The configuration file, for error messages. */
  configFile?: string;
  backend: AdminBackend;
  /** Connection caps of the TCP listener (default {@link ADMIN_LIMITS}). */
  limits?: GuardLimits;
}

type Auth = "socket" | "token" | "cookie" | undefined;

export class AdminServer {
  private readonly servers: Server[] = [];
  private readonly sessions = new Map<string, number>();
  private token: string | undefined;
  private tls = false;
  /** The TCP listener's port once listening (0 for an ephemeral port in the configuration). */
  tcpPort = 0;
  private readonly guard: ConnectionGuard;

  constructor(private readonly opts: AdminServerOptions) {
    this.guard = new ConnectionGuard(opts.limits ?? ADMIN_LIMITS);
  }

  /** The TCP listener's connections: open now, evicted while waiting for headers, refused. */
  connectionStats(): GuardStats {
    return this.guard.stats();
  }

  /**
   * Re-reads the token file (SIGHUP and reloads): a rotated token takes effect at once and every dashboard session
   * made with the old one ends. Throws (and keeps the old token) when the file is unreadable or invalid.
   */
  reloadToken(): boolean {
    const c = this.opts.config;
    if (!c.tcp || !c.tokenFile) return false;
    const next = readTokenFile(c.tokenFile, this.opts.configFile ?? "gateway.yaml");
    if (this.token !== undefined && tokenEquals(next, this.token)) return false;
    this.token = next;
    this.sessions.clear();
    return true;
  }

  /** Whether the Unix socket at config.socket is this server's (made by its listen). */
  private ownsSocket = false;

  async start(): Promise<void> {
    const c = this.opts.config;
    const file = this.opts.configFile ?? "gateway.yaml";
    if (c.tcp) {
      if (!c.tokenFile) throw new AdminError(`${file}: admin.tokenFile: required when admin.tcp is set`);
      this.token = readTokenFile(c.tokenFile, file);
    }
    await this.listenUnix(c.socket, file);
    if (c.tcp) {
      const handler = (req: IncomingMessage, res: ServerResponse) => this.handle(req, res, false);
      let srv: Server;
      if (c.tls) {
        let cert: Buffer, key: Buffer;
        try {
          cert = readFileSync(c.tls.certificate);
          key = readFileSync(c.tls.key);
        } catch (e) {
          throw new AdminError(`${file}: admin.tls: ${(e as Error).message}`);
        }
        srv = createHttpsServer({ cert, key, handshakeTimeout: HANDSHAKE_MS, ...HTTP_OPTIONS }, handler);
        this.tls = true;
      } else srv = createServer(HTTP_OPTIONS, handler);
      this.guard.attach(srv);
      const i = c.tcp.lastIndexOf(":");
      const host = c.tcp.slice(0, i).replace(/^\[|\]$/g, "");
      await this.listen(srv, { host, port: Number(c.tcp.slice(i + 1)) }, `${file}: admin.tcp: ${c.tcp}`);
      const a = srv.address();
      this.tcpPort = typeof a === "object" && a ? a.port : 0;
    }
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.servers.map(
        (s) =>
          new Promise<void>((resolve) => {
            s.close(() => resolve());
            s.closeAllConnections();
          }),
      ),
    );
    this.servers.length = 0;
    // Only a socket this server made: a refused second gateway must not remove the running one's.
    if (!this.ownsSocket) return;
    this.ownsSocket = false;
    try {
      unlinkSync(this.opts.config.socket);
    } catch {
      // already gone
    }
  }

  private async listenUnix(path: string, file: string): Promise<void> {
    let st;
    try {
      st = lstatSync(path);
    } catch {
      st = undefined;
    }
    if (st) {
      if (!st.isSocket()) throw new AdminError(`${file}: admin.socket: ${path} exists and is not a socket`);
      // A socket someone still answers on belongs to a running gateway; a dead one is left from a crash.
      const alive = await new Promise<boolean>((resolve) => {
        const s = connect(path);
        s.once("connect", () => {
          s.destroy();
          resolve(true);
        });
        s.once("error", () => resolve(false));
      });
      if (alive) throw new AdminError(`${file}: admin.socket: ${path} is in use by another process`);
      unlinkSync(path);
    }
    const srv = createServer(HTTP_OPTIONS, (req, res) => this.handle(req, res, true));
    srv.maxConnections = 64; // whoever can open the socket is the administrator already
    const old = process.umask(0o177); // the socket is created 0600: no window where others could connect
    try {
      await this.listen(srv, { path }, `${file}: admin.socket: ${path}`);
    } finally {
      process.umask(old);
    }
    this.ownsSocket = true;
    chmodSync(path, 0o600);
  }

  private listen(srv: Server, where: { path: string } | { host: string; port: number }, what: string) {
    return new Promise<void>((resolve, reject) => {
      srv.once("error", (e: NodeJS.ErrnoException) =>
        reject(new AdminError(`${what}: cannot listen (${e.code})`)),
      );
      srv.listen(where, () => {
        srv.removeAllListeners("error");
        srv.on("error", () => {}); // per-connection errors are handled by node; keep the process up
        this.servers.push(srv);
        resolve();
      });
    });
  }

  // ---- requests ----

  private handle(req: IncomingMessage, res: ServerResponse, viaSocket: boolean): void {
    this.route(req, res, viaSocket).catch((e: unknown) => {
      const err =
        e instanceof HttpError
          ? e
          : new HttpError(500, "internal", `the gateway failed: ${(e as Error).message}`);
      if (!res.headersSent) this.json(res, err.status, { error: err.code, detail: err.message });
      else res.destroy();
    });
  }

  private authenticate(req: IncomingMessage, viaSocket: boolean): Auth {
    if (viaSocket) return "socket";
    const h = req.headers.authorization;
    if (h !== undefined) {
      const m = /^Bearer (\S+)$/.exec(h);
      return m && this.token && tokenEquals(m[1]!, this.token) ? "token" : undefined;
    }
    const sid = cookie(req, SESSION_COOKIE);
    if (sid) {
      const exp = this.sessions.get(sid);
      if (exp && exp > Date.now()) return "cookie";
      this.sessions.delete(sid);
    }
    return undefined;
  }

  private async route(req: IncomingMessage, res: ServerResponse, viaSocket: boolean): Promise<void> {
    const url = new URL(req.url ?? "/", "http://admin");
    const path = url.pathname;
    const method = req.method ?? "GET";
    if (path === "/login" && method === "POST" && !viaSocket) return this.login(req, res);
    // The stylesheet is the same for everyone and the login page needs it.
    if (path === "/dashboard.css" && method === "GET")
      return this.send(res, 200, "text/css; charset=utf-8", DASHBOARD_CSS);
    const auth = this.authenticate(req, viaSocket);
    if (!auth) {
      if (method === "GET" && (path === "/" || path === "/login")) return this.html(res, 401, loginPage(""));
      res.setHeader("WWW-Authenticate", 'Bearer realm="seng-admin"');
      return this.json(res, 401, {
        error: "unauthorized",
        detail: req.headers.authorization
          ? "the bearer token is not the gateway's admin token"
          : "send Authorization: Bearer <token> (the admin token file's content)",
      });
    }
    if (auth === "cookie" && method !== "GET" && req.headers["x-seng-request"] !== "1")
      throw new HttpError(403, "forbidden", "requests with the session cookie must send X-SENG-Request: 1");
    const b = this.opts.backend;
    const get = method === "GET";
    const post = method === "POST";
    if (get && (path === "/" || path === "/login")) return this.html(res, 200, DASHBOARD_HTML);
    if (get && path === "/dashboard.js")
      return this.send(res, 200, "text/javascript; charset=utf-8", DASHBOARD_JS);
    if (post && path === "/logout") {
      const sid = cookie(req, SESSION_COOKIE);
      if (sid) this.sessions.delete(sid);
      res.setHeader("Set-Cookie", `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`);
      return this.json(res, 200, { loggedOut: true });
    }
    if (get && path === "/metrics") {
      const m = await b.metrics();
      return this.send(res, 200, m.contentType, m.body);
    }
    if (get && path === "/v1/status") return this.json(res, 200, await b.status());
    if (get && path === "/v1/apps") return this.json(res, 200, { apps: b.apps() });
    if (get && path === "/v1/tunnels") return this.json(res, 200, { tunnels: b.tunnels() });
    if (get && path === "/v1/events")
      return this.json(res, 200, { events: b.recent(intParam(url, "limit", 1, 200) ?? 50) });
    const tm = /^\/v1\/tunnels\/(\d{1,15})(\/close)?$/.exec(path);
    if (tm) {
      const id = Number(tm[1]);
      if (get && !tm[2]) {
        const t = await b.tunnel(id);
        if (!t) throw new HttpError(404, "not-found", `no live tunnel has id ${id}`);
        return this.json(res, 200, t);
      }
      if (post && tm[2]) {
        const body = await readJson(req);
        const reason = body.reason ?? "revoked";
        if (reason !== "revoked" && reason !== "shutting-down")
          throw new HttpError(400, "bad-request", 'reason: expected "revoked" or "shutting-down"');
        const message = body.message ?? "closed by an administrator";
        if (typeof message !== "string" || message.length > 200)
          throw new HttpError(400, "bad-request", "message: expected a string of at most 200 characters");
        if (!b.closeTunnel(id, reason, message))
          throw new HttpError(404, "not-found", `no live tunnel has id ${id}`);
        return this.json(res, 200, { closed: id, reason });
      }
    }
    if (post && path === "/v1/policy/reload") {
      await readJson(req);
      let result: { ok?: boolean; error?: string };
      try {
        result = (await b.reload()) as { ok?: boolean; error?: string };
      } catch (e) {
        throw new HttpError(422, "reload-failed", (e as Error).message);
      }
      // A refused configuration leaves the old one in force; say why.
      if (result.ok === false) throw new HttpError(422, "reload-failed", result.error ?? "reload failed");
      return this.json(res, 200, { reloaded: true, result });
    }
    if (get && path === "/v1/audit") {
      const q: AuditQuery = {
        app: strParam(url, "app"),
        address: strParam(url, "address"),
        event: strParam(url, "event"),
        since: intParam(url, "since", 0, Number.MAX_SAFE_INTEGER),
        until: intParam(url, "until", 0, Number.MAX_SAFE_INTEGER),
        limit: intParam(url, "limit", 1, 1000) ?? 100,
      };
      return this.json(res, 200, { entries: await b.auditQuery(q) });
    }
    const known =
      /^\/(v1\/(status|apps|tunnels|events|audit|policy\/reload|tunnels\/\d+(\/close)?)|metrics|logout)$/;
    if (known.test(path))
      throw new HttpError(405, "method-not-allowed", `${method} is not allowed on ${path}`);
    throw new HttpError(404, "not-found", `no route ${path}`);
  }

  private async login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = (await readBody(req)).toString("utf8");
    const token = new URLSearchParams(body).get("token") ?? "";
    if (!this.token || !tokenEquals(token.trim(), this.token))
      return this.html(res, 401, loginPage("That is not the gateway's admin token."));
    // A new session id at every login; the one the browser brought (if any) ends, so a planted id is worth nothing.
    const previous = cookie(req, SESSION_COOKIE);
    if (previous) this.sessions.delete(previous);
    const sid = randomBytes(32).toString("base64url");
    if (this.sessions.size >= MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value!);
    this.sessions.set(sid, Date.now() + SESSION_MS);
    res.setHeader(
      "Set-Cookie",
      `${SESSION_COOKIE}=${sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_MS / 1000}${this.tls ? "; Secure" : ""}`,
    );
    res.setHeader("Location", "/");
    this.send(res, 303, "text/plain; charset=utf-8", "logged in\n");
  }

  private send(res: ServerResponse, status: number, type: string, body: string): void {
    res.writeHead(status, {
      "Content-Type": type,
      "Cache-Control": "no-store",
      "X-Content-Type-Options": "nosniff",
      "Referrer-Policy": "no-referrer",
    });
    res.end(body);
  }

  private json(res: ServerResponse, status: number, value: unknown): void {
    this.send(res, status, "application/json", JSON.stringify(value, jsonSafe) + "\n");
  }

  private html(res: ServerResponse, status: number, body: string): void {
    res.setHeader(
      "Content-Security-Policy",
      "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    this.send(res, status, "text/html; charset=utf-8", body);
  }
}

function jsonSafe(_k: string, v: unknown): unknown {
  return typeof v === "bigint" ? v.toString() : v;
}

function cookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

function strParam(url: URL, name: string): string | undefined {
  const v = url.searchParams.get(name);
  if (v === null || v === "") return undefined;
  if (v.length > 200) throw new HttpError(400, "bad-request", `${name}: at most 200 characters`);
  return v;
}

function intParam(url: URL, name: string, min: number, max: number): number | undefined {
  const v = url.searchParams.get(name);
  if (v === null || v === "") return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new HttpError(400, "bad-request", `${name}: expected an integer from ${min} to ${max}`);
  return n;
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY)
      throw new HttpError(413, "too-large", `request bodies are limited to ${MAX_BODY} bytes`);
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const raw = (await readBody(req)).toString("utf8").trim();
  if (!raw) return {};
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new HttpError(400, "bad-request", "the body is not valid JSON");
  }
  if (typeof v !== "object" || v === null || Array.isArray(v))
    throw new HttpError(400, "bad-request", "expected a JSON object");
  return v as Record<string, unknown>;
}
