/**
 * The gateway's configuration file (YAML), validated with a schema. Every error names the file, the key path and
 * what was expected, e.g. `gateway.yaml: apps[1].subnet: expected an IPv4 CIDR such as 100.64.1.0/24`.
 * Paths in the file are relative to the file's folder.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { accessSync, constants as fsConstants, readFileSync, statSync } from "node:fs";
import { isIP } from "node:net";
import { dirname, join, resolve } from "node:path";
import { parseDocument } from "yaml";
import { z } from "zod";
import { compileApps, identityWarnings, PolicyError, type AppSpec } from "../attest/policy.js";
import { TCB_STATUSES } from "../attest/claims.js";
import { parseCidr } from "../packet/ip.js";
import { isUnicast6, overlaps6, parseCidr6, parseIp6, type Prefix6 } from "../packet/addr6.js";
import { MIN_MTU6 } from "../tunnel/protocol.js";
import { compilePolicy, FirewallConfigError, type PolicyModel } from "../firewall/model.js";
import { routingSchema } from "../routing/config.js";
import { clusterSchema, resolveCluster } from "./cluster.js";

/**
 * `host:port` (`[v6]:port` for IPv6). `ipOnly`: the host must be an address, as for the gateway's UDP socket, which
 * binds without resolving names (`localhost:4433` used to pass here and fail at start with a TypeError).
 */
function hostPortSchema(ipOnly: boolean) {
  const example = "such as 0.0.0.0:4433 or [::]:4433 (IPv6 in brackets)";
  return z.string().superRefine((s, ctx) => {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(s);
    const fail = (message: string) => ctx.addIssue({ code: "custom", message });
    if (!m) return fail(`expected host:port ${example}${ipOnly ? " (an IP address, not a name)" : ""}`);
    const host = (m[1] ?? m[2])!;
    const port = Number(m[3]);
    if (port > 65535) return fail(`expected host:port with a port of 0-65535, got ${port}`);
    if (m[1] !== undefined && isIP(host) !== 6)
      return fail(`expected host:port: ${host} is not an IPv6 address`);
    if (ipOnly && !isIP(host))
      fail(`expected host:port with an IP address ${example} (got ${host}: names are not resolved here)`);
  });
}
const hostPort = hostPortSchema(false);
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
/** An IPv6 prefix for app addresses: no host bits, unicast, /16 to /124 (at least 16 addresses). */
const cidr6 = z.string().superRefine((s, ctx) => {
  const example = "expected an IPv6 prefix such as fd64:1::/64";
  let p: Prefix6;
  try {
    p = parseCidr6(s);
  } catch (e) {
    return ctx.addIssue({ code: "custom", message: `${example} (${(e as Error).message})` });
  }
  if (p.prefix < 16 || p.prefix > 124)
    return ctx.addIssue({ code: "custom", message: `${example}: a length of /16 to /124, got /${p.prefix}` });
  const probe = Uint8Array.from(p.network);
  probe[15] = probe[15]! | 1;
  if (!isUnicast6(probe))
    ctx.addIssue({
      code: "custom",
      message: `${example}: not a unicast range (no loopback, link-local, multicast or IPv4-mapped)`,
    });
});
/** "fd64::1/128": the gateway's IPv6 address on its TUN. */
const address6 = z.string().superRefine((s, ctx) => {
  const m = /^([0-9a-fA-F:]+)\/128$/.exec(s);
  const b = m ? parseIp6(m[1]!) : undefined;
  if (!b || !isUnicast6(b))
    ctx.addIssue({
      code: "custom",
      message: "expected the gateway's TUN IPv6 address with /128, e.g. fd64::1/128 (unicast, no zone id)",
    });
});
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
const hex = (bytes: number) =>
  z.string().regex(new RegExp(`^(0x)?[0-9a-fA-F]{${bytes * 2}}$`), `expected ${bytes} bytes of hex`);

