/**
 * lwIP's error numbers (err_t, lwip/err.h of lwIP 2.1.3) and the Node error code each stands for. The addon reports
 * the number (errors thrown by its calls carry `lwipErr`; "error" events carry it with what the socket was doing);
 * the meaning is decided here, by table, never by the wording of lwIP's messages.
 */

/** err_t values of lwIP 2.1.3 (lwip/err.h). */
export const LwipErr = {
  ERR_OK: 0,
  ERR_MEM: -1,
  ERR_BUF: -2,
  ERR_TIMEOUT: -3,
  ERR_RTE: -4,
  ERR_INPROGRESS: -5,
  ERR_VAL: -6,
  ERR_WOULDBLOCK: -7,
  ERR_USE: -8,
  ERR_ALREADY: -9,
  ERR_ISCONN: -10,
  ERR_CONN: -11,
  ERR_IF: -12,
  ERR_ABRT: -13,
  ERR_RST: -14,
  ERR_CLSD: -15,
  ERR_ARG: -16,
} as const;

/** The Node (errno) code for each err_t, outside the cases that depend on the socket's state (below). */
const NODE_CODE: ReadonlyMap<number, string> = new Map([
  [LwipErr.ERR_MEM, "ENOBUFS"], // lwIP's pools or heap: the kernel says ENOBUFS for socket buffer exhaustion
  [LwipErr.ERR_BUF, "ENOBUFS"],
  [LwipErr.ERR_TIMEOUT, "ETIMEDOUT"],
  [LwipErr.ERR_RTE, "EHOSTUNREACH"],
  [LwipErr.ERR_INPROGRESS, "EINPROGRESS"],
  [LwipErr.ERR_VAL, "EINVAL"],
  [LwipErr.ERR_WOULDBLOCK, "EWOULDBLOCK"],
  [LwipErr.ERR_USE, "EADDRINUSE"],
  [LwipErr.ERR_ALREADY, "EALREADY"],
  [LwipErr.ERR_ISCONN, "EISCONN"],
  [LwipErr.ERR_CONN, "ENOTCONN"],
  [LwipErr.ERR_IF, "ENETDOWN"],
  [LwipErr.ERR_ABRT, "ECONNABORTED"],
  [LwipErr.ERR_RST, "ECONNRESET"],
  [LwipErr.ERR_CLSD, "ENOTCONN"],
  [LwipErr.ERR_ARG, "EINVAL"],
]);

/** What the socket was doing when lwIP reported the error (flags packed with an "error" event by the addon). */
export interface LwipErrorContext {
  /** The connection had been established (lwIP's connected callback ran). */
  connected: boolean;
  /** The app had shut the socket for reading (more data from the peer makes lwIP abort it). */
  readShut: boolean;
  /** The interface's address was being changed (a new lease): connections bound to the old one are aborted. */
  reconfiguring: boolean;
}

/** Flags of an "error" event's type word (native/src/lwip.cc, kErr*). */
export const ERR_FLAG_CONNECTED = 0x400;
export const ERR_FLAG_READ_SHUT = 0x800;
export const ERR_FLAG_RECONFIGURING = 0x1000;

export function contextFromFlags(flags: number): LwipErrorContext {
  return {
    connected: (flags & ERR_FLAG_CONNECTED) !== 0,
    readShut: (flags & ERR_FLAG_READ_SHUT) !== 0,
    reconfiguring: (flags & ERR_FLAG_RECONFIGURING) !== 0,
  };
}

/**
 * The Node error code for an lwIP err_t. With a context (an error that ended a connection):
 *  - ERR_RST before the connection was established is the peer refusing it (ECONNREFUSED), after: ECONNRESET;
 *  - ERR_ABRT is lwIP giving up: during an address change EADDRNOTAVAIL, after shutdown(read) and more data
 *    ECONNABORTED, otherwise retransmissions or keepalives ran out: ETIMEDOUT, as the kernel reports it.
 * Unknown numbers are EIO.
 */
export function nodeCodeOf(err: number, ctx?: LwipErrorContext): string {
  if (ctx && err === LwipErr.ERR_RST) return ctx.connected ? "ECONNRESET" : "ECONNREFUSED";
  if (ctx && err === LwipErr.ERR_ABRT)
    return ctx.reconfiguring ? "EADDRNOTAVAIL" : ctx.readShut ? "ECONNABORTED" : "ETIMEDOUT";
  return NODE_CODE.get(err) ?? "EIO";
}

/** The err_t's name ("ERR_RST"), for messages. */
export function lwipErrName(err: number): string {
  return Object.entries(LwipErr).find(([, v]) => v === err)?.[0] ?? `err_t ${err}`;
}

/**
 * Gives an Error thrown by the addon for an lwIP err_t (it carries `lwipErr`) its Node `code`; other errors are
 * returned as they are.
 */
export function withNodeCode(e: unknown): unknown {
  const n = (e as { lwipErr?: unknown } | null)?.lwipErr;
  if (e instanceof Error && typeof n === "number") (e as NodeJS.ErrnoException).code = nodeCodeOf(n);
  return e;
}
