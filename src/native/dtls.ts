/**
 * DTLS 1.2 on Node's bundled OpenSSL 3.0, through the native addon (native/src/dtls.cc).
 *
 * Sans-I/O: nothing here touches a socket. Callers feed received datagrams in and send the datagrams that come out:
 * each `Buffer` in an `out` array is exactly one UDP payload of at most the MTU. Every application record sent is
 * its own datagram; during handshakes OpenSSL packs several small handshake records into one datagram (never
 * splitting a record across datagrams).
 *
 * Buffers returned by one call (`out`, `records`) are views into a single Buffer made for that call: keeping any of
 * them alive keeps the whole call's result alive, so copy what you keep for long.
 *
 * Authentication model: both sides present a certificate (servers require one from clients) and the handshake
 * proves possession of its private key (CertificateVerify / ServerKeyExchange signatures). OpenSSL does *not*
 * validate the certificate itself: peers use self-signed RA-TLS certificates, so the caller must check
 * {@link DtlsSession.peerCertificate} (attestation evidence, key binding, identity policy) once the session is
 * established, and before trusting any record from it.
 *
 * Fixed protocol settings: DTLS 1.2 only, ECDHE key exchange on X25519 or P-256, no renegotiation, no session
 * tickets or session cache, no compression; anonymous/PSK/SRP suites are always excluded whatever `ciphers` says.
 * Retransmission uses OpenSSL's timer (1 s initial, doubling up to 60 s, measured on the wall clock): poll
 * {@link DtlsSession.timeoutMs} and call {@link DtlsSession.onTimeout} when it reaches 0.
 */
import { native } from "./load.js";

/** Default cipher list: AEAD suites only, ECDSA certificates first. */
export const DEFAULT_CIPHERS =
  "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:" +
  "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305";

/** Default MTU: the largest datagram (UDP payload) either side emits, in bytes. */
export const DEFAULT_MTU = 1400;
/** Smallest MTU accepted. */
export const MIN_MTU = 256;
/**
 * Largest MTU accepted: during handshakes OpenSSL 3.0 writes through an internal 4 KB buffering BIO that splits
 * larger datagrams mid-record, which breaks the handshake.
 */
export const MAX_MTU = 4096;

/** Configuration of a {@link DtlsContext}. */
export interface DtlsConfig {
  /** `server` contexts feed a {@link DtlsListener}; `client` contexts make {@link DtlsSession.client} sessions. */
  role: "server" | "client";
  /** PEM certificate: the leaf first, optionally followed by chain certificates sent along with it. */
  certPem: string;
  /** Unencrypted PEM private key (PKCS#8 or traditional) matching the leaf certificate. */
  keyPem: string;
  /** OpenSSL cipher list (DTLS 1.2 suites); {@link DEFAULT_CIPHERS} when omitted. */
  ciphers?: string;
  /**
   * Largest datagram (UDP payload) emitted, in bytes, {@link MIN_MTU}..{@link MAX_MTU}; {@link DEFAULT_MTU} when
   * omitted. Handshake messages are fragmented to fit (several small records may share one datagram), and
   * {@link DtlsSession.send} refuses records whose ciphertext would not fit.
   */
  mtu?: number;
  /**
   * ALPN protocol names (RFC 7301), each 1..255 bytes of ASCII, most preferred first. A client offers them; a
   * server selects the first of its own that the client offered, and answers without ALPN when none matches (the
   * handshake still succeeds: see {@link DtlsSession.alpn}). Omitted: no ALPN.
   */
  alpn?: readonly string[];
}

/** Encodes ALPN protocol names into the wire format (each name prefixed with its length). */
function alpnWire(names: readonly string[]): Buffer {
  if (names.length === 0) throw new RangeError("alpn: at least one protocol name");
  const parts: Buffer[] = [];
  for (const name of names) {
    if (!/^[\x21-\x7e]{1,255}$/.test(name))
      throw new RangeError(`alpn: ${JSON.stringify(name)} is not a protocol name`);
    parts.push(Buffer.from([name.length]), Buffer.from(name, "latin1"));
  }
  return Buffer.concat(parts);
}

/** Result of feeding datagrams to a {@link DtlsSession}. */
export interface DtlsResult {
  /** Datagrams to send to the peer now (handshake flights, alerts), one UDP payload each. */
  out: Buffer[];
  /** Decrypted application records, in order, one per record received. */
  records: Buffer[];
  /** The handshake has completed (records may flow). */
  established: boolean;
  /** The session is over: the peer sent close_notify, or a fatal error occurred (then `error` says which). */
  closed: boolean;
  /** OpenSSL's reason for a fatal failure (e.g. "bad signature", "sslv3 alert handshake failure"). */
  error?: string;
}

