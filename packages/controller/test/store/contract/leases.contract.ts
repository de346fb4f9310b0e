/** The store contract, slice: Leases: heartbeat and the reaper (sql/leases.ts). */
import { beforeEach, describe, expect, it } from 'vitest';
import type { Store } from '../../../src/store/types.js';
import { T0, TTL, ACK, LEASE, type StoreFixture } from './fixture.js';

export function leasesContract(f: StoreFixture): void {
  describe('leases', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });
    const { worker, build, poll, running } = f;

    describe('heartbeat', () => {
      it('extends only listed running builds it owns, never an ack deadline; lists cancel and abandon', async () => {
        const w = await worker();
        const other = await worker();
        const r1 = await build();
        const r2 = await build();
        const asg = await build();
        await poll(w, 3, [], T0 + 1000);
        await store.startBuild({ buildId: r1.id, attempt: 1 }, T0 + 2000, LEASE);
        await store.startBuild({ buildId: r2.id, attempt: 1 }, T0 + 2000, LEASE);
        await store.cancelBuild(r2.id, T0 + 2500);
        const foreign = await build();
        await poll(other, 1);
        const hb = await store.heartbeat({
          workerId: w.id,
          tokenHash: w.tokenHash,
          now: T0 + 10_000,
          activeBuildIds: [r1.id, asg.id, foreign.id, 'unknown'],
          leaseMs: LEASE,
        });
        expect(hb.cancel).toEqual([r2.id]);
        expect(hb.abandon.sort()).toEqual([foreign.id, 'unknown'].sort());
        expect(hb.draining).toBe(false);
        expect(hb.accessTokenExpiresAt).toBe(T0 + TTL);
        expect((await store.getBuild(r1.id)).leaseExpiresAt).toBe(new Date(T0 + 10_000 + LEASE).toISOString());
        // r2 was not listed: its lease stays.
        expect((await store.getBuild(r2.id)).leaseExpiresAt).toBe(new Date(T0 + 2000 + LEASE).toISOString());
        expect((await store.getBuild(asg.id)).ackDeadline).toBe(new Date(T0 + 1000 + ACK).toISOString());
        expect((await store.getBuild(foreign.id)).leaseExpiresAt).toBeNull();
        expect((await store.getWorker(w.id, T0 + 10_000, LEASE)).lastSeenAt).toBe(new Date(T0 + 10_000).toISOString());
      });
    });

    describe('cancelsRequested', () => {
      it('lists, of the given ids, the running builds this worker holds with a cancel requested', async () => {
        const w = await worker();
        const other = await worker();
        const [canceled, plain, assigned, theirs] = [await build(), await build(), await build(), await build()];
        await poll(w, 3, [], T0 + 1000);
        await poll(other, 1, [], T0 + 1000);
        for (const b of [canceled, plain]) await store.startBuild({ buildId: b.id, attempt: 1 }, T0 + 2000, LEASE);
        await store.startBuild({ buildId: theirs.id, attempt: 1 }, T0 + 2000, LEASE);
        for (const b of [canceled, theirs]) await store.cancelBuild(b.id, T0 + 2500);
        // The assigned one is canceled at once (terminal), never "cancel requested".
        await store.cancelBuild(assigned.id, T0 + 2500);
        const all = [canceled.id, plain.id, assigned.id, theirs.id, 'unknown'];
        expect(await store.cancelsRequested(w.id, all)).toEqual([canceled.id]);
        expect(await store.cancelsRequested(w.id, [plain.id])).toEqual([]);
        expect(await store.cancelsRequested(w.id, [])).toEqual([]);
        expect(await store.cancelsRequested(other.id, all)).toEqual([theirs.id]);
        // The heartbeat's rule: the same ids.
        const hb = await store.heartbeat({ workerId: w.id, tokenHash: w.tokenHash, now: T0 + 3000, activeBuildIds: [], leaseMs: LEASE });
        expect(hb.cancel).toEqual([canceled.id]);
      });
    });

    describe('reap', () => {
      it('requeues an expired assignment as a new attempt, then fails it worker_lost when attempts run out', async () => {
        const w = await worker();
        const b = await build({ maxAttempts: 2 });
        await poll(w, 1, [], T0 + 1000);
        expect(await store.reap({ now: T0 + 1000 + ACK, reapLeases: true })).toMatchObject({ requeued: [] });
        const r1 = await store.reap({ now: T0 + 1000 + ACK + 1, reapLeases: true });
        expect(r1.requeued).toEqual([b.id]);
        const q = await store.getBuild(b.id);
        expect(q).toMatchObject({ state: 'queued', attempt: 2, workerId: null, assignedAt: null });
        expect(q.attempts).toMatchObject([{ attempt: 1, state: 'failed', reason: 'ack_timeout' }]);
        await poll(w, 1, [], T0 + 100_000);
        await store.startBuild({ buildId: b.id, attempt: 2 }, T0 + 100_001, LEASE);
        const r2 = await store.reap({ now: T0 + 100_001 + LEASE + 1, reapLeases: true });
        expect(r2.failed).toEqual([b.id]);
        const f = await store.getBuild(b.id);
        expect(f).toMatchObject({ state: 'failed', reason: 'worker_lost', attempt: 2 });
        expect(f.attempts.map((a) => [a.attempt, a.state, a.reason])).toEqual([
          [1, 'failed', 'ack_timeout'],
          [2, 'failed', 'lease_expired'],
        ]);
      });

      it('ends running builds past their timeout timed_out, also during the restart grace (reapLeases false)', async () => {
        const { b } = await running({ timeoutSeconds: 10 });
        const { b: expired } = await running();
        const graceNow = T0 + 2000 + LEASE + 10_000;
        const res = await store.reap({ now: graceNow, reapLeases: false });
        expect(res).toEqual({ requeued: [], failed: [], canceled: [], timedOut: [b.id] });
        expect(await store.getBuild(b.id)).toMatchObject({ state: 'timed_out', reason: 'timeout' });
        expect((await store.getBuild(expired.id)).state).toBe('running');
        expect((await store.reap({ now: graceNow, reapLeases: true })).requeued).toEqual([expired.id]);
      });
    });
  });
}
