/**
 * Prototype for docs/DATAPATH.md (Design, measurement C): the cost of handing packets from one thread to another
 * through postMessage (one message per batch of 64 packets of 1400 bytes, copied into one transferred
 * ArrayBuffer), against the per-packet budget of the data path. Run: node --import tsx bench/workers/proto-handoff.ts
 */
import { Worker } from "node:worker_threads";

const BATCH = 64;
const SIZE = 1400;
const N = 20_000; // batches
const w = new Worker(
  `const { parentPort } = require("node:worker_threads");
   let n = 0; parentPort.on("message", (m) => { n += m.lengths.length; if (m.last) parentPort.postMessage(n); });`,
  { eval: true },
);
const packets = Array.from({ length: BATCH }, () => Buffer.alloc(SIZE, 7));
const cpu0 = process.cpuUsage();
const t0 = performance.now();
for (let i = 0; i < N; i++) {
  const buf = new Uint8Array(BATCH * SIZE);
  const lengths = new Uint32Array(BATCH);
  for (let k = 0; k < BATCH; k++) {
    buf.set(packets[k]!, k * SIZE);
    lengths[k] = SIZE;
  }
  w.postMessage({ buf, lengths, last: i === N - 1 }, [buf.buffer]);
}
const got = await new Promise<number>((r) => w.once("message", r));
const ms = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
const pk = N * BATCH;
console.log(
  `handoff: ${got} packets in ${ms.toFixed(0)} ms: ${((ms * 1000) / pk).toFixed(2)} µs wall/packet, sender CPU ${(
    (cpu.user + cpu.system) /
    pk
  ).toFixed(
    2,
  )} µs/packet (whole process incl. receiver thread), ${((pk * SIZE * 8) / (ms * 1000)).toFixed(0)} Mbit/s`,
);
// Small batches (request/response: one packet per wakeup)
const t1 = performance.now();
const c1 = process.cpuUsage();
for (let i = 0; i < 50_000; i++) {
  const buf = new Uint8Array(100);
  w.postMessage({ buf, lengths: new Uint32Array(1), last: i === 49_999 }, [buf.buffer]);
}
await new Promise((r) => w.once("message", r));
const c1d = process.cpuUsage(c1);
console.log(
  `handoff of single packets: ${(((performance.now() - t1) * 1000) / 50_000).toFixed(2)} µs wall/msg, CPU ${(
    (c1d.user + c1d.system) /
    50_000
  ).toFixed(2)} µs/msg`,
);
await w.terminate();
