/** A tiny DER encoder for the harnesses: wraps contents in TLVs and swaps a certificate's extensions. */
import { derChildren, derParse, derBytes } from "../../src/attest/der.js";

export function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  let head: Buffer;
  if (n < 0x80) head = Buffer.from([tag, n]);
  else if (n < 0x100) head = Buffer.from([tag, 0x81, n]);
  else if (n < 0x10000) head = Buffer.from([tag, 0x82, n >> 8, n & 0xff]);
  else head = Buffer.from([tag, 0x83, n >> 16, (n >> 8) & 0xff, n & 0xff]);
  return Buffer.concat([head, content]);
}

/** The DER of an OID from its dotted form. */
export function oidDer(dotted: string): Buffer {
  const arcs = dotted.split(".").map(Number);
  const body: number[] = [];
  const push = (v: number): void => {
    const bytes = [v & 0x7f];
    for (v = Math.floor(v / 128); v > 0; v = Math.floor(v / 128)) bytes.unshift((v & 0x7f) | 0x80);
    body.push(...bytes);
  };
  push(arcs[0]! * 40 + arcs[1]!);
  for (const a of arcs.slice(2)) push(a);
  return tlv(0x06, Buffer.from(body));
}

export interface RawExtension {
  /** The complete OID TLV (may be malformed on purpose). */
  oid: Buffer;
  critical?: boolean;
  value: Buffer;
}

export function extensionDer(e: RawExtension): Buffer {
  return tlv(
    0x30,
    Buffer.concat([
      e.oid,
      e.critical ? Buffer.from([0x01, 0x01, 0xff]) : Buffer.alloc(0),
      tlv(0x04, e.value),
    ]),
  );
}

/** `template` (a DER certificate) with its extensions replaced; the signature is kept (and so no longer valid). */
export function withExtensions(template: Buffer, exts: readonly Buffer[]): Buffer {
  const [tbs, alg, sig] = derChildren(derParse(template));
  const fields = derChildren(tbs!).filter((f) => f.tag !== 0xa3);
  const extBlock = tlv(0xa3, tlv(0x30, Buffer.concat(exts)));
  const newTbs = tlv(0x30, Buffer.concat([...fields.map(derBytes), extBlock]));
  return tlv(0x30, Buffer.concat([newTbs, derBytes(alg!), derBytes(sig!)]));
}
