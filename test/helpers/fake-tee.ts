/**
 * Fake TEE interfaces that behave like the real ones, for attester tests (run as a child process):
 *   fake-tee.ts gramine <dir> <simDir> <mrenclave>          /dev/attestation: reading `quote` yields a simulated
 *                                                           quote over what was last written to `user_report_data`
 *   fake-tee.ts tsm <root> <entry> <simDir> <mrenclave> [racy]   a configfs-tsm report entry: reading `outblob`
 *                                                           yields a quote over `inblob`; `racy` bumps `generation`
 * `quote` and `outblob` are FIFOs, so a reader blocks until this process answers, as a read of the real file
 * blocks until the quote is made. Serves until killed.
 */
import { execFileSync } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { issueSimQuote, loadSimTee } from "../../src/attest/sim.js";

const [mode, a, b, c, d, e] = process.argv.slice(2);

function serve(fifo: string, input: string, sim: string, mrenclave: string, meanwhile?: () => void): never {
  const tee = loadSimTee(sim);
  execFileSync("mkfifo", [fifo]);
  process.stdout.write("ready\n");
  for (;;) {
    const fd = openSync(fifo, "w"); // blocks until a reader opens the file
    meanwhile?.(); // a concurrent writer, while the reader waits for the quote
    const quote = issueSimQuote(tee, {
      mrenclave,
      mrsigner: "00".repeat(32),
      reportData: readFileSync(input).subarray(0, 64),
    });
    writeSync(fd, quote);
    closeSync(fd);
    // Let the reader see end-of-file and close before the FIFO is opened again (else two answers would merge).
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
  }
}

if (mode === "gramine") {
  mkdirSync(a!, { recursive: true });
  writeFileSync(join(a!, "attestation_type"), "dcap\n");
  writeFileSync(join(a!, "user_report_data"), Buffer.alloc(64));
  serve(join(a!, "quote"), join(a!, "user_report_data"), b!, c!);
} else if (mode === "tsm") {
  const entry = join(a!, b!);
  mkdirSync(entry, { recursive: true });
  writeFileSync(join(entry, "inblob"), Buffer.alloc(64));
  writeFileSync(join(entry, "provider"), "tdx_guest\n");
  writeFileSync(join(entry, "generation"), "1\n");
  let gen = 1;
  serve(
    join(entry, "outblob"),
    join(entry, "inblob"),
    c!,
    d!,
    e === "racy" ? () => writeFileSync(join(entry, "generation"), `${++gen}\n`) : undefined,
  );
}
