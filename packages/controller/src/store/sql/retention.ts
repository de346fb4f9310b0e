/**
 * Retention's statements (issue 14): the collector (`gc/collector.ts`)
 * calls these in small transactions, each touching at most `limit` builds
 * (or `limit` × a few hundred log chunks), so a claim never waits long behind
 * one. Only ended builds (`finished_at` set) that are not kept are touched;
 * queued, assigned and running builds never are.
 *
 * A batch acts on `limit` builds for sources and artifacts, `limit / 20` for
 * logs and whole builds (a 64 MiB log is about a thousand chunk rows).
 *
 * Order of a removal: the rows are marked (or deleted) and committed first;
 * the blob files are deleted after the commit by the caller, and only the
 * keys no live row refers to any more (a retried build shares its source, two
 * artifact names may share content). A crash in between leaves an orphan
 * blob, which the orphan sweep collects; never a row pointing at nothing.
 */
import { sql, type Kysely, type Transaction } from 'kysely';
import type { DB, Dialect } from '../schema.js';

/** What the functions here need: the database and its dialect (a SqlContext fits). */
export interface RetentionContext {
  readonly db: Kysely<DB>;
  readonly dialect: Dialect;
}

export type RetentionKind = 'sources' | 'logs' | 'artifacts' | 'builds';

/** Why data went: an age (`retention`) or the blob cap (`blob_cap`). */
export type RemovalReason = 'retention' | 'blob_cap';

export interface BatchResult {
  /** Builds acted on. */
  builds: string[];
  /** Bytes removed from the database or marked for the blob store. */
  bytes: number;
  /** Log chunk rows deleted. */
  logChunks: number;
  /** Blob keys no live row refers to any more: delete them after this resolves. */
  unreferencedBlobs: string[];
}

const empty = (): BatchResult => ({ builds: [], bytes: 0, logChunks: 0, unreferencedBlobs: [] });

function pending(kind: Exclude<RetentionKind, 'builds'>) {
  return kind === 'sources' ? 'source_deleted_at' : kind === 'logs' ? 'logs_deleted_at' : 'artifacts_deleted_at';
}

/** Up to `limit` ended, unkept builds that ended before `cutoff` (epoch ms) and still hold `kind`, oldest first. */
async function pick(trx: Transaction<DB>, kind: RetentionKind, cutoff: number, limit: number): Promise<Array<{ id: string; source_key: string; source_size: number }>> {
  let q = trx
    .selectFrom('builds')
    .select(['id', 'source_key', 'source_size'])
    .where('finished_at', 'is not', null)
    .where('finished_at', '<', cutoff)
    .where('keep', '=', 0);
  if (kind !== 'builds') q = q.where(pending(kind), 'is', null);
  return q.orderBy('finished_at').orderBy('id').limit(limit).execute();
}

/** Of `keys`, those no live build (source), live artifact or cache entry refers to. */
export async function unreferenced(db: Kysely<DB> | Transaction<DB>, keys: readonly string[]): Promise<string[]> {
  const distinct = [...new Set(keys)];
  if (distinct.length === 0) return [];
  const live = new Set<string>();
  for (let i = 0; i < distinct.length; i += 500) {
    const part = distinct.slice(i, i + 500);
    const rows = await db
      .selectFrom('builds')
      .select('source_key as k')
      .where('source_key', 'in', part)
      .where('source_deleted_at', 'is', null)
      .union(db.selectFrom('artifacts').select('blob_key as k').where('blob_key', 'in', part).where('deleted_at', 'is', null))
      // Build cache archives (issue 13) live as long as an entry names them; caches evict their own.
      .union(db.selectFrom('cache_entries').select('blob_key as k').where('blob_key', 'in', part))
      .execute();
    for (const r of rows) live.add(r.k);
  }
  return distinct.filter((k) => !live.has(k));
}

/** Deletes the log chunks of `ids`; returns rows and bytes. */
async function deleteChunks(trx: Transaction<DB>, ids: string[]): Promise<{ rows: number; bytes: number }> {
  if (ids.length === 0) return { rows: 0, bytes: 0 };
  const sum = await trx
    .selectFrom('log_chunks')
    .select((eb) => [eb.fn.countAll<number>().as('n'), eb.fn.coalesce(eb.fn.sum<number>('size'), sql<number>`0`).as('b')])
    .where('build_id', 'in', ids)
    .executeTakeFirstOrThrow();
  await trx.deleteFrom('log_chunks').where('build_id', 'in', ids).execute();
  return { rows: Number(sum.n), bytes: Number(sum.b) };
}

