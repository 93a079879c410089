/**
 * Prototype for docs/DATAPATH.md (Design, measurement A): does SO_REUSEPORT keep every peer on one socket, and
 * what happens to the mapping when the socket set changes? Run in a private network namespace:
 *   unshare -n node --import tsx bench/workers/proto-reuseport.ts
 */
import { execFileSync } from "node:child_process";
import { UdpSocket } from "../../src/native/io.js";

execFileSync("ip", ["link", "set", "lo", "up"]);
const PEERS = 400;
const ROUNDS = 5;
const socks: UdpSocket[] = [];
const seen = new Map<string, number[]>();
let port = 0;
function open(): void {
  const i = socks.length;
  const s = UdpSocket.bind("127.0.0.1", port, { reusePort: true });
  port = s.port;
  s.onDatagrams((b) => {
    for (const p of b.peers) {
      const a = seen.get(p) ?? [];
      a.push(i);
      seen.set(p, a);
    }
  });
  socks.push(s);
}
open();
open();
const clients = Array.from({ length: PEERS }, () => UdpSocket.bind("127.0.0.1", 0));
const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function round(): Promise<void> {
  for (const c of clients) c.send(Buffer.alloc(32), `127.0.0.1:${port}`);
  await wait(100);
}
for (let r = 0; r < ROUNDS; r++) await round();
const snapshot = () => new Map([...seen].map(([p, a]) => [p, a.at(-1)!]));
let unstable = 0;
const per = [0, 0];
for (const a of seen.values()) {
  if (new Set(a).size > 1) unstable++;
  per[a[0]!]!++;
}
console.log(
  `2 sockets, ${PEERS} peers x ${ROUNDS} rounds: peers seen on more than one socket: ${unstable}; spread ${per.join("/")}`,
);
const before = snapshot();
// A socket of the group goes away (a worker died): where do the survivors' peers go?
socks[0]!.close();
open(); // its replacement joins the group
seen.clear();
await round();
const after = snapshot();
let moved = 0;
for (const [p, i] of after) if (before.get(p) !== (i === 2 ? 0 : i)) moved++;
console.log(
  `after one socket was replaced: ${moved} of ${PEERS} peers now reach a different worker than before`,
);
for (const s of [...socks, ...clients]) if (!s.closed) s.close();
