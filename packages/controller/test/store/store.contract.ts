/**
 * The one contract test suite of the store (STYLE.md habit 5), run against
 * SQLite (sqlite.test.ts) and PostgreSQL (postgres.test.ts). Every rule of
 * PROTOCOL.md "Workers" and "Builds" the store owns is checked here, with
 * times passed in explicitly (the store never reads a clock).
 */
import { createHash, randomUUID } from 'node:crypto';
import { v7 as uuidv7 } from 'uuid';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ApiError, normalizeSpec, type BuildSpecInput, type ErrorCode } from '@buildfleet/protocol';
import type { SqlStore, StoreHooks } from '../../src/store/index.js';

/** Opens a store on the suite's (already created) database with the given hooks object. */
export type OpenStore = (hooks: StoreHooks) => Promise<SqlStore>;

const T0 = Date.UTC(2026, 0, 1);
const TTL = 3_600_000;
const ACK = 30_000;
const LEASE = 60_000;

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

async function expectCode(p: Promise<unknown>, code: ErrorCode): Promise<ApiError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).code).toBe(code);
    return err as ApiError;
  }
  throw new Error(`expected ApiError ${code}, got success`);
}

export interface ContractOptions {
  /**
   * Resolves once another connection waits on a row lock (PostgreSQL:
   * pg_stat_activity). Absent on SQLite, where the store's single connection
   * already serialises every transaction.
   */
  waitForLockWaiter?: () => Promise<void>;
}

