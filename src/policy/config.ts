/**
 * The gateway's configuration file (YAML), validated with a schema. Every error names the file, the key path and
 * what was expected, e.g. `gateway.yaml: apps[1].subnet: expected an IPv4 CIDR such as 100.64.1.0/24`.
 * Paths in the file are relative to the file's folder.
 */
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { parseDocument } from "yaml";
import { z } from "zod";
import { compileApps, PolicyError, type AppSpec } from "../attest/policy.js";
import { TCB_STATUSES } from "../attest/claims.js";
import { parseCidr } from "../packet/ip.js";

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
    apps: z
      .array(
        z
          .object({
            name: z
              .string()
              .regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/, "expected 1-32 letters, digits, - or _"),
            subnet: cidr,
            identities: z.array(identity).min(1, "expected at least one identity"),
          })
          .strict(),
      )
      .min(1, "expected at least one app"),
  })
  .strict();

export type GatewayConfigFile = z.infer<typeof schema>;

/** The validated configuration, with paths resolved and identities compiled. */
export interface GatewayConfig extends Omit<GatewayConfigFile, "apps"> {
  file: string;
  apps: (AppSpec & { subnet: string })[];
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

/** Parses and validates configuration text. */
export function parseConfig(text: string, file: string): GatewayConfig {
  const doc = parseDocument(text);
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    const line = e.linePos?.[0];
    throw new ConfigError(
      `${file}${line ? `:${line.line}:${line.col}` : ""}: not valid YAML: ${e.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")}`,
    );
  }
  const r = schema.safeParse(doc.toJS());
  if (!r.success) {
    const issue = r.error.issues[0]!;
    let msg = issue.message;
    if (issue.code === "unrecognized_keys") msg = `unknown key(s) ${issue.keys.join(", ")}`;
    else if (issue.code === "invalid_type") msg = `expected ${issue.expected}`;
    throw new ConfigError(`${file}: ${keyPath(issue.path)}: ${msg}`);
  }
  const c = r.data;
  const base = dirname(resolve(file));
  let apps;
  try {
    apps = compileApps(c.apps as AppSpec[]);
  } catch (e) {
    if (e instanceof PolicyError) throw new ConfigError(`${file}: ${e.message}`);
    throw e;
  }
  // App subnets must not overlap each other or the TUN address: an address must name exactly one app.
  const ranges = c.apps.map((a, i) => ({ ...parseCidr(a.subnet), i }));
  for (const a of ranges) {
    for (const b of ranges) {
      if (a.i < b.i && a.network < b.network + b.size && b.network < a.network + a.size) {
        throw new ConfigError(
          `${file}: apps[${b.i}].subnet: overlaps apps[${a.i}].subnet (${c.apps[a.i]!.subnet})`,
        );
      }
    }
    if (a.size < 4) throw new ConfigError(`${file}: apps[${a.i}].subnet: expected a /30 or larger subnet`);
  }
  return {
    ...c,
    file,
    certificate: resolve(base, c.certificate),
    key: resolve(base, c.key),
    database: resolve(base, c.database),
    trust: {
      simulatedRoots: c.trust.simulatedRoots.map((p) => resolve(base, p)),
      collateral: c.trust.collateral.map((p) => resolve(base, p)),
    },
    apps: apps.map((a, i) => ({ ...a, subnet: c.apps[i]!.subnet })),
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
