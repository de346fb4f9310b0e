import { describe, expect, it } from 'vitest';
import { ApiError, FakeClock, flushMicrotasks } from '@buildfleet/protocol';
import { TransportError } from '../src/client/connection.js';
import { backoffDelay, isRetryable, RetryBudgetExhausted, withRetry, type RetryContext } from '../src/client/retry.js';
import type { Logger } from '../src/logger.js';

describe('isRetryable', () => {
  it('retries network errors, timeouts, 429, 500 and 503; never protocol 4xx or aborts', () => {
    expect(isRetryable(new TransportError('network', 'x', 'u'))).toBe(true);
    expect(isRetryable(new TransportError('timeout', 'x', 'u'))).toBe(true);
    expect(isRetryable(new TransportError('http', 'x', 'u', 502))).toBe(true);
    expect(isRetryable(new TransportError('http', 'x', 'u', 429))).toBe(true);
    // The controller answers an unexpected exception with 500 and an error id: retried like a 503.
    expect(isRetryable(new TransportError('http', 'x', 'u', 500))).toBe(true);
    expect(isRetryable(new TransportError('http', 'x', 'u', 404))).toBe(false);
    expect(isRetryable(new TransportError('aborted', 'x', 'u'))).toBe(false);
    expect(isRetryable(new ApiError('RATE_LIMITED', 'x'))).toBe(true);
    expect(isRetryable(new ApiError('UNAVAILABLE', 'x'))).toBe(true);
    expect(isRetryable(new ApiError('INTERNAL', 'x'))).toBe(true);
    expect(isRetryable(new ApiError('STORAGE_FULL', 'x'))).toBe(false);
    for (const code of ['TOKEN_EXPIRED', 'TOKEN_INVALID', 'FORBIDDEN', 'WORKER_NOT_FOUND', 'LEASE_LOST', 'INVALID_TRANSITION', 'OFFSET_MISMATCH', 'VALIDATION_FAILED'] as const) {
      expect(isRetryable(new ApiError(code, 'x'))).toBe(false);
    }
    expect(isRetryable(new Error('boom'))).toBe(false);
  });
});

/** A logger that keeps its lines. */
function recorder(): Logger & { lines: Array<{ level: string; msg: string; obj: object }> } {
  const lines: Array<{ level: string; msg: string; obj: object }> = [];
  const at = (level: string) => (obj: object, msg = '') => void lines.push({ level, msg, obj });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

function ctx(clock: FakeClock, over: Partial<RetryContext> = {}): RetryContext {
  return { clock, random: () => 0.5, logger: recorder(), backoff: { baseMs: 100, maxMs: 1000 }, ...over };
}

const budget = (attempts: number, withinMs = 3_600_000) => ({ attempts, withinMs });

describe('backoffDelay', () => {
  it('is full jitter under an exponential ceiling capped at maxMs', () => {
    const b = { baseMs: 100, maxMs: 1000 };
    expect(backoffDelay(1, new Error(), b, () => 0.999)).toBe(99);
    expect(backoffDelay(3, new Error(), b, () => 0.5)).toBe(200);
    expect(backoffDelay(20, new Error(), b, () => 0.999)).toBe(999);
    expect(backoffDelay(5, new Error(), b, () => 0)).toBe(0);
  });
  it('never waits less than Retry-After', () => {
    expect(backoffDelay(1, new ApiError('RATE_LIMITED', 'x', 5000), { baseMs: 100, maxMs: 1000 }, () => 0.5)).toBe(5000);
  });
});

describe('withRetry', () => {
  it('waits on the injected clock with the injected jitter between attempts and returns the first success', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const p = withRetry(
      async () => {
        calls++;
        if (calls < 3) throw new ApiError('UNAVAILABLE', 'down', calls === 2 ? 7000 : undefined);
        return 'ok';
      },
      { what: 'test call', budget: budget(5) },
      ctx(clock),
    );
    await flushMicrotasks();
    expect(calls).toBe(1);
    await clock.advance(49);
    expect(calls).toBe(1);
    await clock.advance(1); // 0.5 * 100
    expect(calls).toBe(2);
    await clock.advance(6999); // Retry-After 7000 beats the 100 ms jitter
    expect(calls).toBe(2);
    await clock.advance(1);
    expect(await p).toBe('ok');
    expect(calls).toBe(3);
  });

  it('throws a non-retryable error at once', async () => {
    const clock = new FakeClock();
    let calls = 0;
    await expect(
      withRetry(
        async () => {
          calls++;
          throw new ApiError('LEASE_LOST', 'gone');
        },
        { what: 'test call', budget: budget(5) },
        ctx(clock),
      ),
    ).rejects.toMatchObject({ code: 'LEASE_LOST' });
    expect(calls).toBe(1);
  });

  it('gives up after its attempts with RetryBudgetExhausted naming the call and the last error, and says so in the log', async () => {
    const clock = new FakeClock();
    const logger = recorder();
    let calls = 0;
    const p = withRetry(
      async () => {
        calls++;
        throw new TransportError('network', `fail ${calls}`, 'u');
      },
      { what: 'POST /builds/{id}/finish', budget: budget(3), fields: { buildId: 'b1' } },
      ctx(clock, { logger, random: () => 1 }),
    ).catch((e: unknown) => e);
    await clock.advance(1000);
    const err = (await p) as RetryBudgetExhausted;
    expect(err).toBeInstanceOf(RetryBudgetExhausted);
    expect(err).toMatchObject({ attempts: 3, what: 'POST /builds/{id}/finish' });
    expect(err.message).toMatch(/gave up after 3 attempts .*fail 3/);
    expect(isRetryable(err)).toBe(false);
    expect(calls).toBe(3);
    expect(logger.lines.filter((l) => l.level === 'warn')).toHaveLength(2);
    expect(logger.lines.at(-1)).toMatchObject({ level: 'error', msg: 'POST /builds/{id}/finish: giving up', obj: { buildId: 'b1', attempts: 3 } });
  });

  it('gives up before a wait that would end past its time budget', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const p = withRetry(
      async () => {
        calls++;
        throw new ApiError('UNAVAILABLE', 'down');
      },
      // Waits of 100, 200, 400 ms (random 1): the third would end at 700 ms > 500 ms.
      { what: 'test call', budget: budget(100, 500) },
      ctx(clock, { random: () => 1 }),
    ).catch((e: unknown) => e);
    await clock.advance(10_000);
    expect(await p).toBeInstanceOf(RetryBudgetExhausted);
    expect(calls).toBe(3);
  });

  it('stops waiting when the signal aborts', async () => {
    const clock = new FakeClock();
    const ac = new AbortController();
    const p = withRetry(
      async () => {
        throw new TransportError('network', 'down', 'u');
      },
      { what: 'test call', budget: budget(100), signal: ac.signal },
      ctx(clock, { backoff: { baseMs: 10_000, maxMs: 10_000 }, random: () => 1 }),
    ).catch((e: unknown) => e);
    await flushMicrotasks();
    ac.abort();
    expect(((await p) as Error).message).toBe('down');
  });
});
