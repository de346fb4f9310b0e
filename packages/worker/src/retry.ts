/**
 * The one place that decides what is retryable (STYLE.md habit 6, after
 * Buildkite's `api/retryable.go`) and how long to wait between attempts.
 */
import { ApiError, type Clock } from '@buildfleet/protocol';
import { TransportError } from './http.js';

/**
 * True for failures where calling again may succeed: network errors,
 * timeouts, `429 RATE_LIMITED`, `503 UNAVAILABLE`, `500 INTERNAL` (a controller bug
 * that may not recur; retried within the caller's budget), and non-protocol 5xx/429
 * answers (a proxy in between). Protocol 4xx errors are answers, not
 * failures, and are never retried. A caller's abort is never retried.
 */
export function isRetryable(err: unknown): boolean {
  if (err instanceof TransportError) {
    if (err.kind === 'network' || err.kind === 'timeout') return true;
    if (err.kind === 'http') return err.status === 429 || (err.status !== undefined && err.status >= 500);
    return false;
  }
  if (err instanceof ApiError) return err.code === 'RATE_LIMITED' || err.code === 'UNAVAILABLE' || err.code === 'INTERNAL';
  return false;
}

/** The `Retry-After` hint of an error, in ms, if it carries one. */
export function retryAfterOf(err: unknown): number | undefined {
  if (err instanceof ApiError || err instanceof TransportError) return err.retryAfterMs;
  return undefined;
}

export interface RetryOptions {
  clock: Clock;
  /** Total attempts including the first (default 5; `Infinity` retries until aborted). */
  maxAttempts?: number;
  /** First backoff ceiling, ms (default 200). */
  baseMs?: number;
  /** Largest backoff ceiling, ms (default 30000). */
  maxMs?: number;
  /** Stops waiting and rethrows the last error (or the abort reason). */
  signal?: AbortSignal;
  /** Random in [0, 1); injectable for deterministic tests. */
  random?: () => number;
  /** Decides retryability (default `isRetryable`). */
  retryable?: (err: unknown) => boolean;
  /** Called before each wait with the failed attempt number (from 1), the error and the delay in ms. */
  onRetry?: (attempt: number, err: unknown, delayMs: number) => void;
}

/**
 * Full-jitter exponential backoff: before attempt n+1 it waits a uniform
 * random time in [0, min(maxMs, baseMs·2^(n-1))], but never less than the
 * error's `Retry-After`. (AWS Architecture Blog, "Exponential Backoff And
 * Jitter".)
 */
export function backoffDelay(attempt: number, err: unknown, opts: Pick<RetryOptions, 'baseMs' | 'maxMs' | 'random'>): number {
  const base = opts.baseMs ?? 200;
  const max = opts.maxMs ?? 30_000;
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt - 1, 30));
  const jittered = Math.floor((opts.random ?? Math.random)() * ceiling);
  const hint = retryAfterOf(err);
  return hint !== undefined ? Math.max(hint, jittered) : jittered;
}

/**
 * Calls `fn(attempt)` until it succeeds, throws a non-retryable error, or
 * `maxAttempts` is used up (then the last error is thrown). Waits on the
 * injected clock, so tests drive it with a FakeClock.
 */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T> {
  const maxAttempts = opts.maxAttempts ?? 5;
  const retryable = opts.retryable ?? isRetryable;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (attempt >= maxAttempts || !retryable(err) || opts.signal?.aborted) throw err;
      const delay = backoffDelay(attempt, err, opts);
      opts.onRetry?.(attempt, err, delay);
      try {
        await opts.clock.sleep(delay, opts.signal);
      } catch {
        throw err;
      }
    }
  }
}
