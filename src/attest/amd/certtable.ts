/**
 * The SEV-SNP certificate table: what the host hands a guest with an extended guest request (GHCB specification
 * 2.03, section 4.1.8.1, `struct cert_table`), and what Linux's configfs-tsm returns as `auxblob` for the
 * `sev_guest` provider (Documentation/virt/coco/sev-guest.rst):
 *
 *   entry[i] = { guid: 16 bytes, offset: u32 LE, length: u32 LE }   24 bytes each, from byte 0
 *   entry[n] = 24 zero bytes                                          the terminator
 *   certificates at `offset` (from the start of the table), `length` bytes each, DER
 *
 * GUIDs are stored in their text order (63da758d-… is the bytes 63 da 75 8d …). The host, not the PSP, fills this
 * table, so it is untrusted input: parsing is strict (terminator required, every certificate inside the blob and
 * after the entries, no GUID twice) and everything found must still be verified up to a trusted ARK.
 */
import { AttestError } from "../errors.js";

/** The GUIDs the GHCB specification defines for the table's entries. */
export const CERT_TABLE_GUID = {
  vcek: "63da758d-e664-4564-adc5-f4b93be8accd",
  vlek: "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
  /** The ASK, or the ASVK when the table carries a VLEK. */
  ask: "4ab7b379-bbac-4fe4-a02f-05aef327c782",
  ark: "c0b406a4-a803-4952-9743-3fb6014cd0ae",
  /** AMD's CRL for the product; carried through, not used. */
  crl: "92f81bc3-5811-4d3d-97ff-d19f88dc67ea",
} as const;

const ENTRY_LEN = 24;
/** A sane bound: real tables hold at most a handful of entries, and certificates are a few kilobytes. */
const MAX_ENTRIES = 64;

export interface CertTableEntry {
  /** Lowercase, hyphenated. */
  guid: string;
  data: Buffer;
}

function bad(msg: string): never {
  throw new AttestError("malformed", `SEV-SNP certificate table: ${msg}`);
}

const guidText = (b: Buffer): string => {
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};
const guidBytes = (g: string): Buffer => Buffer.from(g.replace(/-/g, ""), "hex");

/**
 * Parses a certificate table. Throws AttestError `malformed` for a table without terminator, an entry whose
 * certificate lies outside the blob or over the entries, an empty certificate, or a GUID listed twice.
 * Bytes after the last certificate are allowed (the kernel returns a page-sized buffer).
 */
export function parseCertTable(blob: Buffer): CertTableEntry[] {
  const raw: { guid: string; offset: number; length: number }[] = [];
  let end = -1;
  for (let i = 0; end < 0; i++) {
    const at = i * ENTRY_LEN;
    if (at + ENTRY_LEN > blob.length) bad(`no terminating zero entry within its ${blob.length} bytes`);
    const e = blob.subarray(at, at + ENTRY_LEN);
    if (e.every((b) => b === 0)) {
      end = at + ENTRY_LEN;
      break;
    }
    if (i === MAX_ENTRIES) bad(`more than ${MAX_ENTRIES} entries`);
    raw.push({ guid: guidText(e.subarray(0, 16)), offset: e.readUInt32LE(16), length: e.readUInt32LE(20) });
  }
  const seen = new Set<string>();
  return raw.map(({ guid, offset, length }) => {
    if (length === 0) bad(`entry ${guid} is empty`);
    if (offset < end) bad(`entry ${guid} points into the table's entries (offset ${offset})`);
    if (offset > blob.length || length > blob.length - offset)
      bad(`entry ${guid} (offset ${offset}, length ${length}) lies outside the ${blob.length}-byte table`);
    if (seen.has(guid)) bad(`entry ${guid} appears twice`);
    seen.add(guid);
    return { guid, data: blob.subarray(offset, offset + length) };
  });
}

/** Builds a certificate table (the sim's auxblob, tests). Entries are laid out in order after the terminator. */
export function buildCertTable(entries: readonly CertTableEntry[]): Buffer {
  const head = Buffer.alloc((entries.length + 1) * ENTRY_LEN);
  let offset = head.length;
  entries.forEach((e, i) => {
    guidBytes(e.guid).copy(head, i * ENTRY_LEN);
    head.writeUInt32LE(offset, i * ENTRY_LEN + 16);
    head.writeUInt32LE(e.data.length, i * ENTRY_LEN + 20);
    offset += e.data.length;
  });
  return Buffer.concat([head, ...entries.map((e) => e.data)]);
}

/**
 * The endorsements an RA-TLS certificate should carry for a report signed by `signingKey`, from a certificate table:
 * the VCEK (or VLEK) first, then the ASK/ASVK and the ARK when the table has them (DER, unverified).
 * Throws AttestError `vcek_missing` when the table lacks the endorsement key the report needs, `malformed` when the
 * table cannot be parsed.
 */
export function endorsementsFromCertTable(blob: Buffer, signingKey: "vcek" | "vlek"): Buffer[] {
  const entries = parseCertTable(blob);
  const get = (g: string): Buffer | undefined => entries.find((e) => e.guid === g)?.data;
  const leaf = get(CERT_TABLE_GUID[signingKey]);
  if (!leaf) {
    throw new AttestError(
      "vcek_missing",
      `SEV-SNP certificate table has no ${signingKey.toUpperCase()} (entries: ${entries.map((e) => e.guid).join(", ") || "none"}); the host must provide it (e.g. snphost import / SNP_SET_CONFIG)`,
    );
  }
  return [leaf, get(CERT_TABLE_GUID.ask), get(CERT_TABLE_GUID.ark)].filter((c): c is Buffer => !!c);
}
