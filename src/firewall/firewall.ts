/**
 * The gateway's firewall: applies the compiled policy (nft.ts) at start and on reload, keeps each live tunnel's
 * address in its app's and categories' sets (sets.ts), and on revocation removes it and deletes its flows
 * (conntrack.ts). The gateway calls tunnelUp/tunnelDown from its lease lifecycle; nothing here is on the packet path.
 */
import { isIP } from "node:net";
import type { Logger } from "../gateway/log.js";
import { deleteFlows } from "./conntrack.js";
import type { PolicyModel } from "./model.js";
import { applyPolicy, readCounters } from "./nft.js";
import { SetSync, type SetRef, type SetSyncStats } from "./sets.js";

/**
 * The sets an address of `app` belongs to, in our table and the exported ones: the family (`seng_app_`/`seng_cat_`
 * or `seng_app6_`/`seng_cat6_`, and which exported tables can hold it) is the address's own. Nothing for an unknown
 * app or a string that is not an address.
 */
export function setRefs(model: PolicyModel, app: string, address: string): SetRef[] {
  const a = model.apps.find((x) => x.name === app);
  const fam = isIP(address);
  if (!a || fam === 0) return [];
  const six = fam === 6 ? "6" : "";
  const names = [`seng_app${six}_${app}`, ...a.categories.map((c) => `seng_cat${six}_${c}`)];
  const tables = [
    `inet ${model.table}`,
    ...model.exportTables
      .filter((t) => t.family !== (fam === 6 ? "ip" : "ip6"))
      .map((t) => `${t.family} ${t.name}`),
  ];
  return tables.flatMap((t) => names.map((n) => `${t} ${n}`));
}

export interface FirewallStats extends SetSyncStats {
  enabled: boolean;
}

export class Firewall {
  private readonly sets: SetSync;
  /** address → app, for the live tunnels */
  private readonly live = new Map<string, string>();

  constructor(
    private model: PolicyModel,
    private readonly log: Logger,
  ) {
    this.sets = new SetSync((message) =>
      this.log.limited("nft-set-error", 5000, "error", "nft-set-error", { message }),
    );
  }

  get enabled(): boolean {
    return this.model.enabled;
  }

  /** Applies the policy (tunnels: none yet, so the sets start empty). */
  async start(): Promise<void> {
    if (!this.enabled) return;
    await this.apply(this.model);
  }

  private refs(app: string, address: string, model = this.model): SetRef[] {
    return setRefs(model, app, address);
  }

  tunnelUp(address: string, app: string): void {
    this.live.set(address, app);
    if (this.enabled) this.sets.set(address, this.refs(app, address));
  }

  tunnelDown(address: string): void {
    this.live.delete(address);
    if (this.enabled) this.sets.set(address, []);
  }

  /** After tunnelDown: waits until the address is out of the sets, then deletes its conntrack entries. */
  async cutFlows(address: string): Promise<number> {
    if (this.enabled) await this.sets.flushed();
    return deleteFlows(address);
  }

  /**
   * Applies `model` atomically, with the sets rebuilt from the live tunnels in the same transaction (category
   * membership may have changed). Throws (nft's error) and keeps the old policy when nft refuses it.
   */
  async apply(model: PolicyModel, revoked: readonly string[] = []): Promise<void> {
    if (!model.enabled) {
      this.model = model;
      return;
    }
    let written: Map<string, SetRef[]> | undefined;
    await this.sets.withExclusive(
      async () => {
        const members = new Map<string, string[]>();
        for (const [addr, app] of this.live) {
          const refs = revoked.includes(addr) ? [] : this.refs(app, addr, model);
          this.sets.set(addr, refs);
          for (const ref of refs) {
            const name = ref.split(" ")[2]!;
            const list = members.get(name) ?? members.set(name, []).get(name)!;
            if (list[list.length - 1] !== addr) list.push(addr);
          }
        }
        // What the script writes; tunnels that come or go while nft runs are diffed against it afterwards.
        written = this.sets.snapshot();
        try {
          await applyPolicy(model, members, this.model);
        } catch (e) {
          written = undefined;
          for (const [addr, app] of this.live) this.sets.set(addr, this.refs(app, addr));
          throw e;
        }
        this.model = model;
        // Tunnels that came up during the apply were given the old model's sets.
        for (const [addr, app] of this.live)
          if (!revoked.includes(addr)) this.sets.set(addr, this.refs(app, addr));
      },
      () => written,
    );
    // The apply wrote every set's members (ours and exported) in its own transaction.
    await this.sets.flushed();
  }

  stats(): FirewallStats {
    return { enabled: this.enabled, ...this.sets.getStats() };
  }

  /** Reports each set addition's latency (queued → confirmed by nft), in seconds. */
  onSetUpdate(fn: (seconds: number) => void): void {
    this.sets.onAdded = fn;
  }

  /**
   * Packets our rules dropped, by reason: `policy` (deny rules and a deny default), `unshielded`, `to-gateway`
   * (tunnel traffic to the gateway host that no `to: gateway` rule allowed, and neighbour discovery from tunnels)
   * and `nd` (router advertisements, redirects and app-address neighbour discovery from the LAN side), read from
   * the live table's counters.
   */
  async drops(): Promise<Record<string, number>> {
    if (!this.enabled) return {};
    const c = await this.counters();
    let policy = this.model.defaultAction === "drop" ? (c.seng_policy_default ?? 0) : 0;
    for (const r of this.model.rules) if (r.action === "drop") policy += c[r.path] ?? 0;
    return {
      policy,
      unshielded: c.seng_unshielded_drops ?? 0,
      "to-gateway": c.seng_gateway_default ?? 0,
      nd: c.seng_nd_drops ?? 0,
    };
  }

  /** Live counters of our table: per rule (key path) and the named counters. */
  async counters(): Promise<Record<string, number>> {
    if (!this.enabled) return {};
    // Scrapes and dashboards may ask often: one read per second at most.
    const now = performance.now();
    if (!this.countersCache || now - this.countersCache.at > 1000)
      this.countersCache = { at: now, value: readCounters(this.model.table) };
    const c = this.countersCache;
    return c.value.catch((e: unknown) => {
      if (this.countersCache === c) this.countersCache = undefined;
      throw e;
    });
  }
  private countersCache: { at: number; value: Promise<Record<string, number>> } | undefined;

  /** Empties the sets (no tunnels are left); the table and its rules stay, so the gateway fails closed. */
  async stop(): Promise<void> {
    if (this.enabled) {
      for (const a of this.live.keys()) this.sets.set(a, []);
      await Promise.race([this.sets.flushed(), new Promise((r) => setTimeout(r, 2000))]);
    }
    this.live.clear();
    await this.sets.close();
  }
}
