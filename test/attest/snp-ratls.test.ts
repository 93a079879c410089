/**
 * SEV-SNP in RA-TLS certificates: the simulated SNP platform, the GHCB certificate table, createRaTlsCert and
 * verifyRaTlsCert with reports and endorsements, the identity policy on the result, and forgeries (real vectors
 * with the wrong VCEK, flipped bytes, moved evidence, untrusted ARKs, malformed tables and extensions).
 */
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, webcrypto, type KeyObject } from "node:crypto";
import { before, describe, test } from "node:test";
import { x509 } from "../../src/attest/x509gen.js";
import { CborTag, cborEncode, type CborValue } from "../../src/attest/cbor.js";
import { AttestError } from "../../src/attest/errors.js";
import { decodeEvidence } from "../../src/attest/input.js";
import { matchApp, type AppSpec } from "../../src/attest/policy.js";
import {
  CBOR_TAG_INTEL_TEE_QUOTE,
  CBOR_TAG_SENG_SNP_REPORT,
  createRaTlsCert,
  extractEvidence,
  OID_TCG_DICE_ENDORSEMENT_MANIFEST,
  OID_TCG_DICE_TAGGED_EVIDENCE,
  raTlsReportData,
} from "../../src/attest/ratls.js";
import {
  buildCertTable,
  CERT_TABLE_GUID,
  endorsementsFromCertTable,
  parseCertTable,
} from "../../src/attest/amd/certtable.js";
import {
  createSimSnp,
  issueSimSnpReport,
  loadSimSnp,
  saveSimSnp,
  simSnpCertTable,
  type SimSnp,
} from "../../src/attest/sim-snp.js";
import { verifyEvidence, verifyRaTlsCert } from "../../src/attest/verify.js";
import { Cert } from "../../src/attest/x509.js";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { vector } from "../helpers/vectors.js";

const MEASUREMENT = "5e".repeat(48);
const HOST_DATA = "d4".repeat(32);

/** The rejection code of `f`, or "ok"; anything thrown that is not an AttestError fails the test. */
async function codeOf(f: () => unknown): Promise<string> {
  try {
    await f();
    return "ok";
  } catch (e) {
    if (e instanceof AttestError) return e.code;
    throw e;
  }
}

const newKeys = (): { privateKey: KeyObject; publicKey: KeyObject } =>
  generateKeyPairSync("ec", { namedCurve: "P-256" });
const spkiOf = (k: { publicKey: KeyObject }): Buffer => k.publicKey.export({ type: "spki", format: "der" });

function toWeb(k: KeyObject, use: "sign" | "verify"): Promise<webcrypto.CryptoKey> {
  return webcrypto.subtle.importKey(
    use === "sign" ? "pkcs8" : "spki",
    k.export({ type: use === "sign" ? "pkcs8" : "spki", format: "der" }),
    { name: "ECDSA", namedCurve: "P-256" },
    true,
    [use],
  );
}

/** A self-signed certificate for `keys` with exactly these extension values, bypassing createRaTlsCert's checks. */
async function rawCert(
  keys: { privateKey: KeyObject; publicKey: KeyObject },
  exts: [string, Buffer][],
): Promise<Cert> {
  const c = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=forged",
    notBefore: new Date("2020-01-01T00:00:00Z"),
    notAfter: new Date("2040-01-01T00:00:00Z"),
    keys: {
      publicKey: await toWeb(keys.publicKey, "verify"),
      privateKey: await toWeb(keys.privateKey, "sign"),
    },
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: exts.map(([oid, v]) => new x509.Extension(oid, false, v)),
  });
  return Cert.fromDer(Buffer.from(c.rawData));
}

/** DICE claims as createRaTlsCert writes them, for hand-made certificates. */
const claimsFor = (spki: Buffer): Buffer =>
  cborEncode(new Map([["pubkey-hash", cborEncode([1, createHash("sha256").update(spki).digest()])]]));

