/**
 * Durations and sizes as operators write them in configuration
 * (`BUILDFLEET_RETAIN_LOGS=30d`, `BUILDFLEET_GC_INTERVAL=5m`).
 *
 * Deliberately strict (unlike the `ms` package, which reads a bare `100` as
 * milliseconds and accepts `1.5 hours`): one non-negative integer and one
 * unit, so a typo is a start-up error instead of a surprising retention.
 */

/** Milliseconds per unit. `w` is 7 days; there is no month (their lengths differ). */
const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/** Words that switch a retention off: the data is kept for ever. */
const NEVER = new Set(['never', 'off', 'forever']);

/**
 * Parses `<integer><unit>` with unit `ms`, `s`, `m`, `h`, `d` or `w`
 * (`7d`, `10s`, `250ms`), returning milliseconds. `never`, `off` and
 * `forever` return `Infinity` when `allowNever` is set. Throws `Error` with a
 * message naming `name` for anything else (a bare number, a fraction, a
 * negative value, an unknown unit).
 */
export function parseDuration(name: string, text: string, opts: { allowNever?: boolean } = {}): number {
  const t = text.trim().toLowerCase();
  if (opts.allowNever && NEVER.has(t)) return Infinity;
  const m = /^(\d+)\s*(ms|s|m|h|d|w)$/.exec(t);
  if (!m) {
    const hint = opts.allowNever ? ', or "never"' : '';
    throw new Error(`${name} must be a duration such as 30s, 5m, 12h or 7d${hint}; got ${JSON.stringify(text)}`);
  }
  const ms = Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
  if (!Number.isSafeInteger(ms)) throw new Error(`${name} is too long: ${JSON.stringify(text)}`);
  return ms;
}

/** `7d`, `5m`, `90s`, `250ms`: the largest unit that divides `ms` exactly; `never` for Infinity. */
export function formatDuration(ms: number): string {
  if (ms === Infinity) return 'never';
  for (const unit of ['w', 'd', 'h', 'm', 's'] as const) {
    if (ms >= UNIT_MS[unit] && ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  }
  return `${ms}ms`;
}
