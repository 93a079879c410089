/**
 * The firewall policy as one compiled model: the single source from which `nft.ts` renders the nftables ruleset and
 * `explain.ts` evaluates a packet, so the two cannot disagree about rule order, matching or the default.
 *
 * Endpoints in `policy.rules[].from` / `to` (and `firewall.unshielded.allow[].to`):
 *   - `any`
 *   - an app name or `app:<name>`: the app's live tunnel addresses (nftables sets `seng_app_<name>` / `seng_app6_<name>`)
 *   - `category:<name>`: every app in the category (sets `seng_cat_<name>` / `seng_cat6_<name>`)
 *   - `set:<name>`: a named list of addresses from `policy.sets` (sets `seng_net_<name>` / `seng_net6_<name>`)
 *   - an IPv4 or IPv6 address or CIDR
 *   - `gateway` (only in `to`): the gateway host itself, i.e. traffic from a tunnel that the kernel delivers locally
 *     (nftables hook `input`) to any of the host's addresses. No other endpoint, not even `any`, matches it.
 * A bare name is looked up as an app, then a category, then a set; `gateway` is reserved and names none of them.
 */
import { BlockList, isIP } from "node:net";

/** A config error in the firewall part: `message` starts with the key path. */
export class FirewallConfigError extends Error {
  override readonly name = "FirewallConfigError";
}

export type Proto = "any" | "tcp" | "udp" | "icmp";

export type Endpoint =
  | { kind: "any"; label: "any" }
  /** `set` is the nftables set base name: `seng_app_<app>` or `seng_cat_<category>` (v6: `seng_app6_…`). */
  | { kind: "apps"; label: string; apps: string[]; set: string; set6: string }
  /** Addresses; `set` names the config set when the endpoint is `set:<name>`. */
  | { kind: "net"; label: string; v4: string[]; v6: string[]; set?: string; set6?: string }
  /** The gateway host itself (gateway path); only as a destination. */
  | { kind: "gateway"; label: "gateway" };

/** The endpoint keyword for the gateway host; no app, category or set may be called so. */
export const GATEWAY = "gateway";

export interface Rule {
  /** Key path in the config, e.g. `policy.rules[2]`; also the rule's nftables comment. */
  path: string;
  from: Endpoint;
  to: Endpoint;
  proto: Proto;
  /** Inclusive port ranges (tcp/udp only); empty: any port. */
  ports: [number, number][];
  action: "accept" | "drop";
}

export interface AllowEntry {
  path: string;
  to: Endpoint;
  proto: Proto;
  ports: [number, number][];
}

export interface PolicyModel {
  table: string;
  tun: string;
  /** `subnet`/`subnet6`: the app's IPv4 subnet and IPv6 prefix (its own or the shared pool), per family it has. */
  apps: {
    name: string;
    mark: number;
    categories: string[];
    subnet?: string | undefined;
    shared: boolean;
    subnet6?: string | undefined;
    /** `subnet6` is the shared pool6 (only the sets identify the app). */
    shared6?: boolean | undefined;
  }[];
  /** category → apps */
  categories: Record<string, string[]>;
  /** `policy.sets`, split by family. */
  sets: Record<string, { v4: string[]; v6: string[] }>;
  rules: Rule[];
  defaultAction: "accept" | "drop";
  /** False when the config has no `policy` section: app traffic is not filtered (sets and marks still kept). */
  filtering: boolean;
  marks: boolean;
  unshielded: { interfaces: string[]; allow: AllowEntry[] } | null;
  /** Other tables (`<family> <name>`) where the app and category sets are kept too, for the admin's own rules. */
  exportTables: { family: "inet" | "ip" | "ip6"; name: string }[];
  /** Whether nftables is used at all (`firewall.enabled`). */
  enabled: boolean;
  /**
   * The gateway path from the tunnels to the gateway host (before DNAT): always filtered when `enabled` (default deny, counted in
   * `seng_gateway_default`), opened only by rules with `to: gateway`. `address` is the gateway's TUN address; `dns`
   * is true when the leases name it as a DNS server (`dns:`), so tunnels may send DNS (udp and tcp 53) to it.
   * `address6`/`dns6`: the same for the TUN's IPv6 address (the leases' gateway6), when the gateway has one. The
   * chain itself matches every local address (link-local ones too) by `fib daddr type`, not by this list.
   */
  gateway: { address: string; dns: boolean; address6?: string | undefined; dns6: boolean };
}

