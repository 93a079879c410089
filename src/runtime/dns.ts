/**
 * Name lookups for a shielded app: DNS queries over UDP, through the tunnel, to the DNS servers of the lease: A and
 * AAAA for dns.lookup (and so every connect by name), every record type of Node's resolver API for dns.resolve* and
 * dns.Resolver (./dns-resolve.ts).
 * Never the host's resolver (getaddrinfo, c-ares, /etc/hosts): those are outside the TEE and would leak the names
 * an app looks up and let the host answer them.
 *
 *  - IP literals come back as they are, "localhost" (and *.localhost) as 127.0.0.1, without a query;
 *  - family 4: A, 6: AAAA, 0: both (in parallel), ordered as `order`/`verbatim` or dns.getDefaultResultOrder() say;
 *    "verbatim" (Node 20's default) is the order a host's getaddrinfo would give by RFC 6724: IPv6 first when the
 *    lease has an IPv6 address, else IPv4 first; `hints: dns.ADDRCONFIG` (what net.connect passes) leaves out a
 *    family the lease lacks;
 *  - servers of a family the lease lacks are skipped (an IPv4-only app does not ask an IPv6 server);
 *  - each query: a fresh UDP socket, so a fresh source port (random, from getrandom: native/src/lwip.cc picks every
 *    port-0 bind; lwIP alone would count up), a random 16-bit id, the answer must come from the server
 *    and port asked, with the same id and question; 3 rounds over the lease's servers, 1.5 s each;
 *  - CNAME chains inside one answer are followed; answers are cached by their TTL (at most 5 minutes), "no such
 *    record" answers (NODATA) for 30 s.
 */
import { randomInt } from "node:crypto";
import dns from "node:dns";
import { isIP } from "node:net";
import {
  decodeMessage,
  EDNS_UDP_SIZE,
  encodeQuery,
  recordsFor,
  RR,
  type DnsMessage,
  type DnsRecord,
  type RecordType,
} from "./dns-wire.js";
import { parseEndpoint, shieldedStack, type ShieldedStack, type StackEvent } from "./stack.js";

export {
  addressesFor,
  decodeMessage,
  DnsFormatError,
  encodeQuery,
  TYPE_A,
  TYPE_CNAME,
  type DnsMessage,
  type DnsRecord,
} from "./dns-wire.js";

// ---- queries --------------------------------------------------------------------------------------------------------

/** An Error as getaddrinfo's: code ENOTFOUND / EAI_AGAIN / ESERVFAIL, syscall, hostname. */
export function lookupError(code: string, hostname: string, detail?: string, syscall = "getaddrinfo"): Error {
  return Object.assign(new Error(`${syscall} ${code} ${hostname}${detail ? ` (${detail})` : ""}`), {
    code,
    errno: code === "ENOTFOUND" ? -3008 : code === "EAI_AGAIN" ? -3001 : undefined,
    syscall,
    hostname,
  });
}

const MAX_TTL = 300;
/** Seconds a "no such record" answer is kept (the SOA's minimum is not read: a fixed, short time). */
const NODATA_TTL = 30;
const TRY_MS = 1500;
const ROUNDS = 3;

/** Drops cached answers (tests, or after the lease's DNS servers changed). */
export function clearDnsCache(): void {
  rrCache.clear();
}

