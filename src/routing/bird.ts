/**
 * BIRD 2 for the gateway: its configuration (rendered from `routing:` and the routes to announce) and the daemon
 * itself, run as a child of the gateway so that it shares the gateway's fate.
 *
 * Why a child, with a parent-death signal: if the gateway dies (kill -9, a crash) while BIRD beside it keeps its
 * BGP sessions, the router keeps sending the apps' traffic to a host that no longer forwards it. Started through
 * `setpriv --pdeathsig KILL`, BIRD is killed by the kernel the moment the gateway's process ends; its TCP sessions
 * close at once and the router withdraws every route of this gateway within tens of milliseconds (measured in
 * docs/CLUSTER.md). A host that dies as a whole is noticed by BFD (100 ms × 3) or, without BFD, the hold time.
 *
 * Why static routes in BIRD's config, reloaded with `birdc configure`, rather than a kernel table BIRD learns
 * from: the announced set is one file that says exactly what is announced, BIRD diffs static routes on reconfigure
 * (only changed routes become BGP updates), nothing is left in the kernel when the gateway dies, and a change
 * reaches the router's kernel in ~15 ms (docs/CLUSTER.md). Routes are `blackhole` in BIRD (the gateway's own
 * kernel routes its app subnets into its TUN already); eBGP announces them with this host as the next hop.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import type { RoutingConfig } from "./config.js";

const exec = promisify(execFile);

/** BIRD's name for a prefix's family. */
function family(prefix: string): 4 | 6 {
  return isIP(prefix.split("/")[0]!) === 6 ? 6 : 4;
}

/** The peer of a BGP session as BIRD's config names it. */
export interface BgpPeer {
  address: string;
  asn: number;
  local?: string;
}

export interface SessionTimers {
  bfd: boolean;
  holdSeconds: number;
}

function session(name: string, localAsn: number, p: BgpPeer, t: SessionTimers, channels: string): string {
  const local = p.local ? `local ${p.local} as ${localAsn}` : `local as ${localAsn}`;
  return [
    `protocol bgp ${name} {`,
    `  ${local};`,
    `  neighbor ${p.address} as ${p.asn};`,
    `  hold time ${t.holdSeconds}; keepalive time ${Math.max(1, Math.floor(t.holdSeconds / 3))};`,
    // Come back quickly after a peer restarts (BIRD's defaults wait up to minutes).
    `  connect retry time 1; error wait time 1, 5;`,
    t.bfd ? `  bfd on;` : `  bfd off;`,
    channels,
    `}`,
  ].join("\n");
}

const BFD = `protocol bfd { interface "*" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }`;

/**
 * The gateway's BIRD config: its blocks and the host routes it holds as static routes, exported to every neighbor.
 * Deterministic (sorted), so an unchanged set renders the same file.
 */
export function gatewayBirdConfig(r: RoutingConfig, routes: Iterable<string>): string {
  const all = [...new Set([...r.blocks, ...routes])].sort();
  const v4 = all.filter((p) => family(p) === 4);
  const v6 = all.filter((p) => family(p) === 6);
  const t = { bfd: r.bfd, holdSeconds: r.holdSeconds };
  const out = [
    "# Written by seng gateway (src/routing/bird.ts); rewritten on every change, do not edit.",
    `router id ${r.routerId};`,
    "protocol device { scan time 10; }",
    r.bfd ? BFD : "",
    `protocol static seng4 { ipv4;${v4.map((p) => `\n  route ${p} blackhole;`).join("")}\n}`,
    `protocol static seng6 { ipv6;${v6.map((p) => `\n  route ${p} blackhole;`).join("")}\n}`,
  ];
  r.neighbors.forEach((n, i) => {
    // The session's own family carries the routes of that family (no IPv6 over an IPv4 session: the router's
    // kernel would need an IPv4 next hop for an IPv6 route).
    const ch =
      family(n.address) === 4
        ? `  ipv4 { import none; export where proto = "seng4"; };`
        : `  ipv6 { import none; export where proto = "seng6"; };`;
    out.push(session(`peer${i + 1}`, r.asn, n, t, ch));
  });
  return out.filter(Boolean).join("\n") + "\n";
}

/**
 * A router's BIRD config that learns routes from gateways over eBGP and installs them in its kernel (tests, the
 * cluster demo, and an example for docs/CLUSTER.md).
 */
export function routerBirdConfig(o: {
  routerId: string;
  asn: number;
  peers: BgpPeer[];
  bfd?: boolean;
  holdSeconds?: number;
}): string {
  const t = { bfd: o.bfd ?? true, holdSeconds: o.holdSeconds ?? 3 };
  return [
    "# A router learning SENG gateways' routes (src/routing/bird.ts: routerBirdConfig).",
    `router id ${o.routerId};`,
    "protocol device { scan time 10; }",
    t.bfd ? BFD : "",
    "protocol kernel { ipv4 { export all; }; }",
    "protocol kernel { ipv6 { export all; }; }",
    ...o.peers.map((p, i) =>
      session(
        `gw${i + 1}`,
        o.asn,
        p,
        t,
        family(p.address) === 4
          ? "  ipv4 { import all; export none; };"
          : "  ipv6 { import all; export none; };",
      ),
    ),
  ]
    .filter(Boolean)
    .join("\n");
}

