/**
 * The gateway's configuration file (YAML), validated with a schema. Every error names the file, the key path and
 * what was expected, e.g. `gateway.yaml: apps[1].subnet: expected an IPv4 CIDR such as 100.64.1.0/24`.
 * Paths in the file are relative to the file's folder.
 */
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseDocument } from "yaml";
import { z } from "zod";
import { compileApps, PolicyError, type AppSpec } from "../attest/policy.js";
import { TCB_STATUSES } from "../attest/claims.js";
import { parseCidr } from "../packet/ip.js";
import { compilePolicy, FirewallConfigError, type PolicyModel } from "../firewall/model.js";

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[0-9.]+|[A-Za-z0-9.-]+):\d{1,5}$/, "expected host:port such as 0.0.0.0:4433");
const cidr = z.string().refine(
  (s) => {
    try {
      parseCidr(s);
      return true;
    } catch {
      return false;
    }
  },
  { message: "expected an IPv4 CIDR such as 100.64.1.0/24 (no host bits set)" },
);
const name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/, "expected 1-32 letters, digits, - or _");
const ports = z
  .array(
    z.union([
      z.number().int().min(1).max(65535),
      z.string().regex(/^\d{1,5}(-\d{1,5})?$/, "expected a port or a range such as 8000-8080"),
    ]),
  )
  .min(1, "expected at least one port");
const proto = z.enum(["any", "tcp", "udp", "icmp"]);
const ipv4 = z.string().regex(/^(\d{1,3}\.){3}\d{1,3}$/, "expected an IPv4 address");
const hex = (bytes: number) =>
  z.string().regex(new RegExp(`^(0x)?[0-9a-fA-F]{${bytes * 2}}$`), `expected ${bytes} bytes of hex`);

const identity = z
  .object({
    mrenclave: hex(32).optional(),
    mrsigner: hex(32).optional(),
    isvprodid: z.number().int().min(0).max(65535).optional(),
    minIsvsvn: z.number().int().min(0).max(65535).optional(),
    mrtd: hex(48).optional(),
    rtmr0: hex(48).optional(),
    rtmr1: hex(48).optional(),
    rtmr2: hex(48).optional(),
    rtmr3: hex(48).optional(),
    measurement: hex(48).optional(),
    hostData: hex(32).optional(),
    allowDebug: z.boolean().optional(),
    tcbStatuses: z.array(z.enum(["Unknown", ...TCB_STATUSES])).optional(),
  })
  .strict();