/** Verdict of {@link DtlsListener.handle} for one datagram. */
export type ListenVerdict =
  | { verdict: "reply"; out: Buffer[] }
  | { verdict: "accept"; session: DtlsSession; out: Buffer[] }
  | { verdict: "drop" }
  | { verdict: "refused" };

interface NativeContext {
  newClient(): unknown;
}
/** One Buffer (datagrams, then records), or `[buffer, lengths]` when the lengths did not fit in {@link META}. */
type NativeOut = Buffer | undefined | [Buffer | undefined, Uint32Array];
interface NativeListener {
  handle(datagram: Buffer, peer: string, admit?: () => boolean): NativeOut | [NativeOut, unknown] | undefined;
  rotate(): void;
}
interface NativeSession {
  start(): NativeOut;
  receive(datagrams: Buffer | Buffer[]): NativeOut;
  send(records: Buffer[]): NativeOut;
  timeoutMs(): number;
  onTimeout(): NativeOut;
  peerCertificate(): Buffer | null;
  trimPeerCertificate(): number;
  exportKeyingMaterial(label: string, length: number, context?: Buffer): Buffer;
  cipher(): string;
  alpn(): string;
  version(): string;
  established(): boolean;
  maxRecord(): number;
  error(): string | undefined;
  shutdown(): NativeOut;
  free(): void;
}
interface NativeDtls {
  DtlsContext: new (
    role: string,
    certPem: string,
    keyPem: string,
    ciphers: string,
    mtu: number,
    alpn?: Buffer,
  ) => NativeContext;
  DtlsListener: new (ctx: NativeContext, meta: Uint32Array, scratch: Buffer) => NativeListener;
  DtlsSession: new (conn: unknown, meta: Uint32Array, scratch: Buffer) => NativeSession;
}

const addon = (): NativeDtls => native<NativeDtls>();

/**
 * Counts and lengths of the last native call, written by the addon (see native/src/dtls.cc): [flags, datagram
 * count, record count, total bytes, datagram lengths…, record lengths…]. Shared by every session of this thread;
 * read right after each call.
 */
const META = new Uint32Array(4 + 4096);
/** Bytes of small results of the last native call (flag IN_SCRATCH), copied out right after it. */
const SCRATCH = Buffer.allocUnsafeSlow(4096);
const ESTABLISHED = 1;
const CLOSED = 2;
const FAILED = 4;
const OVERFLOW = 8;
const IN_SCRATCH = 16;
const VERDICT_REPLY = 1;
const VERDICT_ACCEPT = 2;
const VERDICT_REFUSED = 3;

interface Taken {
  flags: number;
  out: Buffer[];
  records: Buffer[];
}

/** Splits the result of the native call just made into datagrams and records (views, no copy). */
function take(r: NativeOut): Taken {
  const flags = META[0]!;
  const nOut = META[1]!;
  const nRec = META[2]!;
  const total = META[3]!;
  let buf: Buffer | undefined;
  let lens: Uint32Array;
  let at: number;
  if ((flags & OVERFLOW) !== 0) {
    [buf, lens] = r as [Buffer | undefined, Uint32Array];
    at = 0;
  } else {
    buf = r as Buffer | undefined;
    lens = META;
    at = 4;
  }
  if ((flags & IN_SCRATCH) !== 0) {
    buf = Buffer.allocUnsafe(total); // pooled for small sizes
    SCRATCH.copy(buf, 0, 0, total);
  }
  const out: Buffer[] = new Array<Buffer>(nOut);
  const records: Buffer[] = new Array<Buffer>(nRec);
  let off = 0;
  for (let i = 0; i < nOut; i++) {
    const n = lens[at + i]!;
    out[i] = buf!.subarray(off, off + n);
    off += n;
  }
  at += nOut;
  for (let i = 0; i < nRec; i++) {
    const n = lens[at + i]!;
    records[i] = buf!.subarray(off, off + n);
    off += n;
  }
  return { flags, out, records };
}

/** The datagrams of a native result that carries no records. */
const datagrams = (r: NativeOut): Buffer[] => take(r).out;

/** Guards the DtlsSession constructor: sessions are only made by this module. */
const INTERNAL = Symbol("DtlsSession.internal");

/**
 * An OpenSSL SSL_CTX: certificate, key, cipher list and MTU shared by many sessions. Immutable; keep it for the
 * lifetime of the sessions made from it (they hold their own reference to the native context).
 */
export class DtlsContext {
  /** @internal */
  readonly native: NativeContext;
  /** Role given at construction. */
  readonly role: "server" | "client";
  /** MTU given at construction (or the default). */
  readonly mtu: number;

