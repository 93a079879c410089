/**
 * The gateway configuration's `routing:` block: announce this gateway's app addresses over BGP with BIRD 2
 * (docs/CLUSTER.md, "Routing"). Validated here and embedded in the gateway's schema (src/policy/config.ts), so
 * errors name the file and key like every other setting.
 *
 *   routing:
 *     asn: 65001                     # this gateway's AS (private range: 64512-65534, 4200000000-4294967294)
 *     routerId: 198.18.10.1          # BGP router id (an IPv4 address of this host)
 *     neighbors: [{ address: 198.18.10.254, asn: 65000 }]   # the routers to announce to
 *     blocks: [100.64.1.0/25]        # always announced while the gateway runs; addresses outside get /32 (/128)
 *     bfd: true                      # BFD (100 ms × 3) on every session: a dead host is noticed in ~0.3 s
 *     holdSeconds: 3                 # BGP hold time (keepalive: a third)
 *     bird: bird                     # the BIRD 2 daemon (path or a name on PATH), run as the gateway's child
 *     birdc: birdc
 *     dir: bird                      # BIRD's config and control socket (default: "bird" beside the database)
 */
import { isIP } from "node:net";
import { z } from "zod";
import { parseCidr } from "../packet/ip.js";

const ipv4 = z.string().refine((s) => isIP(s) === 4, "expected an IPv4 address such as 198.18.10.1");
const ip = z.string().refine((s) => isIP(s) !== 0, "expected an IP address");
const asn = z
  .number()
  .int()
  .min(1, "expected an AS number of 1-4294967295")
  .max(4294967295, "expected an AS number of 1-4294967295");
const block = z.string().refine((s) => {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(s);
  if (!m) return false;
  const v = isIP(m[1]!);
  const len = Number(m[2]);
  if (v === 6) return len <= 128;
  if (v !== 4) return false;
  try {
    parseCidr(s); // no host bits set (BIRD would refuse the route)
    return true;
  } catch {
    return false;
  }
}, "expected a CIDR such as 100.64.1.0/25 or fd64:1::/64 (no host bits set)");

export const routingSchema = z
  .object({
    asn,
    routerId: ipv4,
    neighbors: z
      .array(
        z
          .object({
            address: ip,
            asn,
            /** This host's address on the session (default: chosen by the kernel). */
            local: ip.optional(),
          })
          .strict(),
      )
      .min(1, "expected at least one neighbor"),
    blocks: z.array(block).default([]),
    bfd: z.boolean().default(true),
    holdSeconds: z.number().int().min(3, "expected at least 3 (BGP's minimum)").max(65535).default(3),
    bird: z.string().min(1).default("bird"),
    birdc: z.string().min(1).default("birdc"),
    dir: z.string().min(1).optional(),
  })
  .strict();

export type RoutingConfig = z.infer<typeof routingSchema>;
