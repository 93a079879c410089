/**
 * A gateway lab in network namespaces, for end-to-end tests and benchmarks:
 *
 *   cliN (198.18.<2N+1>.2) ── veth ── gw (198.18.<2N+1>.1 | 198.18.2.1) ── veth ── srv (198.18.2.2)
 *
 * `seng gateway` runs in gw with a TUN and app subnets in 100.64.0.0/10; the server routes 100.64.0.0/10 back via
 * the gateway; clients reach 198.18.2.0/24 only through their tunnel. With `ipv6`, the server network is dual-stack
 * (gw 2001:2:ff::1, srv 2001:2:ff::2), the server routes fd64::/16 back via the gateway, and the gateway's TUN
 * gets fd64::1 (apps take `subnet6` prefixes in fd64::/16). Everything lives in namespaces this lab
 * creates and `destroy()` removes (also on process exit, through the netns helper's registry).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { Netns, veth, ROOT, type NsProcess } from "./netns.js";
import { createSimSnp, saveSimSnp } from "../../src/attest/sim-snp.js";

export const CLI = join(ROOT, "src/cli/main.ts");
export const TCP_TOOL = join(ROOT, "test/helpers/tcp-tool.ts");
export const SERVER_IP = "198.18.2.2";
export const SERVER_IP6 = "2001:2:ff::2";

export interface LabApp {
  name: string;
  /** Without a subnet the app leases from the config's shared `pool` (set extraYaml). */
  subnet?: string;
  /** An IPv6 prefix in fd64::/16 (needs the lab's `ipv6`). */
  subnet6?: string;
  categories?: string[];
  identities: Record<string, unknown>[];
}

export interface LabOptions {
  apps: LabApp[];
  clients?: number;
  /** Extra YAML merged at top level (e.g. tunnel timings, limits). */
  extraYaml?: string;
  /** The gateway's `listen` (default 0.0.0.0:4433; "[::]:4433" for dual stack). */
  listen?: string;
  /** A dual-stack server network and an IPv6 address on the gateway's TUN (see the file comment). */
  ipv6?: boolean;
}

function seng(args: string[]): string {
  return execFileSync(process.execPath, ["--import", "tsx", CLI, ...args], { cwd: ROOT, encoding: "utf8" });
}

