/**
 * A tiny authoritative DNS answerer for tests: A and AAAA records of a fixed zone, NXDOMAIN for other names, and an
 * empty answer (NODATA) for a name without the type asked. Also the same as a CommonJS source for programs run in
 * namespaces (`DNS_ZONE_CJS`).
 */

export type Zone = Record<string, { A?: string[]; AAAA?: string[] }>;

/** 16 bytes of an IPv6 address in text. */
export function ipv6Bytes(a: string): Buffer {
  const [head, tail] = a.includes("::") ? a.split("::") : [a, undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), 2 * i));
  return b;
}

const encName = (n: string): Buffer =>
  Buffer.concat([
    ...n.split(".").map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])),
    Buffer.from([0]),
  ]);

/** The answer to `query` from `zone` (undefined for something that is not a query). */
export function answer(query: Buffer, zone: Zone): { reply: Buffer; name: string; type: number } | undefined {
  if (query.length < 17) return undefined;
  let off = 12;
  const labels: string[] = [];
  while (query[off]) {
    labels.push(query.toString("utf8", off + 1, off + 1 + query[off]!));
    off += query[off]! + 1;
  }
  const type = query.readUInt16BE(off + 1);
  const name = labels.join(".").toLowerCase();
  const rec = zone[name];
  const values = type === 1 ? (rec?.A ?? []) : type === 28 ? (rec?.AAAA ?? []) : [];
  const answers = values.map((v) => {
    const rdata = type === 1 ? Buffer.from(v.split(".").map(Number)) : ipv6Bytes(v);
    const f = Buffer.alloc(10);
    f.writeUInt16BE(type, 0);
    f.writeUInt16BE(1, 2);
    f.writeUInt32BE(30, 4);
    f.writeUInt16BE(rdata.length, 8);
    return Buffer.concat([encName(name), f, rdata]);
  });
  const h = Buffer.alloc(12);
  query.copy(h, 0, 0, 2);
  h.writeUInt16BE(rec ? 0x8580 : 0x8583, 2);
  h.writeUInt16BE(1, 4);
  h.writeUInt16BE(answers.length, 6);
  return { reply: Buffer.concat([h, query.subarray(12, off + 5), ...answers]), name, type };
}

/**
 * The same as a CommonJS program: `node dns.cjs <bind address> <zone JSON>` answers on port 53 of that address
 * (udp6 for an IPv6 one) and prints {query, type, from} per query.
 */
export const DNS_ZONE_CJS = `
const dgram = require("dgram");
const [addr, zoneJson] = process.argv.slice(2);
const zone = JSON.parse(zoneJson);
${ipv6Bytes.toString()}
const encName = ${encName.toString()};
const answer = ${answer.toString()};
const s = dgram.createSocket(addr.includes(":") ? { type: "udp6", ipv6Only: true } : "udp4");
s.on("message", (m, r) => {
  const a = answer(m, zone);
  if (!a) return;
  console.log(JSON.stringify({ query: a.name, type: a.type, from: r.address }));
  s.send(a.reply, r.port, r.address);
});
s.bind(53, addr, () => console.log(JSON.stringify({ listening: true })));
`;
