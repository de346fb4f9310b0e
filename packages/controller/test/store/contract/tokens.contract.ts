/** The store contract, slice: Tokens and settings (sql/tokens.ts). */
import { randomUUID } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import { beforeEach, describe, expect, it } from 'vitest';
import type { Store } from '../../../src/store/types.js';
import { T0, TTL, sha, expectCode, type StoreFixture } from './fixture.js';

export function tokensContract(f: StoreFixture): void {
  describe('tokens and settings', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });

    describe('schema and settings', () => {
      it('migrate is idempotent and ping answers', async () => {
        await store.migrate();
        await store.ping();
      });
      it('getOrCreateSecret creates once and returns the same value afterwards', async () => {
        const a = await store.getOrCreateSecret('k', () => 'first');
        const b = await store.getOrCreateSecret('k', () => 'second');
        expect([a, b]).toEqual(['first', 'first']);
      });
    });

    describe('API and enrollment tokens', () => {
      it('ensureApiToken is idempotent', async () => {
        expect(await store.isApiToken(sha('bfa_x'))).toBe(false);
        await store.ensureApiToken(sha('bfa_x'), 'cli', T0);
        await store.ensureApiToken(sha('bfa_x'), 'cli', T0);
        expect(await store.isApiToken(sha('bfa_x'))).toBe(true);
        expect(await store.countApiTokens()).toBe(1);
      });

      it('enforces use counts, expiry and revocation of enrollment tokens', async () => {
        const once = await store.createEnrollmentToken({ id: 'e1', hash: sha('bfe_once'), description: 'd', expiresAt: null, maxUses: 1, now: T0 });
        expect(once).toMatchObject({ id: 'e1', uses: 0, maxUses: 1, revoked: false, expiresAt: null });
        await store.createEnrollmentToken({ id: 'e2', hash: sha('bfe_exp'), description: null, expiresAt: T0 + 10, maxUses: null, now: T0 });
        const reg = (hash: string | undefined, now = T0) =>
          store.registerNew({
            enrollmentTokenHash: hash,
            newWorkerId: uuidv7(),
            secretHash: sha(randomUUID()),
            accessToken: { hash: sha(randomUUID()), expiresAt: now + TTL },
            name: 'w',
            labels: [],
            maxConcurrentBuilds: 1,
            version: '1',
            now,
          });
        expect((await reg(sha('bfe_once'))).created).toBe(true);
        await expectCode(reg(sha('bfe_once')), 'TOKEN_INVALID');
        await reg(sha('bfe_exp'), T0 + 9);
        await expectCode(reg(sha('bfe_exp'), T0 + 10), 'TOKEN_EXPIRED');
        await expectCode(reg(sha('bfe_unknown')), 'TOKEN_INVALID');
        await expectCode(reg(undefined), 'TOKEN_INVALID');
        await store.revokeEnrollmentToken('e2', T0 + 1);
        await expectCode(reg(sha('bfe_exp'), T0 + 5), 'TOKEN_INVALID');
        await expectCode(store.revokeEnrollmentToken('nope', T0), 'NOT_FOUND');
        const list = await store.listEnrollmentTokens();
        expect(list.find((t) => t.id === 'e1')).toMatchObject({ uses: 1 });
        expect(list.find((t) => t.id === 'e2')).toMatchObject({ uses: 1, revoked: true });
      });
    });
  });
}
