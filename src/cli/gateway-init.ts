/**
 * `seng gateway init`: prepares a gateway host as docs/INSTALL.md describes: the configuration folder (mode 700)
 * with a commented starter gateway.yaml, the gateway's certificate and key and an admin token (mode 600), and the
 * state folder for the database and the admin socket (mode 700). It never overwrites: if any file it would write
 * exists, it writes nothing.
 */
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { accessSync, constants, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { Command } from "commander";
import { action, UsageError } from "./errors.js";
import { helpText } from "./common.js";
import { selfSignedCert } from "../attest/x509gen.js";

/**
 * Creates `dir` (and missing parents) with `mode`, after checking that its nearest existing ancestor is a folder we
 * may write in. Node's recursive mkdir loops forever under /proc, so the parents are made one by one here.
 */
export function makeDir(dir: string, flag: string, mode = 0o700): void {
  const target = resolve(dir);
  const missing: string[] = [];
  let at = target;
  for (;;) {
    let st;
    try {
      st = statSync(at);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ENOTDIR")
        throw new UsageError(`${flag} ${dir}: cannot use ${at} (${(e as NodeJS.ErrnoException).code})`);
      missing.unshift(at);
      at = dirname(at);
      continue;
    }
    if (!st.isDirectory()) throw new UsageError(`${flag} ${dir}: ${at} is not a folder`);
    if (/^\/(proc|sys)(\/|$)/.test(at))
      throw new UsageError(`${flag} ${dir}: ${at} is a kernel file system (no files can be made there)`);
    if (missing.length) {
      try {
        accessSync(at, constants.W_OK);
      } catch {
        throw new UsageError(`${flag} ${dir}: cannot create folders in ${at} (permission denied)`);
      }
    }
    break;
  }
  for (const d of missing) {
    try {
      mkdirSync(d, { mode });
    } catch (e) {
      throw new UsageError(`${flag} ${dir}: cannot create ${d} (${(e as NodeJS.ErrnoException).code})`);
    }
  }
}

/** Writes a new certificate and key into `dir`; returns the SHA-256 fingerprint runtimes pin. */
export async function writeGatewayKeys(
  dir: string,
  name: string,
): Promise<{ cert: string; key: string; fingerprint: string }> {
  const cert = join(dir, "gateway.pem");
  const key = join(dir, "gateway.key");
  for (const p of [cert, key]) if (existsSync(p)) throw new UsageError(`${p} exists; remove it first`);
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const c = await selfSignedCert({ keys, name: `CN=${name.replace(/[,=+]/g, " ")}`, days: 5 * 365 });
  try {
    writeFileSync(key, keys.privateKey.export({ type: "pkcs8", format: "pem" }), { mode: 0o600, flag: "wx" });
    writeFileSync(cert, c.pem, { mode: 0o644, flag: "wx" });
  } catch (e) {
    throw new UsageError(`--dir ${dir}: cannot write (${(e as NodeJS.ErrnoException).code})`);
  }
  return { cert, key, fingerprint: createHash("sha256").update(c.der).digest("hex") };
}

/** The commented starter configuration. */
export function starterConfig(o: { state: string; listen: string; lan: string }): string {
  return `# SENG gateway configuration, written by \`seng gateway init\` (reference: docs/GATEWAY.md, docs/POLICY.md).
# Check it with \`seng policy check --config <this file>\` before starting the gateway. Relative paths are relative
# to this file's folder.

listen: ${o.listen} # UDP address and port runtimes connect to (an IP address)
certificate: gateway.pem # runtimes pin this certificate's SHA-256 (printed by init and keygen)
key: gateway.key # mode 600
database: ${join(o.state, "seng.db")} # leases and the audit log (the state folder, mode 700)

admin:
  socket: ${join(o.state, "admin.sock")} # the admin API for \`seng status\` (mode 600); docs/ADMIN.md
  tokenFile: admin.token # bearer token for the admin API over TCP (mode 600)
  # tcp: 127.0.0.1:9443 # uncomment to serve the admin API and dashboard over TCP (token required)
# metrics:
#   listen: 127.0.0.1:9464 # Prometheus endpoint, unauthenticated: bind it to a management address

tun:
  name: seng0
  address: 100.64.0.1/32 # the gateway's own address on its TUN interface
dns: [] # DNS servers announced to runtimes, e.g. [192.0.2.53]

# Apps: each is named by the attestation identities it may present (docs/ATTESTATION.md). The measurement below is
# a placeholder that matches nothing: put your app's MRENCLAVE (SGX), MRTD (TDX) or MEASUREMENT (SEV-SNP) there.
apps:
  - name: example-app
    subnet: 100.64.1.0/24 # the addresses this app's tunnels get; every app has its own
    identities:
      - mrenclave: "${"00".repeat(32)}"

firewall:
  # Traffic that does not come through a tunnel ("unshielded") is dropped when it arrives on these interfaces:
  # without this, programs outside the runtime (children, native addons, other hosts) reach your servers
  # unattributed. Name the interfaces that face the clients.
  unshielded:
    drop: true
    interfaces: [${o.lan}]
    allow: [{ proto: udp, ports: [53, 67] }] # DNS and DHCP still pass

policy:
  default: deny # first matching rule wins; nothing matches: denied
  sets: {}
  rules: []
  # - { from: example-app, to: 192.0.2.10, proto: tcp, ports: [443], action: allow }
`;
}

export function gatewayInit(): Command {
  const c = new Command("init")
    .description(
      "prepare a gateway host: starter configuration, certificate, key and admin token (never overwrites)",
    )
    .option("--dir <dir>", "configuration folder", "/etc/seng")
    .option("--state <dir>", "state folder: database and admin socket", "/var/lib/seng")
    .option("--listen <address:port>", "where runtimes reach the gateway (UDP)", "0.0.0.0:4433")
    .option(
      "--lan <interface>",
      "the interface facing the clients (unshielded traffic is dropped there)",
      "eth0",
    )
    .option("--name <cn>", "certificate common name", "SENG gateway")
    .option("--json", "print the files written and the fingerprint as JSON")
    .action(
      action(
        async (f: {
          dir: string;
          state: string;
          listen: string;
          lan: string;
          name: string;
          json?: boolean;
        }) => {
          if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(f.lan))
            throw new UsageError(`--lan: expected an interface name (got ${f.lan})`);
          const dir = resolve(f.dir);
          const state = resolve(f.state);
          const files = ["gateway.yaml", "gateway.pem", "gateway.key", "admin.token"].map((n) =>
            join(dir, n),
          );
          const exist = files.filter((p) => {
            try {
              statSync(p);
              return true;
            } catch {
              return false;
            }
          });
          if (exist.length)
            throw new UsageError(
              `init: ${exist.join(", ")} exist(s): nothing written (remove them, or use another --dir)`,
            );
          makeDir(dir, "--dir");
          makeDir(state, "--state");
          const written: string[] = [];
          try {
            const keys = await writeGatewayKeys(dir, f.name);
            written.push(keys.cert, keys.key);
            const token = join(dir, "admin.token");
            writeFileSync(token, randomBytes(32).toString("hex") + "\n", { mode: 0o600, flag: "wx" });
            written.push(token);
            const config = join(dir, "gateway.yaml");
            writeFileSync(config, starterConfig({ state, listen: f.listen, lan: f.lan }), {
              mode: 0o600,
              flag: "wx",
            });
            written.push(config);
            if (f.json)
              process.stdout.write(
                JSON.stringify({
                  config,
                  certificate: keys.cert,
                  key: keys.key,
                  token,
                  state,
                  fingerprint: keys.fingerprint,
                }) + "\n",
              );
            else
              process.stdout.write(
                `wrote ${config}, ${keys.cert}, ${keys.key} (600), ${token} (600); state in ${state}\n` +
                  `gateway fingerprint (runtimes pin it): ${keys.fingerprint}\n` +
                  `next: edit ${config} (apps, policy, firewall.unshielded.interfaces), then\n` +
                  `  seng policy check --config ${config}\n  systemctl enable --now seng-gateway   # or: seng gateway --config ${config}\n`,
              );
          } catch (e) {
            for (const p of written) rmSync(p, { force: true }); // all or nothing
            if (e instanceof UsageError) throw e;
            throw new UsageError(
              `init: cannot write in ${dir} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
            );
          }
        },
      ),
    );
  return helpText(c, [
    "seng gateway init                                  # /etc/seng and /var/lib/seng",
    "seng gateway init --dir ./gw --state ./gw/state --lan lan0 --json",
  ]);
}
