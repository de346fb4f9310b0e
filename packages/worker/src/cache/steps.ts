/**
 * The two cache steps of a build (issue 13): `restoreCaches` before the
 * script, `saveCaches` after a successful one. Both run in the worker
 * process on the host's view of the workspace, so they work the same under
 * every executor. A cache is an optimisation: nothing here fails a build;
 * every problem becomes a `warning:` line in its log and the build goes on
 * as if the key had missed.
 *
 * What the log says (one line each, through `note`): which key was looked
 * up, what was restored from where (the worker's own copy or the
 * controller), its size and how long it took, what was saved, or why not.
 */
import path from 'node:path';
import fs from 'node:fs/promises';
import type { CacheHit, Clock, SpecCache } from '@buildfleet/protocol';
import { packCache, restoreCache } from './archive.js';
import { renderKey, type KeyContext } from './key.js';
import type { LocalCache } from './local.js';
import { checkArchive, UnsafeArchiveError, type SourceLimits } from '../source.js';

/** The controller's cache calls of one build (with its build token). */
export interface CacheApi {
  /** Newest entry for `key`, else for the first `restoreKeys` prefix that has one; null on a miss. */
  lookup(key: string, restoreKeys: readonly string[]): Promise<CacheHit | null>;
  /** Streams the archive with this SHA-256 into `file`. */
  download(sha256: string, file: string): Promise<void>;
  /** Uploads an archive for `key`; `created` is false when the key already had an entry. */
  upload(key: string, file: string, sha256: string, size: number): Promise<{ created: boolean }>;
}

export interface CacheStepDeps {
  api: CacheApi;
  local: LocalCache;
  clock: Clock;
  /** Writes one line into the build's log (the caller adds its `[buildfleet]` prefix). */
  note: (line: string) => void;
  /** A scratch directory of this build (archives being packed). */
  scratchDir: string;
  /** What a restored archive may unpack to (the worker's source limits). */
  limits?: SourceLimits | undefined;
}

/** One `cache` entry of the spec after restore: what `saveCaches` needs. */
export interface CachePlan {
  key: string;
  paths: readonly string[];
  /** The key itself had an entry (a prefix match does not count): nothing to save. */
  exactHit: boolean;
  /** An entry (exact or by prefix) was unpacked into the workspace. */
  restored: boolean;
}

