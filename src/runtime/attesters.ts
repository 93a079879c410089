/**
 * Attesters: where a runtime gets evidence for its fresh tunnel key.
 *
 *  - gramine: Gramine's pseudo-files under /dev/attestation (SGX): read `attestation_type`, write the 64-byte
 *    `user_report_data`, read `quote`.
 *  - tsm: Linux configfs-tsm (TDX and SEV-SNP guests, kernel 6.7+): make an entry under
 *    /sys/kernel/config/tsm/report, write `inblob`, read `outblob` (and `auxblob`: the SNP certificate table),
 *    with `generation` read before and after to detect a concurrent writer, then remove the entry. For SEV-SNP
 *    (provider `sev_guest`) the VCEK or VLEK, and the ASK/ARK when present, come from the certificate table and
 *    travel in the RA-TLS certificate: the report alone cannot be verified.
 *  - sim: the simulated SGX TEE, or a simulated SEV-SNP VM when the directory holds one (INSECURE; development
 *    and tests).
 *
 * Every attester binds the evidence to the key the same way: REPORT_DATA = raTlsReportData(SPKI of the key), so
 * the gateway's RA-TLS check (docs/ATTESTATION.md) holds. The key is made here, in this process, inside the TEE.
 */
import { generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createRaTlsCert, raTlsReportData } from "../attest/ratls.js";
import { issueSimQuote, loadSimTee, type SimQuoteClaims } from "../attest/sim.js";
import { endorsementsFromCertTable } from "../attest/amd/certtable.js";
import {
  issueSimSnpReport,
  loadSimSnp,
  simSnpCertTable,
  type SimSnpReportClaims,
} from "../attest/sim-snp.js";
import { looksLikeSnpReport, parseSnpReport } from "../attest/amd/report.js";
import { looksLikeQuote, parseQuote, sgxDebug, tdDebug } from "../attest/intel/quote.js";
import { AttestError } from "../attest/errors.js";

export type AttesterKind = "gramine" | "tsm" | "sim";

/** A simulated TEE: SGX (`claims`) or SEV-SNP (`snp`, when the directory holds a simulated SNP platform). */
export type SimSpec =
  | { dir: string; claims: Omit<SimQuoteClaims, "reportData">; snp?: undefined }
  | { dir: string; snp: Omit<SimSnpReportClaims, "reportData">; claims?: undefined };

export interface Evidence {
  /** Quote or report bytes. */
  evidence: Buffer;
  /** configfs-tsm's auxblob (SEV-SNP: the certificate table with the VCEK), when the provider gives one. */
  aux?: Buffer;
  /** SEV-SNP: the report's endorsement certificates (DER, VCEK or VLEK first), for the RA-TLS certificate. */
  endorsements?: Buffer[];
  /** What produced it: "sgx-dcap" (Gramine), "tdx_guest" / "sev_guest" (tsm provider), "sim", "sim-snp". */
  provider: string;
}

export interface Attester {
  readonly kind: AttesterKind;
  /** Evidence whose REPORT_DATA is exactly `reportData` (64 bytes). */
  attest(reportData: Buffer): Evidence;
}

/** Thrown when an attester cannot work here; the message says what is missing. */
export class AttesterError extends Error {
  override readonly name = "AttesterError";
}

