/**
 * Deletes connection-tracking entries of an address (conntrack-tools), so that an established flow of a revoked
 * tunnel does not outlive the revocation: without it, `ct state established accept` would keep passing the
 * flow's packets, and the address's next holder could inherit them.
 */
import { execFile } from "node:child_process";

function run(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    execFile("conntrack", args, (err, _stdout, stderr) => {
      const m = /(\d+) flow entries have been deleted/.exec(stderr);
      if (m) return resolve(Number(m[1]));
      // The kernel's ENOENT: the address had no flows (a normal revocation of an idle tunnel), not a failure.
      if (/such conntrack doesn't exist/.test(stderr)) return resolve(0);
      if (err) return reject(new Error(`conntrack ${args.join(" ")}: ${stderr.trim() || err.message}`));
      resolve(0);
    });
  });
}

/** Deletes every entry with `address` as original source or destination. Returns how many were deleted. */
export async function deleteFlows(address: string): Promise<number> {
  const fam = address.includes(":") ? "ipv6" : "ipv4";
  const [a, b] = await Promise.all([
    run(["-D", "-f", fam, "-s", address]),
    run(["-D", "-f", fam, "-d", address]),
  ]);
  return a + b;
}
