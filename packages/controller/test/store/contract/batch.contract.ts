/**
 * The store contract, slice: batch state changes (sql/batch-transitions.ts)
 * — the reaper, a worker deletion and a worker restart. Each takes a bounded
 * number of statements whatever the number of builds, and leaves every build
 * exactly as `transition()` applied row by row would (the old loop's
 * behaviour), outbox rows included.
 */
import fc from 'fast-check';
import { randomUUID } from 'node:crypto';
import { beforeEach, describe, expect, it } from 'vitest';
import type { Build } from '@buildfleet/protocol';
import { transition, type BuildEvent, type LostReason, type TransitionResult } from '../../../src/domain/transition.js';
import type { Store } from '../../../src/store/types.js';
import { T0, TTL, ACK, LEASE, ENROLL, sha, type StoreFixture, type TestWorker } from './fixture.js';

/** How one build of a scenario is set up before the batch change. */
interface BuildPlan {
  maxAttempts: number;
  /** Lost once before (attempt 2 when it runs again). */
  lostBefore: boolean;
  stage: 'queued' | 'assigned' | 'running' | 'cancelRequested' | 'finished';
  /** A short timeout (30 s), so a reaper round may also time it out. */
  shortTimeout: boolean;
}

/** The batch change under test. */
type BatchOp = { kind: 'reap'; at: number } | { kind: 'delete' } | { kind: 'restart'; reported: boolean[] };

const POLLED = T0 + 1000;
const STARTED = T0 + 2000;
const OP_AT = T0 + 3000;

/** Sets up `plans` on a fresh worker `w` (maxConcurrentBuilds = the number of plans); resolves the build ids in plan order. */
async function setUp(f: StoreFixture, w: TestWorker, plans: readonly BuildPlan[]): Promise<string[]> {
  const store = f.store;
  // Builds to lose once are created first: a throwaway worker claims exactly them (oldest first), then is deleted.
  const order = plans.map((p, i) => ({ p, i })).sort((a, b) => Number(b.p.lostBefore) - Number(a.p.lostBefore));
  const ids: string[] = new Array<string>(plans.length);
  for (const { p, i } of order) {
    const b = await f.build({
      maxAttempts: p.lostBefore ? Math.max(2, p.maxAttempts) : p.maxAttempts,
      // A build meant to stay queued asks for a label no worker has.
      labels: p.stage === 'queued' ? ['nobody'] : [],
      timeoutSeconds: p.shortTimeout ? 30 : 3600,
    });
    ids[i] = b.id;
  }
  const before = plans.filter((p) => p.lostBefore).length;
  if (before > 0) {
    const throwaway = await f.worker({ name: 'throwaway', maxConcurrentBuilds: before, labels: ['nobody'] });
    await f.poll(throwaway, before, [], T0 + 500);
    await store.deleteWorker(throwaway.id, T0 + 600);
  }
  const claimable = plans.filter((p) => p.stage !== 'queued').length;
  if (claimable > 0) expect(await f.poll(w, claimable, [], POLLED)).toHaveLength(claimable);
  for (const [i, p] of plans.entries()) {
    const id = ids[i]!;
    const attempt = p.lostBefore ? 2 : 1;
    if (p.stage === 'running' || p.stage === 'cancelRequested' || p.stage === 'finished') {
      await store.startBuild({ buildId: id, attempt }, STARTED, LEASE);
    }
    if (p.stage === 'cancelRequested') await store.cancelBuild(id, STARTED + 1);
    if (p.stage === 'finished') await store.finishBuild({ buildId: id, attempt, outcome: 'succeeded', exitCode: 0, message: null, now: STARTED + 1 });
  }
  return ids;
}

const iso = (ms: number | null | undefined) => (ms === null || ms === undefined ? null : new Date(ms).toISOString());

