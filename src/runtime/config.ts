/**
 * The runtime's settings: where the gateway is, how it is pinned, where evidence comes from, and (TUN mode) the
 * interface and routes. They come from, in increasing precedence: defaults, a YAML file (`SENG_CONFIG` or
 * `--config`), `SENG_*` environment variables, and command-line flags (which `seng runtime` turns into `SENG_*`
 * variables for the app's process). The preload reads the environment because it runs inside the app's process,
 * where no command line of ours exists. Errors name the file or variable, the key and what was expected.
 *
 * File (paths are relative to the file's folder):
 *
 *   gateway: 198.18.1.1:4433        # host:port (required); or a list: [a:4433, b:4433] (docs/CLUSTER.md)
 *   pin: gateway.pem                # SHA-256 fingerprint (64 hex), or a file with it or the certificate (required)
 *   tee: auto                       # auto | gramine | tsm | sim
 *   sim: { dir: sim, mrenclave: <64 hex>, mrsigner: <64 hex>, isvprodid: 0, isvsvn: 0, debug: false }  # INSECURE
 *   sim: { dir: sim-snp, measurement: <96 hex>, hostData: <64 hex>, debug: false }  # a simulated SEV-SNP VM
 *   leaseTimeoutSeconds: 30         # the app starts after this long even without a lease (its sockets wait)
 *   deadSeconds: 30                 # the tunnel counts as lost after this long without an answer
 *   log: json                       # json: runtime events as JSON lines on stderr; off (default)
 *   tun: { name: seng-rt0, routes: [default] }   # `seng runtime up --tun`
 *   allowHostPrograms: [/usr/bin/git]  # child programs that may run, UNSHIELDED (others: ERR_SENG_HOST_NETWORKING)
 *   allowAddons: [<path or SHA-256>]   # native addons the app may load (others: ERR_SENG_ADDON); unset: any, warned
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { z } from "zod";
import { Cert } from "../attest/x509.js";
import { validateYaml } from "../policy/config.js";
import type { AttesterKind } from "./attesters.js";
import { isSimSnpDir } from "../attest/sim-snp.js";

/** The settings the preload and `seng runtime` run with. */
export interface RuntimeConfig {
  /** "host:port", or several comma-separated: the runtime moves to the next after a loss (src/tunnel/client.ts). */
  gateway: string;
  /** The gateway certificate's SHA-256 fingerprint (lower-case hex); the same pin for every gateway of a list. */
  pin: string;
  tee: AttesterKind | "auto";
  /** The simulated TEE: an SGX one (`claims`) or, when `dir` holds a simulated SEV-SNP platform, `snp`. */
  sim?: SimSetting;
  leaseTimeoutMs: number;
  deadSeconds: number;
  log: boolean;
  /** TUN mode: interface name and routes ("default" takes over the default route). */
  tun: { name: string; routes: string[] };
  /** Absolute paths of non-Node programs the app may start; their traffic is not shielded (src/runtime/guards.ts). */
  allowHostPrograms: string[];
  /** Native addons the app may load (absolute paths or lower-case SHA-256); undefined: any, with a warning. */
  allowAddons?: string[];
}

/** A missing or wrong setting; the message names where it came from and what was expected. */
export class RuntimeConfigError extends Error {
  override readonly name = "RuntimeConfigError";
}

/** Which simulated TEE to run and what it claims (INSECURE). */
export type SimSetting =
  | {
      dir: string;
      claims: { mrenclave: string; mrsigner: string; isvprodid: number; isvsvn: number; debug: boolean };
      snp?: undefined;
    }
  | { dir: string; snp: { measurement: string; hostData?: string; debug: boolean }; claims?: undefined };

const HEX32 = /^[0-9a-fA-F]{64}$/;
const HEX48 = /^[0-9a-fA-F]{96}$/;
/** One gateway or several, comma-separated (a cluster: docs/CLUSTER.md). */
const GATEWAYS =
  /^\s*(?:[^:\s,]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5})(?:\s*,\s*(?:[^:\s,]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}))*\s*$/;

