/**
 * A userspace WireGuard peer for the gateway benchmarks: Debian's `wireguard-go` (server in the gateway namespace,
 * client in cli0) configured with `wg` from `wireguard-tools`, over the same veth links as SENG and OpenVPN, tunnel
 * MTU 1400 like both. The client routes 198.18.2.0/24 into the tunnel from 100.126.0.2; the server namespace routes
 * 100.126.0.0/24 back through the gateway namespace, which forwards between wireguard-go's TUN and the server link
 * exactly as it does for SENG's TUN. Nothing outside the lab's namespaces is configured (wireguard-go's control
 * sockets live in /var/run/wireguard under names unique to this process and are removed when it exits).
 */
import { execFileSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Lab } from "../test/helpers/lab.js";
import type { Netns, NsProcess } from "../test/helpers/netns.js";

export const WG_PORT = 51820;

function wg(args: string[], input?: string): string {
  return execFileSync("wg", args, { input, encoding: "utf8" }).trim();
}

/** Starts wireguard-go in `ns` on a TUN named `dev` and waits for its control socket. */
async function startDevice(ns: Netns, dev: string): Promise<NsProcess> {
  // -f: stay in the foreground, so the process is ours to measure (CPU in /proc) and to end by pid.
  const p = ns.spawn("wireguard-go", ["-f", dev], {
    env: { ...process.env, LOG_LEVEL: "error", WG_PROCESS_FOREGROUND: "1" },
  });
  const sock = `/var/run/wireguard/${dev}.sock`;
  const end = Date.now() + 10_000;
  while (!existsSync(sock)) {
    if (p.child.exitCode !== null || Date.now() > end)
      throw new Error(`wireguard-go ${dev} did not start:\n${p.stdout}\n${p.stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return p;
}

/**
 * Brings up a wireguard-go tunnel cli0 → gateway namespace; returns the server's and the client's pids (for CPU
 * time) and a stop function that ends both by pid.
 */
export async function wireguardGo(
  lab: Lab,
): Promise<{ serverPid: number; clientPid: number; stop: () => Promise<void> }> {
  const cli = lab.clients[0]!;
  // Interface names are global to the UAPI socket directory (not per namespace): make them unique to this run.
  const tag = String(process.pid % 100_000);
  const sdev = `wgs${tag}`;
  const cdev = `wgc${tag}`;
  const d = join(lab.dir, "wg");
  execFileSync("mkdir", ["-p", d]);
  const sk = wg(["genkey"]);
  const ck = wg(["genkey"]);
  writeFileSync(join(d, "s.key"), sk + "\n", { mode: 0o600 });
  writeFileSync(join(d, "c.key"), ck + "\n", { mode: 0o600 });
  const spub = wg(["pubkey"], sk + "\n");
  const cpub = wg(["pubkey"], ck + "\n");

  const srv = await startDevice(lab.gw, sdev);
  let clientProc: NsProcess | undefined;
  try {
    await lab.gw.exec("wg", [
      "set",
      sdev,
      "listen-port",
      String(WG_PORT),
      "private-key",
      join(d, "s.key"),
      "peer",
      cpub,
      "allowed-ips",
      "100.126.0.2/32",
    ]);
    await lab.gw.ip("addr", "add", "100.126.0.1/24", "dev", sdev);
    await lab.gw.ip("link", "set", sdev, "mtu", "1400", "up");

    clientProc = await startDevice(cli, cdev);
    await cli.exec("wg", [
      "set",
      cdev,
      "private-key",
      join(d, "c.key"),
      "peer",
      spub,
      "endpoint",
      `198.18.1.1:${WG_PORT}`,
      "allowed-ips",
      "198.18.2.0/24,100.126.0.0/24",
    ]);
    await cli.ip("addr", "add", "100.126.0.2/24", "dev", cdev);
    await cli.ip("link", "set", cdev, "mtu", "1400", "up");
    await cli.ip("route", "replace", "198.18.2.0/24", "dev", cdev, "src", "100.126.0.2");
    await lab.srv.ip("route", "replace", "100.126.0.0/24", "via", "198.18.2.1");
    // The handshake happens on the first packet; one ping makes sure the tunnel carries traffic before measuring.
    await cli.exec("ping", ["-c", "1", "-W", "5", "100.126.0.1"]);
  } catch (e) {
    await clientProc?.kill("SIGTERM", 2000);
    await srv.kill("SIGTERM", 2000);
    throw e;
  }
  const c = clientProc;
  return {
    serverPid: srv.pid!,
    clientPid: c.pid!,
    stop: async () => {
      await cli.ip("route", "del", "198.18.2.0/24").catch(() => undefined);
      await c.kill("SIGTERM", 2000);
      await srv.kill("SIGTERM", 2000);
    },
  };
}
