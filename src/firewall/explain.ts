/**
 * `seng policy explain`: which rule decides a packet, evaluated in TypeScript over the same compiled model
 * (model.ts) that nft.ts renders, in the same order as the chains:
 *
 *   1. from the gateway host (output path): not filtered by SENG's table
 *   2. to the gateway host (gateway path): from a tunnel, DNS to the TUN address when the leases announce it, then the
 *      `to: gateway` rules in order, none → dropped (`gateway.default`); not from a tunnel: not ours to decide
 *   3. from a LAN interface listed in firewall.unshielded (not a tunnel): the allow list, else dropped
 *   4. not from and not to a tunnel: SENG's table does not decide (accepted by our table)
 *   5. from or to a tunnel: policy.rules (those not `to: gateway`) in order, first match wins; none → policy.default
 * Only new connections are evaluated (established flows are accepted as the chains' first rules do).
 */
import { isIP } from "node:net";
import { GATEWAY, inNets, type Endpoint, type PolicyModel, type Proto, type Rule } from "./model.js";

export interface Packet {
  /** Source: an app name, or an address. */
  from: string;
  /**
   * Destination address (or an app name, taken as one of its live addresses), or `gateway`: the gateway host, taken
   * as its TUN address.
   */
  to: string;
  proto: Proto;
  port?: number;
  /** Interface the packet comes in on, when it does not come from a tunnel (for the unshielded rules). */
  inInterface?: string;
}

export interface Explanation {
  verdict: "accept" | "drop";
  /** Key path of the deciding rule (`policy.rules[2]`, `policy.default`, `firewall.unshielded`, …), or `none`. */
  decidedBy: string;
  /** One line per step. */
  trace: string[];
}

/** address → app holding it now (live tunnel), if any */
export type Resolver = (address: string) => string | undefined;

/**
 * True for an address of the gateway host (judged on the gateway path, before any DNAT). The TUN address
 * and `gateway` are always the host; the CLI adds the addresses of the host it runs on.
 */
export type LocalCheck = (address: string) => boolean;

/** True when `a` and `b` are one IPv6 address (written either way). */
function sameAddress6(a: string, b: string | undefined): boolean {
  return b !== undefined && isIP(a) === 6 && inNets(a, [b]);
}

/** Parses `tcp/443`, `udp/53`, `icmp`, `any`. */
export function parseService(s: string): { proto: Proto; port?: number } {
  const m = /^(tcp|udp)\/(\d{1,5})$/.exec(s);
  if (m) {
    const port = Number(m[2]);
    if (port < 1 || port > 65535) throw new Error(`port out of range: ${s}`);
    return { proto: m[1] as Proto, port };
  }
  if (s === "icmp" || s === "any") return { proto: s };
  throw new Error(`expected tcp/<port>, udp/<port>, icmp or any (got ${JSON.stringify(s)})`);
}

interface Side {
  app?: string;
  address?: string;
  /** The gateway host itself. */
  gateway?: boolean;
}

function matches(e: Endpoint, side: Side, model: PolicyModel): { ok: boolean; why: string } {
  if (e.kind === "gateway")
    return side.gateway
      ? { ok: true, why: `${side.address} is the gateway host` }
      : { ok: false, why: `${side.address ?? side.app} is not the gateway host` };
  if (e.kind === "any") return { ok: true, why: "any" };
  if (e.kind === "apps") {
    if (!side.app) return { ok: false, why: `${side.address} is not a live tunnel of ${e.label}` };
    const ok = e.apps.includes(side.app);
    return { ok, why: ok ? `${side.app} is in ${e.label}` : `${side.app} is not ${e.label}` };
  }
  if (!side.address) return { ok: false, why: `no address given for ${side.app} to compare with ${e.label}` };
  const ok = inNets(side.address, isIP(side.address) === 6 ? e.v6 : e.v4);
  void model;
  return { ok, why: `${side.address} ${ok ? "is" : "is not"} in ${e.label}` };
}

function portOk(rule: { proto: Proto; ports: [number, number][] }, p: Packet): { ok: boolean; why: string } {
  if (rule.proto !== "any" && rule.proto !== p.proto)
    return { ok: false, why: `proto ${p.proto} is not ${rule.proto}` };
  if (!rule.ports.length) return { ok: true, why: "" };
  if (p.port === undefined) return { ok: false, why: "no port" };
  const ok = rule.ports.some(([a, b]) => p.port! >= a && p.port! <= b);
  return {
    ok,
    why: ok
      ? ""
      : `port ${p.port} is not in ${rule.ports.map(([a, b]) => (a === b ? a : `${a}-${b}`)).join(",")}`,
  };
}

/** Explains what SENG's table does with the first packet of a connection. */
/**
 * Whether `r` matches (from, to, then service), with one trace line either way. `dst` null: the gateway host, which
 * a `to: gateway` rule names by its kind alone.
 */
function ruleMatches(
  r: Rule,
  p: Packet,
  src: Side,
  dst: Side | null,
  model: PolicyModel,
  trace: string[],
): boolean {
  const f = matches(r.from, src, model);
  if (!f.ok) {
    trace.push(`${r.path}: no (from: ${f.why})`);
    return false;
  }
  const t = dst ? matches(r.to, dst, model) : { ok: true, why: "to the gateway host" };
  if (!t.ok) {
    trace.push(`${r.path}: no (to: ${t.why})`);
    return false;
  }
  const l = portOk(r, p);
  if (!l.ok) {
    trace.push(`${r.path}: no (${l.why})`);
    return false;
  }
  const service = r.proto !== "any" ? `; ${p.proto}${p.port ? `/${p.port}` : ""}` : "";
  trace.push(`${r.path}: matches (${f.why}; ${t.why}${service})`);
  return true;
}

