/**
 * Maps driver errors to protocol answers: a database that cannot be reached,
 * a lock or statement timeout and SQLITE_BUSY become `ApiError('UNAVAILABLE')`
 * (docs/protocol.md: the only 5xx a client should see, retried with backoff).
 */
import { ApiError } from '@buildfleet/protocol';

/** PostgreSQL SQLSTATEs that mean "try again later", not "your request is wrong". */
const PG_UNAVAILABLE = new Set([
  '55P03', // lock_not_available (lock_timeout)
  '57014', // query_canceled (statement_timeout)
  '57P01', // admin_shutdown
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now
  '53300', // too_many_connections
  '40P01', // deadlock_detected: the other transaction went on; a retry succeeds
  '40001', // serialization_failure
]);

const NODE_UNAVAILABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EPIPE', 'EHOSTUNREACH', 'EAI_AGAIN']);

function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Whether `err` is a unique-key violation (a concurrent duplicate insert). */
export function isUniqueViolation(err: unknown): boolean {
  const code = codeOf(err);
  return code === '23505' || code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}

/** Whether `err` means the database is unreachable or a lock wait timed out. */
export function isUnavailable(err: unknown): boolean {
  const code = codeOf(err);
  if (code !== undefined) {
    if (PG_UNAVAILABLE.has(code) || NODE_UNAVAILABLE.has(code)) return true;
    if (code.startsWith('08')) return true; // connection_exception class
    if (code === 'SQLITE_BUSY' || code.startsWith('SQLITE_BUSY_') || code === 'SQLITE_LOCKED') return true;
  }
  const message = err instanceof Error ? err.message : '';
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error|Cannot use a pool after calling end|database connection is not open/i.test(
    message,
  );
}

/** Returns the ApiError to throw for `err`: UNAVAILABLE, or `err` itself. */
export function mapDbError(err: unknown): unknown {
  if (err instanceof ApiError) return err;
  if (isUnavailable(err)) {
    const detail = err instanceof Error ? err.message : String(err);
    return new ApiError('UNAVAILABLE', `database unavailable: ${detail}`);
  }
  return err;
}
