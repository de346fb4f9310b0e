/**
 * One place that turns anything thrown while serving a request into
 * PROTOCOL.md's error body `{"error": {"code", "message"}}` (Conventions).
 * No request may get a 5xx other than `503 UNAVAILABLE`.
 */
import { ApiError, ERROR_STATUS, type ErrorCode } from '@buildfleet/protocol';

/** Seconds a client should wait before retrying a 503/429. */
export const RETRY_AFTER_SECONDS = 2;

interface FastifyLikeError {
  code?: unknown;
  statusCode?: unknown;
  message?: unknown;
  validation?: unknown;
  validationContext?: unknown;
}

/**
 * Maps an error to the protocol: ApiError keeps its code; fastify's
 * validation, content-type and body-limit errors become VALIDATION_FAILED or
 * PAYLOAD_TOO_LARGE; other client errors (4xx) become VALIDATION_FAILED;
 * anything else is treated as an unavailable backend (503) and logged by the
 * caller (`internal: true`).
 */
export function toApiError(err: unknown): { error: ApiError; internal: boolean } {
  if (err instanceof ApiError) return { error: err, internal: false };
  const e = (typeof err === 'object' && err !== null ? err : {}) as FastifyLikeError;
  const message = typeof e.message === 'string' ? e.message : String(err);
  const code = typeof e.code === 'string' ? e.code : '';
  const status = typeof e.statusCode === 'number' ? e.statusCode : 0;
  // Another copy of the protocol package (e.g. a dist build) still carries a known code.
  if (typeof e.code === 'string' && (e as { name?: unknown }).name === 'ApiError' && e.code in ERROR_STATUS) {
    return { error: new ApiError(e.code as ErrorCode, message), internal: false };
  }
  if (e.validation) return { error: new ApiError('VALIDATION_FAILED', message), internal: false };
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE' || status === 413) {
    return { error: new ApiError('PAYLOAD_TOO_LARGE', message), internal: false };
  }
  if (err instanceof SyntaxError || code.startsWith('FST_ERR_CTP') || code.startsWith('FST_')) {
    if (status >= 400 && status < 500) return { error: new ApiError('VALIDATION_FAILED', message), internal: false };
    if (err instanceof SyntaxError) return { error: new ApiError('VALIDATION_FAILED', `malformed body: ${message}`), internal: false };
  }
  if (status === 404) return { error: new ApiError('NOT_FOUND', message), internal: false };
  if (status >= 400 && status < 500) return { error: new ApiError('VALIDATION_FAILED', message), internal: false };
  return { error: new ApiError('UNAVAILABLE', 'the controller could not complete the request; retry with backoff'), internal: true };
}

/** An ApiError for a failed fastify validation, naming the field. */
export function validationFailed(err: Error): ApiError {
  return new ApiError('VALIDATION_FAILED', err.message);
}
