/** The store contract, slice: Workers: registration, re-registration, authentication, admin (sql/workers.ts). */
import { v7 as uuidv7 } from 'uuid';
import { beforeEach, describe, expect, it } from 'vitest';
import type { Store } from '../../../src/store/types.js';
import { T0, TTL, LEASE, ENROLL, sha, expectCode, type StoreFixture } from './fixture.js';

export function workersContract(f: StoreFixture): void {
  describe('workers', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });
    const { worker, build, poll } = f;

    describe('worker registration', () => {
      it('a registrationId retry re-issues credentials for the same worker until its first authenticated call', async () => {
        await store.createEnrollmentToken({ id: 'once', hash: sha('bfe_1'), description: null, expiresAt: null, maxUses: 1, now: T0 });
        const input = (token: string, secret: string) => ({
          enrollmentTokenHash: sha('bfe_1'),
          registrationId: 'reg-1',
          newWorkerId: uuidv7(),
          secretHash: sha(secret),
          accessToken: { hash: sha(token), expiresAt: T0 + TTL },
          name: 'w',
          labels: ['linux'],
          maxConcurrentBuilds: 1,
          version: '1',
          bootId: 'b1',
          now: T0,
        });
        const first = await store.registerNew(input('bfw_a', 'bfs_a'));
        // The single-use enrollment token is used up, yet the retry works: it consumes no use.
        const second = await store.registerNew(input('bfw_b', 'bfs_b'));
        expect(second).toMatchObject({ workerId: first.workerId, created: true });
        // The lost credentials are void.
        await expectCode(store.authenticateWorker({ workerId: first.workerId, tokenHash: sha('bfw_a'), now: T0 }), 'TOKEN_INVALID');
        await expectCode(
          store.reregister({ workerId: first.workerId, secretHash: sha('bfs_a'), accessToken: { hash: sha('x'), expiresAt: T0 + TTL }, name: 'w', labels: [], maxConcurrentBuilds: 1, version: '1', now: T0 }),
          'TOKEN_INVALID',
        );
        await store.authenticateWorker({ workerId: first.workerId, tokenHash: sha('bfw_b'), now: T0 });
        await expectCode(store.registerNew(input('bfw_c', 'bfs_c')), 'INVALID_TRANSITION');
        // Untouched by the refused retry.
        await store.authenticateWorker({ workerId: first.workerId, tokenHash: sha('bfw_b'), now: T0 });
        expect((await store.listWorkers(T0, LEASE)).length).toBe(1);
      });

      it('a registrationId is bound to the enrollment token it was first used with', async () => {
        await store.createEnrollmentToken({ id: 'other', hash: sha('bfe_other'), description: null, expiresAt: null, maxUses: null, now: T0 });
        const input = (tokenHash: string, secret: string) => ({
          enrollmentTokenHash: tokenHash,
          registrationId: 'reg-bound',
          newWorkerId: uuidv7(),
          secretHash: sha(secret),
          accessToken: { hash: sha(`t-${secret}`), expiresAt: T0 + TTL },
          name: 'w',
          labels: [],
          maxConcurrentBuilds: 1,
          version: '1',
          now: T0,
        });
        const first = await store.registerNew(input(sha(ENROLL), 'bfs_1'));
        await expectCode(store.registerNew(input(sha('bfe_other'), 'bfs_2')), 'FORBIDDEN');
        // The pending registration is untouched: its credentials still work, and its own token still retries.
        await store.authenticateWorker({ workerId: first.workerId, tokenHash: sha('t-bfs_1'), now: T0 });
        await expectCode(store.registerNew(input(sha(ENROLL), 'bfs_3')), 'INVALID_TRANSITION');
        expect((await store.listEnrollmentTokens()).find((t) => t.id === 'other')).toMatchObject({ uses: 0 });
      });

      it('checkWorkerSecret and checkEnrollmentToken check without writing', async () => {
        const a = await worker();
        await store.createEnrollmentToken({ id: 'one', hash: sha('bfe_one'), description: null, expiresAt: T0 + 10, maxUses: 1, now: T0 });
        await store.checkEnrollmentToken(sha('bfe_one'), T0);
        await store.checkEnrollmentToken(sha('bfe_one'), T0);
        expect((await store.listEnrollmentTokens()).find((t) => t.id === 'one')).toMatchObject({ uses: 0 });
        await expectCode(store.checkEnrollmentToken(sha('bfe_one'), T0 + 10), 'TOKEN_EXPIRED');
        await expectCode(store.checkEnrollmentToken(sha('bfe_nope'), T0), 'TOKEN_INVALID');
        await expectCode(store.checkEnrollmentToken(undefined, T0), 'TOKEN_INVALID');
        await store.registerNew({ enrollmentTokenHash: sha('bfe_one'), registrationId: 'r-one', newWorkerId: uuidv7(), secretHash: sha('s'), accessToken: { hash: sha('t-one'), expiresAt: T0 + TTL }, name: 'w', labels: [], maxConcurrentBuilds: 1, version: '1', now: T0 });
        await expectCode(store.checkEnrollmentToken(sha('bfe_one'), T0), 'TOKEN_INVALID');
        // Its own pending registration may still be retried (used up and expired or not).
        await store.checkEnrollmentToken(sha('bfe_one'), T0 + 10, 'r-one');
        await expectCode(store.checkEnrollmentToken(sha('bfe_one'), T0, 'r-other'), 'TOKEN_INVALID');
        await store.revokeEnrollmentToken('one', T0);
        await expectCode(store.checkEnrollmentToken(sha('bfe_one'), T0), 'TOKEN_INVALID');
        await store.checkWorkerSecret(a.id, a.secretHash);
        await expectCode(store.checkWorkerSecret('missing', sha('x')), 'WORKER_NOT_FOUND');
        await expectCode(store.checkWorkerSecret(a.id, sha('wrong')), 'TOKEN_INVALID');
      });

      it('concurrent registrations with one registrationId create one worker', async () => {
        const reg = (i: number) =>
          store.registerNew({
            enrollmentTokenHash: sha(ENROLL),
            registrationId: 'same',
            newWorkerId: uuidv7(),
            secretHash: sha(`s${i}`),
            accessToken: { hash: sha(`t${i}`), expiresAt: T0 + TTL },
            name: 'w',
            labels: [],
            maxConcurrentBuilds: 1,
            version: '1',
            now: T0,
          });
        const results = await Promise.all([0, 1, 2, 3, 4].map(reg));
        expect(new Set(results.map((r) => r.workerId)).size).toBe(1);
        expect((await store.listWorkers(T0, LEASE)).length).toBe(1);
      });

      it('authenticateWorker answers in docs/protocol.md order', async () => {
        const a = await worker();
        const b = await worker();
        const auth = (workerId: string, tokenHash: string, now = T0) => store.authenticateWorker({ workerId, tokenHash, now });
        await auth(a.id, a.tokenHash);
        await expectCode(auth('missing', sha('unknown')), 'WORKER_NOT_FOUND');
        await expectCode(auth(a.id, sha('unknown')), 'TOKEN_INVALID');
        await expectCode(auth(a.id, a.tokenHash, T0 + TTL), 'TOKEN_EXPIRED');
        await expectCode(auth(a.id, b.tokenHash), 'FORBIDDEN');
        await store.deleteWorker(a.id, T0);
        // The deleted worker's own token: 404 wins over 401.
        await expectCode(auth(a.id, a.tokenHash), 'WORKER_NOT_FOUND');
      });

      it('reregister rotates the access token and keeps id, status, labels and held builds', async () => {
        const w = await worker({ labels: ['linux'] });
        const b = await build({ labels: ['linux'] });
        await poll(w);
        await store.drainWorker(w.id, T0, LEASE);
        const res = await store.reregister({
          workerId: w.id,
          secretHash: w.secretHash,
          accessToken: { hash: sha('bfw_new'), expiresAt: T0 + 2 * TTL },
          name: 'w',
          labels: ['linux'],
          maxConcurrentBuilds: 4,
          version: '1',
          bootId: 'boot-1',
          activeBuildCount: 1,
          activeBuildIds: [b.id, 'gone'],
          now: T0 + 5000,
        });
        expect(res).toMatchObject({ workerId: w.id, created: false, abandon: ['gone'], lost: [] });
        expect(res.builds.map((h) => [h.id, h.attempt, h.state])).toEqual([[b.id, 1, 'assigned']]);
        await expectCode(store.authenticateWorker({ workerId: w.id, tokenHash: w.tokenHash, now: T0 + 5000 }), 'TOKEN_INVALID');
        await store.authenticateWorker({ workerId: w.id, tokenHash: sha('bfw_new'), now: T0 + 5000 });
        const info = await store.getWorker(w.id, T0 + 5000, LEASE);
        expect(info).toMatchObject({ status: 'draining', labels: ['linux'], activeBuildCount: 1, connected: true });
        expect(info.accessTokenExpiresAt).toBe(new Date(T0 + 2 * TTL).toISOString());
      });

      it('reregister refuses a wrong secret and an unknown worker', async () => {
        const w = await worker();
        const base = { accessToken: { hash: sha('n'), expiresAt: T0 + TTL }, name: 'w', labels: [], maxConcurrentBuilds: 1, version: '1', now: T0 };
        await expectCode(store.reregister({ ...base, workerId: w.id, secretHash: sha('wrong') }), 'TOKEN_INVALID');
        await expectCode(store.reregister({ ...base, workerId: 'nobody', secretHash: w.secretHash }), 'WORKER_NOT_FOUND');
        await store.authenticateWorker({ workerId: w.id, tokenHash: w.tokenHash, now: T0 });
      });

      it('a restart (new bootId) hands unreported running builds to the lost-build policy; a refresh or a missing bootId never does', async () => {
        const w = await worker({ bootId: 'boot-1' });
        const kept = await build();
        const dropped = await build();
        // Assigned, never started: a restart delivers it again and burns no attempt, even its only one.
        const assigned = await build({ maxAttempts: 1 });
        await poll(w, 3);
        await store.startBuild({ buildId: kept.id, attempt: 1 }, T0 + 1500, LEASE);
        await store.startBuild({ buildId: dropped.id, attempt: 1 }, T0 + 1500, LEASE);
        const re = (bootId: string | undefined, activeBuildIds: string[], token: string) =>
          store.reregister({
            workerId: w.id,
            secretHash: w.secretHash,
            accessToken: { hash: sha(token), expiresAt: T0 + TTL },
            name: 'w',
            labels: [],
            maxConcurrentBuilds: 4,
            version: '1',
            bootId,
            activeBuildIds,
            now: T0 + 3000,
          });
        // Same bootId (token refresh) and no bootId (older worker): builds untouched.
        expect((await re('boot-1', [], 't1')).lost).toEqual([]);
        expect((await re(undefined, [], 't2')).lost).toEqual([]);
        expect((await store.getBuild(dropped.id)).state).toBe('running');
        // Restart: only the reported build stays.
        const res = await re('boot-2', [kept.id], 't3');
        expect(res.lost).toEqual([dropped.id]);
        expect(res.builds.map((b) => [b.id, b.state, b.attempt]).sort()).toEqual(
          [
            [kept.id, 'running', 1],
            [assigned.id, 'assigned', 1],
          ].sort(),
        );
        const d = await store.getBuild(dropped.id);
        expect(d).toMatchObject({ state: 'queued', attempt: 2, workerId: null });
        expect(d.attempts).toMatchObject([{ attempt: 1, state: 'failed', reason: 'worker_restarted', workerId: w.id }]);
        const a = await store.getBuild(assigned.id);
        expect(a).toMatchObject({ state: 'assigned', attempt: 1, workerId: w.id });
        expect(a.attempts).toMatchObject([{ attempt: 1, state: 'assigned' }]);
        // The superseded instance is refused; the newest keeps the identity.
        await expectCode(re('boot-1', [], 't4'), 'IDENTITY_CONFLICT');
        await re('boot-2', [kept.id], 't5');
        expect((await store.getBuild(kept.id)).state).toBe('running');
      });
    });

    describe('admin', () => {
      it('deleteWorker loses its held builds at once and later calls get WORKER_NOT_FOUND', async () => {
        const w = await worker();
        const a = await build({ maxAttempts: 1 });
        const b = await build({ maxAttempts: 2 });
        await poll(w, 2);
        await store.startBuild({ buildId: a.id, attempt: 1 }, T0 + 1500, LEASE);
        const res = await store.deleteWorker(w.id, T0 + 2000);
        expect(res.lost.sort()).toEqual([a.id, b.id].sort());
        expect(await store.getBuild(a.id)).toMatchObject({ state: 'failed', reason: 'worker_lost' });
        expect(await store.getBuild(b.id)).toMatchObject({ state: 'queued', attempt: 2 });
        expect((await store.getBuild(b.id)).attempts[0]).toMatchObject({ reason: 'worker_deleted' });
        await expectCode(poll(w), 'WORKER_NOT_FOUND');
        await expectCode(store.heartbeat({ workerId: w.id, tokenHash: w.tokenHash, now: T0, activeBuildIds: [], leaseMs: LEASE }), 'WORKER_NOT_FOUND');
        await expectCode(store.deleteWorker(w.id, T0), 'WORKER_NOT_FOUND');
        await expectCode(store.getWorker(w.id, T0, LEASE), 'WORKER_NOT_FOUND');
        await expectCode(store.drainWorker(w.id, T0, LEASE), 'WORKER_NOT_FOUND');
      });

      it('listWorkers reports connection by last_seen_at within one lease', async () => {
        const w = await worker({ now: T0 });
        await store.authenticateWorker({ workerId: w.id, tokenHash: w.tokenHash, now: T0 + 1000 });
        expect((await store.listWorkers(T0 + 1000 + LEASE, LEASE))[0]).toMatchObject({ id: w.id, connected: true, status: 'active' });
        expect((await store.listWorkers(T0 + 1001 + LEASE, LEASE))[0]).toMatchObject({ connected: false });
      });
    });
  });
}
