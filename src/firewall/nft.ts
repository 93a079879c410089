/**
 * Renders the compiled policy (model.ts) as one nftables script and applies it atomically with `nft -f -`.
 *
 * The script touches only SENG's own table (default `inet seng`), plus `add set` of the app and category sets in the
 * tables named by `firewall.exportSets`. It never flushes the ruleset. One `nft -f` is one kernel transaction:
 *
 *   add table inet seng; flush table inet seng            (rules go, sets and their elements stay)
 *   delete chain … / delete set …                           (what the previous policy had and this one does not)
 *   add set seng_app_<app> / seng_cat_<category> …           (kept: live tunnel addresses survive a re-apply)
 *   sets from policy.sets, named counters, chains and rules
 *
 * Chains (all in our table):
 *   forward (hook forward, priority filter, policy accept)
 *     iifname <LAN>  jump unshielded      when firewall.unshielded.drop
 *     iifname <tun>  ct state new jump marks
 *     iifname <tun>  jump rules            traffic from tunnels
 *     oifname <tun>  jump rules            traffic to tunnels
 *   unshielded: allow-list entries accept, then `counter name seng_unshielded_drops drop`
 *   marks: `ip saddr @seng_app_<app> ct mark set <mark>` per app (connection accounting)
 *   rules: `ct state established,related accept`, the rules in order (each with its named counter and its key path
 *     as comment), then the default with the named counter seng_policy_default
 *   prerouting (hook prerouting, type filter, priority dstnat - 1 = -101, policy accept)
 *     iifname <tun> fib daddr type { local, anycast, broadcast, multicast } jump gateway
 *                                         traffic from tunnels to the gateway host itself, judged before any DNAT
 *                                         (Docker -p, kube-proxy, NodePort) can turn it into forwarded traffic;
 *                                         conntrack (-200) has run, so ct state works
 *   input (hook input, priority filter, policy accept)
 *     iifname <tun> ct status dnat jump gateway
 *                                         traffic that a DNAT/REDIRECT of the host turned toward the host itself
 *                                         (a transparent proxy, say): prerouting saw another address
 *   gateway: `ct state established,related accept` (answers to the gateway's own connections, and their ICMP
 *     errors), DNS to the TUN address when the leases announce it, the `to: gateway` rules in order, then
 *     `counter name seng_gateway_default drop`, whatever policy.default says and also without a policy section
 * Every counter is a named one: `flush table` drops the rules and with them any anonymous counters, so a reload
 * used to zero every rule's count. A rule's counter is named from its content (seng_c_<hash>), so a rule that a
 * reload keeps keeps its count, also when it moves; counters no rule uses any more are deleted.
 * An accept here ends only our chain; other tables' chains still see the packet, so admins' own rules keep working.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  addressBits,
  appPrefixes6,
  parseNet,
  type AllowEntry,
  type Endpoint,
  type PolicyModel,
  type Rule,
} from "./model.js";

export class NftError extends Error {
  override readonly name = "NftError";
}

/** Runs `nft <args>` with `input` on stdin; resolves stdout, rejects with nft's error text. */
export function nft(args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn("nft", args, { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    p.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    p.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
    p.on("error", (e) => reject(new NftError(`nft: ${e.message}`)));
    p.on("close", (code) =>
      code === 0
        ? resolve(out)
        : reject(new NftError(`nft ${args.join(" ")}: ${err.trim() || `exit ${code}`}`)),
    );
    p.stdin.on("error", () => {}); // nft may exit before reading everything; its exit code tells
    p.stdin.end(input ?? "");
  });
}

/** Set names of a table (empty when it does not exist). */
async function listSets(family: string, table: string): Promise<string[]> {
  try {
    const out = await nft(["-j", "list", "sets", family]);
    const items = (JSON.parse(out) as { nftables: { set?: { name: string; table: string } }[] }).nftables;
    return items.filter((i) => i.set && i.set.table === table).map((i) => i.set!.name);
  } catch {
    return [];
  }
}

/** Chains, sets and named counters our table has now (empty when it does not exist). */
export async function listTable(
  table: string,
): Promise<{ chains: string[]; sets: string[]; counters?: string[] }> {
  let out: string;
  try {
    out = await nft(["-j", "list", "table", "inet", table]);
  } catch (e) {
    if (/No such file or directory/.test((e as Error).message)) return { chains: [], sets: [], counters: [] };
    throw e;
  }
  const items = (JSON.parse(out) as { nftables: Record<string, { name: string }>[] }).nftables;
  return {
    chains: items.filter((i) => i.chain).map((i) => i.chain!.name),
    sets: items.filter((i) => i.set).map((i) => i.set!.name),
    counters: items.filter((i) => i.counter).map((i) => i.counter!.name),
  };
}

