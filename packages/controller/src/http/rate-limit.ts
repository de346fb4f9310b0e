/**
 * Abuse limits (issue 9): failed authentications per client address and
 * new registrations per enrollment token, each a fixed window of
 * `ABUSE_WINDOW_MS`. Past the limit the answer is `429 RATE_LIMITED` with
 * `Retry-After` (seconds until the window ends). Counted per controller
 * (several controllers on one PostgreSQL each allow the limit).
 *
 * Our own small counter rather than @fastify/rate-limit: that plugin counts
 * every request of a route, while here only failures count (a fleet of
 * workers behind one address polls all day), and it reads the wall clock,
 * while these windows run on the injected Clock (tests advance a fake one).
 */
import { ApiError, type Clock } from '@buildfleet/protocol';

/** Length of one counting window, ms. */
export const ABUSE_WINDOW_MS = 60_000;
/** Keys remembered at most per limiter; the oldest windows go first. */
const MAX_KEYS = 100_000;

/** Counts events per key in fixed windows on `clock`; `max` 0 counts nothing. */
export class WindowCounter {
  private readonly windows = new Map<string, { start: number; count: number }>();

  constructor(
    private readonly clock: Clock,
    private readonly max: number,
    private readonly windowMs = ABUSE_WINDOW_MS,
  ) {}

  /** ms until `key` may try again (its window is full), 0 when it may now. */
  blockedFor(key: string): number {
    if (this.max === 0) return 0;
    const w = this.current(key);
    return w && w.count >= this.max ? w.start + this.windowMs - this.clock.now() : 0;
  }

  /** Counts one event for `key`; returns `blockedFor(key)` after it. */
  hit(key: string): number {
    if (this.max === 0) return 0;
    let w = this.current(key);
    if (!w) {
      if (this.windows.size >= MAX_KEYS) this.windows.delete(this.windows.keys().next().value!);
      w = { start: this.clock.now(), count: 0 };
      this.windows.set(key, w);
    }
    w.count++;
    return this.blockedFor(key);
  }

  private current(key: string): { start: number; count: number } | undefined {
    const w = this.windows.get(key);
    if (w && this.clock.now() - w.start >= this.windowMs) {
      this.windows.delete(key);
      return undefined;
    }
    return w;
  }
}

/** The limiters of one controller. */
export interface AbuseLimits {
  /** Failed authentications (401 TOKEN_INVALID) per client address. */
  authFailures: WindowCounter;
  /** New registrations per enrollment token (by its hash). */
  registrations: WindowCounter;
}

export function createAbuseLimits(clock: Clock, config: { maxAuthFailuresPerMinute: number; maxRegistrationsPerMinute: number }): AbuseLimits {
  return {
    authFailures: new WindowCounter(clock, config.maxAuthFailuresPerMinute),
    registrations: new WindowCounter(clock, config.maxRegistrationsPerMinute),
  };
}

/** 429 RATE_LIMITED with the wait in `retryAfterMs` (the error handler turns it into Retry-After). */
export function rateLimited(what: string, waitMs: number): ApiError {
  return new ApiError('RATE_LIMITED', `${what}; retry in ${Math.ceil(waitMs / 1000)} s`, waitMs);
}

/**
 * Counts one failed authentication (401 TOKEN_INVALID) of `ip`. Returns the
 * 429 RATE_LIMITED to answer instead when the address was already over its
 * limit, undefined when the 401 stands. Only failures are refused: a request
 * whose credential is valid always proceeds, so a worker behind the same
 * address as a guesser (a reverse proxy, the host of `buildfleet up`) keeps
 * its lease. That costs no protection: every token is 256 random bits, and
 * guesses are what is limited.
 */
export function countAuthFailure(limits: AbuseLimits, ip: string): ApiError | undefined {
  const wait = limits.authFailures.blockedFor(ip);
  limits.authFailures.hit(ip);
  return wait > 0 ? rateLimited('too many failed authentications from this address', wait) : undefined;
}

/** Whether `ip` is over its limit of failed authentications. */
export function isOverAuthFailureLimit(limits: AbuseLimits, ip: string): boolean {
  return limits.authFailures.blockedFor(ip) > 0;
}