export function describeStoreContract(name: string, open: OpenStore, options: ContractOptions = {}): void {
  describe(`store contract: ${name}`, () => {
    const hooks: StoreHooks = {};
    let store: SqlStore;
    let clockMs = T0;
    const ENROLL = 'bfe_enroll';

    beforeAll(async () => {
      store = await open(hooks);
      await store.migrate();
    });
    afterAll(async () => {
      await store?.close();
    });
    beforeEach(async () => {
      delete hooks.afterWorkerLock;
      await store.resetForTests();
      await store.ensureEnrollmentToken(sha(ENROLL), 'default', T0);
      clockMs = T0;
    });

    /** A monotonically increasing time for build ids (UUIDv7 sorts by it). */
    const tick = () => (clockMs += 1);

    async function worker(opts: { labels?: string[]; name?: string; bootId?: string; now?: number } = {}) {
      const token = `bfw_${randomUUID()}`;
      const secret = `bfs_${randomUUID()}`;
      const res = await store.registerNew({
        enrollmentTokenHash: sha(ENROLL),
        newWorkerId: uuidv7(),
        secretHash: sha(secret),
        accessToken: { hash: sha(token), expiresAt: (opts.now ?? T0) + TTL },
        name: opts.name ?? 'w',
        labels: opts.labels ?? [],
        maxConcurrentBuilds: 4,
        version: '1',
        bootId: opts.bootId ?? 'boot-1',
        now: opts.now ?? T0,
      });
      return { id: res.workerId, tokenHash: sha(token), secretHash: sha(secret) };
    }

    async function build(spec: Partial<BuildSpecInput> = {}, now = tick()) {
      return store.createBuild({
        id: uuidv7({ msecs: now }),
        spec: normalizeSpec({ script: 'true', ...spec }),
        sourceKey: `src/${now}`,
        sourceSize: 10,
        sourceSha256: sha('src'),
        now,
      });
    }

    const poll = (w: { id: string; tokenHash: string }, freeSlots = 1, activeBuildIds: string[] = [], now = T0 + 1000) =>
      store.poll({ workerId: w.id, tokenHash: w.tokenHash, now, freeSlots, activeBuildIds, ackTimeoutMs: ACK });

    /** A build assigned to and started by a fresh worker. */
    async function running(spec: Partial<BuildSpecInput> = {}) {
      const w = await worker();
      const b = await build(spec);
      const [held] = await poll(w);
      expect(held?.id).toBe(b.id);
      await store.startBuild({ buildId: b.id, attempt: 1 }, T0 + 2000, LEASE);
      return { w, b };
    }

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

      it('authenticateWorker answers in PROTOCOL.md order', async () => {
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

      it('a restart (new bootId) hands unreported held builds to the lost-build policy; a refresh or a missing bootId never does', async () => {
        const w = await worker({ bootId: 'boot-1' });
        const kept = await build();
        const dropped = await build();
        const assigned = await build();
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
        expect(res.lost.sort()).toEqual([dropped.id, assigned.id].sort());
        expect(res.builds.map((b) => b.id)).toEqual([kept.id]);
        const d = await store.getBuild(dropped.id);
        expect(d).toMatchObject({ state: 'queued', attempt: 2, workerId: null });
        expect(d.attempts).toMatchObject([{ attempt: 1, state: 'failed', reason: 'worker_restarted', workerId: w.id }]);
        expect((await store.getBuild(assigned.id)).state).toBe('queued');
        // The superseded instance is refused; the newest keeps the identity.
        await expectCode(re('boot-1', [], 't4'), 'IDENTITY_CONFLICT');
        await re('boot-2', [kept.id], 't5');
        expect((await store.getBuild(kept.id)).state).toBe('running');
      });
    });

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
        hooks.afterWorkerLock = async (op) => {
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
        await options.waitForLockWaiter?.();
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

    describe('start and finish', () => {
      it('start is idempotent, fenced by attempt, refused after cancel', async () => {
        const w = await worker();
        const b = await build();
        await poll(w);
        await expectCode(store.startBuild({ buildId: 'nope', attempt: 1 }, T0, LEASE), 'BUILD_NOT_FOUND');
        await expectCode(store.startBuild({ buildId: b.id, attempt: 2 }, T0, LEASE), 'LEASE_LOST');
        const s1 = await store.startBuild({ buildId: b.id, attempt: 1 }, T0 + 2000, LEASE);
        expect(s1).toMatchObject({ state: 'running', startedAt: new Date(T0 + 2000).toISOString(), ackDeadline: null });
        expect(s1.leaseExpiresAt).toBe(new Date(T0 + 2000 + LEASE).toISOString());
        const s2 = await store.startBuild({ buildId: b.id, attempt: 1 }, T0 + 3000, LEASE);
        expect(s2.startedAt).toBe(s1.startedAt);
        const c = await build();
        await poll(w, 1, [b.id]);
        await store.cancelBuild(c.id, T0 + 4000);
        await expectCode(store.startBuild({ buildId: c.id, attempt: 1 }, T0 + 5000, LEASE), 'INVALID_TRANSITION');
      });

      it('finish twice with the same outcome answers the build; another outcome is INVALID_TRANSITION', async () => {
        const { b } = await running();
        const f = await store.finishBuild({ buildId: b.id, attempt: 1, outcome: 'failed', exitCode: 3, message: 'boom', now: T0 + 9000 });
        expect(f).toMatchObject({ state: 'failed', exitCode: 3, reason: 'exit_code', message: 'boom', leaseExpiresAt: null });
        expect(f.attempts).toMatchObject([{ attempt: 1, state: 'failed', exitCode: 3, finishedAt: new Date(T0 + 9000).toISOString() }]);
        const again = await store.finishBuild({ buildId: b.id, attempt: 1, outcome: 'failed', exitCode: 3, message: 'boom', now: T0 + 9999 });
        expect(again.finishedAt).toBe(f.finishedAt);
        await expectCode(store.finishBuild({ buildId: b.id, attempt: 1, outcome: 'succeeded', exitCode: 0, message: null, now: T0 }), 'INVALID_TRANSITION');
        await expectCode(store.finishBuild({ buildId: b.id, attempt: 2, outcome: 'failed', exitCode: 3, message: null, now: T0 }), 'LEASE_LOST');
      });

      it('an assigned build cannot succeed without starting', async () => {
        const w = await worker();
        const b = await build();
        await poll(w);
        await expectCode(store.finishBuild({ buildId: b.id, attempt: 1, outcome: 'succeeded', exitCode: 0, message: null, now: T0 }), 'INVALID_TRANSITION');
        expect((await store.getBuild(b.id)).state).toBe('assigned');
      });
    });

    describe('logs', () => {
      it('appends at the stored offset, stores a repeated seq once, reports the expected offset on mismatch', async () => {
        const { b } = await running();
        const ref = { buildId: b.id, attempt: 1, now: T0 };
        expect(await store.appendLog({ ...ref, seq: 0, offset: 0, data: Buffer.from('hello ') })).toEqual({ offset: 6 });
        expect(await store.appendLog({ ...ref, seq: 0, offset: 0, data: Buffer.from('hello ') })).toEqual({ offset: 6 });
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
        expect(done.state).toBe('canceled');
      });

      it('a running build with cancelRequested whose lease expires ends canceled, never requeued', async () => {
        const { b } = await running({ maxAttempts: 3 });
        await store.cancelBuild(b.id, T0 + 3000);
        const res = await store.reap({ now: T0 + 2000 + LEASE + 1, reapLeases: true });
        expect(res.canceled).toEqual([b.id]);
        expect(await store.getBuild(b.id)).toMatchObject({ state: 'canceled', attempt: 1 });
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