export function explain(
  model: PolicyModel,
  p: Packet,
  resolve: Resolver,
  isLocal: LocalCheck = () => false,
): Explanation {
  const trace: string[] = [];
  const appNames = new Set(model.apps.map((a) => a.name));
  const side = (s: string, what: string): Side => {
    if (appNames.has(s)) return { app: s };
    if (s === GATEWAY) return { address: model.gateway.address, gateway: true };
    if (!isIP(s))
      throw new Error(`${what}: ${s} is neither an app of this config, ${GATEWAY}, nor an address`);
    if (s === model.gateway.address || isLocal(s) || sameAddress6(s, model.gateway.address6))
      return { address: s, gateway: true };
    // A multicast destination (ff00::/8) of a tunnel's packet is the gateway host: the TUN is the only link there.
    if (what === "destination" && isIP(s) === 6 && inNets(s, ["ff00::/8"]))
      return { address: s, gateway: true };
    const app = resolve(s);
    return { app, address: s };
  };
  const src = side(p.from, "source");
  const dst = side(p.to, "destination");
  // The gateway host by keyword: its TUN address of the source's family (IPv6 when it has one).
  if (p.to === GATEWAY && src.address && isIP(src.address) === 6 && model.gateway.address6)
    dst.address = model.gateway.address6;
  if (src.address && dst.address && isIP(src.address) !== isIP(dst.address))
    throw new Error(
      `source ${src.address} and destination ${dst.address} are of different address families (IPv4 and IPv6)`,
    );
  if (src.address && src.app) trace.push(`${src.address} is a live tunnel of ${src.app}`);
  if (dst.address && dst.app) trace.push(`${dst.address} is a live tunnel of ${dst.app}`);
  if (!model.enabled)
    return { verdict: "accept", decidedBy: "none", trace: [...trace, "firewall.enabled is false"] };
  const fromTunnel = src.app !== undefined;
  if (src.gateway) {
    trace.push(
      `${src.address} is the gateway host: what it sends (output path) is not filtered by SENG's table`,
    );
    return { verdict: "accept", decidedBy: "none", trace };
  }
  if (dst.gateway) return toGateway(model, p, src, dst, trace);
  if (
    !fromTunnel &&
    model.unshielded &&
    p.inInterface &&
    model.unshielded.interfaces.includes(p.inInterface)
  ) {
    trace.push(`comes in on ${p.inInterface}, a LAN interface in firewall.unshielded, not through a tunnel`);
    for (const a of model.unshielded.allow) {
      if (dst.app !== undefined) {
        trace.push(`${a.path}: no (the allow list never opens a way into the tunnels)`);
        continue;
      }
      const d = matches(a.to, dst, model);
      const l = portOk(a, p);
      if (d.ok && l.ok)
        return { verdict: "accept", decidedBy: a.path, trace: [...trace, `${a.path}: ${d.why}`] };
      trace.push(`${a.path}: no (${!d.ok ? d.why : l.why})`);
    }
    return {
      verdict: "drop",
      decidedBy: "firewall.unshielded",
      trace: [...trace, "unshielded traffic is dropped"],
    };
  }
  if (!fromTunnel && dst.app === undefined) {
    trace.push("neither from nor to a tunnel: SENG's policy does not apply");
    return { verdict: "accept", decidedBy: "none", trace };
  }
  if (!model.filtering) {
    trace.push("the config has no policy section: tunnel traffic is not filtered");
    return { verdict: "accept", decidedBy: "none", trace };
  }
  for (const r of model.rules) {
    if (r.to.kind === "gateway") {
      trace.push(`${r.path}: no (to: only for traffic to the gateway host)`);
      continue;
    }
    if (ruleMatches(r, p, src, dst, model, trace)) return { verdict: r.action, decidedBy: r.path, trace };
  }
  trace.push(`no rule matches: policy.default is ${model.defaultAction === "accept" ? "allow" : "deny"}`);
  return { verdict: model.defaultAction, decidedBy: "policy.default", trace };
}

/** The gateway path: a packet to the gateway host itself, also on a DNATed port (nft chain `gateway`). */
function toGateway(model: PolicyModel, p: Packet, src: Side, dst: Side, trace: string[]): Explanation {
  if (src.app === undefined) {
    trace.push(
      `${dst.address} is the gateway host, and ${src.address} is not a tunnel: SENG's table filters only what tunnels send to the gateway`,
    );
    return { verdict: "accept", decidedBy: "none", trace };
  }
  trace.push(`${dst.address} is the gateway host: only rules with to: ${GATEWAY} apply (gateway path)`);
  const dnsServer =
    (model.gateway.dns && dst.address === model.gateway.address) ||
    (model.gateway.dns6 && sameAddress6(dst.address!, model.gateway.address6));
  if (dnsServer && (p.proto === "udp" || p.proto === "tcp") && p.port === 53) {
    trace.push(`dns: ${dst.address} is a DNS server the leases announce: DNS to it is allowed`);
    return { verdict: "accept", decidedBy: "dns", trace };
  }
  for (const r of model.rules) {
    if (r.to.kind !== "gateway") continue;
    if (ruleMatches(r, p, src, null, model, trace)) return { verdict: r.action, decidedBy: r.path, trace };
  }
  trace.push(`no rule with to: ${GATEWAY} matches: traffic from tunnels to the gateway host is dropped`);
  return { verdict: "drop", decidedBy: "gateway.default", trace };
}
