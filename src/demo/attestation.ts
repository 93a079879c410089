/**
 * `seng demo attest`: the attestation stage on its own, self-contained on a simulated TEE (clearly labelled
 * INSECURE): apps are identified by their measurements, and every way of lying about an app is refused for its own
 * reason. No network needed (the network demo is ./scenario.ts).
 */
import { generateKeyPairSync, webcrypto } from "node:crypto";
import { x509 } from "../attest/x509gen.js";
import type { Verdict } from "../attest/claims.js";
import { collateralFromBundle } from "../attest/intel/collateral.js";
import { compileApps, matchApp } from "../attest/policy.js";
import { createRaTlsCert, extractEvidence, raTlsReportData } from "../attest/ratls.js";
import { createSimTee, issueSimQuote, revokePckCert, type SimTee } from "../attest/sim.js";
import { verifyRaTlsCert, type VerifyOptions } from "../attest/verify.js";
import { Cert } from "../attest/x509.js";

const BROWSER = "b0".repeat(32);
const DB_SIGNER = "d0".repeat(32);

interface Case {
  name: string;
  expected: string;
  got: string;
  app: string;
}

/** An RA-TLS certificate for a fresh key, with a simulated quote bound to it. */
async function raTls(sim: SimTee, claims: Parameters<typeof issueSimQuote>[1]): Promise<Cert> {
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = keys.publicKey.export({ type: "spki", format: "der" });
  const quote = issueSimQuote(sim, { ...claims, reportData: raTlsReportData(spki) });
  return (await createRaTlsCert({ keys, evidence: quote })).cert;
}

/** The evidence of `cert` inside a certificate for someone else's key. */
async function moved(cert: Cert): Promise<Cert> {
  const ev = extractEvidence(cert);
  const alg = { name: "ECDSA", namedCurve: "P-256" } as const;
  const keys = (await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const c = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=stolen evidence",
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: [new x509.Extension(ev.oid, false, cert.extensions.get(ev.oid)!.value)],
  });
  return Cert.fromDer(Buffer.from(c.rawData));
}

function outcome(v: Verdict, apps: ReturnType<typeof compileApps>): { got: string; app: string } {
  if (!v.verified) return { got: `refused: ${v.code}`, app: "-" };
  const m = matchApp(v, apps);
  if (m.matched) return { got: "accepted", app: m.app };
  const why = m.reasons.find((r) => /debug|TCB status|below/.test(r)) ?? m.reasons[0]!;
  const short = /debug/.test(why)
    ? "debug"
    : /TCB status/.test(why)
      ? "tcb"
      : /below/.test(why)
        ? "svn"
        : "unknown-app";
  return { got: `refused: ${short}`, app: "-" };
}

export async function runDemo(log: (s: string) => void): Promise<Case[]> {
  log("SENG demo: attestation stage (SIMULATED TEE: no hardware protection, for demonstration only)");
  log("  creating a simulated SGX platform (root CA, PCK chain, signed TCB collateral) ...");
  const sim = await createSimTee();
  const opts = (s: SimTee): VerifyOptions => ({
    collateral: collateralFromBundle(s.collateral),
    extraRoots: [s.root],
  });
  const apps = compileApps([
    { name: "browser", identities: [{ mrenclave: BROWSER }] },
    { name: "db-client", identities: [{ mrsigner: DB_SIGNER, isvprodid: 2, minIsvsvn: 5 }] },
  ]);
  log("  apps: browser = MRENCLAVE b0b0…, db-client = MRSIGNER d0d0… product 2 from SVN 5");
  const cases: Case[] = [];
  const run = async (
    name: string,
    expected: string,
    make: () => Promise<{ cert: Cert; opts: VerifyOptions }>,
  ) => {
    const { cert, opts: o } = await make();
    const r = outcome(verifyRaTlsCert(cert, o), apps);
    cases.push({ name, expected, ...r });
    log(`  ${r.got === expected ? "ok  " : "FAIL"} ${name}: ${r.got}${r.app !== "-" ? ` as ${r.app}` : ""}`);
  };
  await run("browser enclave", "accepted", async () => ({
    cert: await raTls(sim, { mrenclave: BROWSER, mrsigner: "01".repeat(32) }),
    opts: opts(sim),
  }));
  await run("db-client enclave, SVN 6", "accepted", async () => ({
    cert: await raTls(sim, { mrenclave: "11".repeat(32), mrsigner: DB_SIGNER, isvprodid: 2, isvsvn: 6 }),
    opts: opts(sim),
  }));
  await run("tampered browser build", "refused: unknown-app", async () => ({
    cert: await raTls(sim, { mrenclave: "b1".repeat(32), mrsigner: "01".repeat(32) }),
    opts: opts(sim),
  }));
  await run("browser built for debug", "refused: debug", async () => ({
    cert: await raTls(sim, { mrenclave: BROWSER, mrsigner: "01".repeat(32), debug: true }),
    opts: opts(sim),
  }));
  await run("db-client at old SVN 4", "refused: svn", async () => ({
    cert: await raTls(sim, { mrenclave: "12".repeat(32), mrsigner: DB_SIGNER, isvprodid: 2, isvsvn: 4 }),
    opts: opts(sim),
  }));
  await run("browser evidence on a stolen key", "refused: key_binding_invalid", async () => ({
    cert: await moved(await raTls(sim, { mrenclave: BROWSER, mrsigner: "01".repeat(32) })),
    opts: opts(sim),
  }));
  const revoked = await revokePckCert(sim);
  await run("platform whose PCK is revoked", "refused: cert_revoked", async () => ({
    cert: await raTls(revoked, { mrenclave: BROWSER, mrsigner: "01".repeat(32) }),
    opts: opts(revoked),
  }));
  const old = await createSimTee({ platformTcb: "OutOfDate" });
  await run("platform with out-of-date TCB", "refused: tcb", async () => ({
    cert: await raTls(old, { mrenclave: BROWSER, mrsigner: "01".repeat(32) }),
    opts: opts(old),
  }));
  await run("simulated root not configured", "refused: untrusted_root", async () => ({
    cert: await raTls(sim, { mrenclave: BROWSER, mrsigner: "01".repeat(32) }),
    opts: { collateral: collateralFromBundle(sim.collateral) },
  }));
  return cases;
}

export function attestTable(cases: Case[]): string {
  return table(
    ["case", "expected", "happened", "app"],
    cases.map((c) => [c.name, c.expected, c.got, c.app]),
  );
}

/** A plain-text table with a header rule. */
export function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((x, i) => x.padEnd(w[i]!))
      .join("  ")
      .trimEnd();
  return [line(head), w.map((n) => "-".repeat(n)).join("  "), ...rows.map(line)].join("\n");
}