const tagged = (tag: number, v: CborValue): Buffer => cborEncode(new CborTag(tag, v));
const snpEvidenceExt = (report: Buffer, spki: Buffer): [string, Buffer] => [
  OID_TCG_DICE_TAGGED_EVIDENCE,
  tagged(CBOR_TAG_SENG_SNP_REPORT, [report, claimsFor(spki)]),
];
const snpEndorsementExt = (certs: Buffer[], tag = CBOR_TAG_SENG_SNP_REPORT): [string, Buffer] => [
  OID_TCG_DICE_ENDORSEMENT_MANIFEST,
  tagged(tag, certs),
];

let sim: SimSnp;
let other: SimSnp;
before(async () => {
  [sim, other] = await Promise.all([createSimSnp(), createSimSnp()]);
});

/** An RA-TLS certificate made the way the runtime makes one: fresh key, report bound to it, table from the host. */
async function identity(
  s: SimSnp,
  claims: { debug?: boolean; measurement?: string; hostData?: string } = {},
  omit: readonly ("vcek" | "ask" | "ark")[] = ["ark"],
): Promise<{ cert: Cert; keys: ReturnType<typeof newKeys>; report: Buffer }> {
  const keys = newKeys();
  const report = issueSimSnpReport(s, {
    measurement: claims.measurement ?? MEASUREMENT,
    hostData: claims.hostData ?? HOST_DATA,
    reportData: raTlsReportData(spkiOf(keys)),
    debug: claims.debug,
  });
  const endorsements = endorsementsFromCertTable(simSnpCertTable(s, omit), "vcek");
  const { cert } = await createRaTlsCert({ keys, evidence: report, endorsements });
  return { cert, keys, report };
}

