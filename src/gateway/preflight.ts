/**
 * What `seng gateway` checks before it changes anything on the machine (database, TUN, routes, nftables, admin
 * socket): the privileges it needs, and that no other gateway holds its database, admin socket or TUN interface.
 * Each problem is one line saying what is wrong and what to do; the files of the configuration are checked by
 * `checkConfigFiles` (src/policy/config.ts), shared with `seng policy check`.
 */
import { existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { connect } from "node:net";
import type { GatewayConfig } from "../policy/config.js";

export class PreflightError extends Error {
  override readonly name = "PreflightError";
}

/** CAP_NET_ADMIN is bit 12 of the capability sets (linux/capability.h). */
const CAP_NET_ADMIN = 12n;

/** Whether this process has CAP_NET_ADMIN in its effective set (root usually has; a service may have it alone). */
export function hasNetAdmin(status = readFileSync("/proc/self/status", "utf8")): boolean {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return m ? ((BigInt(`0x${m[1]}`) >> CAP_NET_ADMIN) & 1n) === 1n : false;
}

/** The pid in `file` if that process is alive, else undefined (no file, garbage, or a stale pid). */
export function livePid(file: string): number | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(file, "utf8").trim());
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM" ? pid : undefined;
  }
}

/**
 * The pids of this network namespace that hold TUN interface `name` open (from /proc/<pid>/fdinfo, which names a
 * TUN fd's interface). Processes in other namespaces are left out: their `name` is another interface.
 */
export function tunHolders(name: string): number[] {
  const out: number[] = [];
  let ns = "";
  try {
    ns = readlinkSync("/proc/self/ns/net");
  } catch {
    // no namespace information: every holder counts
  }
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    let fds: string[];
    try {
      if (ns && readlinkSync(`/proc/${p}/ns/net`) !== ns) continue;
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${p}/fd/${fd}`) !== "/dev/net/tun") continue;
        const m = /^iff:\s*(\S+)$/m.exec(readFileSync(`/proc/${p}/fdinfo/${fd}`, "utf8"));
        if (m?.[1] === name) {
          out.push(Number(p));
          break;
        }
      } catch {
        // closed meanwhile
      }
    }
  }
  return out;
}

/** This network namespace's interfaces (/proc/net is per namespace; /sys/class/net may be another's mount). */
export function interfaces(dev = readFileSync("/proc/net/dev", "utf8")): string[] {
  return dev
    .split("\n")
    .slice(2)
    .map((l) => l.split(":")[0]!.trim())
    .filter(Boolean);
}

/** Whether something accepts connections on the Unix socket `path`. */
function socketAlive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** Throws a PreflightError when the gateway of `c` cannot start here; changes nothing. */
export async function preflight(c: GatewayConfig, status?: string): Promise<void> {
  const f = c.file;
  if (!hasNetAdmin(status))
    throw new PreflightError(
      `gateway: needs root or CAP_NET_ADMIN (it creates the TUN ${c.tun.name}, its routes and the nftables table ` +
        `inet ${c.model.table}); run it as root or as the systemd service (packaging/systemd/seng-gateway.service)`,
    );
  const pidFile = `${c.database}.pid`;
  const other = livePid(pidFile);
  if (other !== undefined)
    throw new PreflightError(
      `${f}: database: another gateway (pid ${other}, from ${pidFile}) runs with ${c.database}: stop it first, ` +
        "or give this one its own database",
    );
  if (existsSync(c.admin.socket) && (await socketAlive(c.admin.socket)))
    throw new PreflightError(
      `${f}: admin.socket: ${c.admin.socket} is in use by a running gateway: stop it first, or give this one its own admin.socket`,
    );
  if (interfaces().includes(c.tun.name)) {
    const holders = tunHolders(c.tun.name);
    throw new PreflightError(
      `${f}: tun.name: the interface ${c.tun.name} exists already` +
        (holders.length
          ? ` and is held by pid ${holders.join(", ")} (another gateway?): stop it first, or give this one its own tun.name`
          : ": remove it (ip link del " + c.tun.name + ") or choose another tun.name"),
    );
  }
}
