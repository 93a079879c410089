/**
 * Node's resolver API (`dns.resolve*`, `dns.reverse`, `dns.Resolver`, and their `dns.promises` forms) answered
 * through the tunnel by the lease's DNS servers (dns.ts), never by c-ares on the host's network. Results and errors
 * have Node's shapes: `resolveMx` gives {priority, exchange}, `resolveTxt` string[][], `resolveAny` records with a
 * `type`, and a name without such a record rejects with ENODATA, a name that does not exist with ENOTFOUND.
 *
 * Servers chosen with `setServers` (on `dns` or a Resolver) are not used: every query goes to the lease's servers,
 * as every packet of the app goes through the tunnel. `Resolver#cancel` does not cancel queries in flight.
 */
import { isIP } from "node:net";
import type { DnsRecord, RecordType } from "./dns-wire.js";
import { queryRecords, resolveError } from "./dns.js";

/** Node's resolve methods, the record type each asks for, and the syscall name its errors carry. */
export const RESOLVE_METHODS = {
  resolve4: ["A", "queryA"],
  resolve6: ["AAAA", "queryAaaa"],
  resolveAny: ["ANY", "queryAny"],
  resolveCaa: ["CAA", "queryCaa"],
  resolveCname: ["CNAME", "queryCname"],
  resolveMx: ["MX", "queryMx"],
  resolveNaptr: ["NAPTR", "queryNaptr"],
  resolveNs: ["NS", "queryNs"],
  resolvePtr: ["PTR", "queryPtr"],
  resolveSoa: ["SOA", "querySoa"],
  resolveSrv: ["SRV", "querySrv"],
  resolveTxt: ["TXT", "queryTxt"],
} as const satisfies Record<string, readonly [RecordType, string]>;
export type ResolveMethod = keyof typeof RESOLVE_METHODS;

const BY_TYPE = new Map<string, ResolveMethod>(
  Object.entries(RESOLVE_METHODS).map(([m, [t]]) => [t, m as ResolveMethod]),
);

const TYPE_NAMES: Record<number, RecordType> = {
  1: "A",
  2: "NS",
  5: "CNAME",
  6: "SOA",
  12: "PTR",
  15: "MX",
  16: "TXT",
  28: "AAAA",
  33: "SRV",
  35: "NAPTR",
  257: "CAA",
};

/** One record of `resolveAny`, as Node gives it. */
function anyRecord(r: DnsRecord): Record<string, unknown> | undefined {
  const type = TYPE_NAMES[r.type];
  if (!type || r.value === undefined) return undefined;
  switch (type) {
    case "A":
    case "AAAA":
      return { address: r.value, ttl: r.ttl, type };
    case "CNAME":
    case "NS":
    case "PTR":
      return { value: r.value, type };
    case "TXT":
      return { entries: r.value, type };
    default:
      return { ...(r.value as object), type };
  }
}

function invalidArg(name: string, value: unknown, expected: string): TypeError {
  return Object.assign(
    new TypeError(`The "${name}" argument must be ${expected}. Received ${typeof value}`),
    { code: "ERR_INVALID_ARG_TYPE" },
  );
}

/** What `method(hostname, options)` resolves to, through the tunnel. */
export async function resolveWith(
  method: ResolveMethod,
  hostname: string,
  options?: { ttl?: boolean },
): Promise<unknown> {
  if (typeof hostname !== "string") throw invalidArg("name", hostname, "of type string");
  const [type, syscall] = RESOLVE_METHODS[method];
  const records = await queryRecords(hostname, type, syscall);
  switch (type) {
    case "A":
    case "AAAA":
      return records.map((r) => (options?.ttl ? { address: r.value, ttl: r.ttl } : r.value));
    case "SOA":
      return records[0]!.value;
    case "ANY":
      return records.map(anyRecord).filter((r) => r !== undefined);
    default:
      return records.map((r) => r.value);
  }
}

