/**
 * A cluster lab in network namespaces: several gateways, a router running BIRD that learns the apps' routes from
 * each gateway's BIRD over eBGP (with BFD), a server behind the router, and one client host with a link to every
 * gateway:
 *
 *             ┌─ 198.18.1.0/24 ── gw1 (AS 65001) 198.18.11.1 ──┐
 *   cli ──────┼─ 198.18.3.0/24 ── gw2 (AS 65002) 198.18.12.1 ──┼── router (AS 65000, .254) ── 198.18.2.0/24 ── srv
 *             └─ 198.18.5.0/24 ── gw3 …                        ┘
 *
 * Each gateway runs `seng gateway` with `routing:` (its BIRD is its child); the router's BIRD is started here and
 * ended by its pid. Stores: independent SQLite files (default), or a shared etcd given by `extraYaml`. Everything
 * lives in namespaces this lab creates; `destroy()` removes them (also on exit, through the netns registry).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Netns, veth, ROOT, type NsProcess, type ExecResult } from "./netns.js";
import { waitLine } from "./lab.js";
import { routerBirdConfig } from "../../src/routing/bird.js";

export const CLI = join(ROOT, "src/cli/main.ts");
export const REGISTER = join(ROOT, "src/runtime/register.ts");
export const SERVER_IP = "198.18.2.2";
export const ROUTER_ASN = 65000;

export interface ClusterLabOptions {
  gateways: number;
  /** The apps section (YAML list items under `apps:`). */
  appsYaml: string;
  /** Extra YAML for gateway `i` (0-based), e.g. the cluster store's settings, given the etcd client URLs. */
  extraYaml?: (i: number, etcd: string[]) => string;
  /** Blocks gateway `i` announces (default none: host routes only). */
  blocks?: (i: number) => string[];
  bfd?: boolean;
  /**
   * Members of an etcd cluster to run in a namespace of its own (on a bridge with a control link from every
   * gateway: gateway i at 198.18.20.<11+i>, members at 198.18.20.<m>); 0 (default): none. Their client URLs are
   * {@link ClusterLab.etcdUrls}, for `extraYaml`.
   */
  etcd?: number;
}

function seng(args: string[]): string {
  return execFileSync(process.execPath, ["--import", "tsx", CLI, ...args], { cwd: ROOT, encoding: "utf8" });
}

/**
 * A server for failover measurements (run in the server namespace): a TCP echo on 7000 and a UDP sink on 7001;
 * prints one JSON line per TCP connection (peer address) and per UDP datagram (arrival time, peer, sequence).
 */
export const FAILOVER_SERVER = `
const net = require("net"), dgram = require("dgram");
net.createServer((s) => {
  console.log(JSON.stringify({ event: "conn", remote: s.remoteAddress }));
  s.on("data", (d) => s.write(d));
  s.on("error", () => {});
}).listen(7000, "${SERVER_IP}");
const u = dgram.createSocket("udp4");
u.on("message", (m, r) => console.log(JSON.stringify({ event: "udp", t: Date.now(), from: r.address, n: Number(m) })));
u.bind(7001, "${SERVER_IP}", () => console.log(JSON.stringify({ event: "listening" })));
`;

/**
 * An app for failover measurements (run under the runtime): a UDP datagram with a sequence number every 20 ms and
 * a numbered TCP message every 100 ms on one connection, for SECONDS seconds; at the end it prints what came back
 * on the TCP connection and when each echo arrived.
 */
export const FAILOVER_APP = `
const dgram = require("dgram"), net = require("net");
const secs = Number(process.env.SECONDS_TO_RUN || 10);
const u = dgram.createSocket("udp4");
let n = 0;
const ut = setInterval(() => u.send(String(n++), 7001, "${SERVER_IP}"), 20);
const s = net.connect(7000, "${SERVER_IP}");
let i = 0, got = "";
const echoes = [];
s.setEncoding("utf8").on("data", (d) => { got += d; echoes.push(Date.now()); });
s.on("error", (e) => { console.log(JSON.stringify({ error: e.message, code: e.code })); process.exitCode = 1; });
const t = setInterval(() => s.write("m" + i++ + ";"), 100);
setTimeout(() => {
  clearInterval(t); clearInterval(ut); u.close();
  setTimeout(() => { console.log(JSON.stringify({ sent: i, got, echoes })); s.end(); }, 8000);
}, secs * 1000);
`;

/** The `cluster:` section of gateway i's configuration (0-based): the shared store on the lab's etcd. */
export function clusterYaml(i: number, etcd: string[]): string {
  return [
    "cluster:",
    `  gatewayId: gw${i + 1}`,
    `  etcd: { endpoints: [${etcd.join(", ")}] }`,
    "  ttl: 10",
  ].join("\n");
}

export class ClusterLab {
  readonly dir: string;
  readonly simDir: string;
  pin = "";
  cli!: Netns;
  router!: Netns;
  srv!: Netns;
  readonly gws: Netns[] = [];
  readonly gateways: (NsProcess | undefined)[] = [];
  routerBird: NsProcess | undefined;
  etcdNs: Netns | undefined;
  readonly etcdMembers: NsProcess[] = [];
  private readonly procs: NsProcess[] = [];

