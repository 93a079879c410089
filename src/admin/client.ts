/** A small client of the admin API, over the Unix socket or TCP (with the bearer token), for `seng status`. */
import { readFileSync } from "node:fs";
import { request as httpRequest, type RequestOptions } from "node:http";
import { request as httpsRequest } from "node:https";

export type AdminTarget = { socket: string } | { url: string; token: string; ca?: Buffer };

export interface AdminResponse {
  status: number;
  contentType: string;
  body: string;
}

export class AdminClientError extends Error {
  override readonly name = "AdminClientError";
}

/** One request; rejects only when the API cannot be reached (HTTP errors are answers). */
export function adminRequest(
  target: AdminTarget,
  method: string,
  path: string,
  body?: unknown,
  timeoutMs = 10_000,
): Promise<AdminResponse> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const headers: Record<string, string> = {};
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  let opts: RequestOptions & { ca?: Buffer };
  let send = httpRequest;
  let where: string;
  if ("socket" in target) {
    opts = { socketPath: target.socket, path, method, headers };
    where = target.socket;
  } else {
    const u = new URL(path, target.url);
    if (u.protocol === "https:") send = httpsRequest as typeof httpRequest;
    else if (u.protocol !== "http:")
      throw new AdminClientError(`${target.url}: expected an http:// or https:// URL`);
    headers.Authorization = `Bearer ${target.token}`;
    opts = {
      host: u.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: u.port,
      path: u.pathname + u.search,
      method,
      headers,
      ca: target.ca,
    };
    where = target.url;
  }
  return new Promise((resolve, reject) => {
    const req = send(opts, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          contentType: String(res.headers["content-type"] ?? ""),
          body: Buffer.concat(chunks).toString("utf8"),
        }),
      );
      res.on("error", (e) => reject(new AdminClientError(`${where}: ${e.message}`)));
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", (e: NodeJS.ErrnoException) =>
      reject(
        new AdminClientError(
          `cannot reach the admin API at ${where}: ${e.code === "ENOENT" ? "no such socket (is the gateway running?)" : (e.code ?? e.message)}`,
        ),
      ),
    );
    req.end(payload);
  });
}

/** GET/POST returning parsed JSON; a non-2xx answer becomes an error with the API's detail. */
export async function adminJson<T>(
  target: AdminTarget,
  method: string,
  path: string,
  body?: unknown,
): Promise<T> {
  const r = await adminRequest(target, method, path, body);
  let v: unknown;
  try {
    v = JSON.parse(r.body);
  } catch {
    throw new AdminClientError(`${path}: HTTP ${r.status}, not JSON: ${r.body.slice(0, 200)}`);
  }
  if (r.status < 200 || r.status >= 300) {
    const e = v as { error?: string; detail?: string };
    throw new AdminClientError(
      `${path}: HTTP ${r.status} ${e.error ?? ""}: ${e.detail ?? r.body.slice(0, 200)}`,
    );
  }
  return v as T;
}

/** Reads a token file for a client (the whole file, trimmed). */
export function readClientToken(file: string): string {
  try {
    return readFileSync(file, "utf8").trim();
  } catch (e) {
    throw new AdminClientError(`--token-file ${file}: cannot read (${(e as NodeJS.ErrnoException).code})`);
  }
}