const schema = z
  .object({
    listen: hostPort,
    certificate: z.string().min(1),
    key: z.string().min(1),
    database: z.string().min(1).default("seng.db"),
    tun: z
      .object({
        name: z
          .string()
          .regex(/^[A-Za-z0-9_-]{1,15}$/, "expected an interface name of 1-15 letters, digits, - or _")
          .default("seng0"),
        address: z
          .string()
          .regex(
            /^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/,
            "expected the gateway's TUN address with a prefix, e.g. 100.64.0.1/32",
          ),
        mtu: z.number().int().min(576).max(4000).default(1400), // DTLS datagrams above 4096 bytes break OpenSSL 3.0 handshakes
        // TUN offloads (TSO/checksum): TCP super-packets in, merged TCP writes out; off = one packet per syscall
        offload: z.boolean().default(true),
      })
      .strict(),
    dns: z.array(ipv4).default([]),
    trust: z
      .object({
        simulatedRoots: z.array(z.string()).default([]),
        collateral: z.array(z.string()).default([]),
      })
      .strict()
      .default({ simulatedRoots: [], collateral: [] }),
    tunnel: z
      .object({
        keepaliveSeconds: z.number().positive().default(10),
        idleTimeoutSeconds: z.number().positive().default(60),
        handshakeTimeoutSeconds: z.number().positive().default(10),
        leaseGraceSeconds: z.number().min(0).default(300),
      })
      .strict()
      .default({
        keepaliveSeconds: 10,
        idleTimeoutSeconds: 60,
        handshakeTimeoutSeconds: 10,
        leaseGraceSeconds: 300,
      }),
    limits: z
      .object({
        handshakesPerSecondPerSource: z.number().positive().default(50),
        handshakeBurstPerSource: z.number().positive().default(100),
        maxHalfOpen: z.number().int().positive().default(2000),
        maxTunnels: z.number().int().positive().default(100_000),
      })
      .strict()
      .default({
        handshakesPerSecondPerSource: 50,
        handshakeBurstPerSource: 100,
        maxHalfOpen: 2000,
        maxTunnels: 100_000,
      }),
    admin: z
      .object({
        // Default: admin.sock next to the database (the gateway's state folder).
        socket: z.string().min(1).optional(),
        tcp: hostPort.optional(),
        tokenFile: z.string().min(1).optional(),
        tls: z
          .object({ certificate: z.string().min(1), key: z.string().min(1) })
          .strict()
          .optional(),
      })
      .strict()
      .default({}),
    metrics: z
      .object({
        listen: hostPort,
      })
      .strict()
      .optional(),
    apps: z
      .array(
        z
          .object({
            name: z
              .string()
              .regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/, "expected 1-32 letters, digits, - or _"),
            subnet: cidr.optional(),
            categories: z.array(name).default([]),
            mark: z.number().int().min(1).max(0xffffffff).optional(),
            identities: z.array(identity).min(1, "expected at least one identity"),
          })
          .strict(),
      )
      .min(1, "expected at least one app"),
    /** Shared address pool for apps without their own subnet: only the nftables sets identify the app. */
    pool: cidr.optional(),
    firewall: z
      .object({
        enabled: z.boolean().default(true),
        table: z
          .string()
          .regex(/^[A-Za-z][A-Za-z0-9_]{0,31}$/, "expected a table name: a letter, then letters, digits or _")
          .refine((t) => !/^sengmark\d*$/.test(t), "sengmark… is reserved (the set updater's batch markers)")
          .default("seng"),
        marks: z.boolean().default(true),
        exportSets: z
          .array(
            z
              .string()
              .regex(
                /^(inet|ip|ip6) [A-Za-z][A-Za-z0-9_-]{0,63}$/,
                "expected a table as <family> <name>, e.g. inet filter",
              ),
          )
          .default([]),
        unshielded: z
          .object({
            // Naming the LAN interfaces means: drop what did not come through a tunnel (issue 19: the default).
            drop: z.boolean().default(true),
            interfaces: z.array(z.string().regex(/^[A-Za-z0-9_.@-]{1,15}$/, "expected an interface name")),
            allow: z
              .array(
                z
                  .object({ to: z.string().optional(), proto: proto.default("any"), ports: ports.optional() })
                  .strict(),
              )
              .default([]),
          })
          .strict()
          .optional(),
      })
      .strict()
      .default({ enabled: true, table: "seng", marks: true, exportSets: [] }),
    policy: z
      .object({
        default: z.enum(["allow", "deny"]).default("deny"),
        sets: z.record(name, z.array(z.string()).min(1, "expected at least one address or CIDR")).default({}),
        rules: z
          .array(
            z
              .object({
                from: z.string().min(1).default("any"),
                to: z.string().min(1).default("any"),
                proto: proto.default("any"),
                ports: ports.optional(),
                action: z.enum(["allow", "deny"]),
              })
              .strict(),
          )
          .default([]),
      })
      .strict()
      .optional(),
  })
  .strict();

export type GatewayConfigFile = z.infer<typeof schema>;

/** The validated configuration, with paths resolved and identities compiled. */
export interface GatewayConfig extends Omit<GatewayConfigFile, "apps" | "admin"> {
  file: string;
  /** `subnet` is the app's own subnet, or the shared pool (`shared` true) when it has none. */
  apps: (AppSpec & { subnet: string; shared: boolean; categories: string[]; mark: number })[];
  /** The firewall policy compiled from `apps`, `firewall` and `policy` (src/firewall/model.ts). */
  model: PolicyModel;
  /** Admin API: always on the Unix socket; on TCP only with a token. Paths are absolute. */
  admin: AdminConfig;
}

export interface AdminConfig {
  socket: string;
  tcp?: string;
  tokenFile?: string;
  tls?: { certificate: string; key: string };
}

/** A configuration error: `file: key.path: what was expected`. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

function keyPath(path: readonly PropertyKey[]): string {
  return (
    path.reduce<string>(
      (s, k) => (typeof k === "number" ? `${s}[${k}]` : s ? `${s}.${String(k)}` : String(k)),
      "",
    ) || "(top level)"
  );
}

/**
 * Parses YAML `text` and validates it with `schema`; every error is one line naming the file, the key path and what
 * was expected, thrown as `fail(message)`. `empty` stands for an empty document. Shared by the gateway's and the
 * runtime's configuration files.
 */