/** The named counter of a rule or allow entry, from its content (not its position): see the header. */
export function counterName(r: Pick<Rule, "from" | "to" | "proto" | "ports"> & { action?: string }): string {
  const key = JSON.stringify([r.from, r.to, r.proto, r.ports, r.action ?? "allow-list"]);
  return `seng_c_${createHash("sha256").update(key).digest("hex").slice(0, 16)}`;
}

/** Names of the sets holding app addresses: per app and per category, IPv4 and IPv6. */
export function memberSets(model: PolicyModel): { name: string; v6: boolean }[] {
  const out: { name: string; v6: boolean }[] = [];
  for (const a of model.apps)
    out.push({ name: `seng_app_${a.name}`, v6: false }, { name: `seng_app6_${a.name}`, v6: true });
  for (const c of Object.keys(model.categories))
    out.push({ name: `seng_cat_${c}`, v6: false }, { name: `seng_cat6_${c}`, v6: true });
  return out;
}

const q = (s: string) => JSON.stringify(s);

function addrMatch(dir: "saddr" | "daddr", e: Endpoint, fam: 4 | 6): string | null {
  const ip = fam === 4 ? "ip" : "ip6";
  // `gateway` is the gateway chain itself (every packet there is to the host), rendered only there as `any`.
  if (e.kind === "any" || e.kind === "gateway") return "";
  if (e.kind === "apps") return `${ip} ${dir} @${fam === 4 ? e.set : e.set6}`;
  const list = fam === 4 ? e.v4 : e.v6;
  if (list.length === 0) return null; // this family cannot match
  if (e.set) return `${ip} ${dir} @${fam === 4 ? e.set : e.set6}`;
  return `${ip} ${dir} ${list.length === 1 ? list[0] : `{ ${list.join(", ")} }`}`;
}

