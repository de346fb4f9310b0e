/**
 * Workers: registration, re-registration, authentication and the admin
 * calls (docs/protocol.md "Workers"). A restart or a deletion hands builds to the
 * lost-build policy set-based, through `batch-transitions.ts`. Dialect differences: only the
 * row locks of `context.ts`.
 */
import { ApiError, type Worker } from '@buildfleet/protocol';
import type { RegisterNewInput, RegisterResult, ReregisterInput, WorkerAuth } from '../types.js';
import { forUpdate, run, tx, type SqlContext } from './context.js';
import { parseJson, workerLabelsJson, safeEqual, toHeld, toIso, uniq, workerNotFound, HELD_STATES, type WorkerRow } from './rows.js';
import { useEnrollmentToken } from './tokens.js';
import { applyTransitions } from './batch-transitions.js';
import { checkAccessToken, heldBuilds, touchWorker } from './worker-auth.js';

/** How many superseded boot ids a worker row remembers (IDENTITY_CONFLICT). */
const SUPERSEDED_BOOT_IDS_KEPT = 100;

/**
 * Registers a new worker (docs/protocol.md "register", case 1); see
 * `Store.registerNew`. A `registrationId` retry re-issues credentials for the
 * same worker without using the enrollment token again, until the worker's
 * first authenticated call; afterwards it throws INVALID_TRANSITION.
 */
export function registerNew(ctx: SqlContext, input: RegisterNewInput): Promise<RegisterResult> {
  return tx(ctx, async (trx) => {
    if (input.registrationId !== undefined) {
      const existing = await forUpdate(ctx, trx.selectFrom('workers').selectAll().where('registration_id', '=', input.registrationId)).executeTakeFirst();
      if (existing) {
        const tokenId = await useEnrollmentToken(trx, input.enrollmentTokenHash, input.now, false);
        // Another enrollment token does not take over a pending registration (403 before 409).
        if (existing.registration_token_id !== null && existing.registration_token_id !== tokenId) {
          throw new ApiError('FORBIDDEN', 'this registrationId belongs to a registration made with another enrollment token');
        }
        if (existing.first_auth_at !== null) {
          throw new ApiError('INVALID_TRANSITION', 'registrationId already used: the worker has authenticated since');
        }
        // A retry after a lost answer: same worker, fresh credentials; the lost ones are void.
        await trx
          .updateTable('workers')
          .set({
            secret_hash: input.secretHash,
            access_token_hash: input.accessToken.hash,
            access_token_expires_at: input.accessToken.expiresAt,
            name: input.name,
            labels: workerLabelsJson(input.labels, input.executor ?? existing.executor),
            max_concurrent_builds: input.maxConcurrentBuilds,
            version: input.version,
            boot_id: input.bootId ?? existing.boot_id,
            executor: input.executor ?? existing.executor,
          })
          .where('id', '=', existing.id)
          .execute();
        return { workerId: existing.id, created: true, builds: [], abandon: [], lost: [] };
      }
    }
    const tokenId = await useEnrollmentToken(trx, input.enrollmentTokenHash, input.now, true);
    await trx
      .insertInto('workers')
      .values({
        id: input.newWorkerId,
        name: input.name,
        labels: workerLabelsJson(input.labels, input.executor),
        max_concurrent_builds: input.maxConcurrentBuilds,
        version: input.version,
        status: 'active',
        secret_hash: input.secretHash,
        access_token_hash: input.accessToken.hash,
        access_token_expires_at: input.accessToken.expiresAt,
        boot_id: input.bootId ?? null,
        superseded_boot_ids: '[]',
        registration_id: input.registrationId ?? null,
        registration_token_id: tokenId,
        first_auth_at: null,
        active_build_count: 0,
        created_at: input.now,
        last_seen_at: input.now,
        executor: input.executor ?? null,
      })
      .execute();
    return { workerId: input.newWorkerId, created: true, builds: [], abandon: [], lost: [] };
  });
}

/**
 * Checks a worker secret without writing anything (a registration with a
 * bad body still answers 404/401 first, docs/protocol.md check order). Throws
 * WORKER_NOT_FOUND or TOKEN_INVALID.
 */
