/**
 * Routing to the right gateway: this gateway announces, over BGP through its BIRD child (bird.ts), its configured
 * blocks and a host route (/32, /128) for every address it has a live tunnel for outside those blocks. The route
 * follows the tunnel: it is announced when a tunnel comes up here and withdrawn when the last tunnel of that
 * address here goes down, so after a failover the gateway that now carries an app announces its address and the
 * router's longest-prefix match sends the app's traffic there. docs/CLUSTER.md, "Routing".
 *
 * Changes are batched (a burst of tunnels is one reconfiguration), one reconfiguration runs at a time, and a failed
 * one is retried with the next change or after a second; nothing here blocks the data path.
 */
import { isIP } from "node:net";
import { dirname, isAbsolute, join, resolve } from "node:path";
import type { GatewayObserver, TunnelInfo } from "../gateway/server.js";
import type { Logger } from "../gateway/log.js";
import { ipToInt, parseCidr } from "../packet/ip.js";
import { Bird, BirdError, gatewayBirdConfig } from "./bird.js";
import type { RoutingConfig } from "./config.js";

/** What a tunnel holds: its IPv4 address and, with protocol v2, an IPv6 one. */
type Held = Pick<TunnelInfo, "address"> & { address6?: string };

export interface RouteAnnouncerStats {
  /** Host routes announced now, and reconfigurations done / failed since start. */
  hostRoutes: number;
  reconfigurations: number;
  failures: number;
  /** Duration of the last reconfiguration (write + birdc configure), ms. */
  lastMs: number;
}

export class RouteAnnouncer implements GatewayObserver {
  private readonly count = new Map<string, number>();
  private readonly blocks4: { network: number; size: number }[] = [];
  private announced = "";
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private started = false;
  private fenceTimer: NodeJS.Timeout | undefined;
  readonly stats: RouteAnnouncerStats = { hostRoutes: 0, reconfigurations: 0, failures: 0, lastMs: 0 };

  constructor(
    readonly config: RoutingConfig,
    readonly bird: Bird,
    private readonly log: Logger,
    /** Batch window for changes, ms. */
    private readonly batchMs = 5,
  ) {
    for (const b of config.blocks) if (isIP(b.split("/")[0]!) === 4) this.blocks4.push(parseCidr(b));
  }

  /** Renders the config with what is held so far, starts BIRD. */
  async start(): Promise<void> {
    this.announced = gatewayBirdConfig(this.config, this.routes());
    this.bird.write(this.announced);
    await this.bird.start();
    this.started = true;
    this.schedule(); // tunnels that came or went while BIRD was starting
    this.log.log("info", "routing-started", {
      bird: this.bird.pid,
      neighbors: this.config.neighbors.map((n) => `${n.address} AS${n.asn}`),
      blocks: this.config.blocks,
    });
  }

  /**
   * This gateway can no longer prove it holds its addresses (self-fencing, docs/CLUSTER.md): withdraw everything at
   * once by ending BIRD (its sessions close, the router drops every route of this gateway), and announce nothing
   * more. A fenced gateway restarts, and its routing with it.
   */
  async fenced(): Promise<void> {
    if (this.stopped) return;
    this.log.log("warn", "routing-withdrawn", { reason: "fenced" });
    await this.stop();
  }

  /**
   * Polls the store's fencing state (a state to poll, src/store/interface.ts) and withdraws everything as soon as
   * this gateway is fenced: a fenced gateway stops forwarding, so nothing may route to it.
   */
  watchFence(fence: () => { held: boolean }, everyMs = 200): void {
    clearInterval(this.fenceTimer);
    this.fenceTimer = setInterval(() => {
      if (!fence().held) {
        clearInterval(this.fenceTimer);
        void this.fenced();
      }
    }, everyMs);
    this.fenceTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.fenceTimer);
    clearTimeout(this.timer);
    await this.running?.catch(() => undefined);
    await this.bird.stop();
  }

  /** The host routes that announce what this gateway holds outside its blocks, sorted. */
  routes(): string[] {
    return [...this.count.keys()].filter((p) => !this.inBlocks(p)).sort();
  }

  tunnelUp(t: TunnelInfo): void {
    for (const p of prefixes(t)) this.count.set(p, (this.count.get(p) ?? 0) + 1);
    this.schedule();
  }

  tunnelDown(t: TunnelInfo): void {
    for (const p of prefixes(t)) {
      const n = (this.count.get(p) ?? 0) - 1;
      if (n > 0) this.count.set(p, n);
      else this.count.delete(p);
    }
    this.schedule();
  }

  private inBlocks(prefix: string): boolean {
    if (!prefix.endsWith("/32")) return false; // IPv6 host routes are always announced (blocks: IPv4 only here)
    const a = ipToInt(prefix.slice(0, -3));
    return this.blocks4.some((b) => a >>> 0 >= b.network >>> 0 && a >>> 0 < (b.network >>> 0) + b.size);
  }

  private schedule(delayMs = this.batchMs): void {
    if (this.stopped || !this.started || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      // One reconfiguration at a time; changes made meanwhile are picked up by the next one.
      if (this.running) return this.schedule();
      this.running = this.flush().finally(() => (this.running = undefined));
    }, delayMs);
  }

  private async flush(): Promise<void> {
    const routes = this.routes();
    const text = gatewayBirdConfig(this.config, routes);
    if (text === this.announced) return;
    const t0 = performance.now();
    try {
      this.bird.write(text);
      await this.bird.configure();
      this.announced = text;
      this.stats.hostRoutes = routes.length;
      this.stats.reconfigurations++;
      this.stats.lastMs = performance.now() - t0;
      this.log.log("debug", "routing-updated", {
        hostRoutes: routes.length,
        ms: Math.round(this.stats.lastMs),
      });
    } catch (e) {
      this.stats.failures++;
      this.log.limited("routing-failed", 10_000, "error", "routing-failed", { error: (e as Error).message });
      this.schedule(1000);
    }
  }
}

function prefixes(t: Held): string[] {
  const out: string[] = [];
  if (t.address) out.push(`${t.address}/32`);
  if (t.address6) out.push(`${t.address6}/128`);
  return out;
}

/**
 * Starts routing for a gateway whose config has `routing:`: BIRD in `routing.dir` (relative to the config file's
 * folder; default `bird` beside the lease database), announcing as tunnels come and go.
 */
export async function startRouting(
  gw: { observe(o: GatewayObserver): void },
  r: RoutingConfig,
  where: { configFile: string; database: string },
  log: Logger,
  /** The lease store's fencing state (a cluster gateway): everything is withdrawn once it is no longer held. */
  fence?: () => { held: boolean },
): Promise<RouteAnnouncer> {
  const dir = r.dir
    ? isAbsolute(r.dir)
      ? r.dir
      : resolve(dirname(where.configFile), r.dir)
    : join(dirname(where.database), "bird");
  const a = new RouteAnnouncer(r, new Bird({ dir, bird: r.bird, birdc: r.birdc }), log);
  gw.observe(a); // first: tunnels that come up while BIRD starts are counted
  try {
    await a.start();
  } catch (e) {
    throw new BirdError(`${where.configFile}: routing: ${(e as Error).message}`);
  }
  if (fence) a.watchFence(fence);
  return a;
}
