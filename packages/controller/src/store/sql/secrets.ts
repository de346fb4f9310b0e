/**
 * Secrets (issue 13): sealed values (AES-256-GCM, sealed and opened by the
 * caller: the store never sees a key or a plain value), their scopes, and
 * the record of every hand-out to an attempt of a build. No dialect
 * differences beyond the row locks of `context.ts`.
 */
import type { Selectable } from 'kysely';
import { ApiError, type Scope, type Secret, type SecretHandout } from '@buildfleet/protocol';
import type { DB } from '../schema.js';
import type { AttemptRef, SealedSecret } from '../types.js';
import { run, tx, type SqlContext } from './context.js';
import { checkRunning, lockBuild } from './fencing.js';
import { parseJson, toIso } from './rows.js';

type SecretRow = Selectable<DB['secrets']>;

function toSecret(row: SecretRow): Secret {
  return { name: row.name, scope: parseJson<Scope>(row.scope), createdAt: toIso(row.created_at)!, updatedAt: toIso(row.updated_at)! };
}

function secretNotFound(name: string): ApiError {
  return new ApiError('NOT_FOUND', `secret ${name} not found`);
}

/** Creates or replaces a secret's sealed value and scope; `created` is false for a replacement. */
export function putSecret(
  ctx: SqlContext,
  input: { name: string; sealed: string; scope: Scope; now: number },
): Promise<{ secret: Secret; created: boolean }> {
  return tx(ctx, async (trx) => {
    const scope = JSON.stringify(input.scope);
    const existing = await trx.selectFrom('secrets').select('created_at').where('name', '=', input.name).executeTakeFirst();
    if (existing) {
      await trx.updateTable('secrets').set({ sealed: input.sealed, scope, updated_at: input.now }).where('name', '=', input.name).execute();
      return { secret: toSecret({ name: input.name, sealed: '', scope, created_at: existing.created_at, updated_at: input.now }), created: false };
    }
    const row = { name: input.name, sealed: input.sealed, scope, created_at: input.now, updated_at: input.now };
    await trx.insertInto('secrets').values(row).execute();
    return { secret: toSecret(row), created: true };
  });
}

/** Every secret by name, without values. */
export function listSecrets(ctx: SqlContext): Promise<Secret[]> {
  return run(async () => (await ctx.db.selectFrom('secrets').selectAll().orderBy('name').execute()).map(toSecret));
}

/** One secret without its value. Throws NOT_FOUND. */
export function getSecret(ctx: SqlContext, name: string): Promise<Secret> {
  return run(async () => {
    const row = await ctx.db.selectFrom('secrets').selectAll().where('name', '=', name).executeTakeFirst();
    if (!row) throw secretNotFound(name);
    return toSecret(row);
  });
}

/** Deletes a secret (its hand-out records stay). Throws NOT_FOUND. */
export function deleteSecret(ctx: SqlContext, name: string): Promise<void> {
  return run(async () => {
    const res = await ctx.db.deleteFrom('secrets').where('name', '=', name).executeTakeFirst();
    if (Number(res.numDeletedRows) === 0) throw secretNotFound(name);
  });
}

/** The sealed values and scopes of the named secrets that exist (the others are left out). */
export function sealedSecrets(ctx: SqlContext, names: readonly string[]): Promise<SealedSecret[]> {
  if (names.length === 0) return Promise.resolve([]);
  return run(async () => {
    const rows = await ctx.db.selectFrom('secrets').selectAll().where('name', 'in', [...names]).execute();
    return rows.map((r) => ({ name: r.name, sealed: r.sealed, scope: parseJson<Scope>(r.scope) }));
  });
}

/**
 * Records that attempt `ref` receives these secrets, in one transaction
 * that checks, under a share lock of the build row, that the attempt is the
 * build's current one and running (LEASE_LOST, INVALID_TRANSITION, like any
 * build-token write): a stale attempt never gets a value. The same hand-out
 * again is recorded once (first time kept).
 */
export function recordHandouts(ctx: SqlContext, ref: AttemptRef, names: readonly string[], now: number): Promise<void> {
  return tx(ctx, async (trx) => {
    const row = await lockBuild(ctx, trx, ref.buildId, 'share');
    checkRunning(row, ref);
    if (names.length === 0) return;
    await trx
      .insertInto('secret_handouts')
      .values(names.map((name) => ({ build_id: ref.buildId, attempt: ref.attempt, name, handed_out_at: now })))
      .onConflict((oc) => oc.columns(['build_id', 'attempt', 'name']).doNothing())
      .execute();
  });
}

/** Hand-outs of one secret, newest first. */
export function listHandouts(ctx: SqlContext, name: string, limit: number): Promise<SecretHandout[]> {
  return run(async () => {
    const rows = await ctx.db
      .selectFrom('secret_handouts')
      .selectAll()
      .where('name', '=', name)
      .orderBy('handed_out_at', 'desc')
      .orderBy('build_id', 'desc')
      .orderBy('attempt', 'desc')
      .limit(Math.max(1, Math.min(limit, 1000)))
      .execute();
    return rows.map((r) => ({ buildId: r.build_id, attempt: r.attempt, name: r.name, handedOutAt: toIso(r.handed_out_at)! }));
  });
}