/** One query to one server over the shielded stack's UDP. Resolves with the decoded answer or undefined (timeout). */
async function ask(
  shield: ShieldedStack,
  server: string,
  name: string,
  qtype: number,
  edns = true,
): Promise<DnsMessage | undefined> {
  const stack = await shield.ready();
  const id = randomInt(0, 0x10000);
  const query = encodeQuery(id, name, qtype, edns ? EDNS_UDP_SIZE : undefined);
  const release = shield.hold();
  const sock = stack.udpBind(isIP(server) === 6 ? "::" : "0.0.0.0", 0);
  return new Promise<DnsMessage | undefined>((resolve) => {
    let done = false;
    const finish = (m: DnsMessage | undefined) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      shield.unregister(sock, onEvent);
      try {
        stack.udpClose(sock);
      } catch {
        // the stack is gone
      }
      release();
      resolve(m);
    };
    const onEvent = (ev: StackEvent) => {
      if (ev.type === "error") return finish(undefined);
      if (ev.type !== "message" || !ev.data) return;
      const from = parseEndpoint(ev.remote);
      if (from && (from.address !== server || from.port !== 53)) return; // not from the server asked
      let m: DnsMessage;
      try {
        m = decodeMessage(ev.data);
      } catch {
        return;
      }
      const q = m.questions[0];
      if (!m.response || m.id !== id || !q || q.name.toLowerCase() !== name.toLowerCase() || q.type !== qtype)
        return;
      finish(m);
    };
    const timer = setTimeout(() => finish(undefined), TRY_MS);
    shield.register(sock, onEvent);
    try {
      stack.udpSend(sock, query, server, 53);
    } catch {
      finish(undefined);
    }
  });
}

/**
 * A records of `name` from the lease's DNS servers, for dns.lookup (cached with every other answer): rejects as
 * getaddrinfo does, ENOTFOUND (no such name, no A record), EAI_AGAIN (no answer, no DNS server), ESERVFAIL.
 */
export function queryA(name: string, shield = shieldedStack()): Promise<{ address: string; ttl: number }[]> {
  return queryAddresses(name, "A", shield);
}

/** A or AAAA records of `name`, with getaddrinfo's errors (see queryA). */
export async function queryAddresses(
  name: string,
  type: "A" | "AAAA",
  shield = shieldedStack(),
): Promise<{ address: string; ttl: number }[]> {
  try {
    return (await queryRecords(name, type, "getaddrinfo", shield)).map((r) => ({
      address: r.data!,
      ttl: r.ttl,
    }));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const detail = /\((.*)\)$/.exec((e as Error).message)?.[1];
    if (code === "ENOTFOUND" || code === "EBADNAME") throw lookupError("ENOTFOUND", name, detail);
    if (code === "ENODATA") throw lookupError("ENOTFOUND", name, `no ${type} record`);
    if (code === "ETIMEOUT" || code === "ECONNREFUSED") throw lookupError("EAI_AGAIN", name, detail);
    throw lookupError("ESERVFAIL", name, code, "queryA");
  }
}

/** An Error as Node's resolver (c-ares) gives: "queryAaaa ENODATA example.com", code, syscall, hostname. */
export function resolveError(code: string, syscall: string, hostname: string, detail?: string): Error {
  return Object.assign(new Error(`${syscall} ${code} ${hostname}${detail ? ` (${detail})` : ""}`), {
    code,
    errno: undefined,
    syscall,
    hostname,
  });
}

/** Node's code for a DNS response code other than NOERROR and NXDOMAIN. */
const RCODE_ERRORS: Record<number, string> = { 1: "EFORMERR", 2: "ESERVFAIL", 4: "ENOTIMP", 5: "EREFUSED" };

const rrCache = new Map<string, { records: DnsRecord[]; expires: number }>();

/**
 * The records of `type` for `name` from the lease's DNS servers (CNAMEs inside the answer followed; cached by TTL,
 * at most 5 minutes). Rejects like Node's resolver: ENOTFOUND (NXDOMAIN), ENODATA (the name has no such record),
 * ESERVFAIL/EREFUSED/... (the servers' answer), ETIMEOUT (no answer), EBADNAME; `syscall` as given (queryMx...).
 */