/** `b` after `t` (the row-by-row model: the SET values of `transition()` applied to one build). */
function applied(b: Build, t: TransitionResult): Build {
  const p = t.build;
  const next: Build = { ...b, state: p.state, attempts: b.attempts.map((a) => ({ ...a })) };
  if (p.attempt !== undefined) next.attempt = p.attempt;
  if (p.worker_id !== undefined) next.workerId = p.worker_id;
  if (p.assigned_at !== undefined) next.assignedAt = iso(p.assigned_at);
  if (p.started_at !== undefined) next.startedAt = iso(p.started_at);
  if (p.finished_at !== undefined) next.finishedAt = iso(p.finished_at);
  if (p.ack_deadline !== undefined) next.ackDeadline = iso(p.ack_deadline);
  if (p.lease_expires_at !== undefined) next.leaseExpiresAt = iso(p.lease_expires_at);
  if (p.cancel_requested !== undefined) next.cancelRequested = p.cancel_requested === 1;
  if (p.exit_code !== undefined) next.exitCode = p.exit_code;
  if (p.reason !== undefined) next.reason = p.reason;
  if (p.message !== undefined) next.message = p.message;
  const row = t.attemptRow;
  const a = next.attempts.find((x) => x.attempt === b.attempt);
  if (row && a) {
    a.state = row.state;
    if (row.finished_at !== undefined) a.finishedAt = iso(row.finished_at);
    if (row.reason !== undefined) a.reason = row.reason;
    if (row.exit_code !== undefined) a.exitCode = row.exit_code;
  }
  return next;
}

const input = (b: Build) => ({ state: b.state, attempt: b.attempt, maxAttempts: b.spec.maxAttempts, cancelRequested: b.cancelRequested });
const ms = (s: string | null) => (s === null ? null : Date.parse(s));

/**
 * The model: what the old loop did — `transition()` on each build in turn.
 * Resolves the builds after `op` and the ids each outcome list names.
 */
function model(before: Build[], op: BatchOp, workerId: string, now: number): { builds: Build[]; lost: string[]; finished: number } {
  let finished = 0;
  const lost: string[] = [];
  const step = (b: Build, event: BuildEvent): Build => {
    const t = transition(input(b), event, now);
    if (['succeeded', 'failed', 'canceled', 'timed_out'].includes(t.to)) finished++;
    lost.push(b.id);
    return applied(b, t);
  };
  const held = (b: Build) => b.workerId === workerId && (b.state === 'assigned' || b.state === 'running');
  let builds = before.map((b, i): Build => {
    if (op.kind === 'delete') return held(b) ? step(b, { type: 'lose', reason: 'worker_deleted' }) : b;
    if (op.kind === 'restart') return held(b) && b.state === 'running' && !op.reported[i] ? step(b, { type: 'lose', reason: 'worker_restarted' }) : b;
    const expired = (b.state === 'assigned' && ms(b.ackDeadline)! < now) || (b.state === 'running' && ms(b.leaseExpiresAt)! < now);
    const reason: LostReason = b.state === 'assigned' ? 'ack_timeout' : 'lease_expired';
    return expired ? step(b, { type: 'lose', reason }) : b;
  });
  if (op.kind === 'reap') {
    builds = builds.map((b) => (b.state === 'running' && ms(b.startedAt)! + b.spec.timeoutSeconds * 1000 < now ? step(b, { type: 'timeout' }) : b));
  }
  return { builds, lost, finished };
}

/** Runs `op` for worker `w` at its time; resolves the ids the store says it changed. */
async function runOp(store: Store, w: TestWorker, ids: string[], op: BatchOp): Promise<string[]> {
  if (op.kind === 'delete') return (await store.deleteWorker(w.id, OP_AT)).lost;
  if (op.kind === 'restart') {
    const res = await store.reregister({
      workerId: w.id,
      secretHash: w.secretHash,
      accessToken: { hash: sha(randomUUID()), expiresAt: OP_AT + TTL },
      name: 'w',
      labels: [],
      maxConcurrentBuilds: ids.length,
      version: '1',
      bootId: `boot-${randomUUID()}`,
      activeBuildIds: ids.filter((_, i) => op.reported[i]),
      now: OP_AT,
    });
    return res.lost;
  }
  const r = await store.reap({ now: op.at, reapLeases: true });
  return [...r.requeued, ...r.failed, ...r.canceled, ...r.timedOut];
}

const opTime = (op: BatchOp) => (op.kind === 'reap' ? op.at : OP_AT);

