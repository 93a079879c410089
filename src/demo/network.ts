/**
 * The demo's network, in namespaces of its own (fixed names `seng-demo-*`, so `seng demo --clean` finds them
 * after `--keep`), connected only to each other:
 *
 *   alice 198.18.1.10 ─┐                                   ┌─ internet 198.18.2.10 (web :80)
 *                      ├─ lan0 198.18.1.1 │ gateway │ wan0 198.18.2.1 ── 198.18.2.20 (db :5432)
 *   bob   198.18.1.11 ─┘   (bridge)        seng0 (TUN)  2001:2:ff:1::1  2001:2:ff:1::30 (IPv6-only web :80)
 *                                                              routes 100.64.0.0/10, 198.18.1.0/24, fd64::/16 back
 *
 * Processes run with their output in files of the demo's folder (so they can outlive the demo with `--keep`), and
 * are ended by pid: the ones we started, then whatever is left in our namespaces.
 */
import { execFile, execFileSync, spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const exec = promisify(execFile);

/** The demo's namespaces by role. */
export const NS = {
  alice: "seng-demo-alice",
  bob: "seng-demo-bob",
  gw: "seng-demo-gw",
  inet: "seng-demo-inet",
} as const;
export type Host = keyof typeof NS;

/** Where a kept demo records its folder, for `seng demo --clean`. */
const STATE = "/run/seng-demo.dir";

export const ADDR = {
  alice: "198.18.1.10",
  bob: "198.18.1.11",
  gwLan: "198.18.1.1",
  gwWan: "198.18.2.1",
  web: "198.18.2.10",
  db: "198.18.2.20",
  /** The internet side's IPv6 (2001:2:ff::/48 per the test address plan); web6 is an IPv6-only web server. */
  gwWan6: "2001:2:ff:1::1",
  web6: "2001:2:ff:1::30",
} as const;

/** The app prefixes' range (apps' subnet6 in the demo's config), routed back to the gateway by the internet side. */
export const APP_RANGE6 = "fd64::/16";

/** A process started in a demo namespace; its stdout and stderr go to files. */
export class DemoProcess {
  exitCode: number | null = null;
  readonly exited: Promise<number>;

  constructor(
    readonly name: string,
    readonly pid: number,
    readonly outFile: string,
    readonly errFile: string,
    child: ReturnType<typeof spawn>,
  ) {
    this.exited = new Promise((done) =>
      child.once("exit", (code, signal) => {
        this.exitCode = code ?? (signal ? 128 : 1);
        done(this.exitCode);
      }),
    );
  }

  get stdout(): string {
    return readFileSync(this.outFile, "utf8");
  }

  get stderr(): string {
    return readFileSync(this.errFile, "utf8");
  }

  /** JSON lines of stdout (or stderr) so far. */
  lines(from: "stdout" | "stderr" = "stdout"): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    for (const l of (from === "stdout" ? this.stdout : this.stderr).split("\n")) {
      if (!l.startsWith("{")) continue;
      try {
        out.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        // a line being written
      }
    }
    return out;
  }

  /** Waits for a JSON line satisfying `pred`. */
  async waitFor(
    pred: (o: Record<string, unknown>) => boolean,
    timeoutMs: number,
    from: "stdout" | "stderr" = "stdout",
  ): Promise<Record<string, unknown>> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.lines(from).find(pred);
      if (hit) return hit;
      if (this.exitCode !== null || Date.now() > end)
        throw new Error(
          `${this.name}: ${this.exitCode !== null ? `exited (${this.exitCode})` : "timed out"} waiting for its ` +
            `line; last output:\n${this.stdout.slice(-600)}${this.stderr.slice(-600)}`,
        );
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  kill(signal: NodeJS.Signals = "SIGTERM"): void {
    try {
      process.kill(this.pid, signal);
    } catch {
      // gone already
    }
  }
}