const fileSchema = z
  .object({
    // A YAML list of host:port is the same as the comma-separated string.
    gateway: z.preprocess(
      (v) => (Array.isArray(v) && v.every((g) => typeof g === "string") ? v.join(",") : v),
      z.string().regex(GATEWAYS, "expected host:port such as 198.18.1.1:4433, or a list of them"),
    ),
    pin: z.string().min(1, "expected a SHA-256 fingerprint or a file"),
    tee: z.enum(["auto", "gramine", "tsm", "sim"]),
    sim: z
      .object({
        dir: z.string().min(1),
        mrenclave: z.string().regex(HEX32, "expected 32 bytes of hex").optional(),
        mrsigner: z.string().regex(HEX32, "expected 32 bytes of hex").optional(),
        isvprodid: z.number().int().min(0).max(65535).optional(),
        isvsvn: z.number().int().min(0).max(65535).optional(),
        measurement: z.string().regex(HEX48, "expected 48 bytes of hex").optional(),
        hostData: z.string().regex(HEX32, "expected 32 bytes of hex").optional(),
        debug: z.boolean().optional(),
      })
      .strict()
      .superRefine((v, ctx) => {
        if (v.mrenclave === undefined && v.measurement === undefined)
          ctx.addIssue({
            code: "custom",
            path: ["mrenclave"],
            message:
              "expected string (an SGX sim's MRENCLAVE), or sim.measurement for a simulated SEV-SNP VM",
          });
      }),
    leaseTimeoutSeconds: z.number().positive(),
    deadSeconds: z.number().positive(),
    log: z.enum(["json", "off"]),
    tun: z
      .object({
        name: z
          .string()
          .regex(/^[A-Za-z0-9_.-]{1,15}$/, "expected an interface name (1-15 letters, digits, _ . -)"),
        routes: z.array(z.string().min(1)),
      })
      .partial()
      .strict(),
    allowHostPrograms: z.array(z.string().min(1, "expected the absolute path of a program")),
    allowAddons: z.array(z.string().min(1, "expected an addon's path or SHA-256 (64 hex)")),
  })
  .partial()
  .strict();

type FileSettings = z.infer<typeof fileSchema>;

/** Reads and validates a runtime config file; relative paths are resolved against its folder. */
export function loadRuntimeConfigFile(file: string): FileSettings {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new RuntimeConfigError(`${file}: cannot read: ${code === "ENOENT" ? "no such file" : code}`);
  }
  const s = validateYaml(fileSchema, text, file, (m) => new RuntimeConfigError(m), {});
  const base = dirname(resolve(file));
  if (s.pin && !HEX32.test(s.pin)) s.pin = resolve(base, s.pin);
  if (s.sim) s.sim.dir = resolve(base, s.sim.dir);
  s.allowHostPrograms?.forEach((p, i) => {
    if (!isAbsolute(p))
      throw new RuntimeConfigError(
        `${file}: allowHostPrograms[${i}]: expected an absolute path such as /usr/bin/git, got ${p}`,
      );
  });
  if (s.allowAddons)
    s.allowAddons = s.allowAddons.map((a) => (HEX32.test(a) ? a.toLowerCase() : resolve(base, a)));
  return s;
}

/**
 * A pin is a SHA-256 fingerprint, a file holding one, or the gateway's certificate (PEM/DER). `what` names the
 * setting in errors.
 */
export function readPin(pin: string, what = "--pin"): string {
  if (HEX32.test(pin)) return pin.toLowerCase();
  let data: Buffer;
  try {
    data = readFileSync(pin);
  } catch {
    throw new RuntimeConfigError(
      `${what}: ${pin} is neither a SHA-256 fingerprint (64 hex digits) nor a readable file`,
    );
  }
  const text = data.toString("latin1").trim();
  if (HEX32.test(text)) return text.toLowerCase();
  try {
    return Cert.from(data).fingerprint;
  } catch {
    throw new RuntimeConfigError(`${what}: ${pin} holds neither a fingerprint nor a certificate`);
  }
}

