/**
 * One place that turns anything thrown while serving a request into
 * docs/protocol.md's error body `{"error": {"code", "message"}}` (Conventions).
 *
 * The only 5xx answers: `503 UNAVAILABLE` (the database is unreachable or a
 * lock wait timed out; retry with backoff), `507 STORAGE_FULL` (disk or
 * database full) and `500 INTERNAL` for an exception nobody expected, which
 * is a bug: its answer carries an error id that is also in the log line.
 */
import { randomUUID } from 'node:crypto';
import { ApiError, ERROR_STATUS, type ErrorCode } from '@buildfleet/protocol';
import { isUnavailable } from '../store/errors.js';

/** Seconds a client should wait before retrying a 503/429. */
export const RETRY_AFTER_SECONDS = 2;

/** What an UNAVAILABLE answer says; the driver's own message (addresses, users) goes to the log only. */
export const UNAVAILABLE_MESSAGE = 'the database is unreachable or busy; retry with backoff';

interface FastifyLikeError {
  code?: unknown;
  statusCode?: unknown;
  message?: unknown;
  validation?: unknown;
  validationContext?: unknown;
}

/** How an error was classified; decides the log level. */
export type ErrorKind =
  /** a protocol answer (4xx, or 409/…): logged at debug */
  | 'refused'
  /** the database is unreachable or a lock wait timed out: logged at warn */
  | 'unavailable'
  /** disk or database full: logged at error */
  | 'storage'
  /** the client went away mid-request: nobody reads the answer; logged at info */
  | 'client-gone'
  /** a bug: logged at error with `errorId` */
  | 'internal';

export interface MappedError {
  error: ApiError;
  kind: ErrorKind;
  /** Set for `internal`: the id in the answer and the log line. */
  errorId?: string;
}

/** Driver and system codes that mean "no space left" (fs, SQLite, PostgreSQL disk_full). */
const STORAGE_FULL_CODES = new Set(['ENOSPC', 'EDQUOT', 'SQLITE_FULL', '53100']);

/** Whether `err` says the disk (or the database's disk) is full. */
export function isStorageFull(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && STORAGE_FULL_CODES.has(code);
}

/**
 * Maps an error to the protocol:
 * - an `ApiError` keeps its code (an `UNAVAILABLE` one loses its message,
 *   which may name the database's address);
 * - fastify's validation, content-type and body-limit errors become
 *   VALIDATION_FAILED or PAYLOAD_TOO_LARGE; other client errors (4xx)
 *   VALIDATION_FAILED;
 * - `clientGone` (the request stream was aborted): VALIDATION_FAILED;
 * - a full disk: STORAGE_FULL (507); an unreachable database that escaped the
 *   store's own mapping: UNAVAILABLE (503);
 * - anything else: INTERNAL (500) with a fresh error id.
 */
export function toApiError(err: unknown, opts: { clientGone?: boolean; newId?: () => string } = {}): MappedError {
  if (err instanceof ApiError) return fromApiError(err);
  const e = (typeof err === 'object' && err !== null ? err : {}) as FastifyLikeError;
  const message = typeof e.message === 'string' ? e.message : String(err);
  const code = typeof e.code === 'string' ? e.code : '';
  const status = typeof e.statusCode === 'number' ? e.statusCode : 0;
  // Another copy of the protocol package (e.g. a dist build) still carries a known code.
  if (typeof e.code === 'string' && (e as { name?: unknown }).name === 'ApiError' && e.code in ERROR_STATUS) {
    return fromApiError(new ApiError(e.code as ErrorCode, message));
  }
  if (e.validation) return refused('VALIDATION_FAILED', message);
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE' || status === 413) return refused('PAYLOAD_TOO_LARGE', message);
  if (err instanceof SyntaxError || code.startsWith('FST_')) {
    if (status >= 400 && status < 500) return refused('VALIDATION_FAILED', message);
    if (err instanceof SyntaxError) return refused('VALIDATION_FAILED', `malformed body: ${message}`);
  }
  if (status === 404) return refused('NOT_FOUND', message);
  if (status >= 400 && status < 500) return refused('VALIDATION_FAILED', message);
  if (opts.clientGone) {
    return { error: new ApiError('VALIDATION_FAILED', 'the request body ended early (the client went away)'), kind: 'client-gone' };
  }
  if (isStorageFull(err)) return storageFull();
  if (isUnavailable(err)) return { error: new ApiError('UNAVAILABLE', UNAVAILABLE_MESSAGE), kind: 'unavailable' };
  const errorId = (opts.newId ?? randomUUID)();
  return {
    error: new ApiError('INTERNAL', `unexpected error ${errorId}; the controller's log has the details`, undefined, errorId),
    kind: 'internal',
    errorId,
  };
}

function fromApiError(err: ApiError): MappedError {
  if (err.code === 'UNAVAILABLE') return { error: new ApiError('UNAVAILABLE', UNAVAILABLE_MESSAGE, err.retryAfterMs), kind: 'unavailable' };
  if (err.code === 'STORAGE_FULL') return { error: err, kind: 'storage' };
  if (err.code === 'INTERNAL') return { error: err, kind: 'internal', ...(err.errorId ? { errorId: err.errorId } : {}) };
  return { error: err, kind: 'refused' };
}

function refused(code: ErrorCode, message: string): MappedError {
  return { error: new ApiError(code, message), kind: 'refused' };
}

function storageFull(): MappedError {
  return {
    error: new ApiError('STORAGE_FULL', "the controller's storage is full; this upload cannot be stored until an operator frees space"),
    kind: 'storage',
  };
}
