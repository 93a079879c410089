/**
 * `seng policy explain`: which rule decides a packet, evaluated in TypeScript over the same compiled model
 * (model.ts) that nft.ts renders, in the same order as the chains:
 *
 *   1. from a LAN interface listed in firewall.unshielded (not a tunnel): the allow list, else dropped
 *   2. not from and not to a tunnel: SENG's table does not decide (accepted by our table)
 *   3. from or to a tunnel: policy.rules in order, first match wins; none → policy.default
 * Only new connections are evaluated (established flows are accepted as the chain's first rule does).
 */
import { isIP } from "node:net";
import { inNets, type Endpoint, type PolicyModel, type Proto } from "./model.js";

export interface Packet {
  /** Source: an app name, or an address. */
  from: string;
  /** Destination address (or an app name, taken as one of its live addresses). */
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
}

function matches(e: Endpoint, side: Side, model: PolicyModel): { ok: boolean; why: string } {
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
export function explain(model: PolicyModel, p: Packet, resolve: Resolver): Explanation {
  const trace: string[] = [];
  const appNames = new Set(model.apps.map((a) => a.name));
  const side = (s: string, what: string): Side => {
    if (appNames.has(s)) return { app: s };
    if (!isIP(s)) throw new Error(`${what}: ${s} is neither an app of this config nor an address`);
    const app = resolve(s);
    return { app, address: s };
  };
  const src = side(p.from, "source");
  const dst = side(p.to, "destination");
  if (src.address && src.app) trace.push(`${src.address} is a live tunnel of ${src.app}`);
  if (dst.address && dst.app) trace.push(`${dst.address} is a live tunnel of ${dst.app}`);
  if (!model.enabled)
    return { verdict: "accept", decidedBy: "none", trace: [...trace, "firewall.enabled is false"] };
  const fromTunnel = src.app !== undefined;
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
    const f = matches(r.from, src, model);
    if (!f.ok) {
      trace.push(`${r.path}: no (from: ${f.why})`);
      continue;
    }
    const t = matches(r.to, dst, model);
    if (!t.ok) {
      trace.push(`${r.path}: no (to: ${t.why})`);
      continue;
    }
    const l = portOk(r, p);
    if (!l.ok) {
      trace.push(`${r.path}: no (${l.why})`);
      continue;
    }
    trace.push(
      `${r.path}: matches (${f.why}; ${t.why}${r.proto !== "any" ? `; ${p.proto}${p.port ? `/${p.port}` : ""}` : ""})`,
    );
    return { verdict: r.action, decidedBy: r.path, trace };
  }
  trace.push(`no rule matches: policy.default is ${model.defaultAction === "accept" ? "allow" : "deny"}`);
  return { verdict: model.defaultAction, decidedBy: "policy.default", trace };
}
