/**
 * Reading a controller's error answers, for every client of the protocol
 * (the worker's connection and the CLI): docs/protocol.md "Conventions" says an
 * error is `{"error": {"code", "message"}}` and a client decides on `code`;
 * `Retry-After` (RFC 9110 §10.2.3) says when to ask again.
 */
import { ApiError, isErrorBody } from './errors.js';

/**
 * `Retry-After` in ms: delay-seconds or an HTTP date (then relative to
 * `nowMs`, epoch ms). Undefined when absent or unreadable.
 */
export function parseRetryAfter(value: string | null | undefined, nowMs: number): number | undefined {
  if (!value) return undefined;
  const secs = Number(value);
  if (Number.isFinite(secs) && secs >= 0) return Math.round(secs * 1000);
  const at = Date.parse(value);
  if (Number.isFinite(at)) return Math.max(0, at - nowMs);
  return undefined;
}

/**
 * The ApiError an error answer carries (with `retryAfterMs` from its
 * `Retry-After`), or undefined when its body is not a protocol error body
 * (a proxy's page, an empty body, an unknown code). Reads the body.
 */
export async function apiErrorOf(res: Response, nowMs: number): Promise<ApiError | undefined> {
  let parsed: unknown;
  try {
    const text = await res.text();
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  if (!isErrorBody(parsed)) return undefined;
  return new ApiError(parsed.error.code, parsed.error.message, parseRetryAfter(res.headers.get('retry-after'), nowMs), parsed.error.id);
}