/**
 * The settings for this process: `SENG_CONFIG`'s file (if set) under the `SENG_*` variables. Throws
 * {@link RuntimeConfigError} naming the variable or file key at fault.
 */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): RuntimeConfig {
  const file = env.SENG_CONFIG ? loadRuntimeConfigFile(env.SENG_CONFIG) : {};
  const src = (v: string, k: string) =>
    env[v] !== undefined && env[v] !== "" ? v : `${env.SENG_CONFIG}: ${k}`;
  const get = (v: string): string | undefined => (env[v] === "" ? undefined : env[v]);

  const gateway = get("SENG_GATEWAY") ?? file.gateway;
  if (!gateway)
    throw new RuntimeConfigError(
      "SENG: no gateway: set SENG_GATEWAY (or --gateway, or `gateway:` in the config file) to its host:port",
    );
  if (!GATEWAYS.test(gateway))
    throw new RuntimeConfigError(
      `SENG: ${src("SENG_GATEWAY", "gateway")}: expected host:port, got ${gateway} (several: separated by commas)`,
    );

  const pinSetting = get("SENG_PIN") ?? file.pin;
  if (!pinSetting)
    throw new RuntimeConfigError(
      "SENG: no gateway pin: set SENG_PIN (or --pin, or `pin:` in the config file) to the gateway " +
        "certificate's SHA-256, or a file with it or the certificate",
    );
  const pin = readPin(pinSetting, `SENG: ${src("SENG_PIN", "pin")}`);

  const tee = (get("SENG_TEE") ?? file.tee ?? "auto") as AttesterKind | "auto";
  if (!["auto", "gramine", "tsm", "sim"].includes(tee))
    throw new RuntimeConfigError(`SENG: SENG_TEE: expected auto, gramine, tsm or sim, got ${tee}`);

  let sim: RuntimeConfig["sim"];
  const simDir = get("SENG_SIM_DIR") ?? file.sim?.dir;
  if (tee === "sim" || simDir) {
    if (!simDir)
      throw new RuntimeConfigError(
        "SENG: the simulated TEE needs its directory: SENG_SIM_DIR or `sim.dir` (made by seng attest sim init)",
      );
    const debugEnv = get("SENG_DEBUG_ENCLAVE");
    const debug =
      debugEnv !== undefined ? debugEnv === "1" || debugEnv === "true" : (file.sim?.debug ?? false);
    if (isSimSnpDir(simDir)) {
      const measurement = get("SENG_MEASUREMENT") ?? file.sim?.measurement ?? "";
      if (!HEX48.test(measurement))
        throw new RuntimeConfigError(
          `SENG: ${simDir} is a simulated SEV-SNP platform: it needs a MEASUREMENT of 48 bytes of hex: SENG_MEASUREMENT or \`sim.measurement\``,
        );
      const hostData = get("SENG_HOST_DATA") ?? file.sim?.hostData;
      if (hostData !== undefined && !HEX32.test(hostData))
        throw new RuntimeConfigError("SENG: SENG_HOST_DATA: expected 32 bytes of hex");
      sim = {
        dir: simDir,
        snp: {
          measurement: measurement.toLowerCase(),
          ...(hostData ? { hostData: hostData.toLowerCase() } : {}),
          debug,
        },
      };
    } else {
      const mrenclave = get("SENG_MRENCLAVE") ?? file.sim?.mrenclave ?? "";
      if (!HEX32.test(mrenclave))
        throw new RuntimeConfigError(
          "SENG: the simulated TEE needs an MRENCLAVE of 32 bytes of hex: SENG_MRENCLAVE or `sim.mrenclave`",
        );
      const mrsigner = get("SENG_MRSIGNER") ?? file.sim?.mrsigner ?? "00".repeat(32);
      if (!HEX32.test(mrsigner))
        throw new RuntimeConfigError("SENG: SENG_MRSIGNER: expected 32 bytes of hex");
      const u16 = (v: string, d: number) => {
        const n = get(v) === undefined ? d : Number(get(v));
        if (!Number.isInteger(n) || n < 0 || n > 65535)
          throw new RuntimeConfigError(`SENG: ${v}: expected an integer from 0 to 65535`);
        return n;
      };
      sim = {
        dir: simDir,
        claims: {
          mrenclave,
          mrsigner,
          isvprodid: u16("SENG_ISVPRODID", file.sim?.isvprodid ?? 0),
          isvsvn: u16("SENG_ISVSVN", file.sim?.isvsvn ?? 0),
          debug,
        },
      };
    }
  }

  const seconds = (v: string, fromFile: number | undefined, d: number) => {
    const raw = get(v);
    const n = raw === undefined ? (fromFile ?? d) : Number(raw);
    if (!Number.isFinite(n) || n <= 0)
      throw new RuntimeConfigError(`SENG: ${v}: expected a positive number of seconds, got ${raw}`);
    return n;
  };
  const routes = get("SENG_TUN_ROUTES");
  const log = get("SENG_LOG") ?? file.log;
  // An unknown value used to mean "off" without a word.
  if (log !== undefined && log !== "json" && log !== "off")
    throw new RuntimeConfigError(`SENG: SENG_LOG: expected json or off, got ${log}`);
  const list = (v: string) =>
    get(v)
      ?.split(",")
      .map((x) => x.trim())
      .filter(Boolean);
  const programs = list("SENG_ALLOW_HOST_PROGRAMS") ?? file.allowHostPrograms ?? [];
  for (const p of programs)
    if (!isAbsolute(p))
      throw new RuntimeConfigError(
        `SENG: ${src("SENG_ALLOW_HOST_PROGRAMS", "allowHostPrograms")}: expected absolute paths such as /usr/bin/git, got ${p}`,
      );
  // SENG_ALLOW_ADDONS=none: an empty allow list (no addon but SENG's own).
  const addonsEnv = get("SENG_ALLOW_ADDONS");
  const addons = addonsEnv === "none" ? [] : (list("SENG_ALLOW_ADDONS") ?? file.allowAddons);
  for (const a of addons ?? [])
    if (!HEX32.test(a) && !isAbsolute(a))
      throw new RuntimeConfigError(
        `SENG: ${src("SENG_ALLOW_ADDONS", "allowAddons")}: expected absolute paths or SHA-256 hashes (64 hex), got ${a}`,
      );
  return {
    gateway,
    pin,
    tee,
    sim,
    leaseTimeoutMs: seconds("SENG_LEASE_TIMEOUT", file.leaseTimeoutSeconds, 30) * 1000,
    deadSeconds: seconds("SENG_DEAD_SECONDS", file.deadSeconds, 30),
    log: log === "json",
    tun: {
      name: get("SENG_TUN") ?? file.tun?.name ?? "seng-rt0",
      routes: routes !== undefined ? routes.split(",").filter(Boolean) : (file.tun?.routes ?? []),
    },
    allowHostPrograms: programs,
    ...(addons ? { allowAddons: addons.map((a) => (HEX32.test(a) ? a.toLowerCase() : a)) } : {}),
  };
}
