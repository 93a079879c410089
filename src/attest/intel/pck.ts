/**
 * The SGX extensions of an Intel PCK certificate (OID 1.2.840.113741.1.13.1): the platform's TCB (16 CPUSVN
 * components and PCESVN), PCE-ID and FMSPC, which select the TCB level in TCB info.
 */
import { AttestError } from "../errors.js";
import { derChildren, derInt, derOid, derParse, derValue, TAG, expectTag } from "../der.js";
import type { Cert } from "../x509.js";

export const OID_SGX_EXTENSIONS = "1.2.840.113741.1.13.1";

export interface PckExtensions {
  ppid: string;
  /** The 16 SGX TCB component SVNs. */
  cpusvnComponents: number[];
  pcesvn: number;
  cpusvn: string;
  pceid: string;
  fmspc: string;
}

const cache = new WeakMap<Cert, PckExtensions>();

/** Reads the SGX extensions of a PCK certificate; throws `chain_invalid` if they are missing or malformed. */
export function pckExtensions(cert: Cert): PckExtensions {
  const hit = cache.get(cert);
  if (hit) return hit;
  const ext = cert.extensions.get(OID_SGX_EXTENSIONS);
  if (!ext) throw new AttestError("chain_invalid", "PCK certificate has no SGX extensions");
  try {
    const out: Partial<PckExtensions> = {};
    const comps: number[] = new Array<number>(16).fill(-1);
    for (const item of derChildren(expectTag(derParse(ext.value), TAG.SEQUENCE, "SGX extensions"))) {
      const [oidD, val] = derChildren(item);
      if (!oidD || !val) continue;
      const oid = derOid(oidD);
      const leaf = oid.slice(OID_SGX_EXTENSIONS.length + 1);
      if (leaf === "1") out.ppid = derValue(val).toString("hex");
      else if (leaf === "3") out.pceid = derValue(expectTag(val, TAG.OCTET_STRING, "PCE-ID")).toString("hex");
      else if (leaf === "4") out.fmspc = derValue(expectTag(val, TAG.OCTET_STRING, "FMSPC")).toString("hex");
      else if (leaf === "2") {
        for (const t of derChildren(expectTag(val, TAG.SEQUENCE, "TCB"))) {
          const [o, v] = derChildren(t);
          if (!o || !v) continue;
          const n = Number(derOid(o).split(".").pop());
          if (n >= 1 && n <= 16) comps[n - 1] = derInt(v);
          else if (n === 17) out.pcesvn = derInt(v);
          else if (n === 18) out.cpusvn = derValue(expectTag(v, TAG.OCTET_STRING, "CPUSVN")).toString("hex");
        }
      }
    }
    if (comps.some((c) => c < 0)) throw new Error("TCB lacks some of the 16 components");
    if (out.pcesvn === undefined || out.pceid === undefined || out.fmspc === undefined) {
      throw new Error("PCESVN, PCE-ID or FMSPC missing");
    }
    if (out.fmspc.length !== 12 || out.pceid.length !== 4)
      throw new Error("FMSPC or PCE-ID has the wrong length");
    const res: PckExtensions = {
      ppid: out.ppid ?? "",
      cpusvnComponents: comps,
      pcesvn: out.pcesvn,
      cpusvn: out.cpusvn ?? "",
      pceid: out.pceid,
      fmspc: out.fmspc,
    };
    cache.set(cert, res);
    return res;
  } catch (e) {
    throw new AttestError(
      "chain_invalid",
      `PCK certificate SGX extensions unreadable: ${(e as Error).message}`,
    );
  }
}
