/** The store contract, slices of issue 13: secrets (sql/secrets.ts), caches (sql/caches.ts), concurrency groups (sql/claims.ts, sql/builds.ts), workers that leave (sql/workers.ts). */
import { beforeEach, describe, expect, it } from 'vitest';
import type { Store } from '../../../src/store/types.js';
import { T0, LEASE, sha, expectCode, type StoreFixture } from './fixture.js';

export function featuresContract(f: StoreFixture): void {
  describe('secrets', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });

    it('keeps sealed values and scopes; lists, gets and deletes without values', async () => {
      expect(await store.putSecret({ name: 'NPM_TOKEN', sealed: 'v1.a.b', scope: { metadata: { repo: 'acme/app' } }, now: T0 })).toMatchObject({
        created: true,
        secret: { name: 'NPM_TOKEN', scope: { metadata: { repo: 'acme/app' } } },
      });
      const replaced = await store.putSecret({ name: 'NPM_TOKEN', sealed: 'v1.c.d', scope: {}, now: T0 + 5 });
      expect(replaced.created).toBe(false);
      expect(replaced.secret).toMatchObject({ createdAt: new Date(T0).toISOString(), updatedAt: new Date(T0 + 5).toISOString(), scope: {} });
      await store.putSecret({ name: 'A_KEY', sealed: 'v1.e.f', scope: { labels: ['linux'] }, now: T0 });
      expect((await store.listSecrets()).map((s) => s.name)).toEqual(['A_KEY', 'NPM_TOKEN']);
      expect(JSON.stringify(await store.listSecrets())).not.toContain('v1.');
      expect(await store.sealedSecrets(['NPM_TOKEN', 'NOPE'])).toEqual([{ name: 'NPM_TOKEN', sealed: 'v1.c.d', scope: {} }]);
      await store.deleteSecret('A_KEY');
      await expectCode(store.getSecret('A_KEY'), 'NOT_FOUND');
      await expectCode(store.deleteSecret('A_KEY'), 'NOT_FOUND');
    });

    it('records hand-outs only for the current running attempt, once each', async () => {
      const { b } = await f.running({ maxAttempts: 2 });
      const ref = { buildId: b.id, attempt: 1 };
      await store.recordHandouts(ref, ['NPM_TOKEN'], T0 + 3000);
      await store.recordHandouts(ref, ['NPM_TOKEN'], T0 + 4000);
      expect(await store.listHandouts('NPM_TOKEN', 10)).toEqual([
        { buildId: b.id, attempt: 1, name: 'NPM_TOKEN', handedOutAt: new Date(T0 + 3000).toISOString() },
      ]);
      await store.reap({ now: T0 + 2000 + LEASE + 1, reapLeases: true });
      await expectCode(store.recordHandouts(ref, ['NPM_TOKEN'], T0 + 5000), 'LEASE_LOST');
      const queued = await f.build();
      await expectCode(store.recordHandouts({ buildId: queued.id, attempt: 1 }, ['X'], T0), 'INVALID_TRANSITION');
      await expectCode(store.recordHandouts({ buildId: 'nope', attempt: 1 }, ['X'], T0), 'BUILD_NOT_FOUND');
    });

    it('rejects a build before it runs: queued or running → failed with reason and message', async () => {
      const queued = await f.build();
      const failed = await store.rejectBuild({ buildId: queued.id, attempt: 1 }, 'secret_unavailable', 'secret X does not exist', T0 + 1);
      expect(failed).toMatchObject({ state: 'failed', reason: 'secret_unavailable', message: 'secret X does not exist' });
      await expectCode(store.rejectBuild({ buildId: queued.id, attempt: 1 }, 'secret_unavailable', 'again', T0 + 2), 'INVALID_TRANSITION');
      const { b } = await f.running();
      const r = await store.rejectBuild({ buildId: b.id, attempt: 1 }, 'secret_unavailable', 'scope', T0 + 3000);
      expect(r.attempts[0]).toMatchObject({ state: 'failed', reason: 'secret_unavailable' });
      await expectCode(store.rejectBuild({ buildId: b.id, attempt: 2 }, 'secret_unavailable', 'x', T0), 'LEASE_LOST');
    });
  });

  describe('caches', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });
    const entry = (id: string, key: string, size: number, now: number, scope = 'repo=a') => ({
      id,
      scope,
      key,
      sha256: sha(id),
      size,
      blobKey: `caches/${sha(id)}`,
      now,
    });

    it('finds the exact key first, else the newest entry of the first restore prefix that has one, only within its scope', async () => {
      const { b } = await f.running();
      const ref = { buildId: b.id, attempt: 1 };
      await store.saveCache(ref, entry('e1', 'npm-linux-aaa', 10, T0));
      await store.saveCache(ref, entry('e2', 'npm-linux-bbb', 10, T0 + 10));
      await store.saveCache(ref, entry('e3', 'npm-linux-ccc', 10, T0 + 5, 'repo=b'));
      const look = (key: string, restoreKeys: string[], scope = 'repo=a') => store.lookupCache({ scope, key, restoreKeys, now: T0 + 100 });
      expect(await look('npm-linux-aaa', ['npm-linux-'])).toMatchObject({ exact: true, entry: { id: 'e1' } });
      expect(await look('npm-linux-zzz', ['npm-mac-', 'npm-linux-'])).toMatchObject({ exact: false, entry: { id: 'e2' } });
      expect(await look('npm-linux-zzz', ['npm-linux-'], 'repo=b')).toMatchObject({ entry: { id: 'e3' } });
      expect(await look('npm-linux-zzz', ['npm-mac-'])).toBeUndefined();
      expect(await look('npm-linux-aaa', [], '')).toBeUndefined();
      expect(await store.findCacheArchive('repo=a', sha('e3'), T0)).toBeUndefined();
      expect(await store.findCacheArchive('repo=b', sha('e3'), T0)).toMatchObject({ id: 'e3' });
    });

    it('never changes an entry: a second save of a key keeps the first; only a running current attempt saves', async () => {
      const { b } = await f.running({ maxAttempts: 2 });
      const ref = { buildId: b.id, attempt: 1 };
      expect((await store.saveCache(ref, entry('e1', 'k', 10, T0))).created).toBe(true);
      const again = await store.saveCache(ref, entry('e2', 'k', 99, T0 + 1));
      expect(again).toMatchObject({ created: false, entry: { id: 'e1', size: 10 } });
      await store.reap({ now: T0 + 2000 + LEASE + 1, reapLeases: true });
      await expectCode(store.saveCache(ref, entry('e3', 'k2', 1, T0)), 'LEASE_LOST');
    });

    it('evicts the least recently used entries past the budget and names archives nobody uses any more', async () => {
      const { b } = await f.running();
      const ref = { buildId: b.id, attempt: 1 };
      await store.saveCache(ref, entry('old', 'k1', 40, T0));
      await store.saveCache(ref, entry('mid', 'k2', 40, T0 + 10));
      await store.saveCache(ref, { ...entry('shared', 'k3', 40, T0 + 20), blobKey: `caches/${sha('mid')}` });
      await store.lookupCache({ scope: 'repo=a', key: 'k1', restoreKeys: [], now: T0 + 30 }); // old is now the most recent
      const { evicted, orphanBlobKeys } = await store.evictCaches(90);
      expect(evicted.map((e) => e.id)).toEqual(['mid']);
      expect(orphanBlobKeys).toEqual([]); // 'shared' still names mid's archive
      const list = await store.listCaches();
      expect(list.entries.map((e) => e.id)).toEqual(['old', 'shared']);
      expect(list.totalBytes).toBe(80);
      expect(await store.deleteCache('shared')).toEqual({ orphanBlobKey: `caches/${sha('mid')}` });
      await expectCode(store.deleteCache('shared'), 'NOT_FOUND');
    });
  });

  describe('concurrency groups', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });

    it('assigns at most `limit` builds of a group at once, oldest first, and the next when one ends', async () => {
      const w = await f.worker({ maxConcurrentBuilds: 10 });
      const group = { concurrency: { group: 'deploy' } };
      const b1 = await f.build(group);
      const b2 = await f.build({ ...group, priority: 100 });
      const b3 = await f.build(group);
      const free = await f.build();
      const first = await f.poll(w, 10);
      expect(first.map((h) => h.id).sort()).toEqual([b1.id, free.id].sort());
      expect(await f.poll(w, 10, first.map((h) => h.id))).toEqual([]);
      await store.startBuild({ buildId: b1.id, attempt: 1 }, T0 + 2000, LEASE);
      await store.finishBuild({ buildId: b1.id, attempt: 1, outcome: 'succeeded', exitCode: 0, message: null, now: T0 + 3000 });
      expect((await f.poll(w, 10, [free.id])).map((h) => h.id)).toEqual([b2.id]);
      await store.cancelBuild(b2.id, T0 + 4000);
      expect((await f.poll(w, 10, [free.id])).map((h) => h.id)).toEqual([b3.id]);
    });

    it('honours a larger limit and keeps other groups apart', async () => {
      const w = await f.worker({ maxConcurrentBuilds: 10 });
      const a = [];
      for (let i = 0; i < 4; i++) a.push(await f.build({ concurrency: { group: 'a', limit: 2 } }));
      const other = await f.build({ concurrency: { group: 'b' } });
      const got = await f.poll(w, 10);
      expect(got.map((h) => h.id).sort()).toEqual([a[0]!.id, a[1]!.id, other.id].sort());
    });

    it('cancelInProgress cancels the older builds of the group that have not ended', async () => {
      const w = await f.worker({ maxConcurrentBuilds: 10 });
      const spec = { concurrency: { group: 'g', cancelInProgress: true } };
      const running = await f.build(spec);
      await f.poll(w, 1);
      await store.startBuild({ buildId: running.id, attempt: 1 }, T0 + 2000, LEASE);
      const queued = await f.build(spec);
      const newest = await f.build(spec);
      const otherGroup = await f.build({ concurrency: { group: 'h' } });
      const changed = await store.cancelOlderInGroup('g', newest.id, T0 + 3000);
      expect(changed.map((b) => [b.id, b.state, b.cancelRequested]).sort()).toEqual(
        [
          [running.id, 'running', true],
          [queued.id, 'canceled', true],
        ].sort(),
      );
      expect((await store.getBuild(newest.id)).state).toBe('queued');
      expect((await store.getBuild(otherGroup.id)).state).toBe('queued');
    });
  });

  describe('workers that leave', () => {
    it('a worker that holds no build deregisters and is gone; one that holds builds is told which', async () => {
      const store = f.store;
      const w = await f.worker();
      const b = await f.build();
      await f.poll(w);
      const err = await expectCode(store.deregisterWorker({ workerId: w.id, tokenHash: w.tokenHash, now: T0 + 2000 }), 'INVALID_TRANSITION');
      expect(err.message).toContain(b.id);
      await store.startBuild({ buildId: b.id, attempt: 1 }, T0 + 2000, LEASE);
      await store.finishBuild({ buildId: b.id, attempt: 1, outcome: 'succeeded', exitCode: 0, message: null, now: T0 + 3000 });
      await expectCode(store.deregisterWorker({ workerId: w.id, tokenHash: sha('wrong'), now: T0 + 4000 }), 'TOKEN_INVALID');
      await store.deregisterWorker({ workerId: w.id, tokenHash: w.tokenHash, now: T0 + 4000 });
      await expectCode(store.getWorker(w.id, T0 + 4000, LEASE), 'WORKER_NOT_FOUND');
      expect(await store.listWorkers(T0 + 4000, LEASE)).toEqual([]);
    });
  });
}
