/**
 * What one collection removes, decided from the policy and the time alone
 * (pure; `collector.ts` carries it out).
 */
import type { RetentionPolicy } from '../ops/config.js';
import type { RetentionKind } from '../store/sql/retention.js';

export interface CollectionStep {
  kind: RetentionKind;
  /** Builds that ended before this (epoch ms) lose `kind`. */
  cutoff: number;
}

/**
 * The age-based steps at `now` (epoch ms), whole builds first (the biggest
 * removal, and it spares the other steps those rows), then artifacts, logs
 * and sources. A kind kept for ever (`Infinity`) has no step; a kind kept
 * longer than whole builds has none either (the builds step removes it).
 */
export function collectionSteps(policy: RetentionPolicy, now: number): CollectionStep[] {
  const steps: CollectionStep[] = [];
  const add = (kind: RetentionKind, ageMs: number) => {
    if (!Number.isFinite(ageMs)) return;
    if (kind !== 'builds' && ageMs >= policy.buildsMs) return;
    steps.push({ kind, cutoff: now - ageMs });
  };
  add('builds', policy.buildsMs);
  add('artifacts', policy.artifactsMs);
  add('logs', policy.logsMs);
  add('sources', policy.sourcesMs);
  return steps;
}

/** Bytes to free to get `live` under `cap` (0 when under it or without a cap). */
export function bytesOverCap(live: number, cap: number | undefined): number {
  return cap === undefined ? 0 : Math.max(0, live - cap);
}
