import { describe, expect, it } from 'vitest';
import { ApiError, FakeClock, flushMicrotasks } from '@buildfleet/protocol';
import { TransportError } from '../src/http.js';
import { backoffDelay, isRetryable, withRetry } from '../src/retry.js';

describe('isRetryable', () => {
  it('retries network errors, timeouts, 429 and 503; never protocol 4xx or aborts', () => {
    expect(isRetryable(new TransportError('network', 'x', 'u'))).toBe(true);
    expect(isRetryable(new TransportError('timeout', 'x', 'u'))).toBe(true);
    expect(isRetryable(new TransportError('http', 'x', 'u', 502))).toBe(true);
    expect(isRetryable(new TransportError('http', 'x', 'u', 429))).toBe(true);
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

describe('backoffDelay', () => {
  it('is full jitter under an exponential ceiling capped at maxMs', () => {
    const opts = { baseMs: 100, maxMs: 1000 };
    expect(backoffDelay(1, new Error(), { ...opts, random: () => 0.999 })).toBe(99);
    expect(backoffDelay(3, new Error(), { ...opts, random: () => 0.5 })).toBe(200);
    expect(backoffDelay(20, new Error(), { ...opts, random: () => 0.999 })).toBe(999);
    expect(backoffDelay(5, new Error(), { ...opts, random: () => 0 })).toBe(0);
  });
  it('never waits less than Retry-After', () => {
    expect(backoffDelay(1, new ApiError('RATE_LIMITED', 'x', 5000), { baseMs: 100, maxMs: 1000, random: () => 0.5 })).toBe(5000);
  });
});

describe('withRetry', () => {
  it('waits on the injected clock between attempts and returns the first success', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const p = withRetry(
      async () => {
        calls++;
        if (calls < 3) throw new ApiError('UNAVAILABLE', 'down', calls === 2 ? 7000 : undefined);
        return 'ok';
      },
      { clock, baseMs: 100, maxMs: 1000, random: () => 0.5 },
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
        { clock },
      ),
    ).rejects.toMatchObject({ code: 'LEASE_LOST' });
    expect(calls).toBe(1);
  });

  it('gives up after maxAttempts with the last error', async () => {
    const clock = new FakeClock();
    let calls = 0;
    const p = withRetry(
      async () => {
        calls++;
        throw new TransportError('network', `fail ${calls}`, 'u');
      },
      { clock, maxAttempts: 3, baseMs: 10, random: () => 1 },
    ).catch((e: unknown) => e);
    await clock.advance(1000);
    expect(((await p) as Error).message).toBe('fail 3');
  });

  it('stops waiting when the signal aborts', async () => {
    const clock = new FakeClock();
    const ac = new AbortController();
    const p = withRetry(
      async () => {
        throw new TransportError('network', 'down', 'u');
      },
      { clock, maxAttempts: Infinity, baseMs: 10_000, random: () => 1, signal: ac.signal },
    ).catch((e: unknown) => e);
    await flushMicrotasks();
    ac.abort();
    expect(((await p) as Error).message).toBe('down');
  });
});
