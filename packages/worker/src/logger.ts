/** The small logging surface the worker uses (pino-compatible). */
import pino from 'pino';

export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** A logger that drops everything (tests). */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** The default logger: pino to stderr at BUILDFLEET_LOG_LEVEL (default info). */
export function defaultLogger(): Logger {
  return pino({ name: 'buildfleet-worker', level: process.env.BUILDFLEET_LOG_LEVEL ?? 'info' }, pino.destination(2));
}
