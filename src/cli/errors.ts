/**
 * CLI error handling: a user sees one line saying what went wrong, never a stack trace. Exit codes follow the
 * convention of `seng attest verify`: 1 for a negative answer (rejected evidence), 2 for bad usage or unreadable input.
 */

/** An error whose message is meant for the user as it is. */
export class UsageError extends Error {
  override readonly name = "UsageError";
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
  }
}

/** Runs an async CLI action, turning any error into a one-line message and an exit code. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<number | void> | number | void) {
  return async (...args: A): Promise<void> => {
    try {
      const code = await fn(...args);
      process.exitCode = code ?? 0;
    } catch (e) {
      const err = e as Error;
      const msg =
        err instanceof UsageError
          ? err.message
          : `${err.name === "Error" ? "error" : err.name}: ${err.message}`;
      process.stderr.write(`seng: ${msg}\n`);
      if (process.env.SENG_DEBUG) process.stderr.write(`${err.stack}\n`);
      process.exitCode = err instanceof UsageError ? err.exitCode : 2;
    }
  };
}
