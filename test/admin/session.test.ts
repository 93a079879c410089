/**
 * The admin API's guards on loopback with a stub backend: the Unix socket is 0600 whatever the umask (another user
 * cannot connect), the dashboard's session cookie needs `X-SENG-Request: 1` on anything but GET, and session ids
 * rotate: a new one per login (the one the browser brought ends), none after logout or a token rotation.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AdminServer, SESSION_COOKIE } from "../../src/admin/server.js";
import type { AdminBackend } from "../../src/admin/backend.js";

const TOKEN = "3c".repeat(32);
const TOKEN2 = "4d".repeat(32);

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

describe("admin API: socket mode, CSRF header, session rotation", { concurrency: false }, () => {
  let dir: string;
  let admin: AdminServer;
  let reloads = 0;

  function http(
    method: string,
    path: string,
    headers: Record<string, string> = {},
    body = "",
  ): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const req = request(
        { host: "127.0.0.1", port: admin.tcpPort, method, path, headers, agent: false },
        (res) => {
          let b = "";
          res.setEncoding("utf8").on("data", (d: string) => (b += d));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: b }));
        },
      );
      req.setTimeout(10_000, () => req.destroy(new Error(`${method} ${path}: no answer`)));
      req.on("error", reject);
      req.end(body);
    });
  }

  /** Logs in with `token`, optionally presenting an existing cookie; the new session id. */
  async function login(token = TOKEN, cookie?: string): Promise<string> {
    const r = await http(
      "POST",
      "/login",
      { "content-type": "application/x-www-form-urlencoded", ...(cookie ? { cookie } : {}) },
      `token=${token}`,
    );
    assert.equal(r.status, 303, r.body);
    const set = String(r.headers["set-cookie"]);
    const m = new RegExp(`^${SESSION_COOKIE}=([\\w-]{43}); Path=/; HttpOnly; SameSite=Strict`).exec(set);
    assert.ok(m, set);
    return `${SESSION_COOKIE}=${m[1]}`;
  }

  const statusWith = async (cookie: string) => (await http("GET", "/v1/status", { cookie })).status;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "seng-session-"));
    writeFileSync(join(dir, "admin.token"), TOKEN + "\n", { mode: 0o600 });
    const backend = {
      status: () => ({ ok: true }),
      reload: () => {
        reloads++;
        return Promise.resolve({ ok: true });
      },
    } as unknown as AdminBackend;
    admin = new AdminServer({
      config: { socket: join(dir, "admin.sock"), tcp: "127.0.0.1:0", tokenFile: join(dir, "admin.token") },
      backend,
    });
    // The most permissive umask: the socket must still come out 0600.
    const old = process.umask(0);
    try {
      await admin.start();
    } finally {
      process.umask(old);
    }
  });

  after(async () => {
    await admin?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("the Unix socket is 0600 even under umask 0, and another user cannot connect to it", () => {
    const sock = join(dir, "admin.sock");
    const st = statSync(sock);
    assert.ok(st.isSocket());
    assert.equal((st.mode & 0o777).toString(8), "600");
    // Let others through the folder, so only the socket's own mode stands in their way.
    chmodSync(dir, 0o755);
    const connectAs = (user: string): string =>
      execFileSync(
        "runuser",
        [
          "-u",
          user,
          "--",
          process.execPath,
          "-e",
          `const s=require("net").connect(${JSON.stringify(sock)});` +
            `s.on("connect",()=>{console.log("connected");s.destroy()});s.on("error",(e)=>console.log(e.code))`,
        ],
        { encoding: "utf8", timeout: 10_000 },
      ).trim();
    assert.equal(connectAs("nobody"), "EACCES");
    assert.equal(connectAs("root"), "connected", "the owner can");
  });

  test("with the session cookie, anything but GET needs X-SENG-Request: 1; the bearer token does not", async () => {
    const c = await login();
    assert.equal(await statusWith(c), 200, "GET with the cookie alone");
    const forged: Record<string, string>[] = [{}, { "x-seng-request": "0" }, { "x-seng-request": "true" }];
    for (const h of forged) {
      const r = await http("POST", "/v1/policy/reload", { cookie: c, ...h });
      assert.equal(r.status, 403, JSON.stringify(h));
      assert.equal(JSON.parse(r.body).error, "forbidden");
      const out = await http("POST", "/logout", { cookie: c, ...h });
      assert.equal(out.status, 403, "a forged logout is refused too");
    }
    assert.equal(reloads, 0, "no forged request reached the backend");
    assert.equal(await statusWith(c), 200, "the session survived the forged logouts");
    const ok = await http("POST", "/v1/policy/reload", { cookie: c, "x-seng-request": "1" });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(reloads, 1);
    // A bearer token is not ambient authority a cross-site form could use: no extra header needed.
    const bearer = await http("POST", "/v1/policy/reload", { authorization: `Bearer ${TOKEN}` });
    assert.equal(bearer.status, 200, bearer.body);
    assert.equal(reloads, 2);
  });

  test("session ids rotate: new per login, the presented one ends, logout and token rotation end sessions", async () => {
    const a = await login();
    const b = await login();
    assert.notEqual(a, b);
    assert.equal(await statusWith(a), 200);
    assert.equal(await statusWith(b), 200);
    // Logging in with a cookie (planted by someone else, say) replaces it: the old id is dead.
    const c = await login(TOKEN, a);
    assert.notEqual(c, a);
    assert.equal(await statusWith(a), 401, "the id presented at login ended");
    assert.equal(await statusWith(c), 200);
    // Logout ends exactly that session.
    const out = await http("POST", "/logout", { cookie: c, "x-seng-request": "1" });
    assert.equal(out.status, 200);
    assert.match(String(out.headers["set-cookie"]), new RegExp(`^${SESSION_COOKIE}=; .*Max-Age=0`));
    assert.equal(await statusWith(c), 401);
    assert.equal(await statusWith(b), 200, "other sessions live on");
    // A rotated token ends every session made with the old one; the old token no longer logs in.
    writeFileSync(join(dir, "admin.token"), TOKEN2 + "\n", { mode: 0o600 });
    assert.equal(admin.reloadToken(), true);
    assert.equal(await statusWith(b), 401);
    const refused = await http(
      "POST",
      "/login",
      { "content-type": "application/x-www-form-urlencoded" },
      `token=${TOKEN}`,
    );
    assert.equal(refused.status, 401);
    assert.equal(refused.headers["set-cookie"], undefined);
    assert.equal(await statusWith(await login(TOKEN2)), 200);
  });
});