export function batchContract(f: StoreFixture): void {
  describe('batch state changes (reaper, worker deletion, restart)', () => {
    let store!: Store;
    beforeEach(() => {
      store = f.store;
    });

    /** `n` builds in every mix the batch meets (30 covers each combination). */
    const mixed = (n: number): BuildPlan[] =>
      Array.from({ length: n }, (_, i) => ({
        maxAttempts: 1 + (i % 2),
        lostBefore: false,
        stage: i % 3 === 0 ? 'assigned' : i % 5 === 0 ? 'cancelRequested' : 'running',
        shortTimeout: false,
      }));

    /** Statements one `op` sends on `n` mixed builds, with a webhook subscribed to finished builds. */
    async function statementsFor(n: number, op: BatchOp): Promise<{ statements: number; changed: number; deliveries: number }> {
      await f.options.reset();
      await store.ensureEnrollmentToken(sha(ENROLL), 'default', T0);
      const hook = await store.webhooks.createWebhook({ id: randomUUID(), url: 'http://127.0.0.1:9/hook', events: ['build.finished'], secret: 's', description: null, now: T0 });
      const w = await f.worker({ maxConcurrentBuilds: n, bootId: 'boot-1' });
      const ids = await setUp(f, w, mixed(n));
      let changed: string[] = [];
      const statements = await f.statements.during(async () => {
        changed = await runOp(store, w, ids, op);
      });
      return { statements, changed: changed.length, deliveries: (await store.webhooks.listDeliveries(hook.id, { limit: 10_000 })).length };
    }

    const ops: BatchOp[] = [
      { kind: 'reap', at: T0 + 100_000 },
      { kind: 'delete' },
      { kind: 'restart', reported: [] },
    ];
    for (const op of ops) {
      it(`${op.kind}: a bounded number of statements, the same for 30 builds as for 500`, { timeout: 60_000 }, async () => {
        const small = await statementsFor(30, op);
        const large = await statementsFor(500, op);
        // Every build changed (a restart loses only the running ones) and each finished one has its webhook delivery.
        expect(large.changed).toBe(op.kind === 'restart' ? 333 : 500);
        expect(large.deliveries).toBeGreaterThan(0);
        expect(large.statements).toBe(small.statements);
        expect(large.statements).toBeLessThanOrEqual(20);
      });
    }

    it('leaves every build as transition() applied build by build would, outbox rows included (property)', { timeout: 120_000 }, async () => {
      const plan = fc.record({
        maxAttempts: fc.integer({ min: 1, max: 3 }),
        lostBefore: fc.boolean(),
        stage: fc.constantFrom('queued', 'assigned', 'running', 'cancelRequested', 'finished'),
        shortTimeout: fc.boolean(),
      });
      const scenario = fc.array(plan, { minLength: 1, maxLength: 8 }).chain((plans) =>
        fc.tuple(
          fc.constant(plans),
          fc.oneof(
            // Before the ack deadline, between it and the lease, after both; short timeouts end in between.
            fc.constantFrom(T0 + 20_000, T0 + 40_000, T0 + 70_000).map((at): BatchOp => ({ kind: 'reap', at })),
            fc.constant<BatchOp>({ kind: 'delete' }),
            fc.array(fc.boolean(), { minLength: plans.length, maxLength: plans.length }).map((reported): BatchOp => ({ kind: 'restart', reported })),
          ),
        ),
      );
      await fc.assert(
        fc.asyncProperty(scenario, async ([plans, op]) => {
          await f.options.reset();
          await store.ensureEnrollmentToken(sha(ENROLL), 'default', T0);
          const hook = await store.webhooks.createWebhook({ id: randomUUID(), url: 'http://127.0.0.1:9/hook', events: ['build.finished'], secret: 's', description: null, now: T0 });
          const w = await f.worker({ maxConcurrentBuilds: plans.length, bootId: 'boot-1' });
          const ids = await setUp(f, w, plans);
          const before = await Promise.all(ids.map((id) => store.getBuild(id)));
          const deliveriesBefore = (await store.webhooks.listDeliveries(hook.id, { limit: 1000 })).length;
          const changed = await runOp(store, w, ids, op);
          const expected = model(before, op, w.id, opTime(op));
          expect(await Promise.all(ids.map((id) => store.getBuild(id)))).toEqual(expected.builds);
          expect([...changed].sort()).toEqual([...expected.lost].sort());
          const deliveries = (await store.webhooks.listDeliveries(hook.id, { limit: 1000 })).length;
          expect(deliveries - deliveriesBefore).toBe(expected.finished);
        }),
        { numRuns: 25 },
      );
    });
  });
}