/**
 * One batch of age-based removal of `kind` for builds that ended before
 * `cutoff`, in one transaction. `builds` deletes whole builds (attempts,
 * chunks, artifacts by cascade); the others mark the build (and artifact
 * rows) with the time and reason, so the API can answer 410 GONE.
 */
export async function expireBatch(ctx: RetentionContext, kind: RetentionKind, cutoff: number, limit: number, now: number): Promise<BatchResult> {
  return ctx.db.transaction().execute(async (trx) => {
    const picked = await pick(trx, kind, cutoff, kind === 'logs' || kind === 'builds' ? Math.max(1, Math.floor(limit / 20)) : limit);
    if (picked.length === 0) return empty();
    const ids = picked.map((p) => p.id);
    const out = empty();
    out.builds = ids;
    switch (kind) {
      case 'sources': {
        await trx.updateTable('builds').set({ source_deleted_at: now, source_deleted_reason: 'retention' }).where('id', 'in', ids).execute();
        out.bytes = picked.reduce((s, p) => s + Number(p.source_size), 0);
        out.unreferencedBlobs = await unreferenced(trx, picked.map((p) => p.source_key));
        break;
      }
      case 'logs': {
        const { rows, bytes } = await deleteChunks(trx, ids);
        await trx.updateTable('builds').set({ logs_deleted_at: now }).where('id', 'in', ids).execute();
        out.logChunks = rows;
        out.bytes = bytes;
        break;
      }
      case 'artifacts': {
        const arts = await trx.selectFrom('artifacts').select(['blob_key', 'size']).where('build_id', 'in', ids).where('deleted_at', 'is', null).execute();
        await trx.updateTable('artifacts').set({ deleted_at: now, deleted_reason: 'retention' }).where('build_id', 'in', ids).where('deleted_at', 'is', null).execute();
        await trx.updateTable('builds').set({ artifacts_deleted_at: now }).where('id', 'in', ids).execute();
        out.bytes = arts.reduce((s, a) => s + Number(a.size), 0);
        out.unreferencedBlobs = await unreferenced(trx, arts.map((a) => a.blob_key));
        break;
      }
      case 'builds': {
        const arts = await trx.selectFrom('artifacts').select(['blob_key', 'size']).where('build_id', 'in', ids).execute();
        const { rows, bytes } = await deleteChunks(trx, ids);
        await trx.deleteFrom('builds').where('id', 'in', ids).execute();
        out.logChunks = rows;
        out.bytes = bytes + arts.reduce((s, a) => s + Number(a.size), 0);
        out.unreferencedBlobs = await unreferenced(trx, [...picked.map((p) => p.source_key), ...arts.map((a) => a.blob_key)]);
        break;
      }
    }
    return out;
  });
}

/**
 * Bytes of live blobs the database refers to (each key counted once): what
 * the blob cap compares with.
 */
export async function liveBlobBytes(ctx: RetentionContext): Promise<{ sources: number; artifacts: number }> {
  const s = await sql<{ b: number | null }>`
    select sum(size) as b from (select source_key, max(source_size) as size from builds where source_deleted_at is null group by source_key) t`.execute(ctx.db);
  const a = await sql<{ b: number | null }>`
    select sum(size) as b from (select blob_key, max(size) as size from artifacts where deleted_at is null group by blob_key) t`.execute(ctx.db);
  return { sources: Number(s.rows[0]?.b ?? 0), artifacts: Number(a.rows[0]?.b ?? 0) };
}

/** Log bytes stored (all attempts): for the metrics. */
export async function liveLogBytes(ctx: RetentionContext): Promise<number> {
  const r = await ctx.db
    .selectFrom('build_attempts')
    .select((eb) => eb.fn.coalesce(eb.fn.sum<number>('log_bytes'), sql<number>`0`).as('b'))
    .innerJoin('builds', 'builds.id', 'build_attempts.build_id')
    .where('builds.logs_deleted_at', 'is', null)
    .executeTakeFirstOrThrow();
  return Number(r.b);
}

/**
 * One batch of the blob cap: marks the oldest live artifacts of ended,
 * unkept builds (`blob_cap`), up to `limit` rows or until `wantBytes` are
 * marked; when no such artifact is left, the oldest sources instead.
 */
