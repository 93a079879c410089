/**
 * A tunnel that abuses its own lease, run in a client namespace (tests and bench/flood.ts):
 *   inner-flood.ts <gateway host:port> <pin> <sim dir> <mrenclave> <seconds> [batch] [--reconnect]
 * Sets up one tunnel with a simulated-SGX identity, then for `seconds` sends, as fast as it can in batches of
 * `batch` (default 64), IPv4 packets the gateway must drop: half with a spoofed source, half malformed (a total length
 * that does not match). After the gateway closes the tunnel it goes on sending the last session's records from a
 * fresh socket (an unknown peer then), or with --reconnect sets up a new tunnel (same key) and floods again. Prints
 * {"event":"lease"} and {"event":"closed",…} per tunnel, then {"sent":…,"tunnels":…} and exits.
 */
import { makeIdentity, SimAttester } from "../../src/runtime/attesters.js";
import { TunnelClient } from "../../src/tunnel/client.js";
import { ipToInt } from "../../src/packet/ip.js";
import { UdpSocket } from "../../src/native/io.js";

const [gateway, pin, simDir, mrenclave, secsS, batchS] = process.argv.slice(2);
const secs = Number(secsS);
const batchSize = Number(batchS ?? 64);
const out = (o: Record<string, unknown>): void => void process.stdout.write(JSON.stringify(o) + "\n");
const reconnect = process.argv.includes("--reconnect");
const id = await makeIdentity(new SimAttester(simDir!, { mrenclave: mrenclave!, mrsigner: "00".repeat(32) }));
type Internals = { session?: { send(p: Buffer[]): Buffer[] }; udp: UdpSocket };
const end = Date.now() + secs * 1000;
let sent = 0;
let tunnels = 0;
let after: UdpSocket | undefined;

/** One tunnel: lease, then flood until the gateway closes it or time is up; the last session's records. */
async function flood(): Promise<Buffer[]> {
  const c = new TunnelClient({ gateway: gateway!, pin: pin!, ...id, reconnect: false });
  const lease = await new Promise<string>((resolve, reject) => {
    c.once("lease", (l) => resolve(l.address ?? ""));
    c.once("closed", (e) => reject(new Error(`${e.reason}: ${e.message}`)));
    c.connect();
  });
  tunnels++;
  out({ event: "lease", address: lease });
  c.on("closed", (e) => out({ event: "closed", reason: e.reason, message: e.message }));
  const packet = (spoofed: boolean, i: number): Buffer => {
    const p = Buffer.alloc(60);
    p[0] = 0x45;
    p.writeUInt16BE(spoofed ? 60 : 61 + (i % 100), 2);
    p[8] = 64;
    p[9] = 17;
    p.writeUInt32BE(spoofed ? ipToInt("100.64.9.9") + (i % 200) : ipToInt(lease), 12);
    p.writeUInt32BE(ipToInt("198.18.2.2"), 16);
    return p;
  };
  const batch = Array.from({ length: batchSize }, (_, i) => packet(i % 2 === 0, i));
  const inner = c as unknown as Internals;
  const session = inner.session!;
  const records = session.send(batch);
  let n = 0;
  while (Date.now() < end && inner.session) {
    sent += inner.udp.sendMany(session.send(batch), gateway!);
    // Yield now and then so the tunnel hears the gateway's CLOSE.
    if (++n % 8 === 0) await new Promise((r) => setImmediate(r));
  }
  c.close();
  return records;
}

for (;;) {
  let records: Buffer[];
  try {
    records = await flood();
  } catch (e) {
    out({ event: "refused", message: (e as Error).message });
    if (Date.now() >= end) break;
    await new Promise((r) => setTimeout(r, 200));
    continue;
  }
  if (Date.now() >= end) break;
  if (reconnect) continue;
  let n = 0;
  while (Date.now() < end) {
    sent += (after ??= UdpSocket.bind("0.0.0.0", 0)).sendMany(records, gateway!);
    if (++n % 8 === 0) await new Promise((r) => setImmediate(r));
  }
  break;
}
out({ sent, tunnels });
process.exit(0);