/** A demo network is up already (kept with --keep, or left by a crash). */
export class DemoBusyError extends Error {
  override readonly name = "DemoBusyError";
  constructor(readonly leftover: string[]) {
    super(
      `a demo network is still up (kept with --keep, or left by an interrupted run): ${leftover.join(", ")}; ` +
        "remove it with `seng demo --clean` first",
    );
  }
}

export class DemoNet {
  readonly procs: DemoProcess[] = [];
  private constructor(readonly dir: string) {}

  /** Removes a previous demo's network (kept with --keep, or left by a crash). */
  static async clean(): Promise<string[]> {
    const removed: string[] = [];
    for (const ns of Object.values(NS)) {
      if (!existsSync(`/run/netns/${ns}`)) continue;
      await killNamespacePids(ns);
      await exec("ip", ["netns", "del", ns]).catch(() => undefined);
      removed.push(ns);
    }
    if (existsSync(STATE)) {
      const dir = readFileSync(STATE, "utf8").trim();
      if (dir.startsWith(join(tmpdir(), "seng-demo-"))) rmSync(dir, { recursive: true, force: true });
      rmSync(STATE, { force: true });
    }
    return removed;
  }

  /** What a previous demo left (kept with --keep, or after a crash): its namespaces and its recorded folder. */
  static leftover(): string[] {
    const left: string[] = Object.values(NS).filter((ns) => existsSync(`/run/netns/${ns}`));
    if (existsSync(STATE)) left.push(readFileSync(STATE, "utf8").trim());
    return left;
  }