export interface PolicyInput {
  apps: {
    name: string;
    mark: number;
    categories: string[];
    subnet?: string | undefined;
    shared: boolean;
    /** The app's IPv6 prefix (its own, or the shared pool6), when it has IPv6. */
    subnet6?: string | undefined;
    /** `subnet6` is the shared pool6. */
    shared6?: boolean | undefined;
  }[];
  tun: string;
  /**
   * The gateway's TUN addresses (IPv4; IPv6 when it has one: the leases' gateway6) and the DNS servers the leases
   * announce (default: 100.64.0.1, none).
   */
  gateway?: { address: string; dns: readonly string[]; address6?: string | undefined } | undefined;
  firewall: {
    enabled: boolean;
    table: string;
    marks: boolean;
    exportSets: string[];
    unshielded?:
      | {
          drop: boolean;
          interfaces: string[];
          allow: { to?: string | undefined; proto: Proto; ports?: (number | string)[] | undefined }[];
        }
      | undefined;
  };
  policy?:
    | {
        default: "allow" | "deny";
        sets: Record<string, string[]>;
        rules: {
          from: string;
          to: string;
          proto: Proto;
          ports?: (number | string)[] | undefined;
          action: "allow" | "deny";
        }[];
      }
    | undefined;
}

/** Normalizes an address or CIDR (v4 or v6); undefined when it is neither. */
export function parseNet(s: string): { family: 4 | 6; net: string } | undefined {
  const [addr, len, extra] = s.split("/");
  if (extra !== undefined || !addr) return undefined;
  const family = isIP(addr);
  if (family === 0) return undefined;
  const max = family === 4 ? 32 : 128;
  if (len !== undefined && (!/^\d{1,3}$/.test(len) || Number(len) > max)) return undefined;
  // nftables refuses host bits in a prefix; say so here rather than at apply time.
  if (len !== undefined && hostBits(addr, family as 4 | 6, Number(len))) return undefined;
  return { family: family as 4 | 6, net: len === undefined ? addr : `${addr}/${Number(len)}` };
}

