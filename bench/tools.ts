/**
 * The programs each benchmark needs, checked before anything runs so that a missing one is named in one line
 * (with the Debian packages to install) instead of failing deep inside a namespace.
 */
import { execFileSync } from "node:child_process";

/** Program → the Debian package that provides it. */
const PACKAGE: Record<string, string> = {
  iperf3: "iperf3",
  openvpn: "openvpn",
  wrk: "wrk",
  nft: "nftables",
  "wireguard-go": "wireguard-go",
  wg: "wireguard-tools",
  sockperf: "sockperf",
  etcd: "etcd-server",
};

/** Benchmark (as named by --only) → the programs it runs. */
export const NEEDS: Record<string, string[]> = {
  attest: [],
  gateway: ["iperf3", "openvpn", "wireguard-go", "wg", "sockperf", "nft"],
  flood: ["iperf3", "nft"],
  runtime: ["iperf3", "openvpn", "wrk", "nft"],
  firewall: ["iperf3", "nft"],
  cluster: ["etcd"],
};

function have(cmd: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/**
 * The one line to print when programs the chosen benchmarks need are missing (undefined when none is), e.g.
 * "bench: missing wireguard-go, sockperf (gateway): apt-get install --no-install-recommends wireguard-go sockperf".
 */
export function missingTools(benches: string[]): string | undefined {
  const missing = new Map<string, string[]>();
  for (const b of benches)
    for (const cmd of NEEDS[b] ?? []) if (!have(cmd)) missing.set(cmd, [...(missing.get(cmd) ?? []), b]);
  if (!missing.size) return undefined;
  const which = [...new Set([...missing.values()].flat())].join(", ");
  const pkgs = [...new Set([...missing.keys()].map((c) => PACKAGE[c] ?? c))].join(" ");
  return `bench: missing ${[...missing.keys()].join(", ")} (needed by ${which}): apt-get install --no-install-recommends ${pkgs}`;
}
