/**
 * `fetch` for SDK users: an undici dispatcher whose connections are SDK sockets (net.ts), so
 * `fetch(url, { dispatcher: shieldedDispatcher() })` (Node's global fetch, which takes undici dispatchers) or
 * `shieldedFetch(url)` goes through the tunnel without the preload. HTTPS runs TLS inside the app over the shielded
 * TCP socket, with Node's certificate checks.
 *
 * Apps under the preload (register.ts) need none of this: Node's own fetch already connects through the SDK there.
 * undici is Node's own HTTP client (the one behind Node's fetch), pinned to the 6.x line that Node 20 bundles.
 */
import { isIP, type Socket } from "node:net";
import tls from "node:tls";
import { Agent, fetch as undiciFetch, type buildConnector, type Dispatcher } from "undici";
import { linkRef } from "./agents.js";
import { createConnection } from "./net.js";

/** undici's `connect` options we use (see undici's `buildConnector`). */
interface ConnectParams {
  hostname: string;
  protocol: string;
  port: string;
  servername?: string | null;
}

/** TLS options applied to HTTPS connections (CA, client certificate, `rejectUnauthorized`, ...). */
export type ShieldedTlsOptions = Omit<tls.ConnectionOptions, "socket" | "host" | "port" | "path">;

/** An undici dispatcher over shielded sockets; `options` are undici Agent options (keep-alive, pipelining, ...). */
export function createShieldedDispatcher(
  options: Omit<Agent.Options, "connect"> & { tlsOptions?: ShieldedTlsOptions } = {},
): Agent {
  const { tlsOptions, ...agentOptions } = options;
  return new Agent({
    ...agentOptions,
    connect: (params: buildConnector.Options, callback: buildConnector.Callback) => {
      const p = params as unknown as ConnectParams;
      const https = p.protocol === "https:";
      const port = Number(p.port) || (https ? 443 : 80);
      // undici writes IPv6 literals in brackets.
      const host = p.hostname.replace(/^\[(.*)\]$/, "$1");
      const socket = createConnection({ host, port });
      let done = false;
      const finish = (err: Error | null, s: Socket | tls.TLSSocket | null) => {
        if (done) return;
        done = true;
        if (err) callback(err, null);
        else callback(null, s!);
      };
      if (!https) {
        socket.once("connect", () => finish(null, socket));
        socket.once("error", (e: Error) => finish(e, null));
        return;
      }
      const servername = p.servername ?? (isIP(host) ? undefined : host);
      const t = tls.connect(
        Object.assign({}, tlsOptions, { socket, servername, ALPNProtocols: ["http/1.1"] }),
      );
      linkRef(t, socket);
      t.once("secureConnect", () => finish(null, t));
      t.once("error", (e: Error) => finish(e, null));
    },
  });
}

let fallback: Agent | undefined;

/** The process-wide shielded dispatcher (made on first use). */
export function shieldedDispatcher(): Agent {
  return (fallback ??= createShieldedDispatcher());
}

/** `fetch` through the tunnel: undici's fetch with {@link shieldedDispatcher} unless `init.dispatcher` is given. */
export function shieldedFetch(
  input: Parameters<typeof undiciFetch>[0],
  init: Parameters<typeof undiciFetch>[1] & { dispatcher?: Dispatcher } = {},
): ReturnType<typeof undiciFetch> {
  return undiciFetch(input, { ...init, dispatcher: init.dispatcher ?? shieldedDispatcher() });
}
