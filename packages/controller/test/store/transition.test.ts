/**
 * The build transition function (src/domain/transition.ts): example cases of
 * docs/protocol.md "States" and fast-check properties over random event sequences.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ApiError, canTransition, isTerminal, TERMINAL_STATES, type BuildState } from '@buildfleet/protocol';
import { transition, type BuildEvent, type TransitionInput } from '../../src/domain/transition.js';

const NOW = 1_000;

function apply(s: TransitionInput, e: BuildEvent, now = NOW): TransitionInput {
  const t = transition(s, e, now);
  return {
    state: t.to,
    attempt: t.build.attempt ?? s.attempt,
    maxAttempts: s.maxAttempts,
    cancelRequested: t.build.cancel_requested === 1 ? true : s.cancelRequested,
  };
}

const start: TransitionInput = { state: 'queued', attempt: 1, maxAttempts: 2, cancelRequested: false };

function code(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return err instanceof ApiError ? err.code : 'not-an-ApiError';
  }
}

describe('transition', () => {
  it('follows queued → assigned → running → succeeded with the columns of each step', () => {
    const a = transition(start, { type: 'assign', workerId: 'w', ackDeadline: 99 }, 5);
    expect(a.build).toMatchObject({ state: 'assigned', worker_id: 'w', assigned_at: 5, ack_deadline: 99 });
    expect(a.build.attempt).toBeUndefined();
    const s = transition({ ...start, state: 'assigned' }, { type: 'start', leaseExpiresAt: 70 }, 6);
    expect(s.build).toMatchObject({ state: 'running', started_at: 6, lease_expires_at: 70, ack_deadline: null });
    const f = transition({ ...start, state: 'running' }, { type: 'finish', outcome: 'succeeded', exitCode: 0, message: null }, 7);
    expect(f.build).toMatchObject({ state: 'succeeded', finished_at: 7, exit_code: 0, reason: null, lease_expires_at: null });
    expect(f.attemptRow).toMatchObject({ state: 'succeeded', finished_at: 7 });
  });

  it('a failed finish names the limit the build exceeded; other outcomes keep their own reason', () => {
    const running = { ...start, state: 'running' as const };
    const f = transition(running, { type: 'finish', outcome: 'failed', exitCode: 137, message: 'memory limit reached', limitReason: 'limit_memory' }, 7);
    expect(f.build).toMatchObject({ state: 'failed', reason: 'limit_memory', message: 'memory limit reached' });
    expect(f.attemptRow).toMatchObject({ state: 'failed', reason: 'limit_memory' });
    expect(transition(running, { type: 'finish', outcome: 'failed', exitCode: 2, message: null }, 7).build.reason).toBe('exit_code');
    expect(transition(running, { type: 'finish', outcome: 'canceled', exitCode: null, message: null, limitReason: 'limit_cpu' }, 7).build.reason).toBe('canceled');
  });

  it('a lost attempt requeues as the next attempt while attempts remain, then fails worker_lost', () => {
    const lost = transition({ ...start, state: 'running' }, { type: 'lose', reason: 'lease_expired' }, 8);
    expect(lost.build).toMatchObject({ state: 'queued', attempt: 2, worker_id: null, lease_expires_at: null });
    expect(lost.attemptRow).toMatchObject({ state: 'failed', reason: 'lease_expired', finished_at: 8 });
    const last = transition({ ...start, state: 'assigned', attempt: 2 }, { type: 'lose', reason: 'ack_timeout' }, 9);
    expect(last.build).toMatchObject({ state: 'failed', reason: 'worker_lost' });
    expect(last.build.attempt).toBeUndefined();
  });

  it('a canceled build is never requeued: a lost attempt with cancelRequested ends canceled', () => {
    const t = transition({ ...start, state: 'running', cancelRequested: true }, { type: 'lose', reason: 'lease_expired' }, 1);
    expect(t.to).toBe('canceled');
  });

  it('cancel: queued/assigned end at once, running only requests, terminal is refused', () => {
    expect(transition(start, { type: 'cancel' }, 1)).toMatchObject({ to: 'canceled', attemptRow: null });
    expect(transition({ ...start, state: 'assigned' }, { type: 'cancel' }, 1).attemptRow).toMatchObject({ state: 'canceled' });
    expect(transition({ ...start, state: 'running' }, { type: 'cancel' }, 1)).toMatchObject({ to: 'running', build: { cancel_requested: 1 } });
    for (const s of TERMINAL_STATES) expect(code(() => transition({ ...start, state: s }, { type: 'cancel' }, 1))).toBe('INVALID_TRANSITION');
  });

  it('refuses what canTransition forbids', () => {
    expect(code(() => transition(start, { type: 'start', leaseExpiresAt: 1 }, 1))).toBe('INVALID_TRANSITION');
    expect(code(() => transition(start, { type: 'lose', reason: 'ack_timeout' }, 1))).toBe('INVALID_TRANSITION');
    expect(code(() => transition({ ...start, state: 'assigned' }, { type: 'finish', outcome: 'succeeded', exitCode: 0, message: null }, 1))).toBe(
      'INVALID_TRANSITION',
    );
    expect(code(() => transition({ ...start, state: 'running' }, { type: 'assign', workerId: 'w', ackDeadline: 1 }, 1))).toBe('INVALID_TRANSITION');
  });

  const eventArb: fc.Arbitrary<BuildEvent> = fc.oneof(
    fc.record({ type: fc.constant('assign' as const), workerId: fc.constantFrom('w1', 'w2'), ackDeadline: fc.nat() }),
    fc.record({ type: fc.constant('start' as const), leaseExpiresAt: fc.nat() }),
    fc.record({
      type: fc.constant('finish' as const),
      outcome: fc.constantFrom(...TERMINAL_STATES),
      exitCode: fc.option(fc.integer({ min: -1, max: 255 })),
      message: fc.constant(null),
    }),
    fc.record({ type: fc.constant('lose' as const), reason: fc.constantFrom('ack_timeout' as const, 'lease_expired' as const, 'worker_deleted' as const) }),
    fc.constant({ type: 'cancel' as const }),
    fc.constant({ type: 'timeout' as const }),
    fc.constant({ type: 'reject' as const, reason: 'secret_unavailable' as const, message: 'secret X is out of scope' }),
  );

  it('a rejected build fails with its reason and message before it runs, from queued, assigned or running', () => {
    const reject = { type: 'reject' as const, reason: 'secret_unavailable' as const, message: 'secret NPM_TOKEN: needs repo=acme/app' };
    expect(transition(start, reject, 3)).toMatchObject({
      to: 'failed',
      build: { state: 'failed', reason: 'secret_unavailable', message: reject.message, finished_at: 3 },
      attemptRow: null,
    });
    expect(transition({ ...start, state: 'running' }, reject, 4).attemptRow).toMatchObject({ state: 'failed', reason: 'secret_unavailable' });
    expect(code(() => transition({ ...start, state: 'succeeded' }, reject, 1))).toBe('INVALID_TRANSITION');
  });

  it('property: terminal states never change, attempts never decrease, canceled never returns to queued, every change is allowed', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 5 }), fc.array(eventArb, { maxLength: 40 }), (maxAttempts, events) => {
        let s: TransitionInput = { state: 'queued', attempt: 1, maxAttempts, cancelRequested: false };
        const seen: BuildState[] = [s.state];
        for (const e of events) {
          let next: TransitionInput;
          try {
            next = apply(s, e);
          } catch (err) {
            expect(err).toBeInstanceOf(ApiError);
            expect((err as ApiError).code).toBe('INVALID_TRANSITION');
            continue;
          }
          expect(isTerminal(s.state)).toBe(false);
          if (next.state !== s.state) expect(canTransition(s.state, next.state)).toBe(true);
          expect(next.attempt).toBeGreaterThanOrEqual(s.attempt);
          expect(next.attempt).toBeLessThanOrEqual(maxAttempts);
          if (s.cancelRequested) expect(next.state).not.toBe('queued');
          if (next.state === 'queued' && s.state !== 'queued') expect(next.attempt).toBe(s.attempt + 1);
          s = next;
          seen.push(s.state);
        }
        const firstTerminal = seen.findIndex((x) => isTerminal(x));
        if (firstTerminal >= 0) expect(seen.slice(firstTerminal).every((x) => x === seen[firstTerminal])).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });
});