export async function queryRecords(
  name: string,
  type: RecordType,
  syscall: string,
  shield = shieldedStack(),
): Promise<DnsRecord[]> {
  const key = name.toLowerCase().replace(/\.$/, "");
  try {
    encodeQuery(0, key, RR[type]);
  } catch {
    throw resolveError("EBADNAME", syscall, name);
  }
  const ck = `${type} ${key}`;
  const hit = rrCache.get(ck);
  if (hit && hit.expires > Date.now()) {
    if (hit.records.length === 0) throw resolveError("ENODATA", syscall, name);
    return hit.records;
  }
  await shield.ready();
  const named = shield.lease?.dns ?? [];
  // Only servers the lease can reach: an IPv4-only app cannot ask an IPv6 server, nor the reverse.
  const servers = named.filter((a) => shield.hasFamily(isIP(a) === 6 ? 6 : 4) !== false);
  if (servers.length === 0)
    throw resolveError(
      "ECONNREFUSED",
      syscall,
      name,
      named.length === 0
        ? "SENG: the gateway's lease names no DNS server (gateway config `dns:`)"
        : `SENG: the lease's DNS servers (${named.join(", ")}) are of a family the app's lease has no address of`,
    );
  let failure = "ETIMEOUT";
  for (let round = 0; round < ROUNDS; round++) {
    for (const server of servers) {
      let m = await ask(shield, server, key, RR[type]);
      // A server that does not know EDNS(0) may say FORMERR: ask it again without (RFC 6891, 7).
      if (m?.rcode === 1) m = await ask(shield, server, key, RR[type], false);
      if (!m) continue;
      // Only part of the answer fits in a datagram; the rest needs DNS over TCP, which this resolver does not do.
      if (m.truncated)
        throw resolveError(
          "EBADRESP",
          syscall,
          name,
          `the answer is larger than ${EDNS_UDP_SIZE} bytes and was truncated; DNS over TCP is not supported`,
        );
      if (m.rcode === 3) throw resolveError("ENOTFOUND", syscall, name);
      if (m.rcode !== 0) {
        failure = RCODE_ERRORS[m.rcode] ?? "EBADRESP";
        continue;
      }
      const records = recordsFor(m, key, RR[type]);
      if (records.length === 0) {
        // NODATA is cached too (RFC 2308), briefly: an IPv4-only name is not asked for AAAA on every lookup.
        rrCache.set(ck, { records, expires: Date.now() + NODATA_TTL * 1000 });
        throw resolveError("ENODATA", syscall, name);
      }
      const ttl = Math.min(MAX_TTL, ...records.map((r) => r.ttl));
      rrCache.set(ck, { records, expires: Date.now() + ttl * 1000 });
      return records;
    }
  }
  throw resolveError(
    failure,
    syscall,
    name,
    failure === "ETIMEOUT" ? `no answer from ${servers.join(", ")}` : `the answer of ${servers.join(", ")}`,
  );
}

// ---- dns.lookup ----------------------------------------------------------------------------------------------------

export interface LookupOptions {
  family?: number | "IPv4" | "IPv6";
  all?: boolean;
  hints?: number;
  verbatim?: boolean;
  order?: string;
}
export type LookupAddress = { address: string; family: number };
type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address?: string | LookupAddress[],
  family?: number,
) => void;

function familyOf(options: LookupOptions | number | undefined): number {
  const f = typeof options === "number" ? options : options?.family;
  if (f === "IPv4") return 4;
  if (f === "IPv6") return 6;
  return f ?? 0;
}

/** getaddrinfo's AI_ADDRCONFIG: only families the host (here: the lease) has an address of. */
const ADDRCONFIG = dns.ADDRCONFIG;

export type ResultOrder = "verbatim" | "ipv4first" | "ipv6first";

/** The order of a lookup's addresses: `order`, else `verbatim`, else dns.getDefaultResultOrder(). */
function orderOf(options: LookupOptions | number | undefined): ResultOrder {
  const o = typeof options === "object" ? options : undefined;
  if (o?.order === "verbatim" || o?.order === "ipv4first" || o?.order === "ipv6first") return o.order;
  if (typeof o?.verbatim === "boolean") return o.verbatim ? "verbatim" : "ipv4first";
  const d = (dns as { getDefaultResultOrder?: () => string }).getDefaultResultOrder?.();
  return d === "ipv4first" || d === "ipv6first" ? d : "verbatim";
}

/**
 * The addresses of `hostname` as dns.lookup gives them (all: true form). `family` 0 asks for A and AAAA at once;
 * what one family's query fails with is given only when the other found nothing either.
 */