  private constructor(readonly opts: ClusterLabOptions) {
    this.dir = mkdtempSync(join(tmpdir(), "seng-clab-"));
    this.simDir = join(this.dir, "sim");
  }

  static async create(opts: ClusterLabOptions): Promise<ClusterLab> {
    const lab = new ClusterLab(opts);
    try {
      await lab.build();
    } catch (e) {
      await lab.destroy();
      throw e;
    }
    return lab;
  }

  /** The client's address of gateway `i` (its tunnel endpoint). */
  gatewayAddr(i: number): string {
    return `198.18.${2 * i + 1}.1:4433`;
  }

  /** Gateway `i`'s address on its link to the router (the BGP next hop of its routes). */
  uplink(i: number): string {
    return `198.18.${11 + i}.1`;
  }

  /** The etcd members' client URLs (empty without `etcd`). */
  get etcdUrls(): string[] {
    return Array.from({ length: this.opts.etcd ?? 0 }, (_, m) => `http://198.18.20.${m + 1}:2379`);
  }

  configFile(i: number): string {
    return join(this.dir, `gw${i + 1}`, "gateway.yaml");
  }

  private async build(): Promise<void> {
    seng(["attest", "sim", "init", "--dir", this.simDir]);
    this.pin = seng(["gateway", "keygen", "--dir", this.dir]).trim();
    this.cli = await Netns.create("ccli");
    this.router = await Netns.create("crt");
    this.srv = await Netns.create("csrv");
    await veth(this.router, "rt-srv", "198.18.2.1/24", this.srv, "srv-rt", `${SERVER_IP}/24`);
    await this.srv.ip("route", "add", "default", "via", "198.18.2.1");
    await this.router.exec("sysctl", ["-qw", "net.ipv4.ip_forward=1"]);
    const members = this.opts.etcd ?? 0;
    if (members) {
      this.etcdNs = await Netns.create("cetcd");
      await this.etcdNs.ip("link", "add", "br0", "type", "bridge");
      for (let m = 1; m <= members; m++)
        await this.etcdNs.ip("addr", "add", `198.18.20.${m}/24`, "dev", "br0");
      await this.etcdNs.ip("link", "set", "br0", "up");
    }
    for (let i = 0; i < this.opts.gateways; i++) {
      const gw = await Netns.create(`cgw${i + 1}`);
      this.gws.push(gw);
      const n = 2 * i + 1;
      await veth(this.cli, `c-gw${i + 1}`, `198.18.${n}.2/24`, gw, "lan0", `198.18.${n}.1/24`);
      await veth(gw, "up0", `${this.uplink(i)}/24`, this.router, `rt-gw${i + 1}`, `198.18.${11 + i}.254/24`);
      await gw.ip("route", "add", "default", "via", `198.18.${11 + i}.254`);
      await gw.exec("sysctl", ["-qw", "net.ipv4.ip_forward=1"]);
      if (this.etcdNs) {
        const port = `ctl-gw${i + 1}`;
        await gw.ip("link", "add", "ctl0", "type", "veth", "peer", "name", port, "netns", this.etcdNs.name);
        await gw.ip("addr", "add", `198.18.20.${11 + i}/24`, "dev", "ctl0");
        await gw.ip("link", "set", "ctl0", "up");
        await this.etcdNs.ip("link", "set", port, "master", "br0", "up");
      }
      const d = join(this.dir, `gw${i + 1}`);
      mkdirSync(d);
      writeFileSync(this.configFile(i), this.configText(i));
      this.gateways.push(undefined);
    }
    // The router's BIRD: one eBGP session (with BFD) per gateway; routes go into its kernel.
    const conf = join(this.dir, "router-bird.conf");
    writeFileSync(
      conf,
      routerBirdConfig({
        routerId: "198.18.2.1",
        asn: ROUTER_ASN,
        peers: this.gws.map((_, i) => ({ address: this.uplink(i), asn: 65001 + i })),
        bfd: this.opts.bfd ?? true,
      }),
    );
    if (members) await this.startEtcd(members);
    this.routerBird = this.router.spawn("bird", ["-f", "-c", conf, "-s", join(this.dir, "router-bird.ctl")]);
    this.procs.push(this.routerBird);
  }

  /** Starts the etcd members and waits until every one answers /health. */
  private async startEtcd(members: number): Promise<void> {
    const ns = this.etcdNs!;
    const peers = Array.from({ length: members }, (_, m) => `m${m + 1}=http://198.18.20.${m + 1}:2380`).join(
      ",",
    );
    for (let m = 1; m <= members; m++) {
      const p = ns.spawn("etcd", [
        `--name=m${m}`,
        `--data-dir=${join(this.dir, `etcd-m${m}`)}`,
        `--listen-client-urls=http://198.18.20.${m}:2379`,
        `--advertise-client-urls=http://198.18.20.${m}:2379`,
        `--listen-peer-urls=http://198.18.20.${m}:2380`,
        `--initial-advertise-peer-urls=http://198.18.20.${m}:2380`,
        `--initial-cluster=${peers}`,
        "--initial-cluster-state=new",
        "--heartbeat-interval=100",
        "--election-timeout=500",
        "--experimental-watch-progress-notify-interval=200ms",
        "--logger=zap",
        "--log-level=error",
      ]);
      this.procs.push(p);
      this.etcdMembers.push(p);
    }
    const end = Date.now() + 30_000;
    for (const u of this.etcdUrls) {
      for (;;) {
        const r = await ns.exec("curl", ["-s", "-m", "1", `${u}/health`], { check: false });
        if (/"health":\s*"true"/.test(r.stdout)) break;
        if (Date.now() > end) throw new Error(`etcd ${u} not healthy after 30 s`);
        await new Promise((res) => setTimeout(res, 200));
      }
    }
  }

