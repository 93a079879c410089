/**
 * The kernel peer guard (src/gateway/guard.ts) alone, in a test namespace:
 *   guard-tool.ts <port> <blocked peer> <ms>
 * listens on [::]:<port> (dual stack), starts a PeerGuard for that port, blocks `peer` for `ms`, prints
 * {"ready":true,"set":"<nft list of both sets>"} once the element is in, then {"got":["peer",...]} for every
 * datagram that reached the socket in the next 2 s, and removes its table.
 */
import { execFileSync } from "node:child_process";
import { PeerGuard, GUARD_TABLE } from "../../src/gateway/guard.js";
import { UdpSocket } from "../../src/native/io.js";

const [portS, peer, msS] = process.argv.slice(2);
const log = { log: (...a: unknown[]) => console.error(JSON.stringify(a)), limited: () => {} };
const udp = UdpSocket.bind("::", Number(portS));
const got: string[] = [];
udp.onDatagrams((b) => got.push(...b.peers));
const guard = new PeerGuard(udp.port, log);
await guard.start();
guard.block(peer!, Number(msS));
const list = () =>
  ["peers", "peers6"]
    .map((s) => execFileSync("nft", ["list", "set", "inet", GUARD_TABLE, s], { encoding: "utf8" }))
    .join("");
for (let i = 0; i < 50 && guard.stats.blocked === 0; i++) await new Promise((r) => setTimeout(r, 50));
const set = list();
process.stdout.write(JSON.stringify({ ready: true, set, errors: guard.stats.errors }) + "\n");
await new Promise((r) => setTimeout(r, 2000));
process.stdout.write(JSON.stringify({ got }) + "\n");
await guard.stop();
udp.close();