  /**
   * Builds the context.
   * @throws Error naming what was wrong (unreadable certificate or key, "private key does not match certificate",
   *   unknown ciphers, MTU out of range), with OpenSSL's reason.
   */
  constructor(cfg: DtlsConfig) {
    if (cfg.role !== "server" && cfg.role !== "client")
      throw new TypeError('role must be "server" or "client"');
    const mtu = cfg.mtu ?? DEFAULT_MTU;
    if (!Number.isInteger(mtu) || mtu < MIN_MTU || mtu > MAX_MTU) {
      throw new RangeError(`mtu ${mtu} is not in ${MIN_MTU}..${MAX_MTU}`);
    }
    this.role = cfg.role;
    this.mtu = mtu;
    this.native = new (addon().DtlsContext)(
      cfg.role,
      cfg.certPem,
      cfg.keyPem,
      cfg.ciphers ?? DEFAULT_CIPHERS,
      mtu,
      cfg.alpn === undefined ? undefined : alpnWire(cfg.alpn),
    );
  }
}

/**
 * Stateless front door of a DTLS server (RFC 6347 cookie exchange): answers each first ClientHello with a
 * HelloVerifyRequest whose cookie is HMAC-SHA256(secret, peer) truncated to 16 bytes, and only creates a session
 * when a ClientHello comes back with a valid cookie for the same `peer` string. No per-client state is kept before
 * that. The secret is 32 random bytes made at construction; {@link DtlsListener.rotate} replaces it (cookies made
 * with the previous secret stay valid until the next rotation).
 */
export class DtlsListener {
  readonly #native: NativeListener;

  /** @param ctx a `server` context. */
  constructor(ctx: DtlsContext) {
    if (ctx.role !== "server") throw new Error("a DtlsListener needs a server context");
    this.#native = new (addon().DtlsListener)(ctx.native, META, SCRATCH);
  }

  /**
   * Handles one datagram from a peer that has no session yet.
   * @param datagram one UDP payload.
   * @param peer the peer's transport address as a stable string (e.g. "192.0.2.1:4433"); the cookie is bound to it.
   * @param admit called only when the datagram is a ClientHello with a valid cookie (the peer owns its address),
   *   before any handshake work: false refuses the peer (e.g. its per-source rate limit). It must not call back
   *   into this listener.
   * @returns `reply` (send `out`: a HelloVerifyRequest), `accept` (a new server session, already past the
   *   ClientHello; send `out`: ServerHello…ServerHelloDone, then route this peer's datagrams to `session`), or
   *   `refused` (valid cookie, `admit` said no; nothing sent, no state kept), or `drop` (anything else: garbage,
   *   non-ClientHello, fragments). Never throws for bad input.
   */
  handle(datagram: Buffer, peer: string, admit?: () => boolean): ListenVerdict {
    const r = this.#native.handle(datagram, peer, admit);
    const verdict = META[0]! & 3;
    if (verdict === VERDICT_ACCEPT) {
      const [emitted, conn] = r as [NativeOut, unknown];
      const { out } = take(emitted);
      return {
        verdict: "accept",
        session: new DtlsSession(INTERNAL, new (addon().DtlsSession)(conn, META, SCRATCH)),
        out,
      };
    }
    if (verdict === VERDICT_REPLY) return { verdict: "reply", out: take(r as NativeOut).out };
    if (verdict === VERDICT_REFUSED) return { verdict: "refused" };
    return { verdict: "drop" };
  }

  /** Makes a new cookie secret; the previous one is still accepted until the next call. */
  rotate(): void {
    this.#native.rotate();
  }
}

/**
 * One DTLS connection (an OpenSSL SSL object with datagram BIOs). Only the 32 most recently active sessions of a
 * thread keep OpenSSL's record buffers (about 20 KB) between calls; the others release them, so an idle
 * established session costs about 36 KB (mostly OpenSSL's own state, including a 21 KB handshake buffer it keeps
 * for DTLS retransmissions) plus about twice the peer certificate's DER size.
 * Call {@link DtlsSession.free} when done; the garbage collector frees forgotten sessions eventually.
 */
export class DtlsSession {
  #native: NativeSession | undefined;

  /** @internal Sessions come from {@link DtlsSession.client} or {@link DtlsListener.handle}. */
  constructor(token: typeof INTERNAL, n: NativeSession) {
    if (token !== INTERNAL) throw new TypeError("use DtlsSession.client() or a DtlsListener");
    this.#native = n;
  }

  /** A client session on a `client` context; call {@link DtlsSession.start} to get the first flight. */
  static client(ctx: DtlsContext): DtlsSession {
    if (ctx.role !== "client") throw new Error("DtlsSession.client needs a client context");
    const a = addon();
    return new DtlsSession(INTERNAL, new a.DtlsSession(ctx.native.newClient(), META, SCRATCH));
  }

