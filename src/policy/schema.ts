/**
 * The schema of the gateway's configuration file (zod): every key, its type, default and the message naming what was
 * expected. src/policy/config.ts validates a file with it and resolves what the schema alone cannot check (families,
 * overlaps, identities, paths).
 */
import { isIP } from "node:net";
import { z } from "zod";
import { TCB_STATUSES } from "../attest/claims.js";
import { parseCidr } from "../packet/ip.js";
import { isUnicast6, parseCidr6, parseIp6, type Prefix6 } from "../packet/addr6.js";
import { routingSchema } from "../routing/config.js";
import { clusterSchema } from "./cluster.js";

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

export const schema = z
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
