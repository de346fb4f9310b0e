/**
 * Artifacts (docs/protocol.md "artifacts"): metadata keyed by (build, attempt,
 * name); the bytes live in the blob store under `blobKey`. The same name and
 * checksum again is stored once. No dialect differences beyond the row
 * locks of `context.ts`.
 */
import { ApiError } from '@buildfleet/protocol';
import type { ArtifactInput, StoredArtifact } from '../types.js';
import { run, tx, type SqlContext } from './context.js';
import { gone } from './gone.js';
import { checkRunning, lockBuild } from './fencing.js';
import { buildNotFound } from './rows.js';

/**
 * Records an uploaded artifact of a running attempt; `created` is false when
 * the same name and checksum exist. A new checksum for the same name
 * replaces the old one. Throws like `checkWritable`.
 */
export function recordArtifact(ctx: SqlContext, input: ArtifactInput): Promise<{ created: boolean }> {
  return tx(ctx, async (trx) => {
    const row = await lockBuild(ctx, trx, input.buildId, 'share');
    checkRunning(row, input);
    const existing = await trx
      .selectFrom('artifacts')
      .selectAll()
      .where('build_id', '=', input.buildId)
      .where('attempt', '=', input.attempt)
      .where('name', '=', input.name)
      .executeTakeFirst();
    if (existing && existing.sha256 === input.sha256) return { created: false };
    const values = { size: input.size, sha256: input.sha256, blob_key: input.blobKey, created_at: input.now };
    if (existing) {
      await trx
        .updateTable('artifacts')
        .set(values)
        .where('build_id', '=', input.buildId)
        .where('attempt', '=', input.attempt)
        .where('name', '=', input.name)
        .execute();
    } else {
      await trx.insertInto('artifacts').values({ build_id: input.buildId, attempt: input.attempt, name: input.name, ...values }).execute();
    }
    return { created: true };
  });
}

/** Artifacts of the build's current attempt (a terminal build keeps the attempt that finished it), by name. */
async function artifactsOf(ctx: SqlContext, buildId: string, name?: string): Promise<StoredArtifact[]> {
  const b = await ctx.db.selectFrom('builds').select(['id', 'attempt']).where('id', '=', buildId).executeTakeFirst();
  if (!b) throw buildNotFound(buildId);
  let q = ctx.db.selectFrom('artifacts').selectAll().where('build_id', '=', buildId).where('attempt', '=', b.attempt);
  if (name !== undefined) q = q.where('name', '=', name);
  const rows = await q.orderBy('name').execute();
  return rows.map((r) => ({
    name: r.name,
    size: Number(r.size),
    sha256: r.sha256,
    attempt: r.attempt,
    blobKey: r.blob_key,
    deletedAt: r.deleted_at === null ? null : Number(r.deleted_at),
    deletedReason: r.deleted_reason,
  }));
}

/** Throws BUILD_NOT_FOUND. */
export function listArtifacts(ctx: SqlContext, buildId: string): Promise<StoredArtifact[]> {
  return run(() => artifactsOf(ctx, buildId));
}

/** Throws BUILD_NOT_FOUND, ARTIFACT_NOT_FOUND, or GONE (when and why) once retention or the blob cap removed it. */
export function getArtifact(ctx: SqlContext, buildId: string, name: string): Promise<StoredArtifact> {
  return run(async () => {
    const [a] = await artifactsOf(ctx, buildId, name);
    if (!a) throw new ApiError('ARTIFACT_NOT_FOUND', `artifact ${name} of build ${buildId} not found`);
    if (a.deletedAt !== null) throw gone(`artifact "${name}" of build ${buildId}`, a.deletedAt, a.deletedReason, 'BUILDFLEET_RETAIN_ARTIFACTS');
    return a;
  });
}