  get #n(): NativeSession {
    if (this.#native === undefined) throw new Error("DtlsSession used after free()");
    return this.#native;
  }

  /** Client: begins the handshake and returns the first flight (the ClientHello). */
  start(): Buffer[] {
    return datagrams(this.#n.start());
  }

  /**
   * Feeds one datagram: handshake progress and/or decrypted application records. Invalid records are dropped
   * silently, as DTLS requires; fatal conditions (alerts, failed handshake checks) end the session with `error`.
   * Never throws for bad input.
   */
  receive(datagram: Buffer): DtlsResult {
    return this.#result(this.#n.receive(datagram));
  }

  /** Same as {@link DtlsSession.receive} for a batch of datagrams, in order, in one native call. */
  receiveMany(datagrams: Buffer[]): DtlsResult {
    return this.#result(this.#n.receive(datagrams));
  }

  /**
   * Encrypts each record into its own datagram (one SSL_write each).
   * @throws Error before writing anything if the handshake is not complete, the session was shut down or failed,
   *   or a record is empty or larger than {@link DtlsSession.maxRecord} (the plaintext that fits the MTU).
   */
  send(records: Buffer[]): Buffer[] {
    return datagrams(this.#n.send(records));
  }

  /** Milliseconds until {@link DtlsSession.onTimeout} should be called (0: now), or -1 when no timer runs. */
  timeoutMs(): number {
    return this.#n.timeoutMs();
  }

  /**
   * Handles an expired retransmission timer: returns the flight to resend (empty if the timer had not expired).
   * After too many retransmissions (OpenSSL's limit) the session fails: see {@link DtlsSession.error}.
   */
  onTimeout(): Buffer[] {
    return datagrams(this.#n.onTimeout());
  }

  /**
   * The peer's leaf certificate (DER) as presented in the handshake, or null before it arrived. Not validated.
   * @throws Error after {@link trimPeerCertificate}.
   */
  peerCertificate(): Buffer | null {
    return this.#n.peerCertificate();
  }

  /**
   * Frees most of the peer certificate OpenSSL keeps for the session's lifetime (its extensions: for RA-TLS, the
   * evidence, about 4 KB), once the caller has taken what it needs from {@link peerCertificate}, which throws from
   * then on. Returns the number of extensions deleted.
   * @throws Error before the handshake completes.
   */
  trimPeerCertificate(): number {
    return this.#n.trimPeerCertificate();
  }

  /**
   * RFC 5705 keying material exporter (e.g. for channel binding).
   * @param label exporter label.
   * @param length bytes wanted, 1..65535.
   * @param context optional context value (distinct from an empty one).
   * @throws Error before the handshake completes.
   */
  exportKeyingMaterial(label: string, length: number, context?: Buffer): Buffer {
    return this.#n.exportKeyingMaterial(label, length, context);
  }

  /** Negotiated cipher suite, OpenSSL name (e.g. "ECDHE-ECDSA-AES256-GCM-SHA384"); "" before negotiation. */
  cipher(): string {
    return this.#n.cipher();
  }

  /**
   * The application protocol ALPN selected in the handshake, or "" when none was (the peer offered none, the
   * server has none configured, or no name matched). Meaningful once established.
   */
  alpn(): string {
    return this.#n.alpn();
  }

  /** Protocol version ("DTLSv1.2"). */
  version(): string {
    return this.#n.version();
  }

  /** The handshake has completed and the session has not failed. */
  established(): boolean {
    return this.#n.established();
  }

  /** Largest record {@link DtlsSession.send} accepts for the MTU and negotiated cipher; 0 before establishment. */
  maxRecord(): number {
    return this.#n.maxRecord();
  }

  /**
   * Sends close_notify (returns its datagram) once; the peer's next receive reports `closed`. Also the polite answer
   * to a peer's close_notify. Returns nothing if the session is not established or already failed.
   */
  shutdown(): Buffer[] {
    return datagrams(this.#n.shutdown());
  }

  /** The fatal error that ended the session (OpenSSL's reason), or undefined while it is healthy. */
  error(): string | undefined {
    return this.#n.error();
  }

  #result(r: NativeOut): DtlsResult {
    const { flags, out, records } = take(r);
    const res: DtlsResult = {
      out,
      records,
      established: (flags & ESTABLISHED) !== 0,
      closed: (flags & CLOSED) !== 0,
    };
    if ((flags & FAILED) !== 0) res.error = this.#n.error() ?? "failed";
    return res;
  }

  /** Frees the native session now; any later call on this object throws. Idempotent. */
  free(): void {
    if (this.#native === undefined) return;
    this.#native.free();
    this.#native = undefined;
  }
}