  configText(i: number): string {
    const d = join(this.dir, `gw${i + 1}`);
    const blocks = this.opts.blocks?.(i) ?? [];
    return [
      `listen: 0.0.0.0:4433`,
      `certificate: ${join(this.dir, "gateway.pem")}`,
      `key: ${join(this.dir, "gateway.key")}`,
      `database: ${join(d, "seng.db")}`,
      "tun: { name: seng0, address: 100.64.0.1/32, mtu: 1400 }",
      "trust:",
      `  simulatedRoots: [${join(this.simDir, "root.pem")}]`,
      `  collateral: [${join(this.simDir, "collateral.json")}]`,
      "routing:",
      `  asn: ${65001 + i}`,
      `  routerId: ${this.uplink(i)}`,
      `  neighbors: [{ address: 198.18.${11 + i}.254, asn: ${ROUTER_ASN} }]`,
      `  blocks: ${JSON.stringify(blocks)}`,
      `  bfd: ${this.opts.bfd ?? true}`,
      this.opts.extraYaml?.(i, this.etcdUrls) ?? "",
      "apps:",
      this.opts.appsYaml,
      "",
    ].join("\n");
  }

  /** Starts gateway `i` and waits until it listens and its BIRD runs. */
  async startGateway(i: number): Promise<NsProcess> {
    const p = this.gws[i]!.spawn(process.execPath, [
      "--import",
      "tsx",
      CLI,
      "gateway",
      "--config",
      this.configFile(i),
    ]);
    this.procs.push(p);
    this.gateways[i] = p;
    await waitLine(p, (o) => o.event === "routing-started", 30_000);
    return p;
  }

  /** Kills gateway `i` (SIGKILL: a crash; its BIRD dies with it through the parent-death signal). */
  async killGateway(i: number, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const g = this.gateways[i];
    this.gateways[i] = undefined;
    await g?.kill(signal, 5000);
  }

  /** The router's kernel route for `address` (`via <next hop>`), or "" when it has none. */
  async routeVia(address: string): Promise<string> {
    const r: ExecResult = await this.router.exec("ip", ["-4", "route", "show", "match", address], {
      check: false,
    });
    // The most specific match is listed first; the server link (198.18.2.0/24) never matches an app address.
    const m = /via (\S+)/.exec(r.stdout.split("\n").find((l) => l.includes("via")) ?? "");
    return m?.[1] ?? "";
  }

  /** Waits until the router routes `address` via `nextHop` ("" for: no route). Returns how long it took, ms. */
  async waitRoute(address: string, nextHop: string, timeoutMs = 20_000): Promise<number> {
    const t0 = Date.now();
    for (;;) {
      const via = await this.routeVia(address);
      if (via === nextHop) return Date.now() - t0;
      if (Date.now() - t0 > timeoutMs)
        throw new Error(
          `router: ${address} via ${via || "(none)"} after ${timeoutMs} ms, expected ${nextHop}`,
        );
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Starts a process in the server namespace. */
  server(cmd: string, args: string[]): NsProcess {
    const p = this.srv.spawn(cmd, args);
    this.procs.push(p);
    return p;
  }

  /** Environment of an app under the preload with every gateway listed (the same pin for all). */
  runtimeEnv(mrenclave: string, gateways = this.gws.map((_, i) => this.gatewayAddr(i))): NodeJS.ProcessEnv {
    const e: NodeJS.ProcessEnv = {
      ...process.env,
      SENG_GATEWAY: gateways.join(","),
      SENG_PIN: this.pin,
      SENG_TEE: "sim",
      SENG_SIM_DIR: this.simDir,
      SENG_MRENCLAVE: mrenclave,
      SENG_LOG: "json",
    };
    delete e.NODE_TEST_CONTEXT;
    return e;
  }

  /** Starts `node <file>` under the preload in the client namespace. */
  app(file: string, env: NodeJS.ProcessEnv): NsProcess {
    const p = this.cli.spawn(process.execPath, ["--import", "tsx", "--import", REGISTER, file], { env });
    this.procs.push(p);
    return p;
  }

  async destroy(): Promise<void> {
    await Promise.allSettled(this.procs.map((p) => p.kill("SIGKILL", 1000)));
    await Promise.allSettled(
      [this.cli, this.router, this.srv, this.etcdNs, ...this.gws]
        .filter((ns): ns is Netns => ns !== undefined)
        .map((ns) => ns.delete()),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}
