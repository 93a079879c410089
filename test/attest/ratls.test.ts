/**
 * RA-TLS key binding: certificates made by createRaTlsCert for simulated quotes, evidence moved between keys,
 * both legacy OID spellings and the TCG DICE encoding, and corrupted extensions (always `malformed`).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, generateKeyPairSync, webcrypto } from "node:crypto";
import { x509 } from "../../src/attest/x509gen.js";
import { CborTag, cborDecode, cborEncode, type CborValue } from "../../src/attest/cbor.js";
import { AttestError } from "../../src/attest/errors.js";
import { parseQuote, quoteReportData } from "../../src/attest/intel/quote.js";
import {
  certSpki,
  createRaTlsCert,
  extractEvidence,
  keyBindingOk,
  OID_GRAMINE_LEGACY,
  OID_GRAMINE_LEGACY_INTENDED,
  OID_TCG_DICE_TAGGED_EVIDENCE,
  raTlsReportData,
  type RaTlsFormat,
} from "../../src/attest/ratls.js";
import { createSimTee, issueSimQuote, type SimTee } from "../../src/attest/sim.js";
import { Cert } from "../../src/attest/x509.js";

type KeyPair = webcrypto.CryptoKeyPair;
const EC = { name: "ECDSA", namedCurve: "P-256" } as const;
const MEASUREMENTS = { mrenclave: "c3".repeat(32), mrsigner: "d4".repeat(32) };
const FORMATS: RaTlsFormat[] = ["tcg-dice", "gramine-legacy"];

let shared: Promise<SimTee> | undefined;
const sim = (): Promise<SimTee> => (shared ??= createSimTee());

const sha256 = (b: Buffer): Buffer => createHash("sha256").update(b).digest();
const newKeys = async (): Promise<KeyPair> =>
  (await webcrypto.subtle.generateKey(EC, true, ["sign", "verify"])) as KeyPair;
const spkiOf = async (k: KeyPair): Promise<Buffer> =>
  Buffer.from(await webcrypto.subtle.exportKey("spki", k.publicKey));

/** A self-signed certificate with arbitrary extensions, bypassing createRaTlsCert's checks. */
async function certWith(exts: [string, Buffer][], keys?: KeyPair): Promise<Cert> {
  const c = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=test",
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86400_000),
    keys: keys ?? (await newKeys()),
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: exts.map(([oid, v]) => new x509.Extension(oid, false, v)),
  });
  return Cert.fromDer(Buffer.from(c.rawData));
}

/** A key, a sim quote bound to it in `format`, and the RA-TLS certificate. */
async function bound(format: RaTlsFormat) {
  const keys = await newKeys();
  const spki = await spkiOf(keys);
  const quote = issueSimQuote(await sim(), { ...MEASUREMENTS, reportData: raTlsReportData(spki, format) });
  const { cert, pem } = await createRaTlsCert({ keys, evidence: quote, format });
  return { keys, spki, quote, cert, pem };
}

const reportDataOf = (evidence: Buffer): Buffer => quoteReportData(parseQuote(evidence));

function isMalformed(e: unknown): boolean {
  return e instanceof AttestError && e.code === "malformed";
}

for (const format of FORMATS) {
  test(`${format}: a certificate for a fresh key carries a quote bound to it`, async () => {
    const { spki, quote, cert, pem } = await bound(format);
    assert.deepEqual(certSpki(cert), spki);
    assert.equal(Cert.from(pem).fingerprint, cert.fingerprint);
    assert.equal(await new x509.X509Certificate(cert.der).verify(), true, "self-signed by the bound key");
    const ev = extractEvidence(cert);
    assert.equal(ev.format, format);
    assert.equal(ev.oid, format === "tcg-dice" ? OID_TCG_DICE_TAGGED_EVIDENCE : OID_GRAMINE_LEGACY);
    assert.deepEqual(ev.evidence, quote);
    assert.equal(cert.extensions.get(ev.oid)!.critical, false);
    assert.equal(keyBindingOk(cert, reportDataOf(ev.evidence)), true);
    assert.equal(keyBindingOk(cert, reportDataOf(ev.evidence), ev), true);
    assert.equal(keyBindingOk(cert, Buffer.alloc(64)), false);
    assert.equal(keyBindingOk(cert, Buffer.alloc(16)), false);
  });

  test(`${format}: evidence moved to another key's certificate does not bind`, async () => {
    const a = await bound(format);
    const ev = extractEvidence(a.cert);
    const ext = a.cert.extensions.get(ev.oid)!;
    const other = await certWith([[ev.oid, ext.value]]);
    const moved = extractEvidence(other);
    assert.deepEqual(moved.evidence, a.quote, "the evidence itself still extracts");
    assert.equal(keyBindingOk(other, reportDataOf(moved.evidence)), false);
    assert.equal(keyBindingOk(other, reportDataOf(moved.evidence), ev), false);
  });
}

