/**
 * The cluster demo's network, in namespaces of its own (fixed names `seng-dc-*`, so `seng demo cluster --clean`
 * finds them after `--keep`), connected only to each other:
 *
 *            ┌─ 198.18.1.0/24 ─ gw1 (AS 65001) ─ 198.18.11.0/24 ─┐
 *   app ─────┤                   │ ctl0                          ├─ router (AS 65000) ─ 198.18.2.0/24 ─ server
 *            └─ 198.18.3.0/24 ─ gw2 (AS 65002) ─ 198.18.12.0/24 ─┘       BIRD, BFD          198.18.2.10
 *                                │ ctl0
 *                 etcd: three members on one bridge, 198.18.20.1-3 (the gateways at .11, .12)
 *
 * Processes run with their output in files of the demo's folder and are ended by pid: the ones we started, then
 * whatever is left in our namespaces (the gateways' BIRD children die with their gateways anyway).
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { DemoBusyError, DemoProcess, destroyNetSync, killNamespacePids } from "./network.js";
import { closeSync, openSync } from "node:fs";

const exec = promisify(execFile);

export const CNS = {
  app: "seng-dc-app",
  gw1: "seng-dc-gw1",
  gw2: "seng-dc-gw2",
  router: "seng-dc-router",
  server: "seng-dc-server",
  etcd: "seng-dc-etcd",
} as const;
export type CHost = keyof typeof CNS;

/** Where a kept cluster demo records its folder, for `seng demo cluster --clean`. */
const STATE = "/run/seng-demo-cluster.dir";

export const CADDR = {
  server: "198.18.2.10",
  router: "198.18.2.1",
  /** The address the app's runtime reaches gateway i (1-based) at. */
  gwLan: (i: number) => `198.18.${2 * i - 1}.1`,
  /** Gateway i's address on its link to the router (the BGP next hop of its routes). */
  gwUp: (i: number) => `198.18.${10 + i}.1`,
  routerTo: (i: number) => `198.18.${10 + i}.254`,
  gwCtl: (i: number) => `198.18.20.${10 + i}`,
  etcd: (m: number) => `198.18.20.${m}`,
} as const;

export class ClusterDemoNet {
  readonly procs: DemoProcess[] = [];
  private constructor(readonly dir: string) {}

  static leftover(): string[] {
    const left: string[] = Object.values(CNS).filter((ns) => existsSync(`/run/netns/${ns}`));
    if (existsSync(STATE)) left.push(readFileSync(STATE, "utf8").trim());
    return left;
  }

  static async clean(): Promise<string[]> {
    const removed: string[] = [];
    for (const ns of Object.values(CNS)) {
      if (!existsSync(`/run/netns/${ns}`)) continue;
      await killNamespacePids(ns);
      await exec("ip", ["netns", "del", ns]).catch(() => undefined);
      removed.push(ns);
    }
    if (existsSync(STATE)) {
      const dir = readFileSync(STATE, "utf8").trim();
      if (dir.startsWith(join(tmpdir(), "seng-dcluster-"))) rmSync(dir, { recursive: true, force: true });
      rmSync(STATE, { force: true });
    }
    return removed;
  }

  static async create(onCreated?: (net: ClusterDemoNet) => void): Promise<ClusterDemoNet> {
    const left = ClusterDemoNet.leftover();
    if (left.length) throw new DemoBusyError(left);
    const net = new ClusterDemoNet(mkdtempSync(join(tmpdir(), "seng-dcluster-")));
    onCreated?.(net);
    try {
      await net.build();
    } catch (e) {
      await net.destroy();
      throw e;
    }
    return net;
  }

