/**
 * Scopes (issue 13): which builds may receive a secret, and which builds
 * share cache entries. Pure: no I/O.
 */
import type { BuildSpec, Scope } from '@buildfleet/protocol';


/** A metadata value as text: strings as they are, anything else as JSON. */
function metadataText(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/**
 * Whether a build with these labels and metadata is inside `scope`: every
 * scope label among the build's labels, every scope metadata pair equal to
 * the build's value as text. Returns undefined when it is, else what the
 * build has instead, e.g. `has repo=acme/app, lacks label arm64` (for the
 * build's failure message: "this build has …").
 */
export function scopeProblem(scope: Scope, build: Pick<BuildSpec, 'labels' | 'metadata'>): string | undefined {
  const missing: string[] = [];
  const labels = new Set(build.labels);
  for (const [k, v] of Object.entries(scope.metadata ?? {})) {
    const actual = metadataText(build.metadata[k]);
    if (actual !== v) missing.push(actual === undefined ? `has no ${k}` : `has ${k}=${actual}`);
  }
  for (const l of scope.labels ?? []) if (!labels.has(l)) missing.push(`lacks label ${l}`);
  return missing.length ? missing.join(', ') : undefined;
}

/**
 * The cache scope of a build: `key=value` pairs of its metadata for the
 * configured scope keys (`BUILDFLEET_CACHE_SCOPE`, default `repo`), sorted,
 * joined with `,`; "" when it has none of them. Builds share cache entries
 * only within one scope, so one project's build cannot plant an entry that
 * another project's build restores.
 */
export function cacheScope(build: Pick<BuildSpec, 'metadata'>, keys: readonly string[]): string {
  const parts: string[] = [];
  for (const k of [...keys].sort()) {
    const v = metadataText(build.metadata[k]);
    if (v !== undefined) parts.push(`${k}=${v}`);
  }
  return parts.join(',');
}
