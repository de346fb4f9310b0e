/** The store contract, slice: Artifacts (sql/artifacts.ts). */
import { beforeEach, describe, expect, it } from 'vitest';
import type { Store } from '../../../src/store/types.js';
import { T0, LEASE, sha, expectCode, type StoreFixture } from './fixture.js';

export function artifactsContract(f: StoreFixture): void {
  describe('artifacts', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });
    const { poll, running } = f;

    describe('artifacts', () => {
      it('belong to the attempt; same name and checksum again is not created; the finishing attempt lists them', async () => {
        const { w, b } = await running({ maxAttempts: 2 });
        const art = (attempt: number, name: string, content: string) =>
          store.recordArtifact({ buildId: b.id, attempt, name, size: content.length, sha256: sha(content), blobKey: `k/${attempt}/${name}`, now: T0 });
        expect(await art(1, 'lost.txt', 'x')).toEqual({ created: true });
        expect(await art(1, 'lost.txt', 'x')).toEqual({ created: false });
        await store.reap({ now: T0 + 2000 + LEASE + 1, reapLeases: true });
        await expectCode(art(1, 'late.txt', 'y'), 'LEASE_LOST');
        await poll(w, 1, [], T0 + 300_000);
        await store.startBuild({ buildId: b.id, attempt: 2 }, T0 + 300_001, LEASE);
        expect(await art(2, 'out/a.bin', 'aaa')).toEqual({ created: true });
        expect((await store.listArtifacts(b.id)).map((a) => [a.name, a.attempt, a.size])).toEqual([['out/a.bin', 2, 3]]);
        await store.finishBuild({ buildId: b.id, attempt: 2, outcome: 'succeeded', exitCode: 0, message: null, now: T0 + 300_002 });
        await expectCode(art(2, 'after.txt', 'z'), 'INVALID_TRANSITION');
        const got = await store.getArtifact(b.id, 'out/a.bin');
        expect(got).toMatchObject({ sha256: sha('aaa'), blobKey: 'k/2/out/a.bin', attempt: 2 });
        await expectCode(store.getArtifact(b.id, 'lost.txt'), 'ARTIFACT_NOT_FOUND');
        await expectCode(store.listArtifacts('nope'), 'BUILD_NOT_FOUND');
      });

      it('concurrent records of one artifact create it once', async () => {
        const { b } = await running();
        const results = await Promise.all(
          Array.from({ length: 6 }, () =>
            store.recordArtifact({ buildId: b.id, attempt: 1, name: 'a', size: 1, sha256: sha('a'), blobKey: 'k', now: T0 }),
          ),
        );
        expect(results.filter((r) => r.created).length).toBe(1);
      });
    });
  });
}
