/**
 * The one place that decides what is retryable (design rule 6, after
 * Buildkite's `api/retryable.go`), how long to wait between attempts, and
 * when to give up (habit 18: nothing retries for ever; the caller that gives
 * up says so in the log).
 */
import { ApiError, type Clock } from '@buildfleet/protocol';
import type { Logger } from '../logger.js';
import { TransportError } from './connection.js';

/**
 * True for failures where calling again may succeed: network errors,
 * timeouts, `429 RATE_LIMITED`, `503 UNAVAILABLE`, `500 INTERNAL` (a bug the
 * controller logged with an error id; the next attempt may take another
 * path, or reach another controller), and non-protocol 5xx/429 answers (a
 * proxy in between). Other protocol errors are answers, not failures, and
 * are never retried: 4xx, and `507 STORAGE_FULL` (the same upload soon
 * will not fit either). A caller's abort is never retried.
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

/** Exponential backoff ceilings: attempt n waits up to min(maxMs, baseMs·2^(n-1)), ms. */
export interface Backoff {
  baseMs: number;
  maxMs: number;
}

/**
 * How much one call may retry: at most `attempts` attempts (the first
 * included), and no wait that would end more than `withinMs` after the first
 * attempt began (ms, on the injected monotonic clock).
 */
export interface RetryBudget {
  attempts: number;
  withinMs: number;
}

/**
 * Full-jitter exponential backoff (AWS Architecture Blog, "Exponential
 * Backoff And Jitter"): before attempt n+1 a uniform random wait in
 * [0, min(maxMs, baseMs·2^(n-1))], never less than the error's
 * `Retry-After`. `random` returns [0, 1): injected, so a seeded simulation
 * replays the same waits.
 */
export function backoffDelay(attempt: number, err: unknown, backoff: Backoff, random: () => number): number {
  const ceiling = Math.min(backoff.maxMs, backoff.baseMs * 2 ** Math.min(attempt - 1, 30));
  const jittered = Math.floor(random() * ceiling);
  const hint = retryAfterOf(err);
  return hint !== undefined ? Math.max(hint, jittered) : jittered;
}

/**
 * A call used up its retry budget; `cause` is the last failure. Never
 * retryable itself, so an outer loop does not multiply the budget.
 */
export class RetryBudgetExhausted extends Error {
  constructor(
    readonly what: string,
    readonly attempts: number,
    readonly elapsedMs: number,
    readonly last: unknown,
  ) {
    super(`${what}: gave up after ${attempts} attempt${attempts === 1 ? '' : 's'} over ${Math.round(elapsedMs / 1000)} s: ${describeError(last)}`, { cause: last });
    this.name = 'RetryBudgetExhausted';
  }
}

/** Everything `withRetry` needs besides the call. */
export interface RetryContext {
  clock: Clock;
  random: () => number;
  logger: Logger;
  backoff: Backoff;
}

export interface RetryCall {
  /** Names the call in log lines and errors, e.g. `POST /builds/{id}/finish`. */
  what: string;
  budget: RetryBudget;
  /** Stops waiting: rethrows the last error (or the abort's). */
  signal?: AbortSignal | undefined;
  /** Extra fields for the log lines (a build id). */
  fields?: Record<string, unknown>;
}

/**
 * Calls `fn(attempt)` (attempts from 1) until it succeeds or throws an error
 * `isRetryable` refuses (rethrown unchanged). Each retry is a warn line;
 * running out of `budget` is an error line and a `RetryBudgetExhausted`.
 * Waits on the injected clock.
 */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, call: RetryCall, ctx: RetryContext): Promise<T> {
  const started = ctx.clock.monotonic();
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (!isRetryable(err) || call.signal?.aborted) throw err;
      const elapsed = ctx.clock.monotonic() - started;
      const delay = backoffDelay(attempt, err, ctx.backoff, ctx.random);
      if (attempt >= call.budget.attempts || elapsed + delay > call.budget.withinMs) {
        const out = new RetryBudgetExhausted(call.what, attempt, elapsed, err);
        ctx.logger.error({ ...call.fields, attempts: attempt, elapsedMs: Math.round(elapsed), err: describeError(err) }, `${call.what}: giving up`);
        throw out;
      }
      ctx.logger.warn({ ...call.fields, attempt, delayMs: delay, err: describeError(err) }, `${call.what} failed; retrying`);
      try {
        await ctx.clock.sleep(delay, call.signal);
      } catch {
        throw err;
      }
    }
  }
}

/** One line for an error in logs: `CODE: message` for protocol errors. */
export function describeError(err: unknown): string {
  if (err instanceof ApiError) return `${err.code}: ${err.message}`;
  return (err as Error)?.message ?? String(err);
}