export async function evictBatch(ctx: RetentionContext, wantBytes: number, limit: number, now: number): Promise<BatchResult> {
  return ctx.db.transaction().execute(async (trx) => {
    const out = empty();
    const arts = await trx
      .selectFrom('artifacts as a')
      .innerJoin('builds as b', 'b.id', 'a.build_id')
      .select(['a.build_id', 'a.attempt', 'a.name', 'a.blob_key', 'a.size'])
      .where('a.deleted_at', 'is', null)
      .where('b.finished_at', 'is not', null)
      .where('b.keep', '=', 0)
      .orderBy('a.created_at')
      .orderBy('a.build_id')
      .orderBy('a.name')
      .limit(limit)
      .execute();
    if (arts.length > 0) {
      const chosen: typeof arts = [];
      for (const a of arts) {
        if (out.bytes >= wantBytes) break;
        chosen.push(a);
        out.bytes += Number(a.size);
      }
      for (const a of chosen) {
        await trx
          .updateTable('artifacts')
          .set({ deleted_at: now, deleted_reason: 'blob_cap' })
          .where('build_id', '=', a.build_id)
          .where('attempt', '=', a.attempt)
          .where('name', '=', a.name)
          .execute();
      }
      out.builds = [...new Set(chosen.map((a) => a.build_id))];
      out.unreferencedBlobs = await unreferenced(trx, chosen.map((a) => a.blob_key));
      return out;
    }
    const sources = await trx
      .selectFrom('builds')
      .select(['id', 'source_key', 'source_size'])
      .where('finished_at', 'is not', null)
      .where('keep', '=', 0)
      .where('source_deleted_at', 'is', null)
      .orderBy('finished_at')
      .orderBy('id')
      .limit(limit)
      .execute();
    const chosen: typeof sources = [];
    for (const s of sources) {
      if (out.bytes >= wantBytes) break;
      chosen.push(s);
      out.bytes += Number(s.source_size);
    }
    if (chosen.length === 0) return out;
    await trx
      .updateTable('builds')
      .set({ source_deleted_at: now, source_deleted_reason: 'blob_cap' })
      .where('id', 'in', chosen.map((s) => s.id))
      .execute();
    out.builds = chosen.map((s) => s.id);
    out.unreferencedBlobs = await unreferenced(trx, chosen.map((s) => s.source_key));
    return out;
  });
}

/** Webhook events (and their deliveries) older than `cutoff` with nothing pending. Returns rows deleted. */
export async function expireWebhookEvents(ctx: RetentionContext, cutoff: number, limit: number): Promise<number> {
  return ctx.db.transaction().execute(async (trx) => {
    const ids = (
      await trx
        .selectFrom('webhook_events as e')
        .select('e.id')
        .where('e.created_at', '<', cutoff)
        .where(({ not, exists, selectFrom }) =>
          not(exists(selectFrom('webhook_deliveries as d').select('d.id').whereRef('d.event_id', '=', 'e.id').where('d.state', '=', 'pending'))),
        )
        .orderBy('e.created_at')
        .limit(limit)
        .execute()
    ).map((r) => r.id);
    if (ids.length === 0) return 0;
    await trx.deleteFrom('webhook_deliveries').where('event_id', 'in', ids).execute();
    await trx.deleteFrom('webhook_events').where('id', 'in', ids).execute();
    return ids.length;
  });
}

/**
 * Sets or clears a build's `keep` flag. Resolves false when the build does
 * not exist.
 */
export async function setKeep(ctx: RetentionContext, id: string, keep: boolean): Promise<boolean> {
  const r = await ctx.db.updateTable('builds').set({ keep: keep ? 1 : 0 }).where('id', '=', id).executeTakeFirst();
  return Number(r.numUpdatedRows) > 0;
}

/**
 * Marks blobs found missing while a backup linked them (collected after its
 * snapshot) as collected in the snapshot itself: synchronous, on the
 * backup's own better-sqlite3 connection to the copy.
 */
export function markCollectedInSnapshot(
  snapshot: { prepare(sql: string): { run(...params: unknown[]): unknown } },
  keys: readonly string[],
  now: number,
): void {
  const src = snapshot.prepare(`update builds set source_deleted_at = ?, source_deleted_reason = 'retention' where source_key = ? and source_deleted_at is null`);
  const art = snapshot.prepare(`update artifacts set deleted_at = ?, deleted_reason = 'retention' where blob_key = ? and deleted_at is null`);
  for (const k of keys) {
    src.run(now, k);
    art.run(now, k);
  }
}

/**
 * Gives pages freed by removals back to the file system: SQLite
 * `incremental_vacuum` (databases created with auto_vacuum=INCREMENTAL; a
 * no-op on older ones, where freed pages are reused instead). PostgreSQL's
 * autovacuum does the equivalent on its own.
 */
export async function reclaimSpace(ctx: RetentionContext): Promise<void> {
  if (ctx.dialect !== 'sqlite') return;
  await sql`pragma incremental_vacuum`.execute(ctx.db);
  // The freed pages went through the WAL; truncate it so the file shrinks too.
  await sql`pragma wal_checkpoint(TRUNCATE)`.execute(ctx.db);
}
