/**
 * Error codes of PROTOCOL.md ("Conventions"). A client decides on `code`,
 * never on `message`. Every error body is `{"error": {"code", "message"}}`.
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
  PAYLOAD_TOO_LARGE: 413,
  CHECKSUM_MISMATCH: 422,
  RATE_LIMITED: 429,
  UNAVAILABLE: 503,
} as const;

export type ErrorCode = keyof typeof ERROR_STATUS;

export const ERROR_CODES = Object.keys(ERROR_STATUS) as ErrorCode[];

/** Wire shape of every error answer. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string };
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
  ) {
    super(message);
    this.name = 'ApiError';
    this.status = ERROR_STATUS[code];
  }
  toBody(): ErrorBody {
    return { error: { code: this.code, message: this.message } };
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
