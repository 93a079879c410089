/**
 * Intel collateral JSON: dcap-qvl bundles with TCB info (v2/v3, SGX and TDX, TDX module identities) and QE
 * identity, as parseBundle reads them, and rawJsonMember, which cuts the signed JSON text out of a PCS response.
 * Inputs: the real bundles with their signed TCB info / QE identity JSON changed at a random path (a value of
 * another type, a huge or negative number, a missing key, an empty list), and byte mutations of the bundle text.
 */
import fc from "fast-check";
import { AttestError } from "../../src/attest/errors.js";
import { parseBundle, rawJsonMember } from "../../src/attest/intel/collateral.js";
import { property, type FuzzTarget } from "../lib/engine.js";
import { mutated } from "../lib/mutate.js";
import { vectors } from "../lib/seeds.js";

type J = null | boolean | number | string | J[] | { [k: string]: J };

let bundles: Record<string, J>[] = [];

function prepare(): void {
  bundles = vectors([
    "intel/dcap-qvl/sgx_quote_collateral.json",
    "intel/dcap-qvl/tdx_quote_collateral.json",
  ]).map((b) => JSON.parse(b.toString("utf8")) as Record<string, J>);
  if (bundles.length === 0)
    bundles = [
      { tcb_info: "{}", qe_identity: "{}", tcb_info_issuer_chain: "", qe_identity_issuer_chain: "" },
    ];
}

const replacement: fc.Arbitrary<J> = fc.oneof(
  fc.constantFrom<J>(null, true, -1, 0, 1.5, 1e308, 2 ** 53 + 2, "", "zz", [], {}, "2025-13-45T99:00:00Z"),
  fc.string({ maxLength: 12 }),
  fc.integer(),
  fc.jsonValue({ maxDepth: 2 }) as fc.Arbitrary<J>,
);

/** All paths to values inside `v`. */
function paths(v: J, at: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v && typeof v === "object") for (const k of Object.keys(v)) paths(v[k]!, [...at, k], out);
  return out;
}

function mutateJson(root: J, pick: number, how: number, value: J): J {
  const copy = structuredClone(root);
  const all = paths(copy).slice(1);
  if (!all.length) return value;
  const path = all[pick % all.length]!;
  let parent: J = copy;
  for (const k of path.slice(0, -1)) parent = (parent as Record<string, J>)[k as string]!;
  const last = path[path.length - 1]!;
  const obj = parent as Record<string | number, J>;
  if (how === 0 && !Array.isArray(parent)) delete obj[last];
  else if (how === 1 && Array.isArray(parent)) parent.splice(last as number, 1);
  else if (how === 2 && Array.isArray(obj[last])) (obj[last] as J[]).length = 0;
  else obj[last] = value;
  return copy;
}

function arbitrary(): fc.Arbitrary<Buffer> {
  const structured = fc
    .record({
      b: fc.nat(bundles.length - 1),
      member: fc.constantFrom("tcb_info", "qe_identity", "top"),
      edits: fc.array(fc.tuple(fc.nat(), fc.nat(5), replacement), { minLength: 1, maxLength: 3 }),
      pretty: fc.boolean(),
    })
    .map(({ b, member, edits, pretty }) => {
      const bundle = structuredClone(bundles[b]!);
      if (member === "top") {
        let v: J = bundle;
        for (const [pick, how, value] of edits) v = mutateJson(v, pick, how % 3, value);
        return Buffer.from(JSON.stringify(v));
      }
      let inner = JSON.parse(bundle[member] as string) as J;
      for (const [pick, how, value] of edits) inner = mutateJson(inner, pick, how, value);
      bundle[member] = JSON.stringify(inner, null, pretty ? 2 : undefined);
      return Buffer.from(JSON.stringify(bundle));
    });
  const raw = bundles.map((b) => ({ bytes: Buffer.from(JSON.stringify(b)) }));
  return fc.oneof({ weight: 4, arbitrary: structured }, { weight: 1, arbitrary: mutated(raw) });
}

/** JSON objects for the rawJsonMember round trip: the member's text is exactly what JSON.stringify wrote. */
const memberCheck = fc.dictionary(
  fc.constantFrom("tcbInfo", "a", "qeIdentity"),
  fc.jsonValue({ maxDepth: 3 }),
  {
    maxKeys: 4,
  },
);

function run(input: Buffer): void {
  const text = input.toString("utf8");
  for (const key of ["tcbInfo", "tcb_info", "qe_identity"]) {
    const m = rawJsonMember(text, key);
    property(m === undefined || typeof m === "string", "rawJsonMember returned a non-string");
  }
  const c = parseBundle(text, "fuzz");
  property(
    c.tcbInfos.length === 1 && c.identities.length === 1,
    "a bundle gives one TCB info and one identity",
  );
  for (const l of c.tcbInfos[0]!.tcbLevels)
    property(l.sgx.length === 16, "TCB level without 16 SGX components");
}

export const collateral: FuzzTarget = {
  name: "collateral",
  description: "Intel collateral JSON (dcap-qvl bundle: TCB info v2/v3, QE identity, issuer chains, CRLs)",
  modules: ["src/attest/intel/collateral.ts"],
  prepare,
  arbitrary,
  run,
  expected: (e) => e instanceof AttestError && (e.code === "collateral_invalid" || e.code === "malformed"),
};

/** A property of rawJsonMember alone (checked by the unit test and the short run): exact member text. */
export function rawJsonMemberRoundTrip(runs: number, seed: number): string | undefined {
  for (const o of fc.sample(memberCheck, { numRuns: runs, seed })) {
    const text = JSON.stringify(o);
    for (const [k, v] of Object.entries(o)) {
      if (typeof v !== "object" || v === null) continue; // only objects and lists are looked up this way
      const got = rawJsonMember(text, k);
      if (got !== JSON.stringify(v)) return `rawJsonMember(${text}, ${k}) = ${got}`;
    }
  }
  return undefined;
}
