/**
 * Gateways on one etcd, in namespaces (no routing; cluster-lab.ts has the BGP variant):
 *
 *   cli ── 198.18.<2i+1>.0/24 ── gw<i> ── ctl0 198.18.20.<11+i> ── bridge in etcdns (etcd at 198.18.20.1:2379)
 *
 * Every gateway has the same certificate (one pin) and the same apps; `cluster:` names the etcd and its id gw<i>.
 * Everything lives in namespaces this helper creates; destroy() removes them (also on exit, via the netns registry).
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLI, waitLine } from "./lab.js";
import { Netns, ROOT, veth, type NsProcess } from "./netns.js";

export const ETCD_URL = "http://198.18.20.1:2379";

export class EtcdGateways {
  readonly dir = mkdtempSync(join(tmpdir(), "seng-egw-"));
  readonly simDir = join(this.dir, "sim");
  pin = "";
  cli!: Netns;
  etcdNs!: Netns;
  etcd: NsProcess | undefined;
  readonly gws: Netns[] = [];
  readonly gateways: (NsProcess | undefined)[] = [];
  private readonly procs: NsProcess[] = [];

  private constructor(
    readonly n: number,
    readonly appsYaml: string,
    readonly clusterYaml: string,
  ) {}

  static async create(n: number, appsYaml: string, clusterYaml = ""): Promise<EtcdGateways> {
    const lab = new EtcdGateways(n, appsYaml, clusterYaml);
    try {
      await lab.build();
    } catch (e) {
      await lab.destroy();
      throw e;
    }
    return lab;
  }

  gatewayAddr(i: number): string {
    return `198.18.${2 * i + 1}.1:4433`;
  }

  private async build(): Promise<void> {
    const seng = (args: string[]) =>
      execFileSync(process.execPath, ["--import", "tsx", CLI, ...args], { cwd: ROOT, encoding: "utf8" });
    seng(["attest", "sim", "init", "--dir", this.simDir]);
    this.pin = seng(["gateway", "keygen", "--dir", this.dir]).trim();
    this.cli = await Netns.create("ecli");
    this.etcdNs = await Netns.create("eetcd");
    await this.etcdNs.ip("link", "add", "br0", "type", "bridge");
    await this.etcdNs.ip("addr", "add", "198.18.20.1/24", "dev", "br0");
    await this.etcdNs.ip("link", "set", "br0", "up");
    for (let i = 0; i < this.n; i++) {
      const gw = await Netns.create(`egw${i + 1}`);
      this.gws.push(gw);
      const net = 2 * i + 1;
      await veth(this.cli, `c-gw${i + 1}`, `198.18.${net}.2/24`, gw, "lan0", `198.18.${net}.1/24`);
      const port = `ctl-gw${i + 1}`;
      await gw.ip("link", "add", "ctl0", "type", "veth", "peer", "name", port, "netns", this.etcdNs.name);
      await gw.ip("addr", "add", `198.18.20.${11 + i}/24`, "dev", "ctl0");
      await gw.ip("link", "set", "ctl0", "up");
      await this.etcdNs.ip("link", "set", port, "master", "br0", "up");
      mkdirSync(join(this.dir, `gw${i + 1}`));
      writeFileSync(this.configFile(i), this.configText(i));
      this.gateways.push(undefined);
    }
    await this.startEtcd();
  }

  async startEtcd(): Promise<void> {
    const p = this.etcdNs.spawn("etcd", [
      "--name=m1",
      `--data-dir=${join(this.dir, "etcd")}`,
      `--listen-client-urls=${ETCD_URL}`,
      `--advertise-client-urls=${ETCD_URL}`,
      "--listen-peer-urls=http://198.18.20.1:2380",
      "--initial-advertise-peer-urls=http://198.18.20.1:2380",
      "--initial-cluster=m1=http://198.18.20.1:2380",
      "--heartbeat-interval=100",
      "--election-timeout=500",
      "--experimental-watch-progress-notify-interval=200ms",
      "--logger=zap",
      "--log-level=error",
    ]);
    this.procs.push(p);
    this.etcd = p;
    const end = Date.now() + 30_000;
    for (;;) {
      const r = await this.etcdNs.exec("curl", ["-s", "-m", "1", `${ETCD_URL}/health`], { check: false });
      if (/"health":\s*"true"/.test(r.stdout)) return;
      if (Date.now() > end) throw new Error("etcd not healthy after 30 s");
      await new Promise((res) => setTimeout(res, 200));
    }
  }

  configFile(i: number): string {
    return join(this.dir, `gw${i + 1}`, "gateway.yaml");
  }

  configText(i: number): string {
    return [
      "listen: 0.0.0.0:4433",
      `certificate: ${join(this.dir, "gateway.pem")}`,
      `key: ${join(this.dir, "gateway.key")}`,
      `database: ${join(this.dir, `gw${i + 1}`, "seng.db")}`,
      "tun: { name: seng0, address: 100.64.0.1/32, mtu: 1400 }",
      "trust:",
      `  simulatedRoots: [${join(this.simDir, "root.pem")}]`,
      `  collateral: [${join(this.simDir, "collateral.json")}]`,
      "tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 6, leaseGraceSeconds: 60 }",
      "cluster:",
      `  gatewayId: gw${i + 1}`,
      `  etcd: { endpoints: [${ETCD_URL}] }`,
      this.clusterYaml,
      "apps:",
      this.appsYaml,
      "",
    ].join("\n");
  }

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
    await waitLine(p, (o) => o.event === "gateway-started", 30_000);
    return p;
  }

  async killGateway(i: number, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const g = this.gateways[i];
    this.gateways[i] = undefined;
    await g?.kill(signal, 5000);
  }

  /** A test client claiming `mrenclave`, to gateway `i`'s address. */
  client(mrenclave: string, i: number, args: string[] = []): NsProcess {
    const p = this.cli.spawn(process.execPath, [
      "--import",
      "tsx",
      CLI,
      "test-client",
      "--gateway",
      this.gatewayAddr(i),
      "--pin",
      this.pin,
      "--sim-dir",
      this.simDir,
      "--mrenclave",
      mrenclave,
      "--tun",
      `sengc${this.procs.length}`,
      ...args,
    ]);
    this.procs.push(p);
    return p;
  }

  /**
   * Moves gateway `from`'s client address to gateway `to` (as a virtual address or anycast route would): the client
   * keeps dialling the same address and reaches the other gateway.
   */
  async moveAddress(from: number, to: number): Promise<void> {
    const addr = this.gatewayAddr(from).split(":")[0]!;
    await this.gws[to]!.ip("addr", "add", `${addr}/32`, "dev", "lo");
    // The client keeps its source on the old link's subnet, so that gw `to` answers from the moved address.
    const src = `198.18.${2 * from + 1}.2`;
    await this.cli.ip(
      "route",
      "replace",
      `${addr}/32`,
      "via",
      this.gatewayAddr(to).split(":")[0]!,
      "src",
      src,
    );
    await this.gws[to]!.ip(
      "route",
      "replace",
      `198.18.${2 * from + 1}.0/24`,
      "via",
      `198.18.${2 * to + 1}.2`,
      // Answers leave from the moved address (the gateway's socket is bound to 0.0.0.0 and uses no pktinfo).
      "src",
      addr,
    );
  }

  async destroy(): Promise<void> {
    await Promise.allSettled(this.procs.map((p) => p.kill("SIGKILL", 1000)));
    await Promise.allSettled(
      [this.cli, this.etcdNs, ...this.gws].filter((ns): ns is Netns => !!ns).map((ns) => ns.delete()),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}