/** A minimum SEV-SNP TCB: security patch levels, each 0-255. */
const spl = z.number().int().min(0).max(255, "expected a security patch level 0-255").optional();
const snpMinTcbFields = { bootloader: spl, tee: spl, snp: spl, microcode: spl, fmc: spl };
const snpMinTcb = z
  .object(snpMinTcbFields)
  .strict()
  .refine((m) => Object.keys(m).length > 0, "expected at least one of bootloader, tee, snp, microcode, fmc");

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
    minTcb: snpMinTcb.optional(),
    maxVmpl: z.number().int().min(0).max(3).optional(),
    allowMigrationAgent: z.boolean().optional(),
    allowDebug: z.boolean().optional(),
    tcbStatuses: z.array(z.enum(["Unknown", ...TCB_STATUSES])).optional(),
  })
  .strict();

const schema = z
  .object({
    listen: hostPortSchema(true),
    certificate: z.string().min(1),
    key: z.string().min(1),
    database: z.string().min(1).default("seng.db"),
    // Several gateways as one system, state in etcd (src/policy/cluster.ts); without it: SQLite in `database`.
    cluster: clusterSchema.optional(),
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
        // The gateway's IPv6 address (the leases' gateway6): required when an app has IPv6.
        address6: address6.optional(),
        mtu: z.number().int().min(576).max(4000).default(1400), // DTLS datagrams above 4096 bytes break OpenSSL 3.0 handshakes
        // TUN offloads (TSO/checksum): TCP super-packets in, merged TCP writes out; off = one packet per syscall
        offload: z.boolean().default(true),
      })
      .strict(),
    dns: z
      .array(
        z
          .string()
          .refine(
            (s) => /^(\d{1,3}\.){3}\d{1,3}$/.test(s) || parseIp6(s) !== undefined,
            "expected an IPv4 or IPv6 address",
          ),
      )
      .default([]),
    // Data-path threads (docs/DATAPATH.md): 1 = everything on one thread; N or "auto" (one per core) = a control
    // thread plus N workers that each own a share of the tunnels.
    workers: z
      .union([z.literal("auto"), z.number()], {
        error: 'expected "auto" or a whole number of workers from 1 to 64',
      })
      .refine((v) => v === "auto" || (Number.isInteger(v) && v >= 1 && v <= 64), {
        message: 'expected "auto" or a whole number of workers from 1 to 64',
      })
      .default(1),
    trust: z
      .object({
        simulatedRoots: z.array(z.string()).default([]),
        collateral: z.array(z.string()).default([]),
        // RA-TLS certificates are accepted this far outside their validity window (clock differences).
        clockSkewSeconds: z.number().int().min(0).max(3600).default(60),
        // SEV-SNP minimum TCB for identities without their own minTcb: one for all products, or per product.
        snpMinTcb: z
          .object({
            ...snpMinTcbFields,
            Milan: snpMinTcb.optional(),
            Genoa: snpMinTcb.optional(),
            Turin: snpMinTcb.optional(),
          })
          .strict()
          .refine((m) => {
            const products = ["Milan", "Genoa", "Turin"].filter((k) => k in m).length;
            return products > 0 ? products === Object.keys(m).length : Object.keys(m).length > 0;
          }, "expected SPLs (bootloader, tee, snp, microcode, fmc) for all products, or per product (Milan, Genoa, Turin), not both")
          .optional(),
      })
      .strict()
      .default({ simulatedRoots: [], collateral: [], clockSkewSeconds: 60 }),
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
        // All sources together: new handshakes (after a valid cookie) a second, so a flood of abandoned
        // handshakes from many sources costs the established tunnels a bounded share of the CPU.
        handshakesPerSecond: z.number().positive().default(300),
        maxHalfOpen: z.number().int().positive().default(2000),
        maxTunnels: z.number().int().positive().default(100_000),
      })
      .strict()
      .default({
        handshakesPerSecondPerSource: 50,
        handshakeBurstPerSource: 100,
        handshakesPerSecond: 300,
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
            subnet6: cidr6.optional(),
            categories: z.array(name).default([]),
            mark: z.number().int().min(1).max(0xffffffff).optional(),
            identities: z.array(identity).min(1, "expected at least one identity"),
          })
          .strict(),
      )
      .min(1, "expected at least one app"),
    /** Shared address pool for apps without their own subnet: only the nftables sets identify the app. */
    pool: cidr.optional(),
    /** Shared IPv6 pool for apps without their own subnet6 (see `families` in parseConfig). */
    pool6: cidr6.optional(),
    /** Announce this gateway's addresses over BGP with BIRD (src/routing/, docs/CLUSTER.md). */
    routing: routingSchema.optional(),
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
  /**
   * Per family the app has: `subnet` (IPv4) is its own subnet or the shared `pool` (`shared` true); `subnet6` its
   * own IPv6 prefix or the shared `pool6` (`shared6` true). At least one of the two is set.
   */
  apps: (AppSpec & {
    subnet?: string;
    shared: boolean;
    subnet6?: string;
    shared6: boolean;
    categories: string[];
    mark: number;
  })[];
  /** The firewall policy compiled from `apps`, `firewall` and `policy` (src/firewall/model.ts). */
  model: PolicyModel;
  /** Admin API: always on the Unix socket; on TCP only with a token. Paths are absolute. */
  admin: AdminConfig;
  /** Accepted but weak settings, one line each (`file: key: why`): e.g. a TDX identity that pins no RTMR. */
  warnings: string[];
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
  // The same for IPv6 prefixes and pool6.
  const ranges6 = c.apps.flatMap((a, i) =>
    a.subnet6 ? [{ ...parseCidr6(a.subnet6), key: `apps[${i}].subnet6`, cidr: a.subnet6 }] : [],
  );
  if (c.pool6) ranges6.push({ ...parseCidr6(c.pool6), key: "pool6", cidr: c.pool6 });
  for (const [i, a] of ranges6.entries())
    for (const b of ranges6.slice(i + 1))
      if (overlaps6(a, b)) throw new ConfigError(`${file}: ${b.key}: overlaps ${a.key} (${a.cidr})`);
  // Families: an app that names its own subnet or subnet6 has exactly the families it names; an app that names
  // neither takes each shared pool that exists (pool, pool6).
  const families = c.apps.map((a) => {
    const own = a.subnet !== undefined || a.subnet6 !== undefined;
    const v4 = a.subnet ?? (own ? undefined : c.pool);
    const v6 = a.subnet6 ?? (own ? undefined : c.pool6);
    return { v4, v6 };
  });
  for (const [i, f] of families.entries()) {
    if (!f.v4 && !f.v6)
      throw new ConfigError(
        `${file}: apps[${i}].subnet: expected a subnet, or a top-level pool for apps without one (for IPv6: subnet6 or pool6)`,
      );
  }
  const any6 = families.some((f) => f.v6);
  if (any6 && !c.tun.address6)
    throw new ConfigError(
      `${file}: tun.address6: expected the gateway's TUN IPv6 address, e.g. fd64::1/128 (required when an app has IPv6)`,
    );
  if (any6 && c.tun.mtu < MIN_MTU6)
    throw new ConfigError(
      `${file}: tun.mtu: expected at least ${MIN_MTU6} when an app has IPv6 (got ${c.tun.mtu})`,
    );
  // The workers' listeners speak protocol version 1 (IPv4 leases) until the IPv6 path is shared with them
  // (docs/DATAPATH.md, Limits): refuse rather than silently lease no IPv6.
  if (any6 && c.workers !== 1)
    throw new ConfigError(
      `${file}: workers: expected 1 when an app has IPv6 (IPv6 leases are served by the single-threaded gateway for now; got ${c.workers})`,
    );
  // The etcd store leases IPv4 only, and workers have been tested with the SQLite store alone:
  // refuse the combinations that would silently lease less than configured.
  if (c.cluster && any6)
    throw new ConfigError(
      `${file}: cluster: expected IPv4-only apps in a cluster (the etcd store does not lease IPv6 yet); remove subnet6/pool6 or the cluster section`,
    );
  if (c.cluster && c.workers !== 1)
    throw new ConfigError(`${file}: workers: expected 1 with a cluster section (got ${c.workers})`);
  const marks = new Map<number, number>();
  const resolved = apps.map((a, i) => {
    const mark = c.apps[i]!.mark ?? 0x5e000000 + i + 1;
    if (marks.has(mark))
      throw new ConfigError(`${file}: apps[${i}].mark: the same as apps[${marks.get(mark)}] (${mark})`);
    marks.set(mark, i);
    const { v4, v6 } = families[i]!;
    return {
      ...a,
      ...(v4 ? { subnet: v4 } : {}),
      shared: v4 !== undefined && !c.apps[i]!.subnet,
      ...(v6 ? { subnet6: v6 } : {}),
      shared6: v6 !== undefined && !c.apps[i]!.subnet6,
      categories: c.apps[i]!.categories,
      mark,
    };
  });
  let model: PolicyModel;
  try {
    // The model takes each app's families as they are, and the gateway's IPv6 address for DNS rules.
    const gateway = {
      address: c.tun.address.split("/")[0]!,
      dns: c.dns,
      ...(c.tun.address6 ? { address6: c.tun.address6.split("/")[0]! } : {}),
    };
    model = compilePolicy({
      apps: resolved,
      tun: c.tun.name,
      gateway,
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
    cluster: c.cluster && resolveCluster(c.cluster, (p) => resolve(base, p)),
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
      ...c.trust,
      simulatedRoots: c.trust.simulatedRoots.map((p) => resolve(base, p)),
      collateral: c.trust.collateral.map((p) => resolve(base, p)),
    },
    apps: resolved,
    model,
    warnings: identityWarnings(apps, { siteSnpMinTcb: c.trust.snpMinTcb !== undefined }).map(
      (w) => `${file}: ${w}`,
    ),
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

/**
 * Checks what the gateway reads or creates at start that the schema cannot see: the files the configuration names
 * (certificate and key readable and parseable, trust roots, collateral, admin token and TLS files) and the folders
 * of the database and the admin socket. `seng policy check` and `seng gateway` run it before anything is changed
 * on the machine. Throws a ConfigError naming the file, the key and the path.
 */
export function checkConfigFiles(c: GatewayConfig): void {
  const f = c.file;
  const readable = (key: string, path: string, kind: "file" | "any" = "file"): void => {
    let st;
    try {
      st = statSync(path);
      accessSync(path, fsConstants.R_OK);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new ConfigError(
        `${f}: ${key}: ${path}: ${code === "ENOENT" ? "no such file" : code === "EACCES" ? "not readable (permission denied)" : (e as Error).message}`,
      );
    }
    if (kind === "file" && !st.isFile()) throw new ConfigError(`${f}: ${key}: ${path}: not a regular file`);
  };
  const folder = (key: string, path: string): void => {
    const dir = dirname(path);
    let st;
    try {
      st = statSync(dir);
    } catch {
      throw new ConfigError(`${f}: ${key}: the folder ${dir} of ${path} does not exist (create it first)`);
    }
    if (!st.isDirectory())
      throw new ConfigError(`${f}: ${key}: ${dir} (the folder of ${path}) is not a folder`);
  };
  readable("certificate", c.certificate);
  try {
    new X509Certificate(readFileSync(c.certificate));
  } catch {
    throw new ConfigError(`${f}: certificate: ${c.certificate}: not a PEM certificate`);
  }
  readable("key", c.key);
  try {
    createPrivateKey(readFileSync(c.key));
  } catch {
    throw new ConfigError(`${f}: key: ${c.key}: not a PEM private key`);
  }
  c.trust.simulatedRoots.forEach((p, i) => readable(`trust.simulatedRoots[${i}]`, p));
  c.trust.collateral.forEach((p, i) => readable(`trust.collateral[${i}]`, p, "any"));
  if (c.admin.tokenFile) readable("admin.tokenFile", c.admin.tokenFile);
  if (c.admin.tls) {
    readable("admin.tls.certificate", c.admin.tls.certificate);
    readable("admin.tls.key", c.admin.tls.key);
  }
  if (c.cluster?.etcd.ca) readable("cluster.etcd.ca", c.cluster.etcd.ca);
  if (c.cluster?.etcd.cert) readable("cluster.etcd.cert", c.cluster.etcd.cert);
  if (c.cluster?.etcd.key) readable("cluster.etcd.key", c.cluster.etcd.key);
  folder("database", c.database);
  folder("admin.socket", c.admin.socket);
}