  /**
   * Builds the namespaces and links; throws (after removing what it made) if the machine cannot. A network left by
   * an earlier demo is never removed silently (someone may be exploring it after --keep): DemoBusyError.
   */
  static async create(
    onCreated?: (net: DemoNet) => void,
    leftover: () => string[] = DemoNet.leftover,
  ): Promise<DemoNet> {
    const left = leftover();
    if (left.length) throw new DemoBusyError(left);
    const net = new DemoNet(mkdtempSync(join(tmpdir(), "seng-demo-")));
    onCreated?.(net); // before anything is built, so that Ctrl-C during the build removes it too
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
    for (const ns of Object.values(NS)) {
      await ip("netns", "add", ns);
      await ip("-n", ns, "link", "set", "lo", "up");
    }
    const gw = NS.gw;
    await ip("-n", gw, "link", "add", "lan0", "type", "bridge");
    await ip("-n", gw, "addr", "add", `${ADDR.gwLan}/24`, "dev", "lan0");
    await ip("-n", gw, "link", "set", "lan0", "up");
    for (const h of ["alice", "bob"] as const) {
      await ip("-n", NS[h], "link", "add", "eth0", "type", "veth", "peer", "name", `lan-${h}`, "netns", gw);
      await ip("-n", NS[h], "addr", "add", `${ADDR[h]}/24`, "dev", "eth0");
      await ip("-n", NS[h], "link", "set", "eth0", "up");
      await ip("-n", NS[h], "route", "add", "default", "via", ADDR.gwLan);
      await ip("-n", gw, "link", "set", `lan-${h}`, "master", "lan0", "up");
    }
    await ip("-n", NS.inet, "link", "add", "eth0", "type", "veth", "peer", "name", "wan0", "netns", gw);
    await ip("-n", gw, "addr", "add", `${ADDR.gwWan}/24`, "dev", "wan0");
    await ip("-n", gw, "link", "set", "wan0", "up");
    await ip("-n", NS.inet, "addr", "add", `${ADDR.web}/24`, "dev", "eth0");
    await ip("-n", NS.inet, "addr", "add", `${ADDR.db}/24`, "dev", "eth0");
    await ip("-n", NS.inet, "link", "set", "eth0", "up");
    // The internet side answers the LAN too: without SENG's unshielded rule, alice's plain traffic would get through.
    await ip("-n", NS.inet, "route", "add", "100.64.0.0/10", "via", ADDR.gwWan);
    await ip("-n", NS.inet, "route", "add", "198.18.1.0/24", "via", ADDR.gwWan);
    // IPv6 on the internet side (no DAD wait: the addresses are ours alone).
    await ip("-n", gw, "-6", "addr", "add", `${ADDR.gwWan6}/64`, "dev", "wan0", "nodad");
    await ip("-n", NS.inet, "-6", "addr", "add", `${ADDR.web6}/64`, "dev", "eth0", "nodad");
    await ip("-n", NS.inet, "-6", "route", "add", APP_RANGE6, "via", ADDR.gwWan6);
    await exec("ip", ["netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    await exec("ip", ["netns", "exec", gw, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
  }

  /** Starts `cmd args` in `host`'s namespace; `detached` lets it outlive the demo (--keep). */
  spawn(
    host: Host,
    name: string,
    cmd: string,
    args: string[],
    opts: { env?: NodeJS.ProcessEnv; detached?: boolean } = {},
  ): DemoProcess {
    const out = join(this.dir, `${name}.out`);
    const err = join(this.dir, `${name}.err`);
    const fo = openSync(out, "w");
    const fe = openSync(err, "w");
    const child = spawn("ip", ["netns", "exec", NS[host], cmd, ...args], {
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

  /** Runs a command in `host`'s namespace to its end. */
  async run(
    host: Host,
    cmd: string,
    args: string[],
    timeoutMs = 30_000,
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    return exec("ip", ["netns", "exec", NS[host], cmd, ...args], { timeout: timeoutMs, cwd: this.dir }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code?: number | string; stdout?: string; stderr?: string }) => ({
        code: typeof e.code === "number" ? e.code : 1,
        stdout: e.stdout ?? "",
        stderr: e.stderr ?? "",
      }),
    );
  }

  /** Records the folder so that `seng demo --clean` removes it with the network. */
  keep(): void {
    writeFileSync(STATE, this.dir + "\n");
  }

  /** Ends every process (ours by pid, then any left in our namespaces) and removes namespaces and folder. */
  async destroy(): Promise<void> {
    for (const p of this.procs) p.kill("SIGTERM");
    await Promise.race([
      Promise.allSettled(this.procs.map((p) => p.exited)),
      new Promise((r) => setTimeout(r, 3000)),
    ]);
    for (const p of this.procs) if (p.exitCode === null) p.kill("SIGKILL");
    await DemoNet.clean();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** The synchronous part of {@link destroy}, for an exit handler. */
  destroySync(): void {
    destroyNetSync(this.procs, Object.values(NS), this.dir);
  }
}

/**
 * Synchronously ends `procs` and whatever still runs in `namespaces`, deletes the namespaces and the folder `dir`:
 * a demo network's exit handler (this one's and `seng demo cluster`'s).
 */
export function destroyNetSync(
  procs: readonly DemoProcess[],
  namespaces: readonly string[],
  dir: string,
): void {
  for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
  for (const ns of namespaces) {
    try {
      for (const pid of execFileSync("ip", ["netns", "pids", ns], { encoding: "utf8" }).split("\n"))
        if (pid.trim()) process.kill(Number(pid), "SIGKILL");
      execFileSync("ip", ["netns", "del", ns], { stdio: "ignore" });
    } catch {
      // already gone
    }
  }
  rmSync(dir, { recursive: true, force: true });
}

/** Ends every process left in namespace `ns`: SIGTERM, then SIGKILL for what stays. */
export async function killNamespacePids(ns: string): Promise<void> {
  const pids = async () =>
    (await exec("ip", ["netns", "pids", ns]).catch(() => ({ stdout: "" }))).stdout
      .split("\n")
      .filter(Boolean)
      .map(Number);
  for (const sig of ["SIGTERM", "SIGKILL"] as const) {
    const list = await pids();
    if (!list.length) return;
    for (const pid of list) {
      try {
        process.kill(pid, sig);
      } catch {
        // gone
      }
    }
    await new Promise((r) => setTimeout(r, sig === "SIGTERM" ? 1500 : 200));
  }
}
