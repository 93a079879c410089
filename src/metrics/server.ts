/**
 * The Prometheus scrape endpoint (`metrics.listen`): `GET /metrics`, nothing else, no authentication. Bind it to a
 * management address; the same figures are also on the admin API's authenticated `/metrics`.
 */
import { createServer, type Server } from "node:http";
import { ConnectionGuard, type GuardStats } from "../admin/guard.js";
import type { GatewayMetrics } from "./metrics.js";

export class MetricsServer {
  private server: Server | undefined;
  private readonly guard = new ConnectionGuard({ perSource: 8, total: 32 });
  port = 0;

  constructor(
    private readonly metrics: GatewayMetrics,
    private readonly listen: string,
  ) {}

  /** Rejects with a message naming `what` (the configuration key) when the address cannot be bound. */
  async start(what = "metrics.listen"): Promise<void> {
    // The same defence against slow-header clients as the admin API's (src/admin/guard.ts), with smaller caps.
    const srv = createServer(
      { headersTimeout: 5_000, requestTimeout: 15_000, connectionsCheckingInterval: 1_000 },
      (req, res) => {
        const path = new URL(req.url ?? "/", "http://metrics").pathname;
        if (req.method !== "GET" || path !== "/metrics") {
          res.writeHead(404, { "Content-Type": "text/plain" }).end("only GET /metrics here\n");
          return;
        }
        this.metrics.render().then(
          (m) =>
            res.writeHead(200, { "Content-Type": m.contentType, "Cache-Control": "no-store" }).end(m.body),
          (e: Error) =>
            res.writeHead(500, { "Content-Type": "text/plain" }).end(`metrics failed: ${e.message}\n`),
        );
      },
    );
    this.guard.attach(srv);
    const i = this.listen.lastIndexOf(":");
    const host = this.listen.slice(0, i).replace(/^\[|\]$/g, "");
    await new Promise<void>((resolve, reject) => {
      srv.once("error", (e: NodeJS.ErrnoException) =>
        reject(new Error(`${what}: ${this.listen}: cannot listen (${e.code})`)),
      );
      srv.listen({ host, port: Number(this.listen.slice(i + 1)) }, () => {
        srv.removeAllListeners("error");
        srv.on("error", () => {});
        resolve();
      });
    });
    const a = srv.address();
    this.port = typeof a === "object" && a ? a.port : 0;
    this.server = srv;
  }

  /** Connections open now, evicted while waiting for headers, refused. */
  connectionStats(): GuardStats {
    return this.guard.stats();
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    });
  }
}