  private async build(): Promise<void> {
    const ip = (...a: string[]) => exec("ip", a);
    for (const ns of Object.values(CNS)) {
      await ip("netns", "add", ns);
      await ip("-n", ns, "link", "set", "lo", "up");
    }
    const link = async (a: string, aIf: string, aAddr: string, b: string, bIf: string, bAddr: string) => {
      await ip("-n", a, "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b);
      if (aAddr) await ip("-n", a, "addr", "add", aAddr, "dev", aIf);
      if (bAddr) await ip("-n", b, "addr", "add", bAddr, "dev", bIf);
      await ip("-n", a, "link", "set", aIf, "up");
      await ip("-n", b, "link", "set", bIf, "up");
    };
    // The etcd members share one bridge with the gateways' control links.
    await ip("-n", CNS.etcd, "link", "add", "br0", "type", "bridge");
    for (const m of [1, 2, 3]) await ip("-n", CNS.etcd, "addr", "add", `${CADDR.etcd(m)}/24`, "dev", "br0");
    await ip("-n", CNS.etcd, "link", "set", "br0", "up");
    await link(CNS.router, "srv0", `${CADDR.router}/24`, CNS.server, "eth0", `${CADDR.server}/24`);
    await ip("-n", CNS.server, "route", "add", "default", "via", CADDR.router);
    await exec("ip", ["netns", "exec", CNS.router, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for (const i of [1, 2]) {
      const gw = i === 1 ? CNS.gw1 : CNS.gw2;
      await link(CNS.app, `gw${i}`, `198.18.${2 * i - 1}.10/24`, gw, "lan0", `${CADDR.gwLan(i)}/24`);
      await link(gw, "up0", `${CADDR.gwUp(i)}/24`, CNS.router, `gw${i}`, `${CADDR.routerTo(i)}/24`);
      await ip("-n", gw, "route", "add", "default", "via", CADDR.routerTo(i));
      await link(gw, "ctl0", `${CADDR.gwCtl(i)}/24`, CNS.etcd, `gw${i}`, "");
      await ip("-n", CNS.etcd, "link", "set", `gw${i}`, "master", "br0");
      await exec("ip", ["netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    }
  }

  spawn(
    host: CHost,
    name: string,
    cmd: string,
    args: string[],
    opts: { env?: NodeJS.ProcessEnv; detached?: boolean } = {},
  ): DemoProcess {
    const out = join(this.dir, `${name}.out`);
    const err = join(this.dir, `${name}.err`);
    const fo = openSync(out, "w");
    const fe = openSync(err, "w");
    const child = spawn("ip", ["netns", "exec", CNS[host], cmd, ...args], {
      stdio: ["ignore", fo, fe],
      env: opts.env ?? process.env,
      detached: opts.detached ?? false,
      cwd: this.dir,
    });
    closeSync(fo);
    closeSync(fe);
    if (opts.detached) child.unref();
    const p = new DemoProcess(name, child.pid!, out, err, child);
    this.procs.push(p);
    return p;
  }

  async run(
    host: CHost,
    cmd: string,
    args: string[],
    timeoutMs = 30_000,
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    return exec("ip", ["netns", "exec", CNS[host], cmd, ...args], { timeout: timeoutMs, cwd: this.dir }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code?: number | string; stdout?: string; stderr?: string }) => ({
        code: typeof e.code === "number" ? e.code : 1,
        stdout: e.stdout ?? "",
        stderr: e.stderr ?? "",
      }),
    );
  }

  /** The pids still running in a namespace. */
  pids(host: CHost): number[] {
    try {
      return execFileSync("ip", ["netns", "pids", CNS[host]], { encoding: "utf8" })
        .split("\n")
        .filter(Boolean)
        .map(Number);
    } catch {
      return [];
    }
  }

  keep(): void {
    writeFileSync(STATE, this.dir + "\n");
  }

  async destroy(): Promise<void> {
    for (const p of this.procs) p.kill("SIGTERM");
    await Promise.race([
      Promise.allSettled(this.procs.map((p) => p.exited)),
      new Promise((r) => setTimeout(r, 3000)),
    ]);
    for (const p of this.procs) if (p.exitCode === null) p.kill("SIGKILL");
    await ClusterDemoNet.clean();
    rmSync(this.dir, { recursive: true, force: true });
  }

  destroySync(): void {
    destroyNetSync(this.procs, Object.values(CNS), this.dir);
  }
}