test("tcg-dice: claims rewritten for another key no longer match the quote", async () => {
  const a = await bound("tcg-dice");
  const keys = await newKeys();
  const claims = cborEncode(new Map([["pubkey-hash", cborEncode([1, sha256(await spkiOf(keys))])]]));
  const forged = await certWith(
    [[OID_TCG_DICE_TAGGED_EVIDENCE, cborEncode(new CborTag(60000, [a.quote, claims]))]],
    keys,
  );
  assert.equal(keyBindingOk(forged, reportDataOf(a.quote)), false);
  // A legacy-bound quote wrapped as DICE evidence does not bind either: REPORT_DATA is not the claims' hash.
  const legacy = await bound("gramine-legacy");
  const claimsL = cborEncode(new Map([["pubkey-hash", cborEncode([1, sha256(legacy.spki)])]]));
  const wrapped = await certWith(
    [[OID_TCG_DICE_TAGGED_EVIDENCE, cborEncode(new CborTag(60000, [legacy.quote, claimsL]))]],
    legacy.keys,
  );
  assert.equal(keyBindingOk(wrapped, reportDataOf(legacy.quote)), false);
});

for (const format of FORMATS) {
  test(`${format}: honest evidence plus the honest certificate's PEM cannot bind an attacker's key`, async () => {
    // Node's X509Certificate reads the first PEM block inside a DER buffer, so a certificate for the attacker's key
    // that embeds the honest certificate's PEM looks, to Node, like the honest certificate. The binding must use the
    // key of the DER itself.
    const honest = await bound(format);
    const ev = extractEvidence(honest.cert);
    const attackerKeys = await newKeys();
    const forged = await certWith(
      [
        ["1.2.3.4", Buffer.from(`\n${honest.pem}\n`)],
        [ev.oid, honest.cert.extensions.get(ev.oid)!.value],
      ],
      attackerKeys,
    );
    assert.deepEqual(certSpki(forged), await spkiOf(attackerKeys));
    assert.equal(keyBindingOk(forged, reportDataOf(ev.evidence)), false);
    assert.equal(keyBindingOk(honest.cert, reportDataOf(ev.evidence)), true);
  });
}

test("createRaTlsCert: default format, node KeyObjects, and refusals", async () => {
  const s = await sim();
  const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = kp.publicKey.export({ type: "spki", format: "der" });
  const quote = issueSimQuote(s, { ...MEASUREMENTS, reportData: raTlsReportData(spki) });
  const { cert } = await createRaTlsCert({ keys: kp, evidence: quote, subject: "CN=app" });
  assert.equal(extractEvidence(cert).format, "tcg-dice", "tcg-dice is the default");
  assert.equal(new x509.X509Certificate(cert.der).subject, "CN=app");
  assert.equal(keyBindingOk(cert, reportDataOf(quote)), true);
  const keyBinding = (e: unknown) => e instanceof AttestError && e.code === "key_binding_invalid";
  await assert.rejects(createRaTlsCert({ keys: kp, evidence: quote, format: "gramine-legacy" }), keyBinding);
  const unbound = issueSimQuote(s, MEASUREMENTS);
  await assert.rejects(createRaTlsCert({ keys: kp, evidence: unbound }), keyBinding);
  await assert.rejects(createRaTlsCert({ keys: kp, evidence: Buffer.from("not a quote") }), isMalformed);
  await assert.rejects(
    createRaTlsCert({ keys: generateKeyPairSync("ec", { namedCurve: "P-384" }), evidence: quote }),
    TypeError,
  );
  const notBefore = new Date("2026-01-01T00:00:00Z");
  const dated = await createRaTlsCert({
    keys: kp,
    evidence: quote,
    notBefore,
    notAfter: new Date("2026-01-02T00:00:00Z"),
  });
  assert.deepEqual(
    [dated.cert.notBefore, dated.cert.notAfter],
    [notBefore, new Date("2026-01-02T00:00:00Z")],
  );
});

