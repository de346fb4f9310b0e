/**
 * Error codes of docs/protocol.md ("Conventions"). A client decides on `code`,
 * never on `message`. Every error body is `{"error": {"code", "message"}}`
 * (plus `id` on `500 INTERNAL`).
 *
 * Beyond docs/protocol.md's table: `NOT_FOUND` (404, no such route or
 * enrollment token), `INTERNAL` (500, a bug: an exception the controller did
 * not expect; the answer's `error.id` is also in the controller's log line),
 * `STORAGE_FULL` (507, the controller's disk or database is full; retrying
 * the same upload soon will not help). `UNAVAILABLE` (503) means only an
 * unreachable database or a lock wait that timed out.
 */
export const ERROR_STATUS = {
  VALIDATION_FAILED: 400,
  TOKEN_EXPIRED: 401,
  TOKEN_INVALID: 401,
  FORBIDDEN: 403,
  WORKER_NOT_FOUND: 404,
  BUILD_NOT_FOUND: 404,
  ARTIFACT_NOT_FOUND: 404,
  NOT_FOUND: 404,
  LEASE_LOST: 409,
  INVALID_TRANSITION: 409,
  OFFSET_MISMATCH: 409,
  IDENTITY_CONFLICT: 409,
  SECRETS_KEY_MISSING: 409,
  GONE: 410,
  PAYLOAD_TOO_LARGE: 413,
  CHECKSUM_MISMATCH: 422,
  RATE_LIMITED: 429,
  INTERNAL: 500,
  UNAVAILABLE: 503,
  STORAGE_FULL: 507,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export const ERROR_CODES = Object.keys(ERROR_STATUS) as ErrorCode[];

/** Wire shape of every error answer. */
export interface ErrorBody {
  /** `id` is set on `500 INTERNAL` only: the id of the controller's log line. */
  error: { code: ErrorCode; message: string; id?: string };
}

/**
 * An error that carries a protocol code. Thrown by controller logic (the HTTP
 * layer maps it to `ERROR_STATUS[code]`) and by clients when an answer is an
 * error body. `retryAfterMs` is set from `Retry-After` on 429/503 answers.
 */
export class ApiError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly retryAfterMs?: number,
    /** The error id of a `500 INTERNAL` answer (the same id is in the controller's log). */
    readonly errorId?: string,
  ) {
    super(message);
    this.name = 'ApiError';
    this.status = ERROR_STATUS[code];
  }
  toBody(): ErrorBody {
    return { error: { code: this.code, message: this.message, ...(this.errorId !== undefined ? { id: this.errorId } : {}) } };
  }
}

export function isErrorBody(value: unknown): value is ErrorBody {
  if (typeof value !== 'object' || value === null) return false;
  const e = (value as { error?: unknown }).error;
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof (e as { code?: unknown }).code === 'string' &&
    (e as { code: string }).code in ERROR_STATUS
  );
}
