/** The small logging surface the worker uses (pino-compatible). */
import pino, { type DestinationStream } from 'pino';
import { redactTokens, secretLogPaths } from '@buildfleet/protocol';

export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** A logger that drops everything (tests). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/**
 * The default logger: pino at BUILDFLEET_LOG_LEVEL (default info) to `dest`
 * (default stderr). Tokens are never logged (docs/protocol.md "Credentials"):
 * credential fields are redacted by path, and every `bf?_…` token left in a
 * finished line (a message, an error's stack) is censored before `dest`.
 */
export function defaultLogger(dest: DestinationStream = pino.destination(2), level = process.env.BUILDFLEET_LOG_LEVEL ?? 'info'): Logger {
  return pino(
    { name: 'buildfleet-worker', level, redact: { paths: secretLogPaths(), censor: '[redacted]' } },
    { write: (line: string) => dest.write(redactTokens(line)) },
  );
}