function read(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new AttesterError(
      `${what}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
}

function write(path: string, data: Buffer, what: string): void {
  try {
    writeFileSync(path, data);
  } catch (e) {
    throw new AttesterError(
      `${what}: cannot write ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
}

/** Gramine's /dev/attestation interface. `root` is configurable for tests. */
export class GramineAttester implements Attester {
  readonly kind = "gramine" as const;
  constructor(readonly root = "/dev/attestation") {
    const type = read(join(root, "attestation_type"), "gramine").toString("utf8").trim();
    if (type !== "dcap") {
      throw new AttesterError(
        `gramine: attestation type is "${type}"; SENG needs "dcap" (set sgx.remote_attestation = "dcap" in the manifest)`,
      );
    }
  }

  attest(reportData: Buffer): Evidence {
    if (reportData.length !== 64) throw new RangeError("reportData must be 64 bytes");
    write(join(this.root, "user_report_data"), reportData, "gramine");
    const quote = read(join(this.root, "quote"), "gramine");
    if (quote.length < 48) throw new AttesterError(`gramine: quote of ${quote.length} bytes is too short`);
    return { evidence: quote, provider: "sgx-dcap" };
  }
}

/** Linux configfs-tsm. `root` is configurable for tests. */
export class TsmAttester implements Attester {
  readonly kind = "tsm" as const;
  /**
   * @param root the configfs-tsm report directory
   * @param entry reuse this existing entry (an administrator may pre-create one) instead of making and removing a
   *   fresh one per request
   */
  constructor(
    readonly root = "/sys/kernel/config/tsm/report",
    readonly entry?: string,
  ) {
    if (!existsSync(root)) {
      throw new AttesterError(
        `tsm: ${root} does not exist (needs a TDX or SEV-SNP guest kernel 6.7+ with configfs mounted)`,
      );
    }
  }

  attest(reportData: Buffer): Evidence {
    if (reportData.length !== 64) throw new RangeError("reportData must be 64 bytes");
    const own = this.entry === undefined;
    const entry = join(this.root, this.entry ?? `seng-${process.pid}-${randomBytes(4).toString("hex")}`);
    if (own) {
      try {
        mkdirSync(entry);
      } catch (e) {
        throw new AttesterError(
          `tsm: cannot create ${entry}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
        );
      }
    }
    try {
      write(join(entry, "inblob"), reportData, "tsm");
      const generation = read(join(entry, "generation"), "tsm").toString().trim();
      const outblob = read(join(entry, "outblob"), "tsm");
      const provider = read(join(entry, "provider"), "tsm").toString().trim();
      const aux = existsSync(join(entry, "auxblob")) ? readFileSync(join(entry, "auxblob")) : undefined;
      // Another writer to this entry between our write and read would have bumped the generation.
      const after = read(join(entry, "generation"), "tsm").toString().trim();
      if (after !== generation)
        throw new AttesterError(
          `tsm: ${entry} was written concurrently (generation ${generation} → ${after})`,
        );
      if (outblob.length === 0) throw new AttesterError(`tsm: ${provider} returned an empty outblob`);
      const ev: Evidence = { evidence: outblob, aux: aux?.length ? aux : undefined, provider };
      if (provider === "sev_guest") ev.endorsements = snpEndorsements(outblob, ev.aux);
      return ev;
    } finally {
      if (own) {
        try {
          rmdirSync(entry);
        } catch {
          // configfs removes the attribute files with the entry; nothing more to do
        }
      }
    }
  }
}

/**
 * The endorsements of an SEV-SNP report from the host's certificate table: the VCEK (or VLEK, as the report's
 * SIGNING_KEY says), then the ASK/ASVK and ARK when the table has them.
 */
function snpEndorsements(report: Buffer, aux: Buffer | undefined, who = "tsm: sev_guest"): Buffer[] {
  let signingKey: "vcek" | "vlek";
  try {
    const k = parseSnpReport(report).signingKey;
    if (k === "none") throw new AttesterError(`${who} returned an unsigned report (SIGNING_KEY = none)`);
    signingKey = k;
  } catch (e) {
    if (e instanceof AttesterError) throw e;
    throw new AttesterError(`${who} returned something that is not an SNP report: ${(e as Error).message}`);
  }
  if (!aux) {
    throw new AttesterError(
      `${who} gave no certificate table (auxblob), so the report's VCEK is unknown; the host must provide its certificates (e.g. snphost import, SNP_SET_CONFIG)`,
    );
  }
  try {
    return endorsementsFromCertTable(aux, signingKey);
  } catch (e) {
    throw new AttesterError(`${who} auxblob: ${(e as Error).message}`);
  }
}

/** The simulated SGX TEE (INSECURE). */
export class SimAttester implements Attester {
  readonly kind = "sim" as const;
  private readonly sim;
  constructor(
    simDir: string,
    readonly claims: Omit<SimQuoteClaims, "reportData">,
  ) {
    this.sim = loadSimTee(simDir);
  }

  attest(reportData: Buffer): Evidence {
    return { evidence: issueSimQuote(this.sim, { ...this.claims, reportData }), provider: "sim" };
  }
}

/**
 * The simulated SEV-SNP VM (INSECURE): reports signed by the sim's VCEK, endorsed through the same certificate
 * table path as configfs-tsm's sev_guest (VCEK and ASK; the ARK stays with whoever trusts it).
 */
export class SimSnpAttester implements Attester {
  readonly kind = "sim" as const;
  private readonly sim;
  private readonly table;
  constructor(
    simDir: string,
    readonly claims: Omit<SimSnpReportClaims, "reportData">,
  ) {
    try {
      this.sim = loadSimSnp(simDir);
    } catch (e) {
      throw new AttesterError(`sim: ${simDir}: ${(e as Error).message}`);
    }
    this.table = simSnpCertTable(this.sim, ["ark"]);
  }

  attest(reportData: Buffer): Evidence {
    const evidence = issueSimSnpReport(this.sim, { ...this.claims, reportData });
    return {
      evidence,
      aux: this.table,
      endorsements: snpEndorsements(evidence, this.table, "sim-snp"),
      provider: "sim-snp",
    };
  }
}

/** Picks an attester: Gramine if /dev/attestation exists, then configfs-tsm; `sim` only when asked for. */
export function detectAttester(kind: AttesterKind | "auto", sim?: SimSpec): Attester {
  if (kind === "sim" || (kind === "auto" && sim)) {
    if (!sim) throw new AttesterError("sim: no simulated TEE directory given");
    return sim.snp ? new SimSnpAttester(sim.dir, sim.snp) : new SimAttester(sim.dir, sim.claims);
  }
  if (kind === "gramine" || (kind === "auto" && existsSync("/dev/attestation"))) return new GramineAttester();
  if (kind === "tsm" || (kind === "auto" && existsSync("/sys/kernel/config/tsm/report")))
    return new TsmAttester();
  throw new AttesterError(
    "no TEE found: neither /dev/attestation (Gramine) nor /sys/kernel/config/tsm/report (TDX/SEV-SNP); use --tee sim for development",
  );
}

export interface RaTlsIdentity {
  certPem: string;
  keyPem: string;
  key: KeyObject;
  provider: string;
  /**
   * The evidence claims a debug TEE (SGX ATTRIBUTES.DEBUG, TDATTRIBUTES.DEBUG, SEV-SNP policy DEBUG): its memory is
   * open to the host and the gateway refuses it unless an identity sets `allowDebug`. Evidence that cannot be read
   * counts as not debug (the guards that depend on it stay closed).
   */
  debug: boolean;
}

/** Whether `evidence` (a DCAP quote or an SEV-SNP report) claims a debug TEE; false when it cannot be parsed. */
export function evidenceIsDebug(evidence: Buffer): boolean {
  try {
    if (looksLikeQuote(evidence)) {
      const q = parseQuote(evidence);
      return q.bodyType === "sgx" ? sgxDebug(q.body) : tdDebug(q.body);
    }
    if (looksLikeSnpReport(evidence)) return parseSnpReport(evidence).policyDebug;
  } catch {
    // not evidence we can read: not debug
  }
  return false;
}

/**
 * A fresh P-256 key made in this process and an RA-TLS certificate carrying evidence bound to it. The key never
 * leaves the process: reconnections reuse the identity so the gateway recognizes the lease.
 */
export async function makeIdentity(attester: Attester): Promise<RaTlsIdentity> {
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = keys.publicKey.export({ type: "spki", format: "der" });
  const ev = attester.attest(raTlsReportData(spki));
  let pem: string;
  try {
    ({ pem } = await createRaTlsCert({ keys, evidence: ev.evidence, endorsements: ev.endorsements }));
  } catch (e) {
    // Evidence that can never verify (wrong REPORT_DATA, no VCEK): say so here, once, not at every gateway.
    if (e instanceof AttestError) throw new AttesterError(`${attester.kind}: ${ev.provider}: ${e.message}`);
    throw e;
  }
  return {
    certPem: pem,
    keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    key: keys.privateKey,
    provider: ev.provider,
    debug: evidenceIsDebug(ev.evidence),
  };
}