export function checkWorkerSecret(ctx: SqlContext, workerId: string, secretHash: string): Promise<void> {
  return run(async () => {
    const w = await ctx.db.selectFrom('workers').select('secret_hash').where('id', '=', workerId).executeTakeFirst();
    if (!w) throw workerNotFound(workerId);
    if (!safeEqual(w.secret_hash, secretHash)) throw new ApiError('TOKEN_INVALID', 'wrong worker secret');
  });
}

/**
 * Re-registration / token refresh (docs/protocol.md "register", case 2) in one
 * transaction holding the worker's row lock; see `Store.reregister`.
 */
export function reregister(ctx: SqlContext, input: ReregisterInput): Promise<RegisterResult> {
  return tx(ctx, async (trx) => {
    const w = await ctx.lockWorker(trx, input.workerId, 'reregister');
    if (!w) throw workerNotFound(input.workerId);
    if (!safeEqual(w.secret_hash, input.secretHash)) throw new ApiError('TOKEN_INVALID', 'wrong worker secret');
    const superseded = parseJson<string[]>(w.superseded_boot_ids);
    if (input.bootId !== undefined && superseded.includes(input.bootId)) {
      throw new ApiError('IDENTITY_CONFLICT', 'a newer instance of this worker (another bootId) holds the identity; two processes share one identity file');
    }
    const restarted = input.bootId !== undefined && w.boot_id !== null && input.bootId !== w.boot_id;
    const active = new Set(input.activeBuildIds ?? []);
    const lost: string[] = [];
    if (restarted) {
      // Only running builds are lost: an assigned build never started, so
      // it is delivered again in `builds` and keeps its attempt (docs/protocol.md "register").
      const gone = (await heldBuilds(trx, w.id)).filter((row) => row.state === 'running' && !active.has(row.id));
      for (const a of await applyTransitions(trx, gone, () => ({ type: 'lose', reason: 'worker_restarted' }), input.now)) lost.push(a.row.id);
    }
    await trx
      .updateTable('workers')
      .set({
        access_token_hash: input.accessToken.hash,
        access_token_expires_at: input.accessToken.expiresAt,
        boot_id: input.bootId ?? w.boot_id,
        superseded_boot_ids: restarted ? JSON.stringify([...superseded, w.boot_id!].slice(-SUPERSEDED_BOOT_IDS_KEPT)) : w.superseded_boot_ids,
        active_build_count: input.activeBuildCount ?? 0,
        first_auth_at: w.first_auth_at ?? input.now,
        last_seen_at: input.now,
        // A restarted process may come back with a new configuration; a
        // token refresh (same process) keeps what the worker registered.
        ...(restarted
          ? {
              name: input.name,
              labels: workerLabelsJson(input.labels, input.executor ?? w.executor),
              max_concurrent_builds: input.maxConcurrentBuilds,
              version: input.version,
              executor: input.executor ?? w.executor,
            }
          : {}),
      })
      .where('id', '=', w.id)
      .execute();
    const held = await heldBuilds(trx, w.id);
    const heldIds = new Set(held.map((b) => b.id));
    return {
      workerId: w.id,
      created: false,
      builds: held.map(toHeld),
      abandon: uniq(input.activeBuildIds ?? []).filter((id) => !heldIds.has(id)),
      lost,
    };
  });
}

/** Checks a worker access token (see `checkAccessToken`) and records the call. */
/**
 * A worker leaves on purpose (`Store.deregisterWorker`): under its row lock,
 * authenticated like a poll; deleted unless it still holds builds
 * (INVALID_TRANSITION naming them: it polls once more and runs them first).
 */
export function deregisterWorker(ctx: SqlContext, auth: WorkerAuth): Promise<void> {
  return tx(ctx, async (trx) => {
    const locked = await ctx.lockWorker(trx, auth.workerId, 'deregister');
    const w = await checkAccessToken(trx, locked, auth);
    const held = await heldBuilds(trx, w.id);
    if (held.length > 0) {
      throw new ApiError(
        'INVALID_TRANSITION',
        `worker ${w.id} still holds builds ${held.map((b) => b.id).join(', ')}: poll to receive them, run them, then deregister`,
      );
    }
    await trx.deleteFrom('workers').where('id', '=', w.id).execute();
  });
}