/** `dns.resolve(hostname[, rrtype])`'s method for `rrtype` (default "A"); a TypeError for an unknown one. */
export function methodFor(rrtype: unknown): ResolveMethod {
  const m = rrtype === undefined ? "resolve4" : BY_TYPE.get(String(rrtype));
  if (typeof rrtype !== "undefined" && typeof rrtype !== "string")
    throw invalidArg("rrtype", rrtype, "of type string");
  if (!m)
    throw Object.assign(new TypeError(`The argument 'rrtype' is invalid. Received '${String(rrtype)}'`), {
      code: "ERR_INVALID_ARG_VALUE",
    });
  return m;
}

/** The PTR name of an IPv4 or IPv6 address (in-addr.arpa / ip6.arpa), or undefined for anything else. */
export function reverseName(ip: string): string | undefined {
  const family = isIP(ip);
  if (family === 4) return `${ip.split(".").reverse().join(".")}.in-addr.arpa`;
  if (family !== 6) return undefined;
  // Expand "::" and an embedded IPv4 tail, then one nibble per label, least significant first.
  let text = ip.toLowerCase().split("%")[0]!;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4[1]!.split(".").map(Number) as [number, number, number, number];
    text = text.slice(0, -v4[1]!.length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes("::") ? text.split("::") : [text, undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  const nibbles = groups.map((g) => g.padStart(4, "0")).join("");
  return `${[...nibbles].reverse().join(".")}.ip6.arpa`;
}

/** `dns.reverse(ip)` through the tunnel: the PTR names of the address. */
export async function reverse(ip: string): Promise<string[]> {
  if (typeof ip !== "string") throw invalidArg("ip", ip, "of type string");
  const name = reverseName(ip);
  if (!name) throw resolveError("EINVAL", "getHostByAddr", ip);
  try {
    return (await queryRecords(name, "PTR", "getHostByAddr")).map((r) => r.value as string);
  } catch (e) {
    // Node names the address, not the PTR name.
    if ((e as { hostname?: string }).hostname === name)
      throw resolveError((e as NodeJS.ErrnoException).code!, "getHostByAddr", ip);
    throw e;
  }
}

type Callback = (err: Error | null, result?: unknown) => void;

function takeCallback(args: unknown[]): Callback {
  const cb = args[args.length - 1];
  if (typeof cb !== "function") throw invalidArg("callback", cb, "of type function");
  return cb as Callback;
}

/** `dns.<method>(hostname[, options], callback)` for one resolve method. */
export function callbackResolver(method: ResolveMethod): (...args: unknown[]) => void {
  return (hostname: unknown, ...rest: unknown[]) => {
    const cb = takeCallback(rest);
    const options = rest.length > 1 ? (rest[0] as { ttl?: boolean }) : undefined;
    resolveWith(method, hostname as string, options).then(
      (r) => cb(null, r),
      (e: Error) => cb(e),
    );
  };
}

/** `dns.promises.<method>(hostname[, options])`. */
export function promiseResolver(
  method: ResolveMethod,
): (hostname: string, options?: { ttl?: boolean }) => Promise<unknown> {
  return (hostname, options) => resolveWith(method, hostname, options);
}

/** `dns.resolve(hostname[, rrtype], callback)`. */
export function resolveCallback(hostname: unknown, ...rest: unknown[]): void {
  const cb = takeCallback(rest);
  const method = methodFor(rest.length > 1 ? rest[0] : undefined);
  resolveWith(method, hostname as string).then(
    (r) => cb(null, r),
    (e: Error) => cb(e),
  );
}

/** `dns.promises.resolve(hostname[, rrtype])`. */
export function resolvePromise(hostname: string, rrtype?: string): Promise<unknown> {
  try {
    return resolveWith(methodFor(rrtype), hostname);
  } catch (e) {
    return Promise.reject(e as Error);
  }
}

/** `dns.reverse(ip, callback)`. */
export function reverseCallback(ip: unknown, ...rest: unknown[]): void {
  const cb = takeCallback(rest);
  reverse(ip as string).then(
    (r) => cb(null, r),
    (e: Error) => cb(e),
  );
}
