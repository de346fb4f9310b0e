/**
 * Exit codes and the one error type the CLI prints without a stack trace.
 * `submit --follow`, `status`-like waits and the task brief share these codes:
 * 0 succeeded, 1 failed, 2 canceled or timed out, 3 usage or connection error,
 * 4 a downloaded artifact failed its checksum.
 */
import { ApiError } from '@buildfleet/protocol';

export const EXIT = {
  succeeded: 0,
  failed: 1,
  canceledOrTimedOut: 2,
  error: 3,
  /** A downloaded artifact did not match its SHA-256 (or size): the bytes are not what the build produced. */
  checksumMismatch: 4,
} as const;

/** An expected failure: printed as one line, then the process exits with `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT.error,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** The exit code for a build that ended in `state` (0 when it succeeded). */
export function exitCodeForState(state: string): number {
  if (state === 'succeeded') return EXIT.succeeded;
  if (state === 'failed') return EXIT.failed;
  return EXIT.canceledOrTimedOut;
}

/**
 * One line for an expected error, or undefined when `err` is a bug (the
 * caller then prints the stack). ApiErrors are expected: the controller
 * answered with a protocol code.
 */
export function describeExpectedError(err: unknown): string | undefined {
  if (err instanceof CliError) return err.message;
  if (err instanceof ApiError) return `${err.message} (${err.code})`;
  return undefined;
}
