/** The store contract, slice: Claims: poll, re-delivery and the one-statement claim (sql/claims.ts). */
import { beforeEach, describe, expect, it } from 'vitest';
import { ISOLATION_LABEL } from '@buildfleet/protocol';
import type { Store } from '../../../src/store/types.js';
import { T0, TTL, ACK, LEASE, sha, expectCode, type StoreFixture } from './fixture.js';

export function claimsContract(f: StoreFixture): void {
  describe('claims', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });
    const { worker, build, poll } = f;

    describe('poll (claims and re-delivery)', () => {
      it('freeSlots 0 claims nothing but still authenticates', async () => {
        const w = await worker();
        await build();
        expect(await poll(w, 0)).toEqual([]);
        await expectCode(store.poll({ workerId: w.id, tokenHash: sha('x'), now: T0, freeSlots: 0, activeBuildIds: [], ackTimeoutMs: ACK }), 'TOKEN_INVALID');
        expect(await store.hasQueuedBuilds()).toBe(true);
      });

      it('claims higher priority first, then oldest, only builds whose labels are a subset of the worker labels', async () => {
        const w = await worker({ labels: ['linux', 'x64'] });
        const old = await build({ labels: ['linux'] });
        const gpu = await build({ labels: ['linux', 'gpu'] });
        const urgent = await build({ priority: 5, labels: ['x64', 'linux'] });
        const plain = await build();
        const held = await poll(w, 10, [], T0 + 1000);
        expect(held.map((h) => h.id)).toEqual([urgent.id, old.id, plain.id]);
        expect(held.every((h) => h.attempt === 1 && h.state === 'assigned' && h.ackDeadline === T0 + 1000 + ACK)).toBe(true);
        const g = await store.getBuild(gpu.id);
        expect(g.state).toBe('queued');
        const u = await store.getBuild(urgent.id);
        expect(u).toMatchObject({ state: 'assigned', workerId: w.id, attempt: 1, assignedAt: new Date(T0 + 1000).toISOString() });
        expect(u.attempts).toMatchObject([{ attempt: 1, state: 'assigned', workerId: w.id }]);
      });

      it('a build requiring isolation is never claimed by a shell worker, even one whose operator typed the label', async () => {
        const shell = await worker({ labels: ['linux', ISOLATION_LABEL], executor: 'shell' });
        const old = await worker({ labels: [ISOLATION_LABEL] });
        const sandbox = await worker({ labels: ['linux'], executor: 'sandbox' });
        expect((await store.getWorker(shell.id, T0, LEASE)).labels).toEqual(['linux']);
        expect((await store.getWorker(sandbox.id, T0, LEASE)).labels).toEqual([ISOLATION_LABEL, 'linux'].sort());
        const isolated = await build({ isolation: 'sandbox', labels: ['linux'] });
        const byLabel = await build({ labels: [ISOLATION_LABEL] });
        const plain = await build({ labels: ['linux'] });
        expect(isolated.spec.labels).toContain(ISOLATION_LABEL);
        expect(byLabel.spec.isolation).toBe('sandbox');
        expect((await poll(shell, 10)).map((h) => h.id)).toEqual([plain.id]);
        expect(await poll(old, 10)).toEqual([]);
        expect((await poll(sandbox, 10)).map((h) => h.id).sort()).toEqual([isolated.id, byLabel.id].sort());
      });

      it('re-delivers unstarted assignments first with the original ack deadline, at most freeSlots in all', async () => {
        const w = await worker();
        const a = await build();
        const b = await build();
        const c = await build();
        expect((await poll(w, 1, [], T0 + 1000)).map((h) => h.id)).toEqual([a.id]);
        // The answer was lost: the next poll gets `a` again with its deadline, plus one new build.
        const again = await poll(w, 2, [], T0 + 5000);
        expect(again.map((h) => [h.id, h.ackDeadline])).toEqual([
          [a.id, T0 + 1000 + ACK],
          [b.id, T0 + 5000 + ACK],
        ]);
        // Builds the worker reports as active are not re-delivered.
        expect((await poll(w, 1, [a.id, b.id], T0 + 6000)).map((h) => h.id)).toEqual([c.id]);
      });

      it('never holds more than the worker\'s maxConcurrentBuilds, whatever freeSlots says', async () => {
        const w = await worker({ maxConcurrentBuilds: 2 });
        const [a, b] = [await build(), await build(), await build(), await build()];
        expect((await poll(w, 5, [], T0 + 1000)).map((h) => h.id)).toEqual([a!.id, b!.id]);
        // Both answers lost: only the re-deliveries, nothing new.
        expect((await poll(w, 5, [], T0 + 2000)).map((h) => h.id)).toEqual([a!.id, b!.id]);
        await store.startBuild({ buildId: a!.id, attempt: 1 }, T0 + 3000, LEASE);
        expect(await poll(w, 3, [a!.id, b!.id], T0 + 4000)).toEqual([]);
        await store.finishBuild({ buildId: a!.id, attempt: 1, outcome: 'succeeded', exitCode: 0, message: null, now: T0 + 5000 });
        expect(await poll(w, 3, [b!.id], T0 + 6000)).toHaveLength(1);
        expect((await store.listWorkers(T0 + 6000, LEASE))[0]!.activeBuildCount).toBe(2);
      });

      it('a draining worker gets only re-deliveries', async () => {
        const w = await worker();
        const a = await build();
        await poll(w);
        await build();
        await store.drainWorker(w.id, T0, LEASE);
        expect((await poll(w, 5)).map((h) => h.id)).toEqual([a.id]);
        expect(await poll(w, 5, [a.id])).toEqual([]);
        const hb = await store.heartbeat({ workerId: w.id, tokenHash: w.tokenHash, now: T0, activeBuildIds: [], leaseMs: LEASE });
        expect(hb.draining).toBe(true);
      });

      it('20 concurrent polls for 20 queued builds: each build has exactly one assignee', async () => {
        const workers = await Promise.all(Array.from({ length: 20 }, () => worker()));
        const builds = [];
        for (let i = 0; i < 20; i++) builds.push(await build());
        const results = await Promise.all(workers.map((w) => poll(w, 3)));
        const claimed = results.flat().map((h) => h.id);
        expect(claimed.length).toBe(20);
        expect(new Set(claimed).size).toBe(20);
        for (const [i, held] of results.entries()) {
          for (const h of held) expect((await store.getBuild(h.id)).workerId).toBe(workers[i]!.id);
        }
        expect(await store.hasQueuedBuilds()).toBe(false);
      });

      it('a reregister holding the worker lock blocks a poll for that worker until it commits', async () => {
        const w = await worker();
        let release!: () => void;
        const gate = new Promise<void>((r) => (release = r));
        let reached!: () => void;
        const locked = new Promise<void>((r) => (reached = r));
        const order: string[] = [];
        f.hooks.afterWorkerLock = async (op) => {
          order.push(op);
          if (op === 'reregister') {
            reached();
            await gate;
          }
        };
        const re = store.reregister({
          workerId: w.id,
          secretHash: w.secretHash,
          accessToken: { hash: sha('bfw_rotated'), expiresAt: T0 + TTL },
          name: 'w',
          labels: [],
          maxConcurrentBuilds: 4,
          version: '1',
          bootId: 'boot-1',
          now: T0,
        });
        await locked;
        // Queued while the lock is held; the poll below must wait, then see the rotated token and the build.
        const queued = build();
        let pollSettled = false;
        const p = store
          .poll({ workerId: w.id, tokenHash: sha('bfw_rotated'), now: T0 + 100, freeSlots: 1, activeBuildIds: [], ackTimeoutMs: ACK })
          .finally(() => (pollSettled = true));
        await f.options.waitForLockWaiter?.();
        expect(pollSettled).toBe(false);
        expect(order).toEqual(['reregister']);
        release();
        await re;
        const b = await queued;
        const held = await p;
        expect(order).toEqual(['reregister', 'poll']);
        expect(held.map((h) => h.id)).toEqual([b.id]);
      });
    });
  });
}