/** The address as a big integer (v4: 32 bits, v6: 128 bits). */
export function addressBits(addr: string, family: 4 | 6): bigint {
  if (family === 4) return addr.split(".").reduce((x, o) => x * 256n + BigInt(o), 0n);
  // Expand `::` and an embedded IPv4 tail (::ffff:1.2.3.4) to eight 16-bit groups.
  let text = addr;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const n = addressBits(v4[1]!, 4);
    text = text.slice(0, -v4[1]!.length) + `${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head, tail] = text.split("::");
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  return groups.reduce((x, g) => (x << 16n) + BigInt(parseInt(g, 16)), 0n);
}

function hostBits(addr: string, family: 4 | 6, len: number): boolean {
  const width = family === 4 ? 32 : 128;
  return len < width && addressBits(addr, family) % (1n << BigInt(width - len)) !== 0n;
}

function parsePorts(list: (number | string)[] | undefined, path: string, proto: Proto): [number, number][] {
  if (!list) return [];
  if (proto !== "tcp" && proto !== "udp")
    throw new FirewallConfigError(`${path}.ports: ports need proto tcp or udp (proto is ${proto})`);
  return list.map((p, i) => {
    const [a, b] = typeof p === "number" ? [p, p] : p.split("-").map(Number);
    const range: [number, number] = [a!, b ?? a!];
    if (!(range[0] >= 1 && range[1] <= 65535 && range[0] <= range[1]))
      throw new FirewallConfigError(`${path}.ports[${i}]: expected ports 1-65535, low-high (got ${p})`);
    return range;
  });
}

/** Compiles the firewall part of a gateway config. Throws FirewallConfigError naming the key path. */
export function compilePolicy(input: PolicyInput): PolicyModel {
  const appNames = new Set(input.apps.map((a) => a.name));
  const reserved = `is reserved for the gateway host as a rule destination (to: ${GATEWAY}); use another name`;
  for (const [i, a] of input.apps.entries())
    if (a.name === GATEWAY) throw new FirewallConfigError(`apps[${i}].name: ${GATEWAY} ${reserved}`);
  const categories: Record<string, string[]> = {};
  for (const [i, a] of input.apps.entries()) {
    for (const c of a.categories) {
      if (c === GATEWAY) throw new FirewallConfigError(`apps[${i}].categories: ${GATEWAY} ${reserved}`);
      if (appNames.has(c))
        throw new FirewallConfigError(`apps[${i}].categories: ${c} is also an app name; use another name`);
      (categories[c] ??= []).push(a.name);
    }
  }
  const sets: PolicyModel["sets"] = {};
  for (const [name, list] of Object.entries(input.policy?.sets ?? {})) {
    if (name === GATEWAY) throw new FirewallConfigError(`policy.sets.${name}: ${GATEWAY} ${reserved}`);
    if (appNames.has(name) || categories[name])
      throw new FirewallConfigError(`policy.sets.${name}: also the name of an app or category`);
    const s = { v4: [] as string[], v6: [] as string[] };
    list.forEach((a, i) => {
      const n = parseNet(a);
      if (!n)
        throw new FirewallConfigError(
          `policy.sets.${name}[${i}]: expected an IPv4 or IPv6 address or CIDR (got ${JSON.stringify(a)})`,
        );
      (n.family === 4 ? s.v4 : s.v6).push(n.net);
    });
    sets[name] = s;
  }
  const endpoint = (text: string, path: string): Endpoint => {
    if (text === "any") return { kind: "any", label: "any" };
    if (text === GATEWAY) return { kind: "gateway", label: GATEWAY };
    const net = parseNet(text);
    if (net)
      return {
        kind: "net",
        label: text,
        v4: net.family === 4 ? [net.net] : [],
        v6: net.family === 6 ? [net.net] : [],
      };
    // Looks like an address (a colon without a keyword, a slash, or a dotted quad) but is not a valid one.
    if (!/^(app|category|set):/.test(text) && (/[:/]/.test(text) || /^\d+\.\d+/.test(text)))
      throw new FirewallConfigError(
        `${path}: expected an IPv4 or IPv6 address or CIDR without host bits (got ${JSON.stringify(text)})`,
      );
    const m = /^(app|category|set):(.+)$/.exec(text);
    const [kind, name] = m ? [m[1]!, m[2]!] : ["", text];
    if ((kind === "app" || kind === "") && appNames.has(name))
      return {
        kind: "apps",
        label: `app:${name}`,
        apps: [name],
        set: `seng_app_${name}`,
        set6: `seng_app6_${name}`,
      };
    if ((kind === "category" || kind === "") && categories[name])
      return {
        kind: "apps",
        label: `category:${name}`,
        apps: categories[name]!,
        set: `seng_cat_${name}`,
        set6: `seng_cat6_${name}`,
      };
    if ((kind === "set" || kind === "") && sets[name])
      return {
        kind: "net",
        label: `set:${name}`,
        ...sets[name]!,
        set: `seng_net_${name}`,
        set6: `seng_net6_${name}`,
      };
    const what = kind ? `no ${kind} named ${name}` : `no app, category or set named ${name}`;
    throw new FirewallConfigError(
      `${path}: ${what} (expected any, an app, category:<name>, set:<name>, or an address or CIDR)`,
    );
  };
  const rules: Rule[] = (input.policy?.rules ?? []).map((r, i) => {
    const path = `policy.rules[${i}]`;
    const from = endpoint(r.from, `${path}.from`);
    const to = endpoint(r.to, `${path}.to`);
    if (from.kind === "gateway")
      throw new FirewallConfigError(
        `${path}.from: ${GATEWAY} is only a destination (what the gateway host sends is not filtered by SENG)`,
      );
    // A rule to the gateway filters tunnel traffic by construction (the gateway path only sees the tunnels).
    if (from.kind !== "apps" && to.kind !== "apps" && to.kind !== "gateway")
      throw new FirewallConfigError(
        `${path}: from or to must name an app or category (the policy filters traffic of tunnels only)`,
      );
    return {
      path,
      from,
      to,
      proto: r.proto,
      ports: parsePorts(r.ports, path, r.proto),
      action: r.action === "allow" ? "accept" : "drop",
    };
  });
  const u = input.firewall.unshielded;
  let unshielded: PolicyModel["unshielded"] = null;
  if (u?.drop) {
    if (u.interfaces.length === 0)
      throw new FirewallConfigError("firewall.unshielded.interfaces: expected at least one LAN interface");
    if (u.interfaces.includes(input.tun))
      throw new FirewallConfigError(`firewall.unshielded.interfaces: ${input.tun} is the tunnel interface`);
    unshielded = {
      interfaces: u.interfaces,
      allow: u.allow.map((a, i) => {
        const path = `firewall.unshielded.allow[${i}]`;
        const to = endpoint(a.to ?? "any", `${path}.to`);
        if (to.kind === "apps" || to.kind === "gateway")
          throw new FirewallConfigError(
            `${path}.to: expected an address, CIDR or set (unshielded traffic to the gateway host itself is not SENG's to filter)`,
          );
        return { path, to, proto: a.proto, ports: parsePorts(a.ports, path, a.proto) };
      }),
    };
  }
  return {
    table: input.firewall.table,
    tun: input.tun,
    apps: input.apps.map((a) => ({
      name: a.name,
      mark: a.mark,
      categories: a.categories,
      ...(a.subnet ? { subnet: a.subnet } : {}),
      shared: a.shared,
      ...(a.subnet6 ? { subnet6: a.subnet6, shared6: a.shared6 ?? false } : {}),
    })),
    categories,
    sets,
    rules,
    defaultAction: input.policy ? (input.policy.default === "allow" ? "accept" : "drop") : "accept",
    filtering: input.policy !== undefined,
    marks: input.firewall.marks,
    unshielded,
    exportTables: input.firewall.exportSets.map((s) => {
      const [family, name] = s.split(" ") as ["inet" | "ip" | "ip6", string];
      if (family === "inet" && name === input.firewall.table)
        throw new FirewallConfigError(`firewall.exportSets: ${s} is SENG's own table`);
      return { family, name };
    }),
    enabled: input.firewall.enabled,
    gateway: gatewayOf(input.gateway),
  };
}

