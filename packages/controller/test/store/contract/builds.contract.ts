/** The store contract, slice: Builds: start, finish, cancel, listings (sql/builds.ts). */
import { beforeEach, describe, expect, it } from 'vitest';
import type { Store } from '../../../src/store/types.js';
import { T0, LEASE, expectCode, type StoreFixture } from './fixture.js';

export function buildsContract(f: StoreFixture): void {
  describe('builds', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });
    const { worker, build, poll, running } = f;

    describe('start and finish', () => {
      it('start is idempotent, fenced by attempt, refused after cancel', async () => {
        const w = await worker();
        const b = await build();
        await poll(w);
        await expectCode(store.startBuild({ buildId: 'nope', attempt: 1 }, T0, LEASE), 'BUILD_NOT_FOUND');
        await expectCode(store.startBuild({ buildId: b.id, attempt: 2 }, T0, LEASE), 'LEASE_LOST');
        const { build: s1, changed } = await store.startBuild({ buildId: b.id, attempt: 1 }, T0 + 2000, LEASE);
        expect(changed).toBe(true);
        expect(s1).toMatchObject({ state: 'running', startedAt: new Date(T0 + 2000).toISOString(), ackDeadline: null });
        expect(s1.leaseExpiresAt).toBe(new Date(T0 + 2000 + LEASE).toISOString());
        // The answer is the build as stored, attempts included.
        expect(s1).toEqual(await store.getBuild(b.id));
        const s2 = await store.startBuild({ buildId: b.id, attempt: 1 }, T0 + 3000, LEASE);
        expect(s2.changed).toBe(false);
        expect(s2.build.startedAt).toBe(s1.startedAt);
        const c = await build();
        await poll(w, 1, [b.id]);
        await store.cancelBuild(c.id, T0 + 4000);
        await expectCode(store.startBuild({ buildId: c.id, attempt: 1 }, T0 + 5000, LEASE), 'INVALID_TRANSITION');
      });

      it('finish twice with the same outcome answers the build; another outcome is INVALID_TRANSITION', async () => {
        const { b } = await running();
        const { build: f, changed } = await store.finishBuild({ buildId: b.id, attempt: 1, outcome: 'failed', exitCode: 3, message: 'boom', now: T0 + 9000 });
        expect(changed).toBe(true);
        expect(f).toEqual(await store.getBuild(b.id));
        expect(f).toMatchObject({ state: 'failed', exitCode: 3, reason: 'exit_code', message: 'boom', leaseExpiresAt: null });
        expect(f.attempts).toMatchObject([{ attempt: 1, state: 'failed', exitCode: 3, finishedAt: new Date(T0 + 9000).toISOString() }]);
        const again = await store.finishBuild({ buildId: b.id, attempt: 1, outcome: 'failed', exitCode: 3, message: 'boom', now: T0 + 9999 });
        expect(again.changed).toBe(false);
        expect(again.build.finishedAt).toBe(f.finishedAt);
        await expectCode(store.finishBuild({ buildId: b.id, attempt: 1, outcome: 'succeeded', exitCode: 0, message: null, now: T0 }), 'INVALID_TRANSITION');
        await expectCode(store.finishBuild({ buildId: b.id, attempt: 2, outcome: 'failed', exitCode: 3, message: null, now: T0 }), 'LEASE_LOST');
      });

      it('a later attempt starts and finishes with every attempt in its answer', async () => {
        const { w, b } = await running({ maxAttempts: 2 });
        const lost = await store.reap({ now: T0 + 2000 + LEASE + 1, reapLeases: true });
        expect(lost.requeued).toEqual([b.id]);
        expect((await poll(w, 1, [], T0 + 2000 + LEASE + 1)).map((h) => h.id)).toEqual([b.id]);
        const s = await store.startBuild({ buildId: b.id, attempt: 2 }, T0 + 2000 + LEASE + 2, LEASE);
        expect(s.changed).toBe(true);
        expect(s.build.attempts.map((a) => [a.attempt, a.state])).toEqual([
          [1, 'failed'],
          [2, 'running'],
        ]);
        expect(s.build).toEqual(await store.getBuild(b.id));
        const f = await store.finishBuild({ buildId: b.id, attempt: 2, outcome: 'succeeded', exitCode: 0, message: null, now: T0 + 2000 + LEASE + 3 });
        expect(f.build).toEqual(await store.getBuild(b.id));
        expect(f.build.attempts.map((a) => a.state)).toEqual(['failed', 'succeeded']);
      });

      it('an assigned build cannot succeed without starting', async () => {
        const w = await worker();
        const b = await build();
        await poll(w);
        await expectCode(store.finishBuild({ buildId: b.id, attempt: 1, outcome: 'succeeded', exitCode: 0, message: null, now: T0 }), 'INVALID_TRANSITION');
        expect((await store.getBuild(b.id)).state).toBe('assigned');
      });
    });

    describe('cancel', () => {
      it('queued and assigned builds end canceled at once; a running build gets cancelRequested; terminal is INVALID_TRANSITION', async () => {
        const q = await build();
        const c1 = await store.cancelBuild(q.id, T0 + 1);
        expect(c1).toMatchObject({ state: 'canceled', cancelRequested: true, reason: 'canceled' });
        await expectCode(store.cancelBuild(q.id, T0 + 2), 'INVALID_TRANSITION');
        await expectCode(store.cancelBuild('nope', T0), 'BUILD_NOT_FOUND');

        const w = await worker();
        const a = await build();
        await poll(w);
        const c2 = await store.cancelBuild(a.id, T0 + 3);
        expect(c2.state).toBe('canceled');
        expect(c2.attempts).toMatchObject([{ attempt: 1, state: 'canceled' }]);

        const { w: w2, b: r } = await running();
        const c3 = await store.cancelBuild(r.id, T0 + 4);
        expect(c3).toMatchObject({ state: 'running', cancelRequested: true });
        const hb = await store.heartbeat({ workerId: w2.id, tokenHash: w2.tokenHash, now: T0 + 5, activeBuildIds: [r.id], leaseMs: LEASE });
        expect(hb.cancel).toEqual([r.id]);
        const done = await store.finishBuild({ buildId: r.id, attempt: 1, outcome: 'canceled', exitCode: null, message: null, now: T0 + 6 });
        expect(done.build.state).toBe('canceled');
      });

      it('a running build with cancelRequested whose lease expires ends canceled, never requeued', async () => {
        const { b } = await running({ maxAttempts: 3 });
        await store.cancelBuild(b.id, T0 + 3000);
        const res = await store.reap({ now: T0 + 2000 + LEASE + 1, reapLeases: true });
        expect(res.canceled).toEqual([b.id]);
        expect(await store.getBuild(b.id)).toMatchObject({ state: 'canceled', attempt: 1 });
      });
    });

    describe('listBuilds', () => {
      it('lists newest first with an opaque cursor and filters by state and label', async () => {
        const ids: string[] = [];
        for (let i = 0; i < 7; i++) ids.push((await build({ labels: i % 2 ? ['odd'] : [] })).id);
        const all: string[] = [];
        let cursor: string | undefined;
        for (;;) {
          const page = await store.listBuilds({ limit: 3, cursor });
          all.push(...page.builds.map((b) => b.id));
          if (!page.nextCursor) break;
          cursor = page.nextCursor;
        }
        expect(all).toEqual([...ids].reverse());
        const odd = await store.listBuilds({ limit: 10, label: 'odd' });
        expect(odd.builds.map((b) => b.id)).toEqual([ids[5], ids[3], ids[1]]);
        expect(odd.nextCursor).toBeNull();
        await store.cancelBuild(ids[2]!, T0);
        expect((await store.listBuilds({ limit: 10, state: 'canceled' })).builds.map((b) => b.id)).toEqual([ids[2]]);
        await expectCode(store.listBuilds({ limit: 10, cursor: 'garbage' }), 'VALIDATION_FAILED');
        const one = (await store.listBuilds({ limit: 1 })).builds[0]!;
        expect(one).toMatchObject({ spec: { script: 'true', labels: [], maxAttempts: 2 }, sourceSize: 10, attempts: [] });
        expect(await store.getSourceKey(one.id)).toMatch(/^src\//);
        await expectCode(store.getSourceKey('nope'), 'BUILD_NOT_FOUND');
        await expectCode(store.getBuild('nope'), 'BUILD_NOT_FOUND');
      });
    });
  });
}
