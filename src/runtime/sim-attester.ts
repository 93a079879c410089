/**
 * The simulated TEE as an attester: a fresh P-256 key made in this process, an SGX quote from the simulated TEE
 * with REPORT_DATA bound to that key, and the RA-TLS certificate carrying it. INSECURE: for development and tests.
 */
import { generateKeyPairSync } from "node:crypto";
import { createRaTlsCert, raTlsReportData } from "../attest/ratls.js";
import { issueSimQuote, loadSimTee, type SimQuoteClaims } from "../attest/sim.js";

export interface RaTlsIdentity {
  certPem: string;
  keyPem: string;
}

export async function simRaTlsIdentity(
  simDir: string,
  claims: Omit<SimQuoteClaims, "reportData">,
): Promise<RaTlsIdentity> {
  const sim = loadSimTee(simDir);
  const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = keys.publicKey.export({ type: "spki", format: "der" });
  const quote = issueSimQuote(sim, { ...claims, reportData: raTlsReportData(spki) });
  const { pem } = await createRaTlsCert({ keys, evidence: quote });
  return { certPem: pem, keyPem: keys.privateKey.export({ type: "pkcs8", format: "pem" }) as string };
}
