/** Paths to the shared, read-only attestation vectors (../shared/attestation-vectors beside the checkout). */
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const VECTORS = process.env.SENG_VECTORS ?? resolve(ROOT, "../shared/attestation-vectors");

export function vectorPath(rel: string): string {
  return resolve(VECTORS, rel);
}

export function vector(rel: string): Buffer {
  return readFileSync(vectorPath(rel));
}

/** FIELDS.json: parsed field values of every quote and report, keyed by path. */
export function fields(): Record<string, Record<string, unknown>> {
  return JSON.parse(readFileSync(vectorPath("FIELDS.json"), "utf8")) as Record<
    string,
    Record<string, unknown>
  >;
}