/** BIRD refused something, or could not be started or reached. */
export class BirdError extends Error {
  override readonly name = "BirdError";
}

export interface BirdOptions {
  /** Folder for bird.conf and the control socket. */
  dir: string;
  bird?: string;
  birdc?: string;
  /** Extra environment for the daemon (tests). */
  env?: NodeJS.ProcessEnv;
}

/**
 * One BIRD daemon, our child: `setpriv --pdeathsig KILL bird -f` (see the file comment). Ended by its pid only.
 */
export class Bird {
  readonly conf: string;
  readonly socket: string;
  private child: ChildProcess | undefined;
  private stderr = "";
  exitCode: number | null = null;
  private exited: Promise<void> = Promise.resolve();

  constructor(readonly opts: BirdOptions) {
    this.conf = join(opts.dir, "bird.conf");
    this.socket = join(opts.dir, "bird.ctl");
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Writes the config atomically (a reader never sees half a file). */
  write(text: string): void {
    mkdirSync(this.opts.dir, { recursive: true, mode: 0o750 });
    const tmp = `${this.conf}.tmp`;
    writeFileSync(tmp, text, { mode: 0o640 });
    renameSync(tmp, this.conf);
  }

  /** Checks the written config without running it (`bird -p`). */
  async parse(): Promise<void> {
    const bird = this.opts.bird ?? "bird";
    const r = await exec(bird, ["-p", "-c", this.conf], { timeout: 10_000 }).catch(
      (e: { code?: string | number; stderr?: string; message: string }) => ({
        error: e.code === "ENOENT" ? "" : (e.stderr || e.message).trim(),
      }),
    );
    if (!("error" in r)) return;
    if (!r.error)
      throw new BirdError(`bird: ${bird} not found (install Debian's bird2, or set routing.bird)`);
    throw new BirdError(`BIRD refused ${this.conf}: ${r.error.split("\n")[0]}`);
  }

  /** Starts the daemon on the written config and waits until its control socket answers. */
  async start(timeoutMs = 10_000): Promise<void> {
    await this.parse();
    const bird = this.opts.bird ?? "bird";
    const child = spawn(
      "setpriv",
      ["--pdeathsig", "KILL", "--", bird, "-f", "-c", this.conf, "-s", this.socket],
      {
        stdio: ["ignore", "ignore", "pipe"],
        env: { ...process.env, ...this.opts.env },
      },
    );
    this.child = child;
    child.stderr
      ?.setEncoding("utf8")
      .on("data", (d: string) => (this.stderr = (this.stderr + d).slice(-4000)));
    this.exited = new Promise((done) =>
      child.once("exit", (code, signal) => {
        this.exitCode = code ?? (signal ? 128 : 1);
        done();
      }),
    );
    child.once("error", (e) => (this.stderr += `${bird}: ${e.message}`));
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (this.exitCode !== null)
        throw new BirdError(
          `BIRD exited at start (${this.exitCode}): ${this.stderr.trim().split("\n")[0] ?? ""}`,
        );
      if (
        existsSync(this.socket) &&
        (await this.ctl(["show", "status"]).then(
          () => true,
          () => false,
        ))
      )
        return;
      if (Date.now() > end) {
        await this.stop();
        throw new BirdError(`BIRD did not answer on ${this.socket} within ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Runs a birdc command; throws BirdError with BIRD's answer when it reports an error. */
  async ctl(args: string[]): Promise<string> {
    const r = await exec(this.opts.birdc ?? "birdc", ["-s", this.socket, ...args], { timeout: 10_000 }).catch(
      (e: { stdout?: string; stderr?: string; message: string }) => ({
        stdout: "",
        error: (e.stderr || e.stdout || e.message).trim(),
      }),
    );
    if ("error" in r) throw new BirdError(`birdc ${args.join(" ")}: ${r.error.split("\n")[0]}`);
    // birdc exits 0 on BIRD's own errors; they are lines starting with a code of 8xxx or 9xxx, or these words.
    if (/^(8|9)\d{3}|Parse error|Unable to connect|syntax error/im.test(r.stdout))
      throw new BirdError(`birdc ${args.join(" ")}: ${r.stdout.trim().split("\n").slice(-1)[0]}`);
    return r.stdout;
  }

  /** Reloads the written config (static routes are diffed: only changed routes become BGP updates). */
  async configure(): Promise<void> {
    const out = await this.ctl(["configure"]);
    if (!/Reconfigur/.test(out)) throw new BirdError(`birdc configure: unexpected answer: ${out.trim()}`);
  }

  /** Ends the daemon by its pid (SIGTERM, then SIGKILL after `graceMs`). */
  async stop(graceMs = 2000): Promise<void> {
    const pid = this.child?.pid;
    if (pid === undefined || this.exitCode !== null) return;
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      return;
    }
    const t = setTimeout(() => {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }, graceMs);
    await this.exited;
    clearTimeout(t);
  }
}
