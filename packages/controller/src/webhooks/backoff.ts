/**
 * When a failed webhook delivery is tried again (docs/protocol.md
 * "Webhooks": retried with backoff for 24 hours). Pure: the caller passes
 * the time and the random source.
 */

export interface RetryPolicy {
  /** Delay after the first failure, ms. Doubles with each failure. */
  firstDelayMs: number;
  /** Longest delay between two tries, ms. */
  maxDelayMs: number;
  /** Tries stop once this long has passed since the event, ms. */
  retryForMs: number;
}

/** Defaults: 10 s, doubling up to 1 h, for 24 h (about 30 tries). */
export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  firstDelayMs: 10_000,
  maxDelayMs: 3_600_000,
  retryForMs: 86_400_000,
});

/**
 * The time of the next try after `failures` failed tries (1 after the first),
 * or null when the next try would fall past `eventAt + retryForMs` (give up).
 * "Equal jitter": half the delay fixed, half random, so receivers that came
 * back at once are not hit by every controller's retries in the same
 * instant. `random` returns [0, 1). Times are epoch ms.
 */
export function nextAttemptAt(policy: RetryPolicy, failures: number, eventAt: number, now: number, random: () => number = Math.random): number | null {
  const exp = Math.min(30, Math.max(0, failures - 1));
  const delay = Math.min(policy.maxDelayMs, policy.firstDelayMs * 2 ** exp);
  const at = now + Math.ceil(delay / 2 + (random() * delay) / 2);
  return at > eventAt + policy.retryForMs ? null : at;
}
