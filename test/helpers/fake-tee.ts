/**
 * Fake TEE interfaces that behave like the real ones, for attester tests (run as a child process):
 *   fake-tee.ts gramine <dir> <simDir> <mrenclave>          /dev/attestation: reading `quote` yields a simulated
 *                                                           quote over what was last written to `user_report_data`
 *   fake-tee.ts tsm <root> <entry> <simDir> <mrenclave> [racy]   a configfs-tsm report entry: reading `outblob`
 *                                                           yields a quote over `inblob`; `racy` bumps `generation`
 *   fake-tee.ts tsm-snp <root> <entry> <simSnpDir> <measurement> [aux]   the same for provider sev_guest: `outblob`
 *                                                           is a simulated SNP report over `inblob`, `auxblob` the
 *                                                           certificate table; aux = full (default), no-vcek,
 *                                                           no-terminator or none (no auxblob file)
 * `quote` and `outblob` are FIFOs, so a reader blocks until this process answers, as a read of the real file
 * blocks until the quote is made. Serves until killed.
 */
import { execFileSync } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { issueSimQuote, loadSimTee } from "../../src/attest/sim.js";
import { issueSimSnpReport, loadSimSnp, simSnpCertTable } from "../../src/attest/sim-snp.js";

const [mode, a, b, c, d, e] = process.argv.slice(2);

function serve(
  fifo: string,
  input: string,
  make: (reportData: Buffer) => Buffer,
  meanwhile?: () => void,
): never {
  execFileSync("mkfifo", [fifo]);
  process.stdout.write("ready\n");
  for (;;) {
    const fd = openSync(fifo, "w"); // blocks until a reader opens the file
    meanwhile?.(); // a concurrent writer, while the reader waits for the quote
    writeSync(fd, make(readFileSync(input).subarray(0, 64)));
    closeSync(fd);
    // Let the reader see end-of-file and close before the FIFO is opened again (else two answers would merge).
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
  }
}

function sgx(dir: string, mrenclave: string): (reportData: Buffer) => Buffer {
  const tee = loadSimTee(dir);
  return (reportData) => issueSimQuote(tee, { mrenclave, mrsigner: "00".repeat(32), reportData });
}

if (mode === "gramine") {
  mkdirSync(a!, { recursive: true });
  writeFileSync(join(a!, "attestation_type"), "dcap\n");
  writeFileSync(join(a!, "user_report_data"), Buffer.alloc(64));
  serve(join(a!, "quote"), join(a!, "user_report_data"), sgx(b!, c!));
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
    sgx(c!, d!),
    e === "racy" ? () => writeFileSync(join(entry, "generation"), `${++gen}\n`) : undefined,
  );
} else if (mode === "tsm-snp") {
  const entry = join(a!, b!);
  const sim = loadSimSnp(c!);
  mkdirSync(entry, { recursive: true });
  writeFileSync(join(entry, "inblob"), Buffer.alloc(64));
  writeFileSync(join(entry, "provider"), "sev_guest\n");
  writeFileSync(join(entry, "generation"), "1\n");
  const table = simSnpCertTable(sim, e === "no-vcek" ? ["vcek"] : []);
  // The kernel hands back a page-sized buffer: the table, then zeros.
  if (e === "no-terminator") writeFileSync(join(entry, "auxblob"), Buffer.alloc(48, 0x11));
  else if (e !== "none") writeFileSync(join(entry, "auxblob"), Buffer.concat([table, Buffer.alloc(4096)]));
  serve(join(entry, "outblob"), join(entry, "inblob"), (reportData) =>
    issueSimSnpReport(sim, { measurement: d!, hostData: "d4".repeat(32), reportData }),
  );
}
