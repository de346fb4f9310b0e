/**
 * Build caches (issue 13): entries keyed by (scope, key), each naming an
 * archive in the blob store by its SHA-256 (several entries may share one
 * archive). Lookups prefer the exact key, then the newest entry whose key
 * starts with a restore-key prefix (in the order given); every hit and save
 * marks the entry used, and eviction drops the least recently used entries
 * past the size budget. Prefix matching uses `substr`, the same on both
 * dialects (the entries of one scope are few: the budget bounds them).
 */
import { sql, type Selectable } from 'kysely';
import { ApiError } from '@buildfleet/protocol';
import type { DB } from '../schema.js';
import type { AttemptRef, CacheLookup, NewCacheEntry, StoredCacheEntry } from '../types.js';
import { run, tx, type SqlContext } from './context.js';
import { checkRunning, lockBuild } from './fencing.js';
import { toIso } from './rows.js';

type CacheRow = Selectable<DB['cache_entries']>;

function toEntry(row: CacheRow): StoredCacheEntry {
  return {
    id: row.id,
    scope: row.scope,
    key: row.key,
    sha256: row.sha256,
    size: Number(row.size),
    createdAt: toIso(row.created_at)!,
    lastUsedAt: toIso(row.last_used_at)!,
    buildId: row.build_id,
    blobKey: row.blob_key,
  };
}

async function touch(ctx: SqlContext, id: string, now: number): Promise<void> {
  await ctx.db.updateTable('cache_entries').set({ last_used_at: now }).where('id', '=', id).execute();
}

/** The newest entry of `scope` for `key`, else for the first restore-key prefix that has one; marks it used. */
export function lookupCache(ctx: SqlContext, input: CacheLookup): Promise<{ entry: StoredCacheEntry; exact: boolean } | undefined> {
  return run(async () => {
    const scoped = ctx.db.selectFrom('cache_entries').selectAll().where('scope', '=', input.scope);
    let row = await scoped.where('key', '=', input.key).executeTakeFirst();
    let exact = row !== undefined;
    for (const prefix of row ? [] : input.restoreKeys) {
      row = await scoped
        .where(sql<boolean>`substr(key, 1, ${prefix.length}) = ${prefix}`)
        .orderBy('created_at', 'desc')
        .orderBy('id', 'desc')
        .limit(1)
        .executeTakeFirst();
      if (row) break;
    }
    if (!row) return undefined;
    exact = exact && row.key === input.key;
    await touch(ctx, row.id, input.now);
    return { entry: toEntry({ ...row, last_used_at: input.now }), exact };
  });
}

/** The entry of `scope` whose archive has this SHA-256, if any (a build may download only those); marks it used. */
export function findCacheArchive(ctx: SqlContext, scope: string, sha256: string, now: number): Promise<StoredCacheEntry | undefined> {
  return run(async () => {
    const row = await ctx.db
      .selectFrom('cache_entries')
      .selectAll()
      .where('scope', '=', scope)
      .where('sha256', '=', sha256)
      .orderBy('created_at', 'desc')
      .limit(1)
      .executeTakeFirst();
    if (!row) return undefined;
    await touch(ctx, row.id, now);
    return toEntry(row);
  });
}

/**
 * Saves an entry for attempt `ref`, which must be the build's current,
 * running attempt (LEASE_LOST, INVALID_TRANSITION): an entry is immutable,
 * so when (scope, key) already has one, that one is returned with `created`
 * false and nothing changes.
 */
export function saveCache(ctx: SqlContext, ref: AttemptRef, input: NewCacheEntry): Promise<{ entry: StoredCacheEntry; created: boolean }> {
  return tx(ctx, async (trx) => {
    const build = await lockBuild(ctx, trx, ref.buildId, 'share');
    checkRunning(build, ref);
    const row: CacheRow = {
      id: input.id,
      scope: input.scope,
      key: input.key,
      sha256: input.sha256,
      size: input.size,
      blob_key: input.blobKey,
      build_id: ref.buildId,
      created_at: input.now,
      last_used_at: input.now,
    };
    const inserted = await trx
      .insertInto('cache_entries')
      .values(row)
      .onConflict((oc) => oc.columns(['scope', 'key']).doNothing())
      .executeTakeFirst();
    if (Number(inserted.numInsertedOrUpdatedRows ?? 0) > 0) return { entry: toEntry(row), created: true };
    const existing = await trx.selectFrom('cache_entries').selectAll().where('scope', '=', input.scope).where('key', '=', input.key).executeTakeFirstOrThrow();
    return { entry: toEntry(existing), created: false };
  });
}

/** Every entry, most recently used first, with their total size in bytes. */
export function listCaches(ctx: SqlContext): Promise<{ entries: StoredCacheEntry[]; totalBytes: number }> {
  return run(async () => {
    const rows = await ctx.db.selectFrom('cache_entries').selectAll().orderBy('last_used_at', 'desc').orderBy('id', 'desc').execute();
    const entries = rows.map(toEntry);
    return { entries, totalBytes: entries.reduce((n, e) => n + e.size, 0) };
  });
}

/** Blob keys among `keys` that no entry names any more. */
async function unreferenced(ctx: SqlContext, keys: readonly string[]): Promise<string[]> {
  const unique = [...new Set(keys)];
  if (unique.length === 0) return [];
  const still = await ctx.db.selectFrom('cache_entries').select('blob_key').where('blob_key', 'in', unique).execute();
  const used = new Set(still.map((r) => r.blob_key));
  return unique.filter((k) => !used.has(k));
}

/** Deletes one entry; returns its archive's blob key when no other entry uses it (the caller deletes the blob). Throws NOT_FOUND. */
export function deleteCache(ctx: SqlContext, id: string): Promise<{ orphanBlobKey: string | undefined }> {
  return run(async () => {
    const row = await ctx.db.deleteFrom('cache_entries').where('id', '=', id).returning('blob_key').executeTakeFirst();
    if (!row) throw new ApiError('NOT_FOUND', `cache entry ${id} not found`);
    const [orphan] = await unreferenced(ctx, [row.blob_key]);
    return { orphanBlobKey: orphan };
  });
}

/**
 * Least-recently-used eviction: keeps the most recently used entries whose
 * sizes add up to at most `maxBytes` and deletes the rest. Returns the
 * deleted entries and the blob keys no entry uses any more (the caller
 * deletes those blobs). Safe on every controller at once.
 */
export function evictCaches(ctx: SqlContext, maxBytes: number): Promise<{ evicted: StoredCacheEntry[]; orphanBlobKeys: string[] }> {
  return run(async () => {
    const rows = await ctx.db.selectFrom('cache_entries').selectAll().orderBy('last_used_at', 'desc').orderBy('id', 'desc').execute();
    let total = 0;
    const evict: CacheRow[] = [];
    for (const r of rows) {
      total += Number(r.size);
      if (total > maxBytes) evict.push(r);
    }
    if (evict.length === 0) return { evicted: [], orphanBlobKeys: [] };
    await ctx.db.deleteFrom('cache_entries').where('id', 'in', evict.map((r) => r.id)).execute();
    return { evicted: evict.map(toEntry), orphanBlobKeys: await unreferenced(ctx, evict.map((r) => r.blob_key)) };
  });
}
