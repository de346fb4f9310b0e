/**
 * Build logs (PROTOCOL.md "logs"; STYLE.md habit 14): chunks keyed by
 * (build, attempt, seq) with a byte offset within the attempt, so a retried
 * upload is stored once and a gap is refused. No dialect differences beyond
 * the row locks of `context.ts`.
 */
import { sql } from 'kysely';
import { ApiError } from '@buildfleet/protocol';
import type { AttemptRef, LogChunkInput } from '../types.js';
import { forUpdate, run, tx, type SqlContext } from './context.js';
import { checkRunning, lockBuild } from './fencing.js';
import { buildNotFound } from './rows.js';

/**
 * Stores a chunk once per (build, attempt, seq) and resolves the bytes
 * stored for the attempt. Throws like `checkWritable`, and OFFSET_MISMATCH
 * (its message names the stored byte count) when `offset` is not that count.
 */
export function appendLog(ctx: SqlContext, input: LogChunkInput): Promise<{ offset: number }> {
  return tx(ctx, async (trx) => {
    // Shared lock on the build (finish waits for chunks in flight), exclusive on the attempt (one append at a time).
    const row = await lockBuild(ctx, trx, input.buildId, 'share');
    checkRunning(row, input);
    const att = await forUpdate(
      ctx,
      trx.selectFrom('build_attempts').select('log_bytes').where('build_id', '=', input.buildId).where('attempt', '=', input.attempt),
    ).executeTakeFirstOrThrow();
    const stored = Number(att.log_bytes);
    const dup = await trx
      .selectFrom('log_chunks')
      .select('seq')
      .where('build_id', '=', input.buildId)
      .where('attempt', '=', input.attempt)
      .where('seq', '=', input.seq)
      .executeTakeFirst();
    if (dup) return { offset: stored };
    if (input.offset !== stored) {
      throw new ApiError('OFFSET_MISMATCH', `expected offset ${stored}: ${stored} bytes are stored for attempt ${input.attempt}`);
    }
    await trx
      .insertInto('log_chunks')
      .values({ build_id: input.buildId, attempt: input.attempt, seq: input.seq, byte_offset: stored, size: input.data.length, data: input.data })
      .execute();
    await trx
      .updateTable('build_attempts')
      .set({ log_bytes: stored + input.data.length })
      .where('build_id', '=', input.buildId)
      .where('attempt', '=', input.attempt)
      .execute();
    return { offset: stored + input.data.length };
  });
}

/** Up to `limit` log bytes of one attempt from byte `offset`. Throws BUILD_NOT_FOUND. */
export function readLog(ctx: SqlContext, buildId: string, attempt: number, offset: number, limit: number): Promise<Buffer> {
  return run(async () => {
    const b = await ctx.db.selectFrom('builds').select('id').where('id', '=', buildId).executeTakeFirst();
    if (!b) throw buildNotFound(buildId);
    if (limit <= 0) return Buffer.alloc(0);
    const chunks = await ctx.db
      .selectFrom('log_chunks')
      .select(['byte_offset', 'data'])
      .where('build_id', '=', buildId)
      .where('attempt', '=', attempt)
      .where(sql<number>`byte_offset + size`, '>', offset)
      .where('byte_offset', '<', offset + limit)
      .orderBy('byte_offset')
      .execute();
    if (chunks.length === 0) return Buffer.alloc(0);
    const all = Buffer.concat(chunks.map((c) => Buffer.from(c.data)));
    const start = offset - Number(chunks[0]!.byte_offset);
    return all.subarray(Math.max(0, start), Math.max(0, start) + limit);
  });
}

/** Whether the attempt may write logs and artifacts now: BUILD_NOT_FOUND, LEASE_LOST, INVALID_TRANSITION. */
export async function checkWritable(ctx: SqlContext, ref: AttemptRef): Promise<void> {
  await run(async () => {
    const row = await ctx.db.selectFrom('builds').selectAll().where('id', '=', ref.buildId).executeTakeFirst();
    if (!row) throw buildNotFound(ref.buildId);
    checkRunning(row, ref);
  });
}