export function validateYaml<S extends z.ZodType>(
  schema: S,
  text: string,
  file: string,
  fail: (message: string) => Error,
  empty: unknown = null,
): z.infer<S> {
  const doc = parseDocument(text);
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    const line = e.linePos?.[0];
    throw fail(
      `${file}${line ? `:${line.line}:${line.col}` : ""}: not valid YAML: ${e.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")}`,
    );
  }
  const r = schema.safeParse(doc.toJS() ?? empty);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    let msg = issue.message;
    if (issue.code === "unrecognized_keys") msg = `unknown key(s) ${issue.keys.join(", ")}`;
    else if (issue.code === "invalid_type") msg = `expected ${issue.expected}`;
    throw fail(`${file}: ${keyPath(issue.path)}: ${msg}`);
  }
  return r.data;
}

/** Parses and validates configuration text. */
export function parseConfig(text: string, file: string): GatewayConfig {
  const c = validateYaml(schema, text, file, (m) => new ConfigError(m));
  const base = dirname(resolve(file));
  // The admin API can close tunnels and change policy: never reachable over TCP without a token.
  if (c.admin.tcp && !c.admin.tokenFile)
    throw new ConfigError(
      `${file}: admin.tokenFile: required when admin.tcp is set (a file holding the bearer token; the admin API is never unauthenticated on TCP)`,
    );
  if (c.admin.tls && !c.admin.tcp)
    throw new ConfigError(`${file}: admin.tls: only meaningful with admin.tcp (the Unix socket has no TLS)`);
  let apps;
  try {
    apps = compileApps(c.apps as AppSpec[]);
  } catch (e) {
    if (e instanceof PolicyError) throw new ConfigError(`${file}: ${e.message}`);
    throw e;
  }
  // App subnets (and the shared pool) must not overlap: an address in a subnet must name exactly one app.
  const ranges = c.apps.flatMap((a, i) =>
    a.subnet ? [{ ...parseCidr(a.subnet), key: `apps[${i}].subnet`, cidr: a.subnet }] : [],
  );
  if (c.pool) ranges.push({ ...parseCidr(c.pool), key: "pool", cidr: c.pool });
  for (const [i, a] of ranges.entries()) {
    for (const b of ranges.slice(i + 1)) {
      if (a.network < b.network + b.size && b.network < a.network + a.size) {
        throw new ConfigError(`${file}: ${b.key}: overlaps ${a.key} (${a.cidr})`);
      }
    }
    if (a.size < 4) throw new ConfigError(`${file}: ${a.key}: expected a /30 or larger subnet`);
  }
  for (const [i, a] of c.apps.entries()) {
    if (!a.subnet && !c.pool)
      throw new ConfigError(
        `${file}: apps[${i}].subnet: expected a subnet, or a top-level pool for apps without one`,
      );
  }
  const marks = new Map<number, number>();
  const resolved = apps.map((a, i) => {
    const mark = c.apps[i]!.mark ?? 0x5e000000 + i + 1;
    if (marks.has(mark))
      throw new ConfigError(`${file}: apps[${i}].mark: the same as apps[${marks.get(mark)}] (${mark})`);
    marks.set(mark, i);
    return {
      ...a,
      subnet: c.apps[i]!.subnet ?? c.pool!,
      shared: !c.apps[i]!.subnet,
      categories: c.apps[i]!.categories,
      mark,
    };
  });
  let model: PolicyModel;
  try {
    model = compilePolicy({
      apps: resolved,
      tun: c.tun.name,
      firewall: c.firewall,
      policy: c.policy,
    });
  } catch (e) {
    if (e instanceof FirewallConfigError) throw new ConfigError(`${file}: ${e.message}`);
    throw e;
  }
  return {
    ...c,
    file,
    certificate: resolve(base, c.certificate),
    key: resolve(base, c.key),
    database: resolve(base, c.database),
    admin: {
      socket: resolve(base, c.admin.socket ?? join(dirname(c.database), "admin.sock")),
      tcp: c.admin.tcp,
      tokenFile: c.admin.tokenFile && resolve(base, c.admin.tokenFile),
      tls: c.admin.tls && {
        certificate: resolve(base, c.admin.tls.certificate),
        key: resolve(base, c.admin.tls.key),
      },
    },
    trust: {
      simulatedRoots: c.trust.simulatedRoots.map((p) => resolve(base, p)),
      collateral: c.trust.collateral.map((p) => resolve(base, p)),
    },
    apps: resolved,
    model,
  };
}

/** Reads and validates a configuration file. */
export function loadConfig(file: string): GatewayConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new ConfigError(
      `${file}: cannot read: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`,
    );
  }
  return parseConfig(text, file);
}