export async function lookupAll(
  hostname: string,
  family = 0,
  opts: { order?: ResultOrder; hints?: number } = {},
): Promise<LookupAddress[]> {
  if (typeof hostname !== "string")
    throw Object.assign(new TypeError('The "hostname" argument must be of type string'), {
      code: "ERR_INVALID_ARG_TYPE",
    });
  const ipf = isIP(hostname);
  if (ipf) {
    if (family && family !== ipf) throw lookupError("ENOTFOUND", hostname);
    return [{ address: hostname, family: ipf }];
  }
  const h = hostname.toLowerCase().replace(/\.$/, "");
  if (h === "localhost" || h.endsWith(".localhost")) {
    if (family === 6) return [{ address: "::1", family: 6 }];
    return [{ address: "127.0.0.1", family: 4 }];
  }
  if (hostname === "") throw lookupError("ENOTFOUND", hostname);
  const shield = shieldedStack();
  let families: (4 | 6)[] = family === 4 ? [4] : family === 6 ? [6] : [4, 6];
  if (family === 0 && ((opts.hints ?? 0) & ADDRCONFIG) !== 0) {
    await shield.ready();
    families = families.filter((f) => shield.hasFamily(f));
    if (families.length === 0) throw lookupError("ENOTFOUND", hostname, "SENG: the lease has no address");
  }
  const results = await Promise.allSettled(
    families.map((f) => queryAddresses(hostname, f === 4 ? "A" : "AAAA", shield)),
  );
  const byFamily = new Map<4 | 6, LookupAddress[]>();
  const errors: NodeJS.ErrnoException[] = [];
  results.forEach((r, i) => {
    const f = families[i]!;
    if (r.status === "fulfilled")
      byFamily.set(
        f,
        r.value.map((a) => ({ address: a.address, family: f })),
      );
    else errors.push(r.reason as NodeJS.ErrnoException);
  });
  const v4 = byFamily.get(4) ?? [];
  const v6 = byFamily.get(6) ?? [];
  if (v4.length + v6.length === 0)
    throw errors.find((e) => e.code !== "ENOTFOUND") ?? errors[0] ?? lookupError("ENOTFOUND", hostname);
  const order = opts.order ?? "verbatim";
  // verbatim: as a host's getaddrinfo sorts by RFC 6724: IPv6 first when there is an IPv6 source address.
  const v6First = order === "ipv6first" || (order === "verbatim" && shield.hasFamily(6) === true);
  return v6First ? [...v6, ...v4] : [...v4, ...v6];
}

/** `dns.lookup` through the tunnel. */
export function lookup(hostname: string, callback: LookupCallback): void;
export function lookup(hostname: string, options: LookupOptions | number, callback: LookupCallback): void;
export function lookup(
  hostname: string,
  options: LookupOptions | number | LookupCallback,
  callback?: LookupCallback,
): void {
  const cb = (typeof options === "function" ? options : callback) as LookupCallback;
  const opts = typeof options === "function" ? undefined : options;
  if (typeof cb !== "function")
    throw Object.assign(new TypeError('The "callback" argument must be of type function'), {
      code: "ERR_INVALID_ARG_TYPE",
    });
  const all = typeof opts === "object" && !!opts?.all;
  const hints = typeof opts === "object" ? opts?.hints : undefined;
  lookupAll(hostname, familyOf(opts), { order: orderOf(opts), hints }).then(
    (list) => {
      if (all) cb(null, list);
      else cb(null, list[0]!.address, list[0]!.family);
    },
    (e: NodeJS.ErrnoException) => cb(e),
  );
}

/** `dns.promises.lookup` through the tunnel. */
export async function lookupPromise(
  hostname: string,
  options?: LookupOptions | number,
): Promise<LookupAddress | LookupAddress[]> {
  const hints = typeof options === "object" ? options?.hints : undefined;
  const list = await lookupAll(hostname, familyOf(options), { order: orderOf(options), hints });
  return typeof options === "object" && options?.all ? list : list[0]!;
}

export const promises = { lookup: lookupPromise };
