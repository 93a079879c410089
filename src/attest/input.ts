/**
 * Evidence as it arrives from files, configs and the wire: raw binary, hex text (with or without `0x`, whitespace
 * allowed) or base64 text. Decoding is strict about the alphabet, so binary evidence is never mistaken for text.
 */
import { AttestError } from "./errors.js";

const HEX = /^(?:0x)?([0-9a-fA-F\s]+)$/;
const B64 = /^[A-Za-z0-9+/\s]+={0,2}\s*$/;
const B64URL = /^[A-Za-z0-9_\-\s]+={0,2}\s*$/;

/** Returns the bytes that `data` encodes. Throws `malformed` for empty input. */
export function decodeEvidence(data: Buffer | Uint8Array | string): Buffer {
  const buf =
    typeof data === "string"
      ? Buffer.from(data, "latin1")
      : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (buf.length === 0) throw new AttestError("malformed", "evidence is empty");
  // Binary evidence (quotes start with a small version number, SNP reports too) has bytes outside printable text.
  if (!isText(buf)) return buf;
  const text = buf.toString("latin1").trim();
  const hex = HEX.exec(text);
  if (hex) {
    const digits = hex[1]!.replace(/\s+/g, "");
    if (digits.length % 2 !== 0)
      throw new AttestError("malformed", "hex evidence has an odd number of digits");
    return Buffer.from(digits, "hex");
  }
  if (B64.test(text) || B64URL.test(text)) {
    const out = Buffer.from(text.replace(/\s+/g, ""), B64.test(text) ? "base64" : "base64url");
    if (out.length === 0) throw new AttestError("malformed", "base64 evidence decodes to nothing");
    return out;
  }
  throw new AttestError("malformed", "evidence is text but neither hex nor base64");
}

function isText(buf: Buffer): boolean {
  const n = Math.min(buf.length, 4096);
  for (let i = 0; i < n; i++) {
    const b = buf[i]!;
    if (b < 0x09 || (b > 0x0d && b < 0x20) || b > 0x7e) return false;
  }
  return true;
}

/** Whether `buf` from `offset` to its end is all zero bytes (tolerated padding after a quote or report). */
export function isZeroTail(buf: Buffer, offset: number): boolean {
  for (let i = offset; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}
