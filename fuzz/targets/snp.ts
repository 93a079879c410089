/**
 * AMD SEV-SNP: the ATTESTATION_REPORT parser (versions 2 to 5, every product's TCB layout) and the certificate
 * table the host hands the guest (configfs-tsm auxblob, GHCB cert_table). Inputs: real reports in every version,
 * product and signing-key variant with their fields set to interesting values; certificate tables built from real
 * AMD certificates with entry offsets and lengths mostly right, and raw mutations of both.
 */
import fc from "fast-check";
import { AttestError } from "../../src/attest/errors.js";
import { decodeEvidence } from "../../src/attest/input.js";
import {
  decodeTcb,
  looksLikeSnpReport,
  parseSnpReport,
  SNP_REPORT_LEN,
  SNP_SIGNED_LEN,
} from "../../src/attest/amd/report.js";
import {
  buildCertTable,
  CERT_TABLE_GUID,
  endorsementsFromCertTable,
  parseCertTable,
  type CertTableEntry,
} from "../../src/attest/amd/certtable.js";
import { property, type FuzzTarget } from "../lib/engine.js";
import { mutated, type Field, type Seed } from "../lib/mutate.js";
import { vector, vectors } from "../lib/seeds.js";

const le = (offset: number, size: 1 | 2 | 4): Field => ({ offset, size, le: true });
/** version, guest SVN, policy (low and high words), VMPL, signature algorithm, KEY_INFO, CPUID, and bytes in R/S. */
const REPORT_FIELDS: Field[] = [
  le(0, 4),
  le(4, 4),
  le(8, 4),
  le(12, 4),
  le(0x30, 4),
  le(0x34, 4),
  le(0x48, 4),
  le(0x188, 1),
  le(0x189, 1),
  le(0x18a, 1),
  le(0x1a8, 4),
  le(0x2a0 + 48, 4),
  le(0x2e8 + 60, 4),
  le(0x400, 4),
];

let reportSeeds: Seed[] = [];
let tableSeeds: Seed[] = [];
let certs: Buffer[] = [];

function pemToDer(pem: Buffer): Buffer[] {
  return [
    ...pem.toString("latin1").matchAll(/-----BEGIN CERTIFICATE-----([^-]+)-----END CERTIFICATE-----/g),
  ].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ""), "base64"));
}

function prepare(): void {
  const reports = [vector("amd/go-sev-guest/attestation.bin"), vector("amd/virtee-sev/report_milan.hex")]
    .filter((b): b is Buffer => !!b)
    .map((b) => decodeEvidence(b));
  if (reports.length === 0) {
    const r = Buffer.alloc(SNP_REPORT_LEN);
    r.writeUInt32LE(3, 0);
    r.writeUInt32LE(1 << 17, 8);
    r.writeUInt32LE(1, 0x34);
    reports.push(r);
  }
  reportSeeds = [];
  for (const r of reports) {
    for (const version of [2, 3, 4, 5]) {
      for (const [family, model] of [
        [0x19, 0x01],
        [0x19, 0x11],
        [0x1a, 0x02],
        [0x17, 0x31],
      ] as const) {
        for (const keyInfo of [0, 1 << 2, 7 << 2]) {
          const b = Buffer.from(r.subarray(0, SNP_REPORT_LEN));
          b.writeUInt32LE(version, 0);
          b[0x188] = family;
          b[0x189] = model;
          b.writeUInt32LE(keyInfo, 0x48);
          reportSeeds.push({ bytes: b, fields: REPORT_FIELDS });
        }
      }
    }
  }
  certs = [
    ...vectors([
      "amd/go-sev-guest/vcek.der",
      "amd/virtee-sev/vcek_milan.der",
      "amd/virtee-sev/vcek_turin.der",
    ]),
    ...vectors(["amd/go-sev-guest/ask_ark_milan.pem", "amd/virtee-sev/cert_chain_turin"]).flatMap(pemToDer),
  ];
  if (certs.length === 0) certs = [Buffer.from("30030201", "hex"), Buffer.alloc(100, 0x30)];
  const g = CERT_TABLE_GUID;
  tableSeeds = [[g.vcek, g.ask, g.ark], [g.vlek, g.ask], [g.vcek], [g.ark, g.crl, g.vcek]].map((guids) =>
    tableSeed(guids.map((guid, i) => ({ guid, data: certs[i % certs.length]! }))),
  );
}

function tableSeed(entries: CertTableEntry[], pad = 0): Seed {
  const bytes = Buffer.concat([buildCertTable(entries), Buffer.alloc(pad)]);
  const fields: Field[] = [];
  for (let i = 0; i <= entries.length; i++)
    fields.push(le(i * 24, 4), le(i * 24 + 16, 4), le(i * 24 + 20, 4));
  return { bytes, fields };
}

const guidArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...Object.values(CERT_TABLE_GUID)) },
  {
    weight: 1,
    arbitrary: fc.uuid().map((u) => u.toLowerCase()),
  },
);

function tableArbitrary(): fc.Arbitrary<Buffer> {
  const built = fc
    .record({
      entries: fc.array(
        fc.record({
          guid: guidArb,
          data: fc.oneof(
            fc.nat(certs.length - 1).map((i) => certs[i]!),
            fc.uint8Array({ minLength: 1, maxLength: 40 }).map((u) => Buffer.from(u)),
          ),
        }),
        { maxLength: 6 },
      ),
      pad: fc.oneof(fc.constant(0), fc.nat(4096)),
    })
    .map(({ entries, pad }) => tableSeed(entries, pad));
  return fc.oneof(
    mutated(tableSeeds),
    built.chain((s) => mutated([s])),
  );
}

function runReport(input: Buffer): void {
  const looks = looksLikeSnpReport(input);
  const r = parseSnpReport(input);
  property(looks, "parseSnpReport accepted what looksLikeSnpReport rejects");
  property(
    r.raw.length === SNP_REPORT_LEN && input.subarray(0, SNP_REPORT_LEN).equals(r.raw),
    "raw is not the report",
  );
  property(r.signedData.equals(input.subarray(0, SNP_SIGNED_LEN)), "signedData is not bytes 0 to 0x29F");
  property(r.signature.length === 96, "signature is not r‖s of 48 bytes each");
  property(r.version >= 2 && r.version <= 5 && r.sigAlgo === 1, "unsupported version or algorithm accepted");
  for (const p of ["Milan", "Genoa", "Turin"] as const) decodeTcb(r.reportedTcb, p);
  property(r.claims.tee === "sev-snp" && r.claims.snp !== undefined, "claims are not SNP claims");
}

function runTable(input: Buffer): void {
  const entries = parseCertTable(input);
  const seen = new Set<string>();
  const headEnd = (entries.length + 1) * 24;
  property(
    input.subarray(headEnd - 24, headEnd).every((b) => b === 0),
    "entries do not end with a zero entry",
  );
  entries.forEach((e, i) => {
    // Each certificate is exactly [offset, offset + length) of its entry, after the entries, inside the table.
    const offset = input.readUInt32LE(i * 24 + 16);
    const length = input.readUInt32LE(i * 24 + 20);
    property(
      e.data.byteOffset - input.byteOffset === offset && e.data.length === length,
      `entry ${i} data is not offset/length`,
    );
    property(
      offset >= headEnd && offset + length <= input.length,
      `entry ${i} lies outside the certificate area`,
    );
  });
  for (const e of entries) {
    property(e.data.length > 0, "an empty certificate was accepted");
    property(!seen.has(e.guid), "a GUID listed twice was accepted");
    seen.add(e.guid);
    property(input.includes(e.data), "an entry's data is not inside the table");
  }
  // Round trip: the entries build a table that parses to the same entries.
  const again = parseCertTable(buildCertTable(entries));
  property(
    again.length === entries.length &&
      again.every((e, i) => e.guid === entries[i]!.guid && e.data.equals(entries[i]!.data)),
    "buildCertTable(parseCertTable(t)) does not parse to the same entries",
  );
  for (const k of ["vcek", "vlek"] as const) {
    try {
      const list = endorsementsFromCertTable(input, k);
      property(list.length >= 1 && list.length <= 3, "1 to 3 endorsements");
    } catch (e) {
      if (!(e instanceof AttestError && e.code === "vcek_missing")) throw e;
    }
  }
}

export const snpReport: FuzzTarget = {
  name: "snp-report",
  description: "AMD SEV-SNP ATTESTATION_REPORT v2-v5 (Milan, Genoa, Turin layouts; VCEK, VLEK, no key)",
  modules: ["src/attest/amd/report.ts"],
  prepare,
  arbitrary: () => mutated(reportSeeds),
  run: runReport,
  expected: (e) => e instanceof AttestError && (e.code === "malformed" || e.code === "unsupported"),
};

export const snpCertTable: FuzzTarget = {
  name: "snp-certtable",
  description:
    "SEV-SNP certificate table (configfs-tsm auxblob / GHCB cert_table) and the endorsements taken from it",
  modules: ["src/attest/amd/certtable.ts"],
  prepare,
  arbitrary: tableArbitrary,
  run: runTable,
  expected: (e) => e instanceof AttestError && e.code === "malformed",
};
