/**
 * `seng attest verify` and `seng attest sim`: evidence verification from the command line, and the simulated TEE
 * for machines without one.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { Command, Option } from "commander";
import { AttestError } from "../attest/errors.js";
import type { SnpMinTcb, Verdict } from "../attest/claims.js";
import { loadCollateral, type Collateral } from "../attest/intel/collateral.js";
import { verifyEvidence, verifyRaTlsCert, type VerifyOptions } from "../attest/verify.js";
import { Cert } from "../attest/x509.js";
import { looksLikeQuote } from "../attest/intel/quote.js";
import { createSimTee, issueSimQuote, loadSimTee, saveSimTee } from "../attest/sim.js";
import { createSimSnp, saveSimSnp } from "../attest/sim-snp.js";
import { action, UsageError } from "./errors.js";

function readInput(path: string, what: string): Buffer {
  try {
    return path === "-" ? readFileSync(0) : readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(
      `cannot read ${what} ${path}: ${code === "ENOENT" ? "no such file" : code === "EISDIR" ? "is a directory" : (e as Error).message}`,
    );
  }
}

function certsFrom(path: string, what: string): Cert[] {
  const data = readInput(path, what);
  try {
    if (data[0] === 0x30) return [Cert.fromDer(data)];
    const certs = Cert.fromPemBundle(data);
    if (certs.length === 0)
      throw new UsageError(`${what} ${path} holds no certificate (expected PEM or DER)`);
    return certs;
  } catch (e) {
    if (e instanceof AttestError) throw new UsageError(`${what} ${path}: ${e.message}`);
    throw e;
  }
}

/** A certificate file (RA-TLS) rather than bare evidence; quotes carry PEM chains inside, so test for them first. */
function isCertificate(data: Buffer): boolean {
  if (looksLikeQuote(data)) return false;
  const head = data.subarray(0, 64).toString("latin1").trimStart();
  return head.startsWith("-----BEGIN CERTIFICATE-----") || (data[0] === 0x30 && data[1] === 0x82);
}

/** The flat JSON object `--json` prints: stable keys, lowercase hex. */
export function verdictJson(v: Verdict): Record<string, unknown> {
  const c = v.claims;
  const out: Record<string, unknown> = {
    verified: v.verified,
    tee: c?.tee ?? null,
    simulated: c?.simulated ?? false,
    tcbStatus: v.tcbStatus,
    advisoryIds: v.advisoryIds,
    debug: c?.debug ?? null,
    reportData: c?.reportData ?? null,
  };
  if (c?.sgx)
    Object.assign(out, {
      mrenclave: c.sgx.mrenclave,
      mrsigner: c.sgx.mrsigner,
      isvprodid: c.sgx.isvprodid,
      isvsvn: c.sgx.isvsvn,
    });
  if (c?.tdx) {
    const t = c.tdx;
    Object.assign(out, {
      mrtd: t.mrtd,
      rtmr0: t.rtmr0,
      rtmr1: t.rtmr1,
      rtmr2: t.rtmr2,
      rtmr3: t.rtmr3,
      mrseam: t.mrseam,
    });
  }
  if (c?.snp)
    Object.assign(out, {
      measurement: c.snp.measurement,
      policy: c.snp.policy,
      hostData: c.snp.hostData,
      vmpl: c.snp.vmpl,
    });
  if (c) out.platform = c.platform;
  if (!v.verified) Object.assign(out, { code: v.code, reason: v.reason });
  out.warnings = v.warnings;
  out.claims = c ?? null;
  return out;
}

function printHuman(v: Verdict): void {
  const c = v.claims;
  const lines: string[] = [];
  lines.push(v.verified ? "verified" : `REJECTED (${v.code}): ${v.reason}`);
  if (c) {
    lines.push(
      `  tee          ${c.tee}${c.simulated ? " (SIMULATED: no hardware protection)" : ""}${c.debug ? " DEBUG" : ""}`,
    );
    if (c.sgx)
      lines.push(
        `  mrenclave    ${c.sgx.mrenclave}`,
        `  mrsigner     ${c.sgx.mrsigner}`,
        `  isvprodid    ${c.sgx.isvprodid}  isvsvn ${c.sgx.isvsvn}`,
      );
    if (c.tdx)
      lines.push(
        `  mrtd         ${c.tdx.mrtd}`,
        ...[0, 1, 2, 3].map((i) => `  rtmr${i}        ${c.tdx![`rtmr${i}` as "rtmr0"]}`),
      );
    if (c.snp)
      lines.push(
        `  measurement  ${c.snp.measurement}`,
        `  policy       0x${c.snp.policy}  vmpl ${c.snp.vmpl}  ${c.snp.product}`,
      );
    lines.push(`  report data  ${c.reportData}`);
  }
  lines.push(
    `  tcb status   ${v.tcbStatus ?? (v.claims?.snp ? "not checked (no minimum TCB: --snp-min-tcb)" : "not checked (no collateral)")}${v.advisoryIds.length ? `  advisories ${v.advisoryIds.join(" ")}` : ""}`,
  );
  for (const w of v.warnings) lines.push(`  warning: ${w}`);
  process.stdout.write(lines.join("\n") + "\n");
}

