/**
 * The gateway's configuration file (YAML), validated with a schema. Every error names the file, the key path and
 * what was expected, e.g. `gateway.yaml: apps[1].subnet: expected an IPv4 CIDR such as 100.64.1.0/24`.
 * Paths in the file are relative to the file's folder.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { accessSync, constants as fsConstants, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseDocument } from "yaml";
import { z } from "zod";
import { compileApps, identityWarnings, PolicyError, type AppSpec } from "../attest/policy.js";
import { parseCidr } from "../packet/ip.js";
import { overlaps6, parseCidr6 } from "../packet/addr6.js";
import { MIN_MTU6 } from "../tunnel/protocol.js";
import { compilePolicy, FirewallConfigError, type PolicyModel } from "../firewall/model.js";
import { resolveCluster } from "./cluster.js";
import { schema, type GatewayConfigFile } from "./schema.js";

export type { GatewayConfigFile };

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
