/**
 * Name lookups for a shielded app: DNS A queries over UDP, through the tunnel, to the DNS servers of the lease.
 * Never the host's resolver (getaddrinfo, c-ares, /etc/hosts): those are outside the TEE and would leak the names
 * an app looks up and let the host answer them.
 *
 *  - IP literals come back as they are, "localhost" (and *.localhost) as 127.0.0.1, without a query;
 *  - IPv4 only (family 6 is ENOTFOUND; the tunnel carries IPv4);
 *  - each query: a fresh UDP socket, so a fresh source port (random, from getrandom: native/src/lwip.cc picks every
 *    port-0 bind; lwIP alone would count up), a random 16-bit id, the answer must come from the server
 *    and port asked, with the same id and question; 3 rounds over the lease's servers, 1.5 s each;
 *  - CNAME chains inside one answer are followed; answers are cached by their TTL (at most 5 minutes).
 */
import { randomInt } from "node:crypto";
import { isIP } from "node:net";
import { parseEndpoint, shieldedStack, type ShieldedStack, type StackEvent } from "./stack.js";

export const TYPE_A = 1;
export const TYPE_CNAME = 5;
const CLASS_IN = 1;

// ---- wire format ----------------------------------------------------------------------------------------------------

/** Encodes a standard query (RD set) for `name`. */
export function encodeQuery(id: number, name: string, qtype = TYPE_A): Buffer {
  const labels = name.replace(/\.$/, "").split(".");
  if (name.length > 253 || labels.some((l) => l.length === 0 || Buffer.byteLength(l) > 63))
    throw new RangeError(`not a valid DNS name: ${JSON.stringify(name)}`);
  const qname = Buffer.concat([
    ...labels.map((l) => {
      const b = Buffer.from(l, "utf8");
      return Buffer.concat([Buffer.from([b.length]), b]);
    }),
    Buffer.from([0]),
  ]);
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id & 0xffff, 0);
  header.writeUInt16BE(0x0100, 2); // RD
  header.writeUInt16BE(1, 4); // QDCOUNT
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(qtype, 0);
  tail.writeUInt16BE(CLASS_IN, 2);
  return Buffer.concat([header, qname, tail]);
}

export interface DnsRecord {
  name: string;
  type: number;
  class: number;
  ttl: number;
  /** A: the address; CNAME: the target name; others: undefined (see `raw`). */
  data?: string;
  raw: Buffer;
}

export interface DnsMessage {
  id: number;
  flags: number;
  /** Response code: 0 no error, 2 SERVFAIL, 3 NXDOMAIN, ... */
  rcode: number;
  response: boolean;
  truncated: boolean;
  questions: { name: string; type: number; class: number }[];
  answers: DnsRecord[];
}

/** Thrown for a malformed DNS message. */
export class DnsFormatError extends Error {
  override readonly name = "DnsFormatError";
}

/** Reads a (possibly compressed) name at `off`; returns it and the offset after it. */
function readName(buf: Buffer, off: number): [string, number] {
  const labels: string[] = [];
  let end = -1;
  let jumps = 0;
  let total = 0;
  for (;;) {
    if (off >= buf.length) throw new DnsFormatError("name runs past the message");
    const len = buf[off]!;
    if (len === 0) {
      off += 1;
      break;
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (off + 1 >= buf.length) throw new DnsFormatError("truncated compression pointer");
      if (++jumps > 32) throw new DnsFormatError("compression loop");
      if (end < 0) end = off + 2;
      off = ((len & 0x3f) << 8) | buf[off + 1]!;
      continue;
    }
    if (kind !== 0) throw new DnsFormatError(`unsupported label type 0x${kind.toString(16)}`);
    if (off + 1 + len > buf.length) throw new DnsFormatError("label runs past the message");
    labels.push(buf.toString("utf8", off + 1, off + 1 + len));
    total += len + 1;
    if (total > 255) throw new DnsFormatError("name longer than 255 bytes");
    off += 1 + len;
  }
  return [labels.join("."), end >= 0 ? end : off];
}

/** Decodes a DNS message (header, questions, answer section). */
export function decodeMessage(buf: Buffer): DnsMessage {
  if (buf.length < 12) throw new DnsFormatError("shorter than a DNS header");
  const id = buf.readUInt16BE(0);
  const flags = buf.readUInt16BE(2);
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  let off = 12;
  const questions: DnsMessage["questions"] = [];
  for (let i = 0; i < qd; i++) {
    const [name, next] = readName(buf, off);
    if (next + 4 > buf.length) throw new DnsFormatError("truncated question");
    questions.push({ name, type: buf.readUInt16BE(next), class: buf.readUInt16BE(next + 2) });
    off = next + 4;
  }
  const answers: DnsRecord[] = [];
  for (let i = 0; i < an; i++) {
    const [name, next] = readName(buf, off);
    if (next + 10 > buf.length) throw new DnsFormatError("truncated resource record");
    const type = buf.readUInt16BE(next);
    const klass = buf.readUInt16BE(next + 2);
    const ttl = buf.readUInt32BE(next + 4);
    const rdlen = buf.readUInt16BE(next + 8);
    const rdata = next + 10;
    if (rdata + rdlen > buf.length) throw new DnsFormatError("record data runs past the message");
    const raw = buf.subarray(rdata, rdata + rdlen);
    let data: string | undefined;
    if (type === TYPE_A && klass === CLASS_IN) {
      if (rdlen !== 4) throw new DnsFormatError(`A record of ${rdlen} bytes`);
      data = `${raw[0]}.${raw[1]}.${raw[2]}.${raw[3]}`;
    } else if (type === TYPE_CNAME) {
      data = readName(buf, rdata)[0];
    }
    answers.push({ name, type, class: klass, ttl, data, raw });
    off = rdata + rdlen;
  }
  return {
    id,
    flags,
    rcode: flags & 0x0f,
    response: (flags & 0x8000) !== 0,
    truncated: (flags & 0x0200) !== 0,
    questions,
    answers,
  };
}

