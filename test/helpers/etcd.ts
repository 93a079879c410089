/**
 * A throwaway single-member etcd (Debian's etcd-server, /usr/bin/etcd) for tests and benchmarks: 127.0.0.1 only,
 * random high ports, a temporary data directory; stopped by pid and the directory removed, also when the test
 * process exits. A missing etcd is an error, never a skip (CI installs it through scripts/quickstart.sh).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const ETCD_BIN = process.env.SENG_ETCD ?? "/usr/bin/etcd";

export interface EtcdServer {
  /** Client URL, http://127.0.0.1:<port> */
  url: string;
  /** The current etcd process (changes with restart()). */
  pid: number;
  /** kill -9, keeping the data directory (a crash). */
  kill(): Promise<void>;
  /** Starts etcd again on the same data and ports, and waits until it is healthy. */
  restart(): Promise<void>;
  /** Ends etcd and removes its data directory. */
  stop(): Promise<void>;
}

const running = new Set<{ child: ChildProcess; dir: string }>();
process.on("exit", () => {
  for (const r of running) {
    if (r.child.exitCode === null && r.child.pid) process.kill(r.child.pid, "SIGKILL");
    rmSync(r.dir, { recursive: true, force: true });
  }
});

/** A free TCP port on 127.0.0.1 (the kernel picks it; etcd binds it a moment later). */
async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts etcd and waits until it answers /health. Short Raft timers (heartbeat 100 ms, election 500 ms) allow TTLs
 * of 1 s; progress notifications every `progressMs` (default 200). The data directory goes under `dataRoot`
 * (default the system temp directory; /dev/shm for a memory-backed one).
 */
export async function startEtcd(opts: { progressMs?: number; dataRoot?: string } = {}): Promise<EtcdServer> {
  if (!existsSync(ETCD_BIN))
    throw new Error(`${ETCD_BIN} not found: install Debian's etcd-server (scripts/quickstart.sh does)`);
  for (let tries = 0; ; tries++) {
    const [client, peer] = [await freePort(), await freePort()];
    const dir = mkdtempSync(join(opts.dataRoot ?? tmpdir(), "seng-etcd-"));
    const url = `http://127.0.0.1:${client}`;
    const peerUrl = `http://127.0.0.1:${peer}`;
    const args = [
      "--name=t",
      `--data-dir=${dir}`,
      `--listen-client-urls=${url}`,
      `--advertise-client-urls=${url}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=t=${peerUrl}`,
      "--heartbeat-interval=100",
      "--election-timeout=500",
      `--experimental-watch-progress-notify-interval=${opts.progressMs ?? 200}ms`,
      "--logger=zap",
      "--log-level=error",
    ];
    let stderr = "";
    const entry: { child: ChildProcess; dir: string } = { child: launch(), dir };
    running.add(entry);
    function launch(): ChildProcess {
      const child = spawn(ETCD_BIN, args, { stdio: ["ignore", "ignore", "pipe"] });
      child.stderr!.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
      return child;
    }
    const end = async (signal: NodeJS.Signals): Promise<void> => {
      const child = entry.child;
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      process.kill(child.pid!, signal);
      const t = setTimeout(() => child.exitCode === null && process.kill(child.pid!, "SIGKILL"), 3000);
      await exited;
      clearTimeout(t);
    };
    const healthy = async (): Promise<boolean> => {
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline && entry.child.exitCode === null) {
        try {
          const r = await fetch(`${url}/health`);
          if (r.ok && ((await r.json()) as { health?: string }).health === "true") return true;
        } catch {
          // not listening yet
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      return false;
    };
    const server: EtcdServer = {
      url,
      pid: entry.child.pid!,
      kill: () => end("SIGKILL"),
      async restart() {
        await end("SIGKILL");
        entry.child = launch();
        server.pid = entry.child.pid!;
        if (!(await healthy()))
          throw new Error(`etcd did not come back: ${stderr.trim().split("\n").at(-1) ?? ""}`);
      },
      async stop() {
        await end("SIGTERM");
        running.delete(entry);
        rmSync(dir, { recursive: true, force: true });
      },
    };
    if (await healthy()) return server;
    await server.stop();
    if (tries >= 2) throw new Error(`etcd did not become healthy: ${stderr.trim().split("\n").at(-1) ?? ""}`);
  }
}
