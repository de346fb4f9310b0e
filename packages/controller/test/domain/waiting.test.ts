import { describe, expect, it } from 'vitest';
import { claimOrder, waitingOf, type FleetEntry, type QueuedEntry } from '../../src/domain/waiting.js';

const q = (id: string, labels: string[], priority = 0, createdAt = 0): QueuedEntry => ({ id, labels, priority, createdAt });
const w = (labels: string[], status: FleetEntry['status'] = 'active', connected = true): FleetEntry => ({ labels, status, connected });

describe('waitingOf', () => {
  it('no connected worker with all the labels: no_matching_worker, placed among builds with the same labels', () => {
    const gpu1 = q('a', ['gpu'], 0, 1);
    const gpu2 = q('b', ['gpu'], 0, 2);
    const other = q('c', ['arm'], 0, 0);
    const fleet = [w(['linux']), w(['gpu'], 'active', false)];
    expect(waitingOf(gpu2, [gpu1, gpu2, other], fleet)).toEqual({ reason: 'no_matching_worker', position: 2 });
    expect(waitingOf(gpu1, [gpu1, gpu2, other], fleet)).toEqual({ reason: 'no_matching_worker', position: 1 });
  });

  it('every matching worker draining: workers_draining', () => {
    expect(waitingOf(q('a', ['linux']), [q('a', ['linux'])], [w(['linux', 'x86'], 'draining'), w(['arm'])])).toEqual({
      reason: 'workers_draining',
      position: 1,
    });
  });

  it('a matching worker is active: workers_busy, behind the builds the same workers take first (priority, then age, then id)', () => {
    const me = q('m', ['linux'], 0, 10);
    const queue = [
      me,
      q('older', [], 0, 5), // any worker may take it: ahead
      q('urgent', ['linux'], 5, 20), // higher priority: ahead
      q('younger', ['linux'], 0, 30), // behind
      q('a-same-time', ['linux'], 0, 10), // same priority and age, id sorts first: ahead
      q('gpu', ['gpu'], 9, 1), // the linux worker cannot take it: not ahead
    ];
    expect(waitingOf(me, queue, [w(['linux']), w(['gpu'], 'draining')])).toEqual({ reason: 'workers_busy', position: 4 });
  });

  it('a full concurrency group: concurrency_group (its active builds plus older queued ones of the group reach the limit)', () => {
    const group = (name: string, limit: number, active: number) => ({ name, limit, active });
    const first = { ...q('first', [], 0, 1), group: group('deploy', 1, 0) };
    const second = { ...q('second', [], 9, 2), group: group('deploy', 1, 0) };
    const queue = [first, second];
    expect(waitingOf(first, queue, [w([])]).reason).toBe('workers_busy');
    expect(waitingOf(second, queue, [w([])]).reason).toBe('concurrency_group');
    const running = { ...q('r', [], 0, 5), group: group('deploy', 2, 2) };
    expect(waitingOf(running, [running], [w([])]).reason).toBe('concurrency_group');
    const room = { ...q('r', [], 0, 5), group: group('deploy', 3, 2) };
    expect(waitingOf(room, [room], [w([])]).reason).toBe('workers_busy');
  });

  it('claimOrder matches the claim statement (priority desc, created_at, id)', () => {
    const list = [q('b', [], 0, 1), q('a', [], 0, 1), q('c', [], 1, 9), q('d', [], 0, 0)];
    expect(list.sort(claimOrder).map((e) => e.id)).toEqual(['c', 'd', 'a', 'b']);
  });
});
