/** The store contract, slice: Logs (sql/logs.ts). */
import { beforeEach, describe, expect, it } from 'vitest';
import type { Store } from '../../../src/store/types.js';
import { T0, LEASE, expectCode, type StoreFixture } from './fixture.js';

export function logsContract(f: StoreFixture): void {
  describe('logs', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });
    const { poll, running } = f;

    describe('logs', () => {
      it('appends at the stored offset, stores a repeated seq once, reports the expected offset on mismatch', async () => {
        const { b } = await running();
        const ref = { buildId: b.id, attempt: 1, now: T0 };
        expect(await store.appendLog({ ...ref, seq: 0, offset: 0, data: Buffer.from('hello ') })).toEqual({ offset: 6 });
        expect(await store.appendLog({ ...ref, seq: 0, offset: 0, data: Buffer.from('hello ') })).toEqual({ offset: 6 });
        // A stored seq sent again at the stored count is still the stored chunk, not a new one.
        expect(await store.appendLog({ ...ref, seq: 0, offset: 6, data: Buffer.from('again') })).toEqual({ offset: 6 });
        const err = await expectCode(store.appendLog({ ...ref, seq: 1, offset: 3, data: Buffer.from('x') }), 'OFFSET_MISMATCH');
        expect(err.message).toContain('6');
        expect(await store.appendLog({ ...ref, seq: 1, offset: 6, data: Buffer.from('world') })).toEqual({ offset: 11 });
        expect((await store.readLog(b.id, 1, 0, 1000)).toString()).toBe('hello world');
        expect((await store.readLog(b.id, 1, 4, 4)).toString()).toBe('o wo');
        expect((await store.readLog(b.id, 1, 11, 10)).length).toBe(0);
        expect((await store.readLog(b.id, 2, 0, 10)).length).toBe(0);
        await expectCode(store.readLog('nope', 1, 0, 10), 'BUILD_NOT_FOUND');
      });

      it('concurrent duplicates of one chunk are stored once', async () => {
        const { b } = await running();
        const results = await Promise.allSettled(
          Array.from({ length: 8 }, () => store.appendLog({ buildId: b.id, attempt: 1, now: T0, seq: 0, offset: 0, data: Buffer.from('abc') })),
        );
        expect(results.every((r) => r.status === 'fulfilled' && r.value.offset === 3)).toBe(true);
        expect((await store.readLog(b.id, 1, 0, 100)).toString()).toBe('abc');
      });

      it('refuses writes after finish and from an older attempt', async () => {
        const { w, b } = await running({ maxAttempts: 3 });
        await store.appendLog({ buildId: b.id, attempt: 1, now: T0, seq: 0, offset: 0, data: Buffer.from('a') });
        await store.reap({ now: T0 + 2000 + LEASE + 1, reapLeases: true });
        await expectCode(store.appendLog({ buildId: b.id, attempt: 1, now: T0, seq: 1, offset: 1, data: Buffer.from('b') }), 'LEASE_LOST');
        await expectCode(store.checkWritable({ buildId: b.id, attempt: 1 }), 'LEASE_LOST');
        const [h] = await poll(w, 1, [], T0 + 200_000);
        expect(h).toMatchObject({ id: b.id, attempt: 2 });
        await expectCode(store.checkWritable({ buildId: b.id, attempt: 2 }), 'INVALID_TRANSITION');
        await store.startBuild({ buildId: b.id, attempt: 2 }, T0 + 200_001, LEASE);
        await store.checkWritable({ buildId: b.id, attempt: 2 });
        // Offsets count within the attempt.
        expect(await store.appendLog({ buildId: b.id, attempt: 2, now: T0, seq: 0, offset: 0, data: Buffer.from('zz') })).toEqual({ offset: 2 });
        await store.finishBuild({ buildId: b.id, attempt: 2, outcome: 'succeeded', exitCode: 0, message: null, now: T0 + 200_002 });
        await expectCode(store.appendLog({ buildId: b.id, attempt: 2, now: T0, seq: 1, offset: 2, data: Buffer.from('late') }), 'INVALID_TRANSITION');
        expect((await store.readLog(b.id, 1, 0, 10)).toString()).toBe('a');
        expect((await store.readLog(b.id, 2, 0, 10)).toString()).toBe('zz');
      });
    });
  });
}