/** The A records for `name` in an answer, following CNAMEs inside it. */
export function addressesFor(msg: DnsMessage, name: string): { address: string; ttl: number }[] {
  const names = new Set([name.toLowerCase().replace(/\.$/, "")]);
  for (let grew = true; grew;) {
    grew = false;
    for (const r of msg.answers)
      if (
        r.type === TYPE_CNAME &&
        r.data &&
        names.has(r.name.toLowerCase()) &&
        !names.has(r.data.toLowerCase())
      ) {
        names.add(r.data.toLowerCase());
        grew = true;
      }
  }
  return msg.answers
    .filter((r) => r.type === TYPE_A && r.data && names.has(r.name.toLowerCase()))
    .map((r) => ({ address: r.data!, ttl: r.ttl }));
}

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

const cache = new Map<string, { addresses: { address: string; ttl: number }[]; expires: number }>();
const MAX_TTL = 300;
const TRY_MS = 1500;
const ROUNDS = 3;

/** Drops cached answers (tests, or after the lease's DNS servers changed). */
export function clearDnsCache(): void {
  cache.clear();
}

/** One query to one server over the shielded stack's UDP. Resolves with the decoded answer or undefined (timeout). */
async function ask(
  shield: ShieldedStack,
  server: string,
  name: string,
  qtype: number,
): Promise<DnsMessage | undefined> {
  const stack = await shield.ready();
  const id = randomInt(0, 0x10000);
  const query = encodeQuery(id, name, qtype);
  const release = shield.hold();
  const sock = stack.udpBind("0.0.0.0", 0);
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

/** A records of `name` from the lease's DNS servers (cached). Rejects with ENOTFOUND / EAI_AGAIN / ESERVFAIL. */
export async function queryA(
  name: string,
  shield = shieldedStack(),
): Promise<{ address: string; ttl: number }[]> {
  const key = name.toLowerCase().replace(/\.$/, "");
  const hit = cache.get(key);
  if (hit && hit.expires > Date.now()) return hit.addresses;
  await shield.ready();
  const servers = shield.lease?.dns ?? [];
  if (servers.length === 0)
    throw lookupError(
      "EAI_AGAIN",
      name,
      "SENG: the gateway's lease names no DNS server (gateway config `dns:`)",
    );
  for (let round = 0; round < ROUNDS; round++) {
    for (const server of servers) {
      const m = await ask(shield, server, key, TYPE_A);
      if (!m) continue;
      if (m.rcode === 3) throw lookupError("ENOTFOUND", name);
      if (m.rcode !== 0) {
        if (round === ROUNDS - 1)
          throw lookupError("ESERVFAIL", name, `rcode ${m.rcode} from ${server}`, "queryA");
        continue;
      }
      const addresses = addressesFor(m, key);
      if (addresses.length === 0) throw lookupError("ENOTFOUND", name, "no A record");
      const ttl = Math.min(MAX_TTL, ...addresses.map((a) => a.ttl));
      cache.set(key, { addresses, expires: Date.now() + ttl * 1000 });
      return addresses;
    }
  }
  throw lookupError("EAI_AGAIN", name, `no answer from ${servers.join(", ")}`);
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

/** The addresses of `hostname` as dns.lookup gives them (all: true form). */
export async function lookupAll(hostname: string, family = 0): Promise<LookupAddress[]> {
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
  if (family === 6) throw lookupError("ENOTFOUND", hostname, "SENG: the tunnel carries IPv4 only");
  return (await queryA(hostname)).map((a) => ({ address: a.address, family: 4 }));
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
  lookupAll(hostname, familyOf(opts)).then(
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
  const list = await lookupAll(hostname, familyOf(options));
  return typeof options === "object" && options?.all ? list : list[0]!;
}

export const promises = { lookup: lookupPromise };

/** `dns.resolve4` through the tunnel (`{ ttl: true }` gives {address, ttl} records). */
export function resolve4(
  hostname: string,
  options: { ttl?: boolean } | ((err: Error | null, addresses?: unknown[]) => void),
  callback?: (err: Error | null, addresses?: unknown[]) => void,
): void {
  const cb = (typeof options === "function" ? options : callback)!;
  const ttl = typeof options === "object" && !!options.ttl;
  queryA(hostname).then(
    (list) => cb(null, ttl ? list : list.map((a) => a.address)),
    (e: Error & { syscall?: string }) => {
      if (e.syscall === "getaddrinfo") e.syscall = "queryA";
      cb(e);
    },
  );
}

export async function resolve4Promise(hostname: string, options?: { ttl?: boolean }): Promise<unknown[]> {
  const list = await queryA(hostname);
  return options?.ttl ? list : list.map((a) => a.address);
}