test("createRaTlsCert with node KeyObjects (built without the generator): both formats, names, dates", async () => {
  const s = await sim();
  const kp = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = kp.publicKey.export({ type: "spki", format: "der" });
  for (const format of FORMATS) {
    const quote = issueSimQuote(s, { ...MEASUREMENTS, reportData: raTlsReportData(spki, format) });
    const { cert, pem } = await createRaTlsCert({ keys: kp, evidence: quote, format });
    const parsed = new x509.X509Certificate(cert.der);
    assert.equal(await parsed.verify(), true, "self-signed by the bound key");
    assert.equal(parsed.subject, "CN=SENG RA-TLS");
    assert.equal(Cert.from(pem).fingerprint, cert.fingerprint);
    assert.deepEqual(certSpki(cert), spki);
    const ev = extractEvidence(cert);
    assert.equal(ev.format, format);
    assert.deepEqual(ev.evidence, quote);
    assert.equal(keyBindingOk(cert, reportDataOf(quote)), true);
    const exts = Object.fromEntries(parsed.extensions.map((e) => [e.type, e.critical]));
    assert.deepEqual(exts, {
      "2.5.29.19": true,
      "2.5.29.15": true,
      [format === "tcg-dice" ? OID_TCG_DICE_TAGGED_EVIDENCE : OID_GRAMINE_LEGACY]: false,
    });
  }
  const quote = issueSimQuote(s, { ...MEASUREMENTS, reportData: raTlsReportData(spki) });
  const late = await createRaTlsCert({
    keys: kp,
    evidence: quote,
    subject: "CN=app é",
    notBefore: new Date("2049-12-31T23:59:59Z"),
    notAfter: new Date("2051-06-01T12:00:00Z"),
  });
  assert.equal(new x509.X509Certificate(late.cert.der).subject, "CN=app é");
  assert.deepEqual(
    [late.cert.notBefore, late.cert.notAfter],
    [new Date("2049-12-31T23:59:59Z"), new Date("2051-06-01T12:00:00Z")],
  );
});

test("raTlsReportData: SHA-256 of the SPKI (legacy) or of the DICE claims, then zeros", async () => {
  const spki = await spkiOf(await newKeys());
  const legacy = raTlsReportData(spki, "gramine-legacy");
  assert.deepEqual(legacy, Buffer.concat([sha256(spki), Buffer.alloc(32)]));
  const claims = Buffer.concat([
    Buffer.from("a16b", "hex"),
    Buffer.from("pubkey-hash"),
    Buffer.from("582482015820", "hex"),
    sha256(spki),
  ]);
  assert.deepEqual(raTlsReportData(spki), Buffer.concat([sha256(claims), Buffer.alloc(32)]));
  assert.deepEqual(raTlsReportData(spki, "tcg-dice"), raTlsReportData(spki));
});

test("encodings: Gramine's legacy OID bytes, the intended OID, and the DICE byte layout", async () => {
  const legacy = await bound("gramine-legacy");
  const oidTlv = Buffer.from("060b06092a864886f84d8a3906", "hex");
  assert.ok(
    legacy.cert.der.includes(oidTlv),
    "the OID content is the complete TLV 06 09 2A 86 48 86 F8 4D 8A 39 06",
  );

  const intended = await certWith([[OID_GRAMINE_LEGACY_INTENDED, legacy.quote]], legacy.keys);
  const ev = extractEvidence(intended);
  assert.deepEqual([ev.oid, ev.format], [OID_GRAMINE_LEGACY_INTENDED, "gramine-legacy"]);
  assert.equal(keyBindingOk(intended, reportDataOf(ev.evidence)), true);

  // 60000([bstr quote, bstr {"pubkey-hash": bstr [1, bstr SHA-256(SPKI)]}]), as Gramine writes it.
  const dice = await bound("tcg-dice");
  const value = dice.cert.extensions.get(OID_TCG_DICE_TAGGED_EVIDENCE)!.value;
  const qlen = Buffer.alloc(2);
  qlen.writeUInt16BE(dice.quote.length);
  const expected = Buffer.concat([
    Buffer.from("d9ea608259", "hex"),
    qlen,
    dice.quote,
    Buffer.from("5833a16b", "hex"),
    Buffer.from("pubkey-hash", "ascii"),
    Buffer.from("582482015820", "hex"),
    sha256(dice.spki),
  ]);
  assert.deepEqual(value, expected);
  assert.deepEqual(extractEvidence(dice.cert).claims!.raw, expected.subarray(expected.length - 51));
});