export async function authenticateWorker(ctx: SqlContext, auth: WorkerAuth): Promise<void> {
  await run(async () => {
    const w = await ctx.db.selectFrom('workers').selectAll().where('id', '=', auth.workerId).executeTakeFirst();
    await checkAccessToken(ctx.db, w, auth);
    await touchWorker(ctx.db, auth.workerId, auth.now);
  });
}

type WorkerWithHeld = WorkerRow & { held: number };

async function workerRows(ctx: SqlContext, where: { id?: string }): Promise<WorkerWithHeld[]> {
  let q = ctx.db
    .selectFrom('workers')
    .selectAll('workers')
    .select((eb) =>
      eb
        .selectFrom('builds')
        .select(eb.fn.countAll<number>().as('n'))
        .whereRef('builds.worker_id', '=', 'workers.id')
        .where('builds.state', 'in', HELD_STATES)
        .as('held'),
    )
    .orderBy('workers.created_at')
    .orderBy('workers.id');
  if (where.id !== undefined) q = q.where('workers.id', '=', where.id);
  const rows = await q.execute();
  return rows.map((r) => ({ ...r, held: Number(r.held ?? 0) }));
}

function toWorker(row: WorkerWithHeld, now: number, leaseMs: number): Worker {
  return {
    id: row.id,
    name: row.name,
    labels: parseJson<string[]>(row.labels),
    maxConcurrentBuilds: row.max_concurrent_builds,
    version: row.version,
    status: row.status,
    connected: row.last_seen_at !== null && now - row.last_seen_at <= leaseMs,
    activeBuildCount: row.held,
    createdAt: toIso(row.created_at)!,
    lastSeenAt: toIso(row.last_seen_at),
    accessTokenExpiresAt: toIso(row.access_token_expires_at),
    executor: row.executor,
  };
}

/** Every worker, oldest first; `connected` = seen within `leaseMs` of `now`. */
export function listWorkers(ctx: SqlContext, now: number, leaseMs: number): Promise<Worker[]> {
  return run(async () => (await workerRows(ctx, {})).map((r) => toWorker(r, now, leaseMs)));
}

/** One worker. Throws WORKER_NOT_FOUND. */
export function getWorker(ctx: SqlContext, id: string, now: number, leaseMs: number): Promise<Worker> {
  return run(async () => {
    const [row] = await workerRows(ctx, { id });
    if (!row) throw workerNotFound(id);
    return toWorker(row, now, leaseMs);
  });
}

/** Marks a worker draining (no new claims; docs/protocol.md "Administration of workers"). Throws WORKER_NOT_FOUND. */
export function drainWorker(ctx: SqlContext, id: string, now: number, leaseMs: number): Promise<Worker> {
  return setStatus(ctx, id, 'draining', now, leaseMs);
}

/** Undoes a drain: the worker's polls claim again (docs/protocol.md "Admin"). Throws WORKER_NOT_FOUND. */
export function resumeWorker(ctx: SqlContext, id: string, now: number, leaseMs: number): Promise<Worker> {
  return setStatus(ctx, id, 'active', now, leaseMs);
}

async function setStatus(ctx: SqlContext, id: string, status: 'active' | 'draining', now: number, leaseMs: number): Promise<Worker> {
  await run(async () => {
    const res = await ctx.db.updateTable('workers').set({ status }).where('id', '=', id).executeTakeFirst();
    if (Number(res.numUpdatedRows) === 0) throw workerNotFound(id);
  });
  return getWorker(ctx, id, now, leaseMs);
}

/**
 * Deletes a worker under its row lock; its held builds are lost at once
 * (attempt reason `worker_deleted`, docs/protocol.md "Administration of workers"). Throws WORKER_NOT_FOUND.
 */
export function deleteWorker(ctx: SqlContext, id: string, now: number): Promise<{ lost: string[] }> {
  return tx(ctx, async (trx) => {
    const w = await ctx.lockWorker(trx, id, 'deleteWorker');
    if (!w) throw workerNotFound(id);
    const lost = await applyTransitions(trx, await heldBuilds(trx, id), () => ({ type: 'lose', reason: 'worker_deleted' }), now);
    await trx.deleteFrom('workers').where('id', '=', id).execute();
    return { lost: lost.map((a) => a.row.id) };
  });
}
