/**
 * Build caches on the controller (issue 13): lookups, downloads and saves
 * for the current attempt of a running build, each within the build's cache
 * scope (domain/scope.ts), so one project's build can neither read nor
 * plant another project's entries; archives live in the blob store under
 * their SHA-256 (`caches/<sha256>`); the total is kept under
 * `BUILDFLEET_CACHE_MAX_MB` by least-recently-used eviction after each save.
 */
import type { Readable } from 'node:stream';
import { v7 as uuidv7 } from 'uuid';
import { ApiError, cacheKeyProblem, type Build, type CacheEntry, type CacheHit } from '@buildfleet/protocol';
import { cacheScope } from '../domain/scope.js';
import type { BlobStore } from '../blobs/types.js';
import type { AttemptRef, Store, StoredCacheEntry } from '../store/types.js';

export interface CacheSettings {
  /** Total archive bytes kept; older entries are evicted past it. */
  maxBytes: number;
  /** Metadata keys that make a build's cache scope (`BUILDFLEET_CACHE_SCOPE`). */
  scopeKeys: readonly string[];
}

/** Minimal logger (pino-compatible). */
interface Log {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

/** The blob key of an archive: content-addressed, shared by every entry with these bytes. */
export function cacheBlobKey(sha256: string): string {
  return `caches/${sha256}`;
}

/** An entry as the API shows it (without the blob key). */
export function publicCacheEntry(e: StoredCacheEntry): CacheEntry {
  const { blobKey: _blobKey, ...entry } = e;
  return entry;
}

export class CacheService {
  constructor(
    private readonly store: Store,
    private readonly blobs: BlobStore,
    readonly settings: CacheSettings,
    private readonly log: Log,
  ) {}

  /** The cache scope of a build. */
  scopeOf(build: Build): string {
    return cacheScope(build.spec, this.settings.scopeKeys);
  }

  /** LEASE_LOST unless `ref` is the build's current attempt; INVALID_TRANSITION unless it runs. */
  checkAttempt(build: Build, ref: AttemptRef): void {
    if (build.attempt !== ref.attempt) {
      throw new ApiError('LEASE_LOST', `attempt ${ref.attempt} of build ${build.id} is no longer current (attempt ${build.attempt} is)`);
    }
    if (build.state !== 'running') throw new ApiError('INVALID_TRANSITION', `build ${build.id} is ${build.state}: only a running attempt uses the cache`);
  }

  /**
   * The newest entry of the build's scope for `key`, else for the first
   * restore prefix that has one; null on a miss. An entry whose archive has
   * gone (a save raced an eviction) is dropped and counts as a miss.
   */
  async lookup(build: Build, ref: AttemptRef, key: string, restoreKeys: readonly string[], now: number): Promise<CacheHit | null> {
    this.checkAttempt(build, ref);
    const hit = await this.store.lookupCache({ scope: this.scopeOf(build), key, restoreKeys, now });
    if (!hit) return null;
    if ((await this.blobs.size(hit.entry.blobKey)) === undefined) {
      this.log.warn({ cacheId: hit.entry.id, key: hit.entry.key }, 'cache entry without its archive dropped');
      await this.store.deleteCache(hit.entry.id).catch(() => undefined);
      return null;
    }
    return { key: hit.entry.key, sha256: hit.entry.sha256, size: hit.entry.size, exact: hit.exact, createdAt: hit.entry.createdAt };
  }

  /** The archive with this SHA-256 if an entry of the build's scope names it; NOT_FOUND otherwise. */
  async archive(build: Build, ref: AttemptRef, sha256: string, now: number): Promise<{ entry: StoredCacheEntry; body: Readable }> {
    this.checkAttempt(build, ref);
    const entry = await this.store.findCacheArchive(this.scopeOf(build), sha256, now);
    if (!entry) throw new ApiError('NOT_FOUND', `no cache archive ${sha256} in this build's scope`);
    return { entry, body: await this.blobs.get(entry.blobKey) };
  }

  /**
   * Stores an archive (checked against `sha256`, at most `maxBytes`) and
   * saves the entry for `key`; `created` is false when the key had one
   * already (entries never change). Then evicts past the budget.
   */
  async save(
    build: Build,
    ref: AttemptRef,
    key: string,
    sha256: string,
    body: Readable,
    now: number,
  ): Promise<{ entry: StoredCacheEntry; created: boolean }> {
    this.checkAttempt(build, ref);
    const problem = cacheKeyProblem(key);
    if (problem) throw new ApiError('VALIDATION_FAILED', `key: ${problem}`);
    const blobKey = cacheBlobKey(sha256);
    const stored = await this.blobs.put(blobKey, body, { maxBytes: this.settings.maxBytes, expectSha256: sha256 });
    const result = await this.store.saveCache(ref, {
      id: uuidv7({ msecs: now }),
      scope: this.scopeOf(build),
      key,
      sha256,
      size: stored.size,
      blobKey,
      now,
    });
    if (result.created) {
      this.log.info({ buildId: build.id, key, size: stored.size, scope: result.entry.scope }, 'cache entry saved');
      await this.evict();
    }
    return result;
  }

  /** Least-recently-used eviction past the budget; deletes archives no entry names any more. */
  async evict(): Promise<number> {
    const { evicted, orphanBlobKeys } = await this.store.evictCaches(this.settings.maxBytes);
    for (const key of orphanBlobKeys) await this.blobs.delete(key).catch(() => undefined);
    if (evicted.length) this.log.info({ evicted: evicted.map((e) => e.key), orphanBlobs: orphanBlobKeys.length }, 'cache entries evicted');
    return evicted.length;
  }

  /** Deletes one entry (and its archive when no other entry names it). Throws NOT_FOUND. */
  async delete(id: string): Promise<void> {
    const { orphanBlobKey } = await this.store.deleteCache(id);
    if (orphanBlobKey) await this.blobs.delete(orphanBlobKey).catch(() => undefined);
  }
}
