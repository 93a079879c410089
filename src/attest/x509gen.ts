/**
 * Certificate generation (simulated TEE, RA-TLS certificates, tests) with @peculiar/x509 on Node's WebCrypto.
 * Import `x509` from here, not from the package: this sets the crypto provider and the decorator metadata it needs,
 * once. Verification never uses this library (see der.ts and x509.ts).
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { randomBytes, webcrypto } from "node:crypto";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export { x509 };

/** A self-signed P-256 certificate for a node:crypto key pair (gateway certificates, test peers). */
export async function selfSignedCert(opts: {
  keys: { privateKey: import("node:crypto").KeyObject; publicKey: import("node:crypto").KeyObject };
  name: string;
  days: number;
  extensions?: x509.Extension[];
}): Promise<{ der: Buffer; pem: string }> {
  const alg = { name: "ECDSA", namedCurve: "P-256" } as const;
  const c = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(8)
      .toString("hex")
      .replace(/^[89a-f]/, "1"),
    name: opts.name,
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + opts.days * 86400_000),
    keys: {
      privateKey: await webcrypto.subtle.importKey(
        "pkcs8",
        opts.keys.privateKey.export({ type: "pkcs8", format: "der" }),
        alg,
        false,
        ["sign"],
      ),
      publicKey: await webcrypto.subtle.importKey(
        "spki",
        opts.keys.publicKey.export({ type: "spki", format: "der" }),
        alg,
        true,
        ["verify"],
      ),
    },
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: opts.extensions,
  });
  return { der: Buffer.from(c.rawData), pem: c.toString("pem") + "\n" };
}