describe("the simulated SEV-SNP platform", () => {
  test("its reports verify only when its ARK is configured, and are marked simulated and INSECURE", () => {
    const r = issueSimSnpReport(sim, { measurement: MEASUREMENT, hostData: HOST_DATA });
    const trusted = verifyEvidence(r, { vcek: sim.vcek, chain: [sim.ask], extraRoots: [sim.ark] });
    assert.equal(trusted.verified, true, trusted.reason);
    assert.equal(trusted.claims!.tee, "sev-snp");
    assert.equal(trusted.claims!.simulated, true);
    assert.equal(trusted.claims!.snp!.measurement, MEASUREMENT);
    assert.equal(trusted.claims!.snp!.hostData, HOST_DATA);
    assert.equal(trusted.claims!.snp!.product, "Milan");
    assert.match(trusted.warnings.join("\n"), /INSECURE/);
    // The ASK may come with the configured root instead of with the evidence.
    assert.equal(verifyEvidence(r, { vcek: sim.vcek, extraRoots: [sim.ark, sim.ask] }).verified, true);

    const untrusted = verifyEvidence(r, { vcek: sim.vcek, chain: [sim.ask] });
    assert.equal(untrusted.code, "untrusted_root", untrusted.reason);
    const ownArk = verifyEvidence(r, { vcek: sim.vcek, chain: [sim.ask, sim.ark] });
    assert.equal(
      ownArk.code,
      "untrusted_root",
      "an ARK that comes with the evidence is never trusted by itself",
    );
    const otherRoot = verifyEvidence(r, { vcek: sim.vcek, chain: [sim.ask], extraRoots: [other.ark] });
    assert.equal(otherRoot.code, "untrusted_root", otherRoot.reason);
  });

  test("save and load keep the keys and the platform", () => {
    const dir = mkdtempSync(join(tmpdir(), "seng-simsnp-"));
    try {
      saveSimSnp(sim, dir);
      assert.throws(() => saveSimSnp(sim, dir), /already there/);
      const back = loadSimSnp(dir);
      assert.deepEqual(back.tcb, sim.tcb);
      assert.ok(back.chipId.equals(sim.chipId));
      const r = issueSimSnpReport(back, { measurement: MEASUREMENT });
      assert.equal(
        verifyEvidence(r, { vcek: back.vcek, chain: [back.ask], extraRoots: [sim.ark] }).verified,
        true,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the SEV-SNP certificate table (configfs-tsm auxblob)", () => {
  const vcek = Buffer.from("vcek-der");
  const ask = Buffer.from("ask-der");
  const ark = Buffer.from("ark-der");
  const table = buildCertTable([
    { guid: CERT_TABLE_GUID.vcek, data: vcek },
    { guid: CERT_TABLE_GUID.ask, data: ask },
    { guid: CERT_TABLE_GUID.ark, data: ark },
  ]);

  test("entries round-trip, GUIDs in text byte order, and endorsements come leaf first", () => {
    assert.equal(table.subarray(0, 4).toString("hex"), "63da758d");
    const parsed = parseCertTable(Buffer.concat([table, Buffer.alloc(4096 - table.length)]));
    assert.deepEqual(
      parsed.map((e) => [e.guid, e.data.toString()]),
      [
        [CERT_TABLE_GUID.vcek, "vcek-der"],
        [CERT_TABLE_GUID.ask, "ask-der"],
        [CERT_TABLE_GUID.ark, "ark-der"],
      ],
    );
    assert.deepEqual(
      endorsementsFromCertTable(table, "vcek").map((b) => b.toString()),
      ["vcek-der", "ask-der", "ark-der"],
    );
  });

  test("a table without the endorsement key the report needs is vcek_missing", async () => {
    const noVcek = buildCertTable([{ guid: CERT_TABLE_GUID.ask, data: ask }]);
    assert.equal(await codeOf(() => endorsementsFromCertTable(noVcek, "vcek")), "vcek_missing");
    assert.equal(await codeOf(() => endorsementsFromCertTable(table, "vlek")), "vcek_missing");
    assert.equal(await codeOf(() => endorsementsFromCertTable(buildCertTable([]), "vcek")), "vcek_missing");
  });

  test("malformed tables are rejected: no terminator, bad offsets or lengths, duplicates, empty entries", async () => {
    const entry = (guid: string, offset: number, length: number): Buffer => {
      const e = Buffer.alloc(24);
      Buffer.from(guid.replace(/-/g, ""), "hex").copy(e);
      e.writeUInt32LE(offset, 16);
      e.writeUInt32LE(length, 20);
      return e;
    };
    const end = Buffer.alloc(24);
    const body = Buffer.alloc(64, 0x30);
    const cases: [string, Buffer][] = [
      ["empty blob", Buffer.alloc(0)],
      ["truncated entry", table.subarray(0, 30)],
      ["no terminator", Buffer.concat([entry(CERT_TABLE_GUID.vcek, 24, 8), Buffer.alloc(8, 1)])],
      ["offset past the end", Buffer.concat([entry(CERT_TABLE_GUID.vcek, 4096, 8), end, body])],
      ["length past the end", Buffer.concat([entry(CERT_TABLE_GUID.vcek, 48, 65), end, body])],
      ["length overflowing u32", Buffer.concat([entry(CERT_TABLE_GUID.vcek, 48, 0xffffffff), end, body])],
      ["offset into the entries", Buffer.concat([entry(CERT_TABLE_GUID.vcek, 0, 24), end, body])],
      ["zero length", Buffer.concat([entry(CERT_TABLE_GUID.vcek, 48, 0), end, body])],
      [
        "duplicate GUID",
        Buffer.concat([entry(CERT_TABLE_GUID.vcek, 72, 8), entry(CERT_TABLE_GUID.vcek, 80, 8), end, body]),
      ],
      [
        "too many entries",
        Buffer.concat([
          ...Array.from({ length: 70 }, (_, i) => entry(`${i.toString(16).padStart(32, "0")}`, 0, 1)),
          end,
        ]),
      ],
    ];
    for (const [what, blob] of cases) {
      assert.equal(await codeOf(() => parseCertTable(blob)), "malformed", what);
      assert.equal(await codeOf(() => endorsementsFromCertTable(blob, "vcek")), "malformed", what);
    }
  });
});

describe("RA-TLS with SEV-SNP evidence", () => {
  const apps = (id: Partial<AppSpec["identities"][0]>): AppSpec[] => [
    // The sim's TCB (sim-snp.ts) as the minimum: met.
    {
      name: "snp-app",
      identities: [
        { measurement: MEASUREMENT, minTcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 }, ...id },
      ],
    },
  ];

  test("a certificate made from a report and its certificate table verifies, and the identity policy matches", async () => {
    const { cert } = await identity(sim);
    const ev = extractEvidence(cert);
    assert.equal(ev.kind, "sev-snp");
    assert.equal(ev.endorsements!.length, 2, "VCEK and ASK (the host gave no ARK)");
    const v = verifyRaTlsCert(cert, { extraRoots: [sim.ark] });
    assert.equal(v.verified, true, v.reason);
    assert.equal(v.claims!.simulated, true);
    assert.equal(v.claims!.snp!.measurement, MEASUREMENT);
    assert.equal(v.claims!.snp!.hostData, HOST_DATA);
    assert.equal(matchApp(v, apps({})).matched, true);
    assert.equal(matchApp(v, apps({ hostData: HOST_DATA })).matched, true);
    const wrongHost = matchApp(v, apps({ hostData: "00".repeat(32) }));
    assert.equal(wrongHost.matched, false);
    const wrongMeasurement = matchApp(v, apps({ measurement: "00".repeat(48) }));
    assert.equal(wrongMeasurement.matched, false);
    // The same certificate with the ARK in it verifies too, as the ARK equals the configured one.
    const withArk = await identity(sim, {}, []);
    assert.equal(extractEvidence(withArk.cert).endorsements!.length, 3);
    assert.equal(verifyRaTlsCert(withArk.cert, { extraRoots: [sim.ark] }).verified, true);
  });

  test("without the simulated ARK configured, or with an ARK only the certificate brings, it is untrusted_root", async () => {
    const { cert } = await identity(sim, {}, []);
    assert.equal(verifyRaTlsCert(cert).code, "untrusted_root");
    const v = verifyRaTlsCert(cert, { extraRoots: [other.ark] });
    assert.equal(v.verified, false);
    assert.match(v.code!, /untrusted_root|chain_invalid/);
  });

  test("a debug guest verifies but is refused by the policy unless allowDebug", async () => {
    const { cert } = await identity(sim, { debug: true });
    const v = verifyRaTlsCert(cert, { extraRoots: [sim.ark] });
    assert.equal(v.verified, true, v.reason);
    assert.equal(v.claims!.debug, true);
    const refused = matchApp(v, apps({}));
    assert.equal(refused.matched, false);
    assert.match(refused.matched ? "" : refused.reasons.join(), /debug/);
    assert.equal(matchApp(v, apps({ allowDebug: true })).matched, true);
  });

  test("evidence and endorsements moved onto another key are key_binding_invalid", async () => {
    const { cert } = await identity(sim);
    const attacker = newKeys();
    const moved = await rawCert(attacker, [
      [OID_TCG_DICE_TAGGED_EVIDENCE, cert.extensions.get(OID_TCG_DICE_TAGGED_EVIDENCE)!.value],
      [OID_TCG_DICE_ENDORSEMENT_MANIFEST, cert.extensions.get(OID_TCG_DICE_ENDORSEMENT_MANIFEST)!.value],
    ]);
    const v = verifyRaTlsCert(moved, { extraRoots: [sim.ark] });
    assert.equal(v.code, "key_binding_invalid", v.reason);
    assert.equal(v.claims!.snp!.measurement, MEASUREMENT, "the rejection still says whose evidence it was");
    // Claims naming the attacker's key do not help: the report's REPORT_DATA binds the original claims.
    const { report } = await identity(sim);
    const rebound = await rawCert(attacker, [
      snpEvidenceExt(report, spkiOf(attacker)),
      snpEndorsementExt([sim.vcek.der, sim.ask.der]),
    ]);
    assert.equal(verifyRaTlsCert(rebound, { extraRoots: [sim.ark] }).code, "key_binding_invalid");
  });

  test("flipped bytes in the report's fields or signature are report_signature_invalid", async () => {
    const keys = newKeys();
    const report = issueSimSnpReport(sim, {
      measurement: MEASUREMENT,
      reportData: raTlsReportData(spkiOf(keys)),
    });
    const good = await rawCert(keys, [
      snpEvidenceExt(report, spkiOf(keys)),
      snpEndorsementExt([sim.vcek.der, sim.ask.der]),
    ]);
    assert.equal(verifyRaTlsCert(good, { extraRoots: [sim.ark] }).verified, true);
    const offsets: [string, number][] = [
      ["guest svn", 0x04],
      ["report data", 0x50],
      ["measurement", 0x90],
      ["host data", 0xc0],
      ["vmpl", 0x30],
      ["chip id", 0x1a0 + 7],
      ["signature r", 0x2a0],
      ["signature s", 0x2e8 + 20],
    ];
    for (const [what, at] of offsets) {
      const bad = Buffer.from(report);
      bad[at]! ^= 0x01;
      const c = await rawCert(keys, [
        snpEvidenceExt(bad, spkiOf(keys)),
        snpEndorsementExt([sim.vcek.der, sim.ask.der]),
      ]);
      const v = verifyRaTlsCert(c, { extraRoots: [sim.ark] });
      assert.equal(v.verified, false, what);
      assert.equal(v.code, "report_signature_invalid", `${what}: ${v.reason}`);
    }
    // The debug bit flipped on a signed non-debug report does not make a debug guest: the signature breaks.
    const debug = Buffer.from(report);
    debug[0x0a]! |= 0x08;
    const c = await rawCert(keys, [
      snpEvidenceExt(debug, spkiOf(keys)),
      snpEndorsementExt([sim.vcek.der, sim.ask.der]),
    ]);
    assert.equal(verifyRaTlsCert(c, { extraRoots: [sim.ark] }).code, "report_signature_invalid");
  });

  test("a real Milan report verifies with its own VCEK but not with another chip's", async () => {
    const AT = new Date("2025-01-01T00:00:00Z");
    const report = decodeEvidence(vector("amd/virtee-sev/report_milan.hex"));
    const milanVcek = vector("amd/virtee-sev/vcek_milan.der");
    const goVcek = vector("amd/go-sev-guest/vcek.der");
    const keys = newKeys();
    // The real report cannot bind a key of ours, so the best it can reach is key_binding_invalid: chain and
    // signature passed against the built-in AMD roots first.
    const own = await rawCert(keys, [snpEvidenceExt(report, spkiOf(keys)), snpEndorsementExt([milanVcek])]);
    const v = verifyRaTlsCert(own, { at: AT });
    assert.equal(v.code, "key_binding_invalid", v.reason);
    assert.equal(v.claims!.simulated, false);
    assert.equal(v.claims!.snp!.measurement.slice(0, 8), "7a1e5c26");

    const swapped = await rawCert(keys, [snpEvidenceExt(report, spkiOf(keys)), snpEndorsementExt([goVcek])]);
    const w = verifyRaTlsCert(swapped, { at: AT });
    assert.equal(w.verified, false);
    assert.match(w.code!, /report_signature_invalid|chip_id_mismatch|vcek_tcb_mismatch/, w.reason);
    // The simulated VCEK is no better, even with the simulated ARK trusted.
    const simVcek = await rawCert(keys, [
      snpEvidenceExt(report, spkiOf(keys)),
      snpEndorsementExt([sim.vcek.der, sim.ask.der]),
    ]);
    assert.equal(verifyRaTlsCert(simVcek, { extraRoots: [sim.ark] }).code, "report_signature_invalid");
    // A real ASK + a fake ARK in the certificate: not pinned, so untrusted.
    const ask = Cert.fromPemBundle(vector("amd/roots/milan_ask.pem"))[0]!;
    const fakeArk = await rawCert(keys, [
      snpEvidenceExt(report, spkiOf(keys)),
      snpEndorsementExt([milanVcek, ask.der, sim.ark.der]),
    ]);
    assert.equal(verifyRaTlsCert(fakeArk, { at: AT }).code, "untrusted_root");
  });

  test("missing or malformed endorsements fail closed", async () => {
    const keys = newKeys();
    const spki = spkiOf(keys);
    const report = issueSimSnpReport(sim, { measurement: MEASUREMENT, reportData: raTlsReportData(spki) });
    const ev = snpEvidenceExt(report, spki);
    const opts = { extraRoots: [sim.ark] };
    const code = async (exts: [string, Buffer][]): Promise<string> => {
      const v = verifyRaTlsCert(await rawCert(keys, exts), opts);
      assert.equal(v.verified, false);
      return v.code!;
    };
    assert.equal(await code([ev]), "vcek_missing");
    assert.equal(await code([ev, snpEndorsementExt([])]), "malformed");
    assert.equal(
      await code([ev, snpEndorsementExt([sim.vcek.der, sim.ask.der, sim.ark.der, sim.ark.der])]),
      "malformed",
    );
    assert.equal(await code([ev, snpEndorsementExt([sim.vcek.der], CBOR_TAG_INTEL_TEE_QUOTE)]), "malformed");
    assert.equal(
      await code([ev, [OID_TCG_DICE_ENDORSEMENT_MANIFEST, cborEncode([sim.vcek.der])]]),
      "malformed",
    );
    assert.equal(
      await code([ev, [OID_TCG_DICE_ENDORSEMENT_MANIFEST, tagged(CBOR_TAG_SENG_SNP_REPORT, ["x"])]]),
      "malformed",
    );
    assert.equal(await code([ev, snpEndorsementExt([Buffer.from("not a certificate")])]), "malformed");
    // The ASK first instead of the VCEK.
    assert.match(
      await code([ev, snpEndorsementExt([sim.ask.der, sim.vcek.der])]),
      /chain_invalid|vcek_missing/,
    );
    // An SNP report under Intel's tag, or an unknown tag.
    assert.equal(
      await code([
        [OID_TCG_DICE_TAGGED_EVIDENCE, tagged(CBOR_TAG_INTEL_TEE_QUOTE, [report, claimsFor(spki)])],
        snpEndorsementExt([sim.vcek.der]),
      ]),
      "malformed",
    );
    assert.equal(
      await code([
        [OID_TCG_DICE_TAGGED_EVIDENCE, tagged(CBOR_TAG_INTEL_TEE_QUOTE, [report, claimsFor(spki)])],
      ]),
      "vcek_missing",
    );
    assert.equal(
      await code([[OID_TCG_DICE_TAGGED_EVIDENCE, tagged(60001, [report, claimsFor(spki)])]]),
      "malformed",
    );
  });

  test("createRaTlsCert refuses what could never verify", async () => {
    const keys = newKeys();
    const report = issueSimSnpReport(sim, {
      measurement: MEASUREMENT,
      reportData: raTlsReportData(spkiOf(keys)),
    });
    const table = endorsementsFromCertTable(simSnpCertTable(sim), "vcek");
    assert.equal(await codeOf(() => createRaTlsCert({ keys, evidence: report })), "vcek_missing");
    assert.equal(
      await codeOf(() => createRaTlsCert({ keys, evidence: report, endorsements: [sim.ask.der] })),
      "vcek_missing",
    );
    assert.equal(
      await codeOf(() => createRaTlsCert({ keys, evidence: report, endorsements: [Buffer.from("junk")] })),
      "malformed",
    );
    assert.equal(
      await codeOf(() =>
        createRaTlsCert({ keys, evidence: report, endorsements: table, format: "gramine-legacy" }),
      ),
      "unsupported",
    );
    assert.equal(
      await codeOf(() => createRaTlsCert({ keys: newKeys(), evidence: report, endorsements: table })),
      "key_binding_invalid",
    );
    const padded = Buffer.concat([report, Buffer.alloc(4000 - report.length)]);
    const { cert } = await createRaTlsCert({ keys, evidence: padded, endorsements: table });
    assert.equal(extractEvidence(cert).evidence.length, 0x4a0, "the report is stored without padding");
    assert.equal(verifyRaTlsCert(cert, { extraRoots: [sim.ark] }).verified, true);
  });
});