interface VerifyFlags {
  collateral?: string[];
  vcek?: string;
  chain?: string;
  root?: string[];
  at?: string;
  json?: boolean;
  snpMinTcb?: string;
}

/** `bootloader=3,tee=0,snp=8,microcode=115` → a minimum SEV-SNP TCB. */
function snpMinTcbArg(v: string): SnpMinTcb {
  const out: SnpMinTcb = {};
  for (const part of v.split(",")) {
    const m = /^\s*(bootloader|tee|snp|microcode|fmc)\s*=\s*(\d{1,3})\s*$/.exec(part);
    if (!m || Number(m[2]) > 255)
      throw new UsageError(
        `--snp-min-tcb: expected SPL=value pairs such as bootloader=3,tee=0,snp=8,microcode=115 (values 0-255), got ${JSON.stringify(part)}`,
      );
    out[m[1] as keyof SnpMinTcb] = Number(m[2]);
  }
  return out;
}

function verifyCommand(): Command {
  return new Command("verify")
    .description(
      "verify an Intel DCAP quote, AMD SEV-SNP report or RA-TLS certificate (exit 0 verified, 1 rejected, 2 bad input)",
    )
    .argument(
      "<evidence>",
      "file with the evidence (binary, hex or base64), or an RA-TLS certificate (PEM/DER); - for stdin",
    )
    .option(
      "--collateral <file|dir>",
      "collateral: dcap-qvl JSON bundle, a directory of PCS responses, AMD KDS CRLs (repeatable)",
      collect,
      [],
    )
    .option("--vcek <file>", "AMD VCEK or VLEK certificate (DER or PEM)")
    .option("--chain <pem>", "PCK chain for quotes without one, or AMD ASK/ASVK (+ARK)")
    .option(
      "--root <pem>",
      "extra trusted root (e.g. the simulated TEE's), repeatable; evidence under it is marked simulated",
      collect,
      [],
    )
    .option("--at <time>", "verify at this ISO 8601 time instead of now")
    .option(
      "--snp-min-tcb <spls>",
      "SEV-SNP minimum TCB, e.g. bootloader=3,tee=0,snp=8,microcode=115: sets tcbStatus UpToDate/OutOfDate",
    )
    .option("--json", "print one JSON object")
    .action(
      action(async (path: string, f: VerifyFlags) => {
        const data = readInput(path, "evidence");
        const opts: VerifyOptions = {};
        if (f.at !== undefined) {
          const at = new Date(f.at);
          if (Number.isNaN(at.getTime()))
            throw new UsageError(`--at: ${JSON.stringify(f.at)} is not an ISO 8601 time`);
          opts.at = at;
        }
        if (f.collateral?.length) {
          try {
            opts.collateral = loadCollateral(f.collateral) satisfies Collateral;
          } catch (e) {
            if (e instanceof AttestError) throw new UsageError(`--collateral: ${e.message}`);
            throw e;
          }
        }
        if (f.snpMinTcb !== undefined) opts.snpMinTcb = snpMinTcbArg(f.snpMinTcb);
        if (f.vcek) opts.vcek = certsFrom(f.vcek, "VCEK")[0];
        if (f.chain) opts.chain = certsFrom(f.chain, "chain");
        if (f.root?.length) opts.extraRoots = f.root.flatMap((r) => certsFrom(r, "root"));
        let verdict: Verdict;
        if (isCertificate(data)) {
          let cert: Cert;
          try {
            cert = Cert.from(data);
          } catch (e) {
            throw new UsageError(`${path}: ${(e as Error).message}`);
          }
          verdict = verifyRaTlsCert(cert, opts);
        } else {
          verdict = verifyEvidence(data, opts);
        }
        if (f.json) process.stdout.write(JSON.stringify(verdictJson(verdict)) + "\n");
        else printHuman(verdict);
        if (verdict.claims?.simulated)
          process.stderr.write("seng: warning: INSECURE simulated TEE evidence\n");
        return verdict.verified ? 0 : 1;
      }),
    );
}

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