test("DICE claims: SHA-384/512 key hashes, a nonce and unknown claims", async () => {
  const s = await sim();
  for (const [alg, hash] of [
    [7, "sha384"],
    [8, "sha512"],
  ] as const) {
    const keys = await newKeys();
    const spki = await spkiOf(keys);
    const nonce = Buffer.from("fresh");
    const claims = cborEncode(
      new Map<string, CborValue>([
        ["pubkey-hash", cborEncode([alg, createHash(hash).update(spki).digest()])],
        ["nonce", nonce],
        ["vendor-claim", 42],
      ]),
    );
    const quote = issueSimQuote(s, { ...MEASUREMENTS, reportData: sha256(claims) });
    const cert = await certWith(
      [[OID_TCG_DICE_TAGGED_EVIDENCE, cborEncode(new CborTag(60000, [quote, claims]))]],
      keys,
    );
    const ev = extractEvidence(cert);
    assert.equal(ev.claims!.pubkeyHash.alg, alg);
    assert.deepEqual(ev.claims!.nonce, nonce);
    assert.equal(keyBindingOk(cert, reportDataOf(quote)), true);
  }
});

test("both extensions: DICE is preferred, and a bad DICE extension is not bypassed via the legacy one", async () => {
  const dice = await bound("tcg-dice");
  const legacyQuote = issueSimQuote(await sim(), {
    ...MEASUREMENTS,
    reportData: raTlsReportData(dice.spki, "gramine-legacy"),
  });
  const diceValue = dice.cert.extensions.get(OID_TCG_DICE_TAGGED_EVIDENCE)!.value;
  const both = await certWith(
    [
      [OID_GRAMINE_LEGACY, legacyQuote],
      [OID_TCG_DICE_TAGGED_EVIDENCE, diceValue],
    ],
    dice.keys,
  );
  const ev = extractEvidence(both);
  assert.equal(ev.format, "tcg-dice");
  assert.deepEqual(ev.evidence, dice.quote);
  assert.equal(keyBindingOk(both, reportDataOf(ev.evidence)), true);
  // The legacy quote's REPORT_DATA does not bind under the DICE rules the certificate selects.
  assert.equal(keyBindingOk(both, reportDataOf(legacyQuote)), false);

  const badDice = await certWith(
    [
      [OID_GRAMINE_LEGACY, legacyQuote],
      [OID_TCG_DICE_TAGGED_EVIDENCE, diceValue.subarray(0, 10)],
    ],
    dice.keys,
  );
  assert.throws(() => extractEvidence(badDice), isMalformed);
});

test("no extension: no_evidence", async () => {
  const s = await sim();
  const plain = await certWith([]);
  for (const c of [plain, s.pck]) {
    assert.throws(
      () => extractEvidence(c),
      (e: unknown) => e instanceof AttestError && e.code === "no_evidence",
    );
    assert.equal(keyBindingOk(c, Buffer.alloc(64)), false);
  }
});