/** `4.2 MB`, `812 kB`, `96 B` (decimal units, like npm). */
export function formatSize(bytes: number): string {
  if (bytes < 1000) return `${bytes} B`;
  if (bytes < 1_000_000) return `${(bytes / 1000).toFixed(bytes < 10_000 ? 1 : 0)} kB`;
  if (bytes < 1_000_000_000) return `${(bytes / 1_000_000).toFixed(1)} MB`;
  return `${(bytes / 1_000_000_000).toFixed(2)} GB`;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

function describe(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return e.code && e.message && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : (e.message ?? String(err));
}

/**
 * Renders each spec entry's key and restore keys, looks them up and
 * restores the hit into the workspace: from the worker's own copy when it
 * has one, else downloaded from the controller (and kept for next time).
 * Returns the plans for `saveCaches`; an entry whose key cannot be rendered
 * is left out (warned about).
 */
export async function restoreCaches(specs: readonly SpecCache[], ctx: KeyContext, deps: CacheStepDeps): Promise<CachePlan[]> {
  const { api, local, clock, note } = deps;
  const plans: CachePlan[] = [];
  for (const spec of specs) {
    let key: string;
    let restoreKeys: string[];
    try {
      key = await renderKey(spec.key, ctx);
      restoreKeys = [];
      for (const t of spec.restoreKeys ?? []) restoreKeys.push(await renderKey(t, ctx));
    } catch (err) {
      note(`warning: cache ${JSON.stringify(spec.key)} skipped: ${describe(err)}`);
      continue;
    }
    const plan: CachePlan = { key, paths: spec.paths, exactHit: false, restored: false };
    plans.push(plan);
    const t0 = clock.monotonic();
    let hit: CacheHit | null;
    try {
      hit = await api.lookup(key, restoreKeys);
    } catch (err) {
      note(`warning: cache lookup for key ${JSON.stringify(key)} failed: ${describe(err)}`);
      continue;
    }
    if (!hit) {
      note(`cache miss: no entry for key ${JSON.stringify(key)}${restoreKeys.length ? ` or restore keys ${restoreKeys.map((k) => JSON.stringify(k)).join(', ')}` : ''}`);
      continue;
    }
    const which = hit.exact ? `key ${JSON.stringify(hit.key)}` : `key ${JSON.stringify(hit.key)} (restore-key match for ${JSON.stringify(key)})`;
    try {
      let file = await local.get(hit.sha256);
      let from = "the worker's local copy";
      let temporary = false;
      if (!file) {
        const d0 = clock.monotonic();
        const got = await local.download(hit.sha256, (tmp) => api.download(hit.sha256, tmp));
        file = got.file;
        temporary = !got.kept;
        from = `the controller (downloaded in ${seconds(clock.monotonic() - d0)})`;
      }
      try {
        await restoreCache(file, ctx.workspace, deps.limits);
      } finally {
        if (temporary) await local.discard(file);
      }
      plan.exactHit = hit.exact;
      plan.restored = true;
      note(`cache restored: ${spec.paths.join(', ')} from ${which}, ${formatSize(hit.size)} from ${from}, ${seconds(clock.monotonic() - t0)} in all`);
    } catch (err) {
      note(`warning: cache ${which} could not be restored: ${describe(err)}`);
    }
  }
  return plans;
}

/**
 * After a successful script: packs and uploads each plan whose key missed
 * (a prefix match counts as a miss, as in GitHub's `actions/cache`), and
 * keeps a copy in the worker's local cache so the next build here restores
 * without a download. An archive that `restoreCaches` would refuse (the same
 * `checkArchive` rule and limits, e.g. a venv's symlink to an absolute
 * path) is not uploaded: an existing key is never replaced, so saving it
 * would lose that key's cache for good.
 */
export async function saveCaches(plans: readonly CachePlan[], workspace: string, deps: CacheStepDeps): Promise<void> {
  const { api, local, clock, note, scratchDir } = deps;
  for (const plan of plans) {
    if (plan.exactHit) continue;
    const file = path.join(scratchDir, `cache-${plans.indexOf(plan)}.tar.gz`);
    try {
      const t0 = clock.monotonic();
      const packed = await packCache(workspace, plan.paths, file);
      if (packed.packed.length === 0) {
        note(`warning: cache key ${JSON.stringify(plan.key)} not saved: none of ${plan.paths.join(', ')} exists`);
        continue;
      }
      try {
        await checkArchive(file, deps.limits);
      } catch (err) {
        if (!(err instanceof UnsafeArchiveError)) throw err;
        note(`warning: cache key ${JSON.stringify(plan.key)} not saved: a later restore would refuse it: ${err.message}`);
        continue;
      }
      const packedMs = clock.monotonic() - t0;
      const u0 = clock.monotonic();
      const { created } = await api.upload(plan.key, file, packed.sha256, packed.size);
      const uploadMs = clock.monotonic() - u0;
      await local.add(packed.sha256, file).catch(() => undefined);
      const missing = packed.missing.length ? ` (missing: ${packed.missing.join(', ')})` : '';
      note(
        created
          ? `cache saved: key ${JSON.stringify(plan.key)}, ${packed.packed.join(', ')}${missing}, ${formatSize(packed.size)}, packed in ${seconds(packedMs)}, uploaded in ${seconds(uploadMs)}`
          : `cache not saved: key ${JSON.stringify(plan.key)} was saved by another build meanwhile`,
      );
    } catch (err) {
      note(`warning: cache key ${JSON.stringify(plan.key)} could not be saved: ${describe(err)}`);
    } finally {
      await fs.rm(file, { force: true }).catch(() => undefined);
    }
  }
}
