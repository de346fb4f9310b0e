/**
 * Build logs (docs/protocol.md "logs"; design rule 14): chunks keyed by
 * (build, attempt, seq) with a byte offset within the attempt, so a retried
 * upload is stored once and a gap is refused. No dialect differences beyond
 * the row locks of `context.ts`.
 */
import { sql, type Transaction } from 'kysely';
import type { DB } from '../schema.js';
import { ApiError } from '@buildfleet/protocol';
import type { AttemptRef, LogChunkInput } from '../types.js';
import { forShare, forUpdate, run, tx, type SqlContext } from './context.js';
import { checkRunning, lockBuild } from './fencing.js';
import { buildNotFound } from './rows.js';
import { gone } from './gone.js';

/**
 * The last chunk an attempt stores once its log reaches `maxBytes`: the first
 * `room` bytes of `data` (backed off to a UTF-8 character boundary) and the
 * truncation line (docs/protocol.md "Log limits").
 */
export function truncateLog(data: Buffer, room: number, maxBytes: number): Buffer {
  let n = Math.max(0, Math.min(room, data.length));
  while (n > 0 && n < data.length && (data[n]! & 0xc0) === 0x80) n--;
  const mib = maxBytes / (1024 * 1024);
  const size = Number.isInteger(mib) ? `${mib} MiB` : `${maxBytes} bytes`;
  const line = `\n[buildfleet] log truncated: this attempt's log reached ${size} (BUILDFLEET_LOG_MAX_MB); later output is not stored, the build goes on\n`;
  return Buffer.concat([data.subarray(0, n), Buffer.from(line)]);
}

/**
 * Stores a chunk once per (build, attempt, seq) and resolves the bytes
 * stored for the attempt. Throws like `checkWritable`, and OFFSET_MISMATCH
 * (its message names the stored byte count) when `offset` is not that count.
 */
export function appendLog(ctx: SqlContext, input: LogChunkInput): Promise<{ offset: number; truncated?: boolean }> {
  return tx(ctx, async (trx) => {
    const appended = await appendNext(ctx, trx, input);
    if (appended !== undefined) return { offset: appended };
    // Shared lock on the build (finish waits for chunks in flight), exclusive on the attempt (one append at a time).
    const row = await lockBuild(ctx, trx, input.buildId, 'share');
    checkRunning(row, input);
    const att = await forUpdate(
      ctx,
      trx
        .selectFrom('build_attempts')
        .select(['log_bytes', 'log_truncated'])
        .where('build_id', '=', input.buildId)
        .where('attempt', '=', input.attempt),
    ).executeTakeFirstOrThrow();
    const stored = Number(att.log_bytes);
    const truncated = Number(att.log_truncated) === 1;
    const dup = await trx
      .selectFrom('log_chunks')
      .select('seq')
      .where('build_id', '=', input.buildId)
      .where('attempt', '=', input.attempt)
      .where('seq', '=', input.seq)
      .executeTakeFirst();
    if (dup) return truncated ? { offset: stored, truncated } : { offset: stored };
    // Past the cap nothing more is stored, whatever the offset (an older worker keeps sending).
    if (truncated) return { offset: stored, truncated };
    if (input.offset !== stored) {
      throw new ApiError('OFFSET_MISMATCH', `expected offset ${stored}: ${stored} bytes are stored for attempt ${input.attempt}`);
    }
    const cut = input.maxBytes !== undefined && stored + input.data.length > input.maxBytes;
    const data = cut ? truncateLog(input.data, input.maxBytes! - stored, input.maxBytes!) : input.data;
    await trx
      .insertInto('log_chunks')
      .values({ build_id: input.buildId, attempt: input.attempt, seq: input.seq, byte_offset: stored, size: data.length, data })
      .execute();
    await trx
      .updateTable('build_attempts')
      .set({ log_bytes: stored + data.length, ...(cut ? { log_truncated: 1 } : {}) })
      .where('build_id', '=', input.buildId)
      .where('attempt', '=', input.attempt)
      .execute();
    return cut ? { offset: stored + data.length, truncated: true } : { offset: stored + data.length };
  });
}

/**
 * The common chunk in two statements (issue 12): the next one of a running
 * attempt, not stored yet, with room under `maxBytes`. One conditional
 * UPDATE of the attempt row takes the bytes (its WHERE is every check of the
 * path below that such a chunk passes: the build runs this attempt, the
 * offset is the stored count, the log is not truncated, the seq is new),
 * then the chunk is inserted at that offset. Resolves the new byte count, or
 * undefined for anything else (the caller's locking path decides and
 * explains). On PostgreSQL the build row is read `FOR SHARE`, as there, so
 * a finish in flight is waited for and then seen.
 */
async function appendNext(ctx: SqlContext, trx: Transaction<DB>, input: LogChunkInput): Promise<number | undefined> {
  const size = input.data.length;
  if (size === 0 || (input.maxBytes !== undefined && input.offset + size > input.maxBytes)) return undefined;
  const running = forShare(
    ctx,
    trx.selectFrom('builds').select('id').where('id', '=', input.buildId).where('attempt', '=', input.attempt).where('state', '=', 'running'),
  );
  const stored = trx
    .selectFrom('log_chunks')
    .select('seq')
    .where('build_id', '=', input.buildId)
    .where('attempt', '=', input.attempt)
    .where('seq', '=', input.seq);
  const grown = await trx
    .updateTable('build_attempts')
    .set({ log_bytes: input.offset + size })
    .where('build_id', '=', input.buildId)
    .where('attempt', '=', input.attempt)
    .where('log_bytes', '=', input.offset)
    .where('log_truncated', '=', 0)
    .where((eb) => eb.and([eb.exists(running), eb.not(eb.exists(stored))]))
    .returning('log_bytes')
    .executeTakeFirst();
  if (!grown) return undefined;
  await trx
    .insertInto('log_chunks')
    .values({ build_id: input.buildId, attempt: input.attempt, seq: input.seq, byte_offset: input.offset, size, data: input.data })
    .execute();
  return input.offset + size;
}

/** Up to `limit` log bytes of one attempt from byte `offset`. Throws BUILD_NOT_FOUND, or GONE once retention removed the logs. */
export function readLog(ctx: SqlContext, buildId: string, attempt: number, offset: number, limit: number): Promise<Buffer> {
  return run(async () => {
    const b = await ctx.db.selectFrom('builds').select(['id', 'logs_deleted_at']).where('id', '=', buildId).executeTakeFirst();
    if (!b) throw buildNotFound(buildId);
    if (b.logs_deleted_at !== null) throw gone(`the log of build ${buildId}`, b.logs_deleted_at, 'retention', 'BUILDFLEET_RETAIN_LOGS');
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