function hexArg(name: string, bytes: number, v: string | undefined, fallback?: string): string {
  const s = (v ?? fallback ?? "").replace(/^0x/, "");
  if (!new RegExp(`^[0-9a-fA-F]{${bytes * 2}}$`).test(s))
    throw new UsageError(`--${name}: expected ${bytes} bytes of hex`);
  return s.toLowerCase();
}

function intArg(name: string, v: string | undefined, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > max)
    throw new UsageError(`--${name}: expected an integer 0-${max}`);
  return n;
}

function simCommand(): Command {
  const sim = new Command("sim").description(
    "simulated SGX TEE or SEV-SNP platform for machines without one (INSECURE: for development and tests)",
  );
  sim
    .command("init")
    .description("create a simulated root CA, PCK chain and signed collateral in a directory")
    .requiredOption("--dir <dir>", "directory to write (root.pem, pck-chain.pem, collateral.json, keys)")
    .option("--days <n>", "collateral validity in days", "30")
    .option("--force", "replace a simulated TEE already in --dir")
    .option("--snp", "a simulated SEV-SNP platform instead (ark.pem, ask.pem, vcek.pem, keys)")
    .action(
      action(async (f: { dir: string; days: string; force?: boolean; snp?: boolean }) => {
        if (f.snp) {
          saveSimSnp(await createSimSnp(), f.dir, { overwrite: !!f.force });
          process.stdout.write(
            `simulated SEV-SNP platform written to ${f.dir}\n  trust it explicitly with: --root ${f.dir}/ark.pem (gateway: trust.simulatedRoots)\n`,
          );
          process.stderr.write(
            "seng: warning: a simulated TEE gives no protection; never trust its root in production\n",
          );
          return;
        }
        const days = intArg("days", f.days, 3650)!;
        const tee = await createSimTee({ collateralDays: days });
        saveSimTee(tee, f.dir, { overwrite: !!f.force });
        process.stdout.write(
          `simulated TEE written to ${f.dir}\n  trust it explicitly with: --root ${f.dir}/root.pem --collateral ${f.dir}/collateral.json\n`,
        );
        process.stderr.write(
          "seng: warning: a simulated TEE gives no protection; never trust its root in production\n",
        );
      }),
    );
  sim
    .command("quote")
    .description("issue an SGX quote from the simulated TEE")
    .requiredOption("--dir <dir>", "directory made by `seng attest sim init`")
    .requiredOption("--mrenclave <hex>", "MRENCLAVE (32 bytes hex)")
    .option("--mrsigner <hex>", "MRSIGNER (32 bytes hex)")
    .option("--isvprodid <n>", "ISVPRODID")
    .option("--isvsvn <n>", "ISVSVN")
    .option("--report-data <hex>", "REPORT_DATA (up to 64 bytes hex, zero padded)")
    .option("--debug", "set the DEBUG attribute")
    .addOption(
      new Option("--format <fmt>", "output encoding").choices(["binary", "hex", "base64"]).default("binary"),
    )
    .requiredOption("--out <file>", "where to write the quote")
    .action(
      action(
        async (f: {
          dir: string;
          mrenclave: string;
          mrsigner?: string;
          isvprodid?: string;
          isvsvn?: string;
          reportData?: string;
          debug?: boolean;
          format: string;
          out: string;
        }) => {
          const rd = (f.reportData ?? "").replace(/^0x/, "");
          if (!/^([0-9a-fA-F]{2}){0,64}$/.test(rd))
            throw new UsageError("--report-data: expected up to 64 bytes of hex");
          let tee;
          try {
            tee = loadSimTee(f.dir);
          } catch (e) {
            throw new UsageError(`--dir ${f.dir}: ${(e as Error).message}`);
          }
          const quote = issueSimQuote(tee, {
            mrenclave: hexArg("mrenclave", 32, f.mrenclave),
            mrsigner: hexArg("mrsigner", 32, f.mrsigner, "00".repeat(32)),
            isvprodid: intArg("isvprodid", f.isvprodid, 0xffff),
            isvsvn: intArg("isvsvn", f.isvsvn, 0xffff),
            reportData: Buffer.from(rd, "hex"),
            debug: !!f.debug,
          });
          writeFileSync(
            f.out,
            f.format === "binary" ? quote : quote.toString(f.format as "hex" | "base64") + "\n",
          );
          process.stdout.write(`simulated quote (${quote.length} bytes) written to ${f.out}\n`);
        },
      ),
    );
  return sim;
}

export function attestCommand(): Command {
  return new Command("attest")
    .description("verify attestation evidence; simulated TEE")
    .addCommand(verifyCommand())
    .addCommand(simCommand());
}
