/**
 * The guards of the one-statement lifecycle steps (sql/guarded.ts) are
 * derived from transition(): these are the from-states it allows, with the
 * values it would write.
 */
import { describe, expect, it } from 'vitest';
import { transition } from '../../src/domain/transition.js';
import { guardFor } from '../../src/store/sql/guarded.js';

describe('guardFor', () => {
  it('start: assigned only, with the values transition() writes', () => {
    const g = guardFor({ type: 'start', leaseExpiresAt: 5_000 }, 2, 1_000)!;
    expect(g.states).toEqual(['assigned']);
    expect(g.t).toEqual(transition({ state: 'assigned', attempt: 2, maxAttempts: 3, cancelRequested: true }, { type: 'start', leaseExpiresAt: 5_000 }, 1_000));
  });

  it('finish: the states each outcome may be reached from, never the outcome itself', () => {
    const finish = (outcome: 'succeeded' | 'failed' | 'canceled' | 'timed_out') =>
      guardFor({ type: 'finish', outcome, exitCode: 1, message: null }, 1, 1_000)!.states;
    expect(finish('succeeded')).toEqual(['running']);
    expect(finish('failed')).toEqual(['queued', 'assigned', 'running']);
    expect(finish('canceled')).toEqual(['queued', 'assigned', 'running']);
    expect(finish('timed_out')).toEqual(['assigned', 'running']);
    // Remembered per kind, the values are the call's own.
    const later = guardFor({ type: 'finish', outcome: 'failed', exitCode: 7, message: 'm' }, 1, 2_000)!;
    expect(later.t.build).toMatchObject({ exit_code: 7, message: 'm', finished_at: 2_000 });
  });

  it('no guard where the values depend on the row: a lost attempt (attempts left, cancel requested)', () => {
    expect(guardFor({ type: 'lose', reason: 'lease_expired' }, 1, 1_000)).toBeUndefined();
  });
});
