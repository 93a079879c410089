/**
 * `seng runtime up --tun` (confidential VMs) and `seng test-client` (the same with the simulated TEE, for tests and
 * trials). `seng runtime run -- node app.js` arrives with the in-TEE TCP/IP stack.
 */
import { readFileSync } from "node:fs";
import { Command, Option } from "commander";
import { Cert } from "../attest/x509.js";
import { AttesterError, detectAttester, makeIdentity, type AttesterKind } from "../runtime/attesters.js";
import { TunMode } from "../runtime/tun-mode.js";
import { action, UsageError } from "./errors.js";

/** A pin is a SHA-256 fingerprint, a file holding one, or the gateway's certificate (PEM/DER). */
export function readPin(pin: string): string {
  if (/^[0-9a-fA-F]{64}$/.test(pin)) return pin.toLowerCase();
  let data: Buffer;
  try {
    data = readFileSync(pin);
  } catch {
    throw new UsageError(
      `--pin: ${pin} is neither a SHA-256 fingerprint (64 hex digits) nor a readable file`,
    );
  }
  const text = data.toString("latin1").trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return text.toLowerCase();
  try {
    return Cert.from(data).fingerprint;
  } catch {
    throw new UsageError(`--pin: ${pin} holds neither a fingerprint nor a certificate`);
  }
}

interface UpFlags {
  gateway: string;
  pin: string;
  tee: AttesterKind | "auto";
  simDir?: string;
  mrenclave?: string;
  mrsigner: string;
  isvprodid: string;
  isvsvn: string;
  debug?: boolean;
  tun?: string | boolean;
  route?: string[];
  deadSeconds: string;
  offload: boolean;
}

async function up(f: UpFlags): Promise<number> {
  const say = (o: object) => process.stdout.write(JSON.stringify(o) + "\n");
  const pin = readPin(f.pin);
  if (!/^[^:]+:\d+$|^\[[0-9a-fA-F:]+\]:\d+$/.test(f.gateway))
    throw new UsageError(`--gateway: expected host:port, got ${f.gateway}`);
  let identity;
  try {
    const sim = f.simDir
      ? {
          dir: f.simDir,
          claims: {
            mrenclave: f.mrenclave ?? "",
            mrsigner: f.mrsigner,
            isvprodid: Number(f.isvprodid),
            isvsvn: Number(f.isvsvn),
            debug: !!f.debug,
          },
        }
      : undefined;
    if ((f.tee === "sim" || sim) && !/^[0-9a-fA-F]{64}$/.test(f.mrenclave ?? ""))
      throw new UsageError("--mrenclave: the simulated TEE needs 32 bytes of hex");
    identity = await makeIdentity(detectAttester(f.tee, sim));
  } catch (e) {
    if (e instanceof AttesterError) throw new UsageError(e.message);
    throw e;
  }
  if (identity.provider === "sim")
    process.stderr.write("seng: warning: simulated TEE: INSECURE, for development and tests only\n");
  say({ event: "identity", provider: identity.provider });
  if (f.tun === undefined)
    throw new UsageError("runtime up: --tun is required (TUN mode is the only mode of `up`)");
  const tun = typeof f.tun === "string" ? f.tun : "seng-rt0";
  const mode = new TunMode({
    gateway: f.gateway,
    pin,
    identity,
    tun,
    routes: f.route ?? [],
    deadSeconds: Number(f.deadSeconds),
    offload: f.offload,
    log: say,
  });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await mode.stop();
  };
  process.once("SIGTERM", () => void stop().then(() => (process.exitCode = 0)));
  process.once("SIGINT", () => void stop().then(() => (process.exitCode = 0)));
  mode.start();
  const closed = await mode.closed;
  await stop();
  return closed.reason === "client-closed" ? 0 : 1;
}

function upOptions(c: Command): Command {
  return c
    .requiredOption("--gateway <host:port>", "gateway address")
    .requiredOption(
      "--pin <fingerprint|file>",
      "gateway certificate: SHA-256 fingerprint, or a file with it or the certificate",
    )
    .option("--tun [name]", "TUN mode: create this TUN interface (default seng-rt0)")
    .option(
      "--route <cidr...>",
      'destinations to send through the tunnel; "default" takes over the default route',
    )
    .option("--dead-seconds <n>", "consider the tunnel lost after this long without an answer", "30")
    .option("--no-offload", "TUN mode: no TUN offloads (one packet per read and write)")
    .option("--sim-dir <dir>", "simulated TEE (seng attest sim init): INSECURE")
    .option("--mrenclave <hex>", "simulated TEE: MRENCLAVE to claim")
    .option("--mrsigner <hex>", "simulated TEE: MRSIGNER", "00".repeat(32))
    .option("--isvprodid <n>", "simulated TEE: ISVPRODID", "0")
    .option("--isvsvn <n>", "simulated TEE: ISVSVN", "0")
    .option("--debug", "simulated TEE: claim a debug enclave");
}

export function runtimeCommands(): Command[] {
  const runtime = new Command("runtime").description(
    "the SENG runtime: attest, open the tunnel, shield the app's traffic",
  );
  runtime.addCommand(
    upOptions(
      new Command("up").description(
        "TUN mode for confidential VMs: route the guest's traffic through the tunnel",
      ),
    )
      .addOption(
        new Option("--tee <kind>", "where evidence comes from")
          .choices(["auto", "gramine", "tsm", "sim"])
          .default("auto"),
      )
      .action(action((f: UpFlags) => up(f))),
  );
  const testClient = upOptions(
    new Command("test-client").description(
      "runtime up --tun with the simulated TEE (tests and trials; INSECURE)",
    ),
  ).action(action((f: UpFlags) => up({ ...f, tee: "sim", tun: f.tun ?? true })));
  return [runtime, testClient];
}
