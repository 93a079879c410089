/**
 * The read side of the etcd store that does not depend on this gateway's own leases: revocation records, the
 * audit answer (`who <address> --at <time>`, for any gateway's lease) and the watch with progress notifications.
 */
import type { IKeyValue } from "etcd3";
import {
  AUDIT_FIELDS,
  decode,
  pad,
  parseLease,
  type AuditValue,
  type Keys,
  type RevokeValue,
} from "./etcd-model.js";
import type { EtcdSession } from "./etcd-session.js";
import type { Revocation, StoreEvent, WhoAnswer } from "./interface.js";

export function revocationOf(keys: Keys, kv: IKeyValue): Revocation | undefined {
  const rest = kv.key.toString().slice(keys.revokes.length);
  const slash = rest.indexOf("/");
  const kind = rest.slice(0, slash);
  if (kind !== "app" && kind !== "key" && kind !== "measurement") return undefined;
  const v = decode<RevokeValue>(kv.key.toString(), kv.value, ["reason", "t"]);
  return { kind, value: rest.slice(slash + 1), reason: v.reason, t: v.t };
}

/** Every revocation, oldest first. */
export async function listRevocations(session: EtcdSession, keys: Keys): Promise<Revocation[]> {
  const out: Revocation[] = [];
  for (const kv of await session.rangePrefix(keys.revokes)) {
    const r = revocationOf(keys, kv);
    if (r) out.push(r);
  }
  return out.sort((a, b) => a.t - b.t || a.kind.localeCompare(b.kind) || a.value.localeCompare(b.value));
}

/** The lease that held `address` at `at`: the newest audit record granted at or before `at`. */
export async function whoAt(
  session: EtcdSession,
  keys: Keys,
  address: string,
  at: number,
): Promise<WhoAnswer> {
  const from = keys.auditOf(address);
  const [kv] = await session.range({
    key: Buffer.from(from),
    range_end: Buffer.from(from + pad(at + 1)),
    sort_order: "Descend",
    sort_target: "Key",
    limit: 1,
  });
  if (!kv) return { address, at, holder: null, previous: null };
  const a = decode<AuditValue>(kv.key.toString(), kv.value, AUDIT_FIELDS);
  // Created in the grant's transaction: its create_revision is the lease id.
  const leaseId = Number(kv.create_revision);
  if (a.released !== null && a.released <= at)
    return { address, at, holder: null, previous: { app: a.app, leaseId, released: a.released } };
  const renew = a.renews.filter((r) => r.t <= at).at(-1);
  return {
    address,
    at,
    holder: {
      app: a.app,
      measurement: a.measurement,
      keyFp: a.keyFp,
      outer: renew?.outer ?? a.outer,
      leaseId,
      granted: a.start,
      released: a.released,
      releaseReason: a.reason,
    },
    previous: null,
  };
}

/**
 * Watches leases and revocations from now on. Progress notifications (etcd's progress_notify; the interval is
 * etcd's --experimental-watch-progress-notify-interval) arrive as `progress` events: everything up to their
 * revision has been delivered, which bounds how stale a gateway's view can be.
 */
export async function watchStore(
  session: EtcdSession,
  keys: Keys,
  onEvent: (e: StoreEvent) => void,
  fromRev?: number,
): Promise<() => void> {
  const b = session.client.watch().prefix(keys.prefix);
  const w = await (fromRev ? b.startRevision(String(fromRev)) : b).create();
  // A broken watch (compaction, cancel) is retried by the client; meanwhile no progress notifications arrive,
  // which is how a consumer sees that its view is getting stale. An unhandled 'error' would end the process.
  w.on("error", () => undefined);
  w.on("data", (res) => {
    if (!res.events.length) return onEvent({ type: "progress", rev: Number(res.header.revision) });
    for (const ev of res.events) {
      const key = ev.kv.key.toString();
      const rev = Number(ev.kv.mod_revision);
      try {
        if (key.startsWith(keys.leases)) {
          const address = key.slice(keys.leases.length);
          if (ev.type === "Delete") onEvent({ type: "lease-gone", rev, address });
          else {
            const v = parseLease(ev.kv);
            if (v)
              onEvent({
                type: "lease",
                rev,
                address,
                app: v.app,
                keyFp: v.keyFp,
                id: Number(ev.kv.create_revision),
                holder: v.holder,
              });
          }
        } else if (key.startsWith(keys.revokes)) {
          const rest = key.slice(keys.revokes.length);
          const kind = rest.slice(0, rest.indexOf("/")) as Revocation["kind"];
          if (ev.type === "Delete")
            onEvent({ type: "unrevoke", rev, kind, value: rest.slice(kind.length + 1) });
          else {
            const r = revocationOf(keys, ev.kv);
            if (r) onEvent({ type: "revoke", rev, revocation: r });
          }
        }
      } catch {
        // A malformed value under our prefix is skipped here; range reads report it.
      }
    }
  });
  return () => void w.cancel().catch(() => undefined);
}