/** Deterministic PRNG for reproducible fuzzing. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x80000000;
  };
}

test("corrupted DICE extensions: always malformed, never another error; binding is false", async () => {
  const { quote, spki } = await bound("tcg-dice");
  const q = Buffer.from(quote);
  const hashEntry = (alg: number, h: Buffer): Buffer => cborEncode([alg, h]);
  const claimsOf = (m: Map<string, CborValue>): Buffer => cborEncode(m);
  const good = claimsOf(new Map([["pubkey-hash", hashEntry(1, sha256(spki))]]));
  const wrap = (items: CborValue, tag = 60000): Buffer => cborEncode(new CborTag(tag, items));
  const valid = wrap([q, good]);
  const cases: [string, Buffer][] = [
    ["empty", Buffer.alloc(0)],
    ["tag only", Buffer.from("d9ea60", "hex")],
    ["wrong tag", wrap([q, good], 60001)],
    ["untagged", cborEncode([q, good])],
    [
      "indefinite array",
      Buffer.concat([Buffer.from("d9ea609f", "hex"), cborEncode(q), cborEncode(good), Buffer.from([0xff])]),
    ],
    ["one item", wrap([q])],
    ["three items", wrap([q, good, good])],
    ["quote as text", wrap(["quote", good])],
    ["empty quote", wrap([Buffer.alloc(0), good])],
    ["claims not a map", wrap([q, cborEncode([1, 2])])],
    ["claims empty", wrap([q, Buffer.alloc(0)])],
    ["claims with trailing bytes", wrap([q, Buffer.concat([good, Buffer.from([0])])])],
    ["no pubkey-hash", wrap([q, claimsOf(new Map([["nonce", Buffer.from("n")]]))])],
    ["pubkey-hash not bytes", wrap([q, claimsOf(new Map([["pubkey-hash", 1]]))])],
    ["unknown hash algorithm", wrap([q, claimsOf(new Map([["pubkey-hash", hashEntry(2, sha256(spki))]]))])],
    ["short hash", wrap([q, claimsOf(new Map([["pubkey-hash", hashEntry(1, Buffer.alloc(31))]]))])],
    [
      "hash entry too long",
      wrap([q, claimsOf(new Map([["pubkey-hash", cborEncode([1, sha256(spki), 0])]]))]),
    ],
    ["integer claim name", wrap([q, cborEncode(new Map([[1, Buffer.alloc(1)]]))])],
    ["duplicate claim", wrap([q, Buffer.concat([Buffer.from([0xa2]), good.subarray(1), good.subarray(1)])])],
    ["trailing byte", Buffer.concat([valid, Buffer.from([0])])],
    ["huge array count", Buffer.from("d9ea609bffffffffffffffff", "hex")],
    ["huge byte string", Buffer.from("d9ea60825affffffff", "hex")],
    ["negative integer", wrap([q, claimsOf(new Map([["pubkey-hash", Buffer.from([0x20])]]))])],
    ["float", Buffer.from("d9ea60f93c00", "hex")],
    ["invalid UTF-8 name", wrap([q, Buffer.from("a162c3285820" + "00".repeat(32), "hex")])],
    [
      "deep nesting",
      Buffer.concat([Buffer.from("d9ea60", "hex"), Buffer.alloc(100, 0x81), Buffer.from([0])]),
    ],
  ];
  for (let n = 0; n < valid.length; n += 97) cases.push([`truncated to ${n}`, valid.subarray(0, n)]);
  for (let n = valid.length - 60; n < valid.length; n++)
    cases.push([`truncated to ${n}`, valid.subarray(0, n)]);
  const keys = await newKeys();
  for (const [name, value] of cases) {
    const cert = await certWith([[OID_TCG_DICE_TAGGED_EVIDENCE, value]], keys);
    assert.throws(() => extractEvidence(cert), isMalformed, name);
    assert.equal(keyBindingOk(cert, raTlsReportData(spki)), false, name);
  }
  const emptyLegacy = await certWith([[OID_GRAMINE_LEGACY, Buffer.alloc(0)]], keys);
  assert.throws(() => extractEvidence(emptyLegacy), isMalformed);

  // Random byte flips outside the quote: the result is either well-formed evidence or `malformed`.
  const rnd = prng(7);
  const tail = valid.length - good.length - 1;
  for (let i = 0; i < 150; i++) {
    const v = Buffer.from(valid);
    const pos = rnd() < 0.3 ? Math.floor(rnd() * 8) : tail + Math.floor(rnd() * (v.length - tail));
    v[pos] = Math.floor(rnd() * 256);
    const cert = await certWith([[OID_TCG_DICE_TAGGED_EVIDENCE, v]], keys);
    try {
      extractEvidence(cert);
    } catch (e) {
      assert.ok(isMalformed(e), `flip at ${pos}: ${String(e)}`);
    }
    assert.doesNotThrow(() => keyBindingOk(cert, raTlsReportData(spki)));
  }
});

test("CBOR codec: round trips, strictness, and random input only ever fails as malformed", () => {
  const values: CborValue[] = [
    0,
    23,
    24,
    255,
    256,
    65535,
    65536,
    2 ** 32,
    2 ** 40,
    "",
    "héllo",
    Buffer.alloc(300, 1),
    [1, [2, "x"]],
    new Map<string | number, CborValue>([
      ["a", 1],
      [2, Buffer.from("b")],
    ]),
    new CborTag(60000, [Buffer.from("q")]),
  ];
  for (const v of values) assert.deepEqual(cborDecode(cborEncode(v)), v);
  assert.equal(cborEncode(60000 as number).toString("hex"), "19ea60");
  assert.throws(() => cborDecode(Buffer.from("1bffffffffffffffff", "hex")), isMalformed);
  const rnd = prng(11);
  for (let i = 0; i < 3000; i++) {
    const b = Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 24) }, () => Math.floor(rnd() * 256)));
    try {
      cborDecode(b);
    } catch (e) {
      assert.ok(isMalformed(e), `${b.toString("hex")}: ${String(e)}`);
    }
  }
});