/** Waits until `proc`'s stdout has a JSON line satisfying `pred` (after `from` characters); returns it. */
export async function waitLine<T = Record<string, unknown>>(
  proc: NsProcess,
  pred: (o: Record<string, unknown>) => boolean,
  timeoutMs = 15_000,
  from = 0,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    for (const line of proc.stdout.slice(from).split("\n")) {
      if (!line.startsWith("{")) continue;
      try {
        const o = JSON.parse(line) as Record<string, unknown>;
        if (pred(o)) return o as T;
      } catch {
        // partial line
      }
    }
    if (Date.now() > end)
      throw new Error(
        `timed out waiting for a line; stdout:\n${proc.stdout.slice(-2000)}\nstderr:\n${proc.stderr.slice(-2000)}`,
      );
    if (proc.child.exitCode !== null)
      throw new Error(
        `process exited (${proc.child.exitCode}); stdout:\n${proc.stdout.slice(-2000)}\nstderr:\n${proc.stderr.slice(-2000)}`,
      );
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class Lab {
  readonly dir: string;
  readonly simDir: string;
  /** A simulated SEV-SNP platform, trusted by the gateway like the SGX sim: pass `--sim-dir` it to a client. */
  readonly simSnpDir: string;
  pin = "";
  gw!: Netns;
  srv!: Netns;
  readonly clients: Netns[] = [];
  gateway: NsProcess | undefined;
  private readonly procs: NsProcess[] = [];

  private constructor(readonly opts: LabOptions) {
    this.dir = mkdtempSync(join(tmpdir(), "seng-lab-"));
    this.simDir = join(this.dir, "sim");
    this.simSnpDir = join(this.dir, "sim-snp");
  }

  static async create(opts: LabOptions): Promise<Lab> {
    const lab = new Lab(opts);
    try {
      await lab.build();
    } catch (e) {
      await lab.destroy();
      throw e;
    }
    return lab;
  }

  private async build(): Promise<void> {
    seng(["attest", "sim", "init", "--dir", this.simDir]);
    saveSimSnp(await createSimSnp(), this.simSnpDir); // in process: no second CLI start per lab
    this.pin = seng(["gateway", "keygen", "--dir", this.dir]).trim();
    this.gw = await Netns.create("gw");
    this.srv = await Netns.create("srv");
    await veth(this.gw, "gw-srv", "198.18.2.1/24", this.srv, "srv-gw", "198.18.2.2/24");
    await this.srv.ip("route", "add", "100.64.0.0/10", "via", "198.18.2.1");
    await this.srv.ip("route", "add", "198.18.0.0/15", "via", "198.18.2.1");
    if (this.opts.ipv6) {
      // nodad: usable at once (duplicate address detection would hold them for a second or two)
      await this.gw.ip("-6", "addr", "add", "2001:2:ff::1/64", "dev", "gw-srv", "nodad");
      await this.srv.ip("-6", "addr", "add", `${SERVER_IP6}/64`, "dev", "srv-gw", "nodad");
      await this.srv.ip("-6", "route", "add", "fd64::/16", "via", "2001:2:ff::1");
    }
    // The gateway namespace routes (the gateway would switch this on itself; benchmarks use the direct path first).
    await this.gw.exec("sysctl", ["-qw", "net.ipv4.ip_forward=1"]);
    for (let i = 0; i < (this.opts.clients ?? 1); i++) await this.addClient();
    writeFileSync(join(this.dir, "gateway.yaml"), this.configText());
  }

  /** Adds a client namespace with its own link to the gateway. */
  async addClient(): Promise<Netns> {
    const i = this.clients.length;
    const net = 2 * i + 1; // 198.18.1.0/24, 198.18.3.0/24, …
    const ns = await Netns.create(`cli${i}`);
    await veth(ns, `c${i}-gw`, `198.18.${net}.2/24`, this.gw, `gw-c${i}`, `198.18.${net}.1/24`);
    this.clients.push(ns);
    return ns;
  }

  gatewayAddr(client = 0): string {
    return `198.18.${2 * client + 1}.1:4433`;
  }

  get configFile(): string {
    return join(this.dir, "gateway.yaml");
  }

  /** Rewrites the gateway's configuration file (for reloads); `opts` as in {@link Lab.create}. */
  writeConfig(opts: Partial<LabOptions>): void {
    writeFileSync(this.configFile, this.configText({ ...this.opts, ...opts }));
  }

  configText(opts: LabOptions = this.opts): string {
    const apps = opts.apps
      .map(
        (a) =>
          `  - name: ${a.name}\n` +
          (a.subnet ? `    subnet: ${a.subnet}\n` : "") +
          (a.subnet6 ? `    subnet6: "${a.subnet6}"\n` : "") +
          (a.categories ? `    categories: ${JSON.stringify(a.categories)}\n` : "") +
          `    identities: ${JSON.stringify(a.identities)}`,
      )
      .join("\n");
    return [
      `listen: "${opts.listen ?? "0.0.0.0:4433"}"`,
      "certificate: gateway.pem",
      "key: gateway.key",
      "database: seng.db",
      `tun: { name: seng0, address: 100.64.0.1/32,${opts.ipv6 ? ' address6: "fd64::1/128",' : ""} mtu: 1400 }`,
      "trust:",
      "  simulatedRoots: [sim/root.pem, sim-snp/ark.pem]",
      "  collateral: [sim/collateral.json]",
      opts.extraYaml ?? "",
      "apps:",
      apps,
      "",
    ].join("\n");
  }

  /** Starts `seng gateway` in the gateway namespace and waits until it listens. */
  async startGateway(): Promise<NsProcess> {
    // SENG_LAB_GATEWAY_NODE_ARGS: extra node flags for the gateway process (e.g. --cpu-prof when profiling).
    const extra = process.env.SENG_LAB_GATEWAY_NODE_ARGS?.split(" ").filter(Boolean) ?? [];
    const p = this.gw.spawn(process.execPath, [
      ...extra,
      "--import",
      "tsx",
      CLI,
      "gateway",
      "--config",
      join(this.dir, "gateway.yaml"),
    ]);
    this.procs.push(p);
    this.gateway = p;
    await waitLine(p, (o) => o.event === "gateway-started", 20_000);
    return p;
  }

  /** Stops the gateway (SIGTERM: clean shutdown; SIGKILL: crash). */
  async stopGateway(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const g = this.gateway;
    if (!g) return;
    this.gateway = undefined;
    await g.kill(signal, 5000);
  }

  /** The gateway's counters (asks with SIGUSR1 and reads the next stats line). */
  async stats(): Promise<
    Record<string, unknown> & {
      drops: Record<string, number>;
      handshakes: Record<string, number>;
      tunnels: number;
      apps: Record<string, Record<string, number>>;
    }
  > {
    const g = this.gateway!;
    const from = g.stdout.length;
    g.child.kill("SIGUSR1");
    return waitLine(g, (o) => o.event === "stats", 5000, from);
  }

  /** Starts a test client in client namespace `client` claiming `mrenclave`. */
  startClient(
    mrenclave: string,
    opts: { client?: number; args?: string[]; tun?: string; gateway?: string } = {},
  ): NsProcess {
    const c = opts.client ?? 0;
    const p = this.clients[c]!.spawn(process.execPath, [
      "--import",
      "tsx",
      CLI,
      "test-client",
      "--gateway",
      opts.gateway ?? this.gatewayAddr(c),
      "--pin",
      this.pin,
      "--sim-dir",
      this.simDir,
      "--mrenclave",
      mrenclave,
      "--tun",
      opts.tun ?? `sengc${c}`,
      "--route",
      "198.18.2.0/24",
      ...(opts.args ?? []),
    ]);
    this.procs.push(p);
    return p;
  }

  /** Starts a process in the server namespace. */
  server(cmd: string, args: string[]): NsProcess {
    const p = this.srv.spawn(cmd, args);
    this.procs.push(p);
    return p;
  }

  async destroy(): Promise<void> {
    await Promise.allSettled(this.procs.map((p) => p.kill("SIGKILL", 1000)));
    await Promise.allSettled([...this.clients, this.gw, this.srv].filter(Boolean).map((ns) => ns.delete()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