function l4(proto: Rule["proto"], ports: [number, number][], fam: 4 | 6 | 0): string {
  if (proto === "any") return "";
  if (proto === "icmp")
    return fam === 4
      ? "meta l4proto icmp"
      : fam === 6
        ? "meta l4proto ipv6-icmp"
        : "meta l4proto { icmp, ipv6-icmp }";
  if (!ports.length) return `meta l4proto ${proto}`;
  const p = ports.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`));
  return `${proto} dport ${p.length === 1 ? p[0] : `{ ${p.join(", ")} }`}`;
}

/** One nftables rule per address family the rule can match (one family-less rule when both ends are `any`). */
function renderMatch(
  from: Endpoint,
  to: Endpoint,
  proto: Rule["proto"],
  ports: [number, number][],
): string[] {
  if (from.kind === "any" && to.kind === "any") return [l4(proto, ports, 0)];
  const out: string[] = [];
  for (const fam of [4, 6] as const) {
    const s = addrMatch("saddr", from, fam);
    const d = addrMatch("daddr", to, fam);
    if (s === null || d === null) continue;
    out.push([s, d, l4(proto, ports, fam)].filter(Boolean).join(" "));
  }
  return out;
}

export interface RenderOptions {
  /** What the table has now (from {@link listTable}): deleted unless still wanted. */
  existing?: { chains: string[]; sets: string[]; counters?: string[] };
  /**
   * Live members per set name (the gateway's view): the sets are flushed and filled with exactly these, in the
   * same transaction. Without it (`seng policy apply` from the shell), existing members are kept.
   */
  members?: ReadonlyMap<string, readonly string[]>;
  /**
   * App and category sets of ours found in exported tables (`"ip filter"` → set names), including tables no longer
   * exported: those not wanted any more are flushed (not deleted: the admin's rules may still name them), so an
   * address of a removed app or category, later given to someone else, matches nothing there.
   */
  exported?: ReadonlyMap<string, readonly string[]>;
}

/** ICMPv6 neighbour and router discovery and redirects (RFC 4861). */
const ND_TYPES = [
  "nd-router-solicit",
  "nd-router-advert",
  "nd-neighbor-solicit",
  "nd-neighbor-advert",
  "nd-redirect",
];

/**
 * What the LAN side (firewall.unshielded.interfaces) may not do with IPv6 neighbour and router discovery, at the
 * prerouting hook (before the kernel's ND code, which runs after the input hook):
 *   - router advertisements and redirects are dropped: a rogue RA would give the gateway a default route, a more
 *     specific route (route information option) or an address through a LAN host, and a redirect would move a
 *     destination's next hop to one: a way to pull the gateway's forwarded traffic through a LAN host;
 *   - neighbour solicitations and advertisements whose target is in an app's IPv6 prefix or is the gateway's TUN
 *     address: app addresses live behind the tunnels, never on a LAN, so a LAN host that claims or probes one is
 *     spoofing (the target's prefix is matched on the raw ICMPv6 payload, the target field at byte 8);
 *   - link-local sources toward anything but the gateway itself: a link-local source cannot be forwarded (the kernel
 *     drops it too, uncounted); counted here as unshielded.
 * Everything else of ND (the gateway's own neighbour discovery with its LAN neighbours, router solicitations) passes.
 */
export function lanNdRules(model: PolicyModel): string[] {
  if (!model.unshielded) return [];
  const lan = `iifname { ${model.unshielded.interfaces.map(q).join(", ")} }`;
  const out = [
    `${lan} icmpv6 type { nd-router-advert, nd-redirect } counter name "seng_nd_drops" drop comment "firewall.unshielded.nd"`,
  ];
  const targets = [...appPrefixes6(model), ...(model.gateway.address6 ? [model.gateway.address6] : [])];
  for (const t of targets) {
    const n = parseNet(t);
    if (!n || n.family !== 6) continue;
    const [addr, len] = n.net.split("/");
    const bits = len === undefined ? 128 : Number(len);
    if (bits === 0) continue;
    const top = addressBits(addr!, 6) >> BigInt(128 - bits);
    out.push(
      `${lan} icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,64,${bits} 0x${top.toString(16)} counter name "seng_nd_drops" drop comment "firewall.unshielded.nd"`,
    );
  }
  out.push(
    `${lan} ip6 saddr fe80::/10 fib daddr type != { local, anycast, multicast } counter name "seng_unshielded_drops" drop comment "firewall.unshielded"`,
  );
  return out;
}

/** The rules with `to: gateway` (the gateway chain, before NAT), in order. */
export function gatewayRules(model: PolicyModel): Rule[] {
  return model.rules.filter((r) => r.to.kind === "gateway");
}

/** The whole policy as one nft script (one transaction). */
export function renderScript(model: PolicyModel, opts: RenderOptions = {}): string {
  const T = `inet ${model.table}`;
  const L: string[] = [`add table ${T}`, `flush table ${T}`];
  const wantedSets = new Set([
    ...memberSets(model).map((s) => s.name),
    ...Object.keys(model.sets).flatMap((n) => [`seng_net_${n}`, `seng_net6_${n}`]),
  ]);
  for (const c of opts.existing?.chains ?? []) L.push(`delete chain ${T} ${c}`);
  // Config sets are rebuilt from the config every time; app/category sets keep their elements.
  for (const s of opts.existing?.sets ?? [])
    if (!wantedSets.has(s) || s.startsWith("seng_net")) L.push(`delete set ${T} ${s}`);
  const memberTables = [{ family: "inet", name: model.table }, ...model.exportTables];
  for (const t of memberTables) {
    for (const s of memberSets(model)) {
      if ((t.family === "ip" && s.v6) || (t.family === "ip6" && !s.v6)) continue;
      const ref = `${t.family} ${t.name} ${s.name}`;
      L.push(`add set ${ref} { type ${s.v6 ? "ipv6_addr" : "ipv4_addr"}; }`);
      const m = opts.members?.get(s.name);
      if (opts.members) {
        L.push(`flush set ${ref}`);
        if (m?.length) L.push(`add element ${ref} { ${m.join(", ")} }`);
      }
    }
  }
  for (const [table, sets] of opts.exported ?? []) {
    const t = model.exportTables.find((x) => `${x.family} ${x.name}` === table);
    const wanted = new Set(
      t
        ? memberSets(model)
            .filter((s) => !((t.family === "ip" && s.v6) || (t.family === "ip6" && !s.v6)))
            .map((s) => s.name)
        : [],
    );
    for (const set of sets) if (!wanted.has(set)) L.push(`flush set ${table} ${set}`);
  }
  for (const [n, s] of Object.entries(model.sets)) {
    for (const [name, list, type] of [
      [`seng_net_${n}`, s.v4, "ipv4_addr"],
      [`seng_net6_${n}`, s.v6, "ipv6_addr"],
    ] as const) {
      L.push(`add set ${T} ${name} { type ${type}; flags interval; auto-merge; }`);
      if (list.length) L.push(`add element ${T} ${name} { ${list.join(", ")} }`);
    }
  }
  const allowList = model.unshielded ? (model.unshielded.allow as AllowEntry[]) : [];
  const entryCounters = new Set([
    ...(model.filtering ? model.rules.map(counterName) : []),
    ...gatewayRules(model).map(counterName),
    ...allowList.map((a) => counterName({ from: { kind: "any", label: "any" } as Endpoint, ...a })),
  ]);
  for (const c of [
    "seng_policy_default",
    "seng_unshielded_drops",
    "seng_gateway_default",
    "seng_nd_drops",
    "seng_sync",
    ...entryCounters,
  ])
    L.push(`add counter ${T} ${c}`);

  const tun = q(model.tun);
  L.push(`add chain ${T} forward { type filter hook forward priority filter; policy accept; }`);
  if (model.unshielded) L.push(`add chain ${T} unshielded`);
  if (model.marks) L.push(`add chain ${T} marks`);
  if (model.filtering) L.push(`add chain ${T} rules`);
  // Before NAT (dstnat is -100): an input-hooked chain never saw a packet to the host that DNAT redirects.
  L.push(`add chain ${T} prerouting { type filter hook prerouting priority dstnat - 1; policy accept; }`);
  L.push(`add chain ${T} input { type filter hook input priority filter; policy accept; }`);
  L.push(`add chain ${T} gateway`);
  const rule = (chain: string, text: string) => L.push(`add rule ${T} ${chain} ${text}`);

  if (model.unshielded)
    rule("forward", `iifname { ${model.unshielded.interfaces.map(q).join(", ")} } jump unshielded`);
  if (model.marks) rule("forward", `iifname ${tun} ct state new jump marks`);
  if (model.filtering) {
    rule("forward", `iifname ${tun} jump rules`);
    rule("forward", `oifname ${tun} jump rules`);
  }
  if (model.unshielded) {
    // The allow list is for infrastructure (DHCP, DNS, ...), never a way past the policy into the tunnels.
    for (const a of allowList) {
      const cn = counterName({ from: { kind: "any", label: "any" } as Endpoint, ...a });
      for (const m of renderMatch({ kind: "any", label: "any" }, a.to, a.proto, a.ports))
        rule(
          "unshielded",
          `oifname != ${tun} ${m} counter name ${q(cn)} accept comment ${q(a.path)}`
            .replace(/ +/g, " ")
            .trim(),
        );
    }
    rule("unshielded", `counter name "seng_unshielded_drops" drop comment "firewall.unshielded"`);
  }
  if (model.marks) {
    for (const a of model.apps) {
      rule(
        "marks",
        `ip saddr @seng_app_${a.name} ct mark set 0x${a.mark.toString(16)} comment ${q(`app:${a.name}`)}`,
      );
      rule(
        "marks",
        `ip6 saddr @seng_app6_${a.name} ct mark set 0x${a.mark.toString(16)} comment ${q(`app:${a.name}`)}`,
      );
    }
  }
  // The gateway host: only what names it as destination, whatever the forward policy says.
  // Addressed to the host (as the input hook saw it: broadcast, multicast and IPv6 anycast, e.g. the subnet-router
  // address of each prefix on the host once forwarding is on, included), before any DNAT.
  rule("prerouting", `iifname ${tun} fib daddr type { local, anycast, broadcast, multicast } jump gateway`);
  if (model.unshielded) for (const r of lanNdRules(model)) rule("prerouting", r);
  // ... and what the host's own DNAT/REDIRECT turned toward the host (prerouting saw another destination). A packet
  // both addressed to the host and redirected to another local port is judged in both places (its first packet only).
  rule("input", `iifname ${tun} ct status dnat jump gateway`);
  // A tunnel is a point-to-point link to the gateway: no neighbour discovery, router discovery or redirects on it.
  // Its runtime writes whole IPv6 headers, hop limit 255 included, so on the TUN that limit proves nothing.
  // First, before the established/related accept and the to: gateway rules (an icmp rule must not open them).
  rule(
    "gateway",
    `icmpv6 type { ${ND_TYPES.join(", ")} } counter name "seng_gateway_default" drop comment "gateway.nd"`,
  );
  rule("gateway", "ct state established,related accept");
  if (model.gateway.dns)
    for (const p of ["udp", "tcp"])
      rule("gateway", `ip daddr ${model.gateway.address} ${p} dport 53 counter accept comment "dns"`);
  if (model.gateway.dns6 && model.gateway.address6)
    for (const p of ["udp", "tcp"])
      rule("gateway", `ip6 daddr ${model.gateway.address6} ${p} dport 53 counter accept comment "dns"`);
  for (const r of gatewayRules(model))
    for (const m of renderMatch(r.from, { kind: "any", label: "any" }, r.proto, r.ports))
      rule(
        "gateway",
        `${m} counter name ${q(counterName(r))} ${r.action} comment ${q(r.path)}`.replace(/^ /, ""),
      );
  rule("gateway", `counter name "seng_gateway_default" drop comment "gateway.default"`);
  if (model.filtering) {
    rule("rules", "ct state established,related accept");
    for (const r of model.rules.filter((x) => x.to.kind !== "gateway"))
      for (const m of renderMatch(r.from, r.to, r.proto, r.ports))
        rule(
          "rules",
          `${m} counter name ${q(counterName(r))} ${r.action} comment ${q(r.path)}`.replace(/^ /, ""),
        );
    rule("rules", `counter name "seng_policy_default" ${model.defaultAction} comment "policy.default"`);
  }
  // Counters of rules that are gone (after the rules that used them were flushed, in the same transaction).
  for (const c of opts.existing?.counters ?? [])
    if (c.startsWith("seng_c_") && !entryCounters.has(c)) L.push(`delete counter ${T} ${c}`);
  return L.join("\n") + "\n";
}

/** Renders against the table's current state and applies in one transaction. */
export async function applyPolicy(
  model: PolicyModel,
  members?: ReadonlyMap<string, readonly string[]>,
  previous?: PolicyModel,
): Promise<string> {
  const exported = new Map<string, string[]>();
  for (const t of [...model.exportTables, ...(previous?.exportTables ?? [])]) {
    const key = `${t.family} ${t.name}`;
    if (exported.has(key)) continue;
    const sets = await listSets(t.family, t.name);
    exported.set(
      key,
      sets.filter((n) => /^seng_(app|cat)6?_/.test(n)),
    );
  }
  const script = renderScript(model, { existing: await listTable(model.table), members, exported });
  await nft(["-f", "-"], script);
  return script;
}

/** Deletes our table (and nothing else). */
export async function removeTable(table: string): Promise<void> {
  await nft(["delete", "table", "inet", table]).catch((e: Error) => {
    if (!/No such file or directory/.test(e.message)) throw e;
  });
}

/** Packets counted per rule comment (key path) and the named counters, from the live table. */
export async function readCounters(table: string): Promise<Record<string, number>> {
  // Named counters and the rules' chains only: listing the whole table would print every set element (megabytes
  // with 100,000 tunnels), for each metrics scrape.
  const chains = ["rules", "unshielded", "gateway", "prerouting"];
  const [named, ...lists] = await Promise.all([
    nft(["-j", "list", "counters", "table", "inet", table]),
    ...chains.map((c) => nft(["-j", "list", "chain", "inet", table, c]).catch(() => '{"nftables":[]}')),
  ]);
  // One document: a rule names its counter, whose value is in the list of counters.
  const items = [named, ...lists].flatMap((j) => (JSON.parse(j) as { nftables: unknown[] }).nftables);
  return parseCounters(JSON.stringify({ nftables: items }));
}

/** Comments of rules that count into a shared named counter: the counter's own entry is their count. */
const SHARED_COUNTER_COMMENTS = new Set([
  "policy.default",
  "firewall.unshielded",
  "firewall.unshielded.nd",
  "gateway.nd",
]);

/**
 * Counters from `nft -j list table` output: the named counters, and per rule comment (key path) the packets of its
 * counter: an anonymous one summed over the comment's rules (one per family), or the named one it refers to (once).
 */
export function parseCounters(json: string): Record<string, number> {
  const out = JSON.parse(json) as {
    nftables: {
      rule?: { comment?: string; expr: { counter?: { packets: number } | string }[] };
      counter?: { name: string; packets: number };
    }[];
  };
  const c: Record<string, number> = {};
  const refs = new Map<string, Set<string>>();
  for (const i of out.nftables) {
    if (i.counter) c[i.counter.name] = i.counter.packets;
    if (i.rule?.comment) {
      const ctr = i.rule.expr.find((e) => e.counter)?.counter;
      if (typeof ctr === "string") {
        const s = refs.get(i.rule.comment) ?? new Set<string>();
        refs.set(i.rule.comment, s.add(ctr));
      } else if (ctr) c[i.rule.comment] = (c[i.rule.comment] ?? 0) + ctr.packets;
    }
  }
  for (const [comment, names] of refs) {
    // A named counter's own entry keeps its name; the comment gets its packets.
    if (SHARED_COUNTER_COMMENTS.has(comment)) continue;
    c[comment] = (c[comment] ?? 0) + [...names].reduce((n, name) => n + (c[name] ?? 0), 0);
  }
  return c;
}
