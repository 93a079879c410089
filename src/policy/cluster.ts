/**
 * The `cluster:` section of the gateway's configuration: several gateways as one system, their leases, sets and
 * revocations in etcd (docs/CLUSTER.md). Without it the gateway keeps everything in its embedded SQLite database
 * (`database:`), as a single gateway always did.
 *
 *   cluster:
 *     gatewayId: gw1                       # unique in the cluster, stable across restarts
 *     etcd:
 *       endpoints: [https://10.0.0.5:2379, https://10.0.0.6:2379, https://10.0.0.7:2379]
 *       ca: etcd-ca.pem                    # optional: TLS to etcd (with cert and key for client authentication)
 *       cert: gw1-etcd.pem
 *       key: gw1-etcd.key
 *     ttl: 10                              # seconds: a dead gateway's addresses are free after this
 */
import { z } from "zod";

export const clusterSchema = z
  .object({
    gatewayId: z
      .string()
      .regex(
        /^[A-Za-z0-9._-]{1,64}$/,
        "expected 1-64 letters, digits, '.', '_' or '-' (unique in the cluster)",
      ),
    etcd: z
      .object({
        endpoints: z
          .array(
            z
              .string()
              .regex(
                /^https?:\/\/[^\s/]+:\d{1,5}$/,
                "expected an etcd client URL such as https://10.0.0.5:2379",
              ),
          )
          .min(1, "expected at least one etcd client URL"),
        ca: z.string().min(1).optional(),
        cert: z.string().min(1).optional(),
        key: z.string().min(1).optional(),
        /** Key prefix: one per cluster (several clusters may share one etcd). */
        prefix: z
          .string()
          .regex(/^\/([A-Za-z0-9._-]+\/)*$/, "expected a key prefix such as /seng/ (starts and ends with /)")
          .default("/seng/"),
      })
      .strict(),
    /** The gateway's etcd lease TTL in seconds: how long a dead gateway's addresses stay taken. */
    ttl: z.number().int().min(2).max(300).default(10),
    /** How much earlier than the TTL the gateway fences itself, in ms (clock rate drift and reaction time). */
    fenceMarginMs: z.number().int().min(200).default(1000),
    /** Seconds before an address released by one identity goes to another (flows and caches elsewhere age out). */
    coolDown: z.number().int().min(0).max(3600).default(60),
    /**
     * New tunnels are refused when this gateway has heard nothing from etcd's watch (no change, no progress
     * notification) for this long (ms): its view of revocations may be stale. etcd must send progress
     * notifications more often (`--experimental-watch-progress-notify-interval`, e.g. 500ms).
     */
    staleAfterMs: z.number().int().min(100).max(600_000).default(3000),
  })
  .strict()
  .superRefine((c, ctx) => {
    if ((c.etcd.cert === undefined) !== (c.etcd.key === undefined))
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ["etcd", c.etcd.cert === undefined ? "cert" : "key"],
        message: "expected both cert and key (client certificate authentication) or neither",
      });
    if ((c.etcd.cert || c.etcd.ca) && c.etcd.endpoints.some((e) => e.startsWith("http://")))
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ["etcd", "endpoints"],
        message: "expected https:// endpoints when ca or cert is set (TLS to etcd)",
      });
    // Keepalives go every TTL/3: a margin past 2/3 of the TTL would fence a healthy gateway between two of them.
    if (c.fenceMarginMs >= (c.ttl * 2000) / 3)
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ["fenceMarginMs"],
        message: `expected less than 2/3 of the ttl (${Math.floor((c.ttl * 2000) / 3)} ms for ttl ${c.ttl})`,
      });
  });

export type ClusterConfig = z.infer<typeof clusterSchema>;

/** The cluster section with its file paths made absolute (relative to the configuration file's folder). */
export function resolveCluster(c: ClusterConfig, resolvePath: (p: string) => string): ClusterConfig {
  return {
    ...c,
    etcd: {
      ...c.etcd,
      ca: c.etcd.ca && resolvePath(c.etcd.ca),
      cert: c.etcd.cert && resolvePath(c.etcd.cert),
      key: c.etcd.key && resolvePath(c.etcd.key),
    },
  };
}
