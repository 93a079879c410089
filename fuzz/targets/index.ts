/** Every TypeScript fuzz target, in the order the runner takes them. */
import type { FuzzTarget } from "../lib/engine.js";
import { quote } from "./quote.js";
import { snpCertTable, snpReport } from "./snp.js";
import { cbor, der } from "./codec.js";
import { ratls } from "./ratls.js";
import { collateral } from "./collateral.js";
import { control, evidenceInput, packet, packet6 } from "./wire.js";

export const TARGETS: readonly FuzzTarget[] = [
  quote,
  snpReport,
  snpCertTable,
  cbor,
  der,
  ratls,
  collateral,
  control,
  packet,
  packet6,
  evidenceInput,
];

/** The libFuzzer harnesses of the native code (fuzz/native/*_fuzz.cc). */
export const NATIVE_TARGETS = ["split", "coalesce"] as const;
