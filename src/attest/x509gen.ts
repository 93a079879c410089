/**
 * Certificate generation (simulated TEE, RA-TLS certificates, tests) with @peculiar/x509 on Node's WebCrypto.
 * Import `x509` from here, not from the package: this sets the crypto provider and the decorator metadata it needs,
 * once. Verification never uses this library (see der.ts and x509.ts).
 */
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { webcrypto } from "node:crypto";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export { x509 };