function gatewayOf(g: PolicyInput["gateway"]): PolicyModel["gateway"] {
  const address = g?.address ?? "100.64.0.1";
  const dns = g?.dns ?? [];
  const a6 = g?.address6?.split("/")[0];
  const same6 = (d: string) => a6 !== undefined && isIP(d) === 6 && addressBits(d, 6) === addressBits(a6, 6);
  return {
    address,
    dns: dns.includes(address),
    ...(a6 ? { address6: a6 } : {}),
    dns6: dns.some(same6),
  };
}

/** The IPv6 prefixes the apps lease from (own prefixes and the shared pool6), each once. */
export function appPrefixes6(model: PolicyModel): string[] {
  return [...new Set(model.apps.flatMap((a) => (a.subnet6 ? [a.subnet6] : [])))];
}

/**
 * One spelling per address (IPv6: RFC 5952, lower case, longest zero run compressed, without a zone index such as
 * `%seng0`, which names an interface, not another address); others unchanged.
 */
export function canonicalAddress(address: string): string {
  if (isIP(address) !== 6) return address;
  const bare = address.split("%")[0]!;
  try {
    return new URL(`http://[${bare}]/`).hostname.slice(1, -1);
  } catch {
    return bare.toLowerCase();
  }
}

/** True when `address` (v4 or v6) is in one of `nets`. */
export function inNets(address: string, nets: readonly string[]): boolean {
  const fam = isIP(address);
  if (!fam || nets.length === 0) return false;
  const bl = new BlockList();
  for (const n of nets) {
    const [a, len] = n.split("/");
    const t = isIP(a!) === 6 ? "ipv6" : "ipv4";
    if (len === undefined) bl.addAddress(a!, t);
    else bl.addSubnet(a!, Number(len), t);
  }
  return bl.check(address, fam === 6 ? "ipv6" : "ipv4");
}
