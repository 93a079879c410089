/**
 * Where the harnesses find real evidence: the shared attestation vectors (read in place, never copied). The folder
 * is $SENG_VECTORS, else ../shared/attestation-vectors or ../../shared/attestation-vectors beside the checkout.
 * Without it, targets fall back to the inputs they build themselves (and say so).
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export const VECTORS: string | undefined = [
  process.env.SENG_VECTORS,
  resolve(ROOT, "../shared/attestation-vectors"),
  resolve(ROOT, "../../shared/attestation-vectors"),
].find((p): p is string => !!p && existsSync(resolve(p, "MANIFEST.md")));

/** The vector's bytes, or undefined without the vectors folder. */
export function vector(rel: string): Buffer | undefined {
  return VECTORS ? readFileSync(resolve(VECTORS, rel)) : undefined;
}

export function vectors(rels: readonly string[]): Buffer[] {
  return rels.map(vector).filter((b): b is Buffer => !!b);
}
