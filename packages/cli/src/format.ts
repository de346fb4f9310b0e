/** Human-readable output of builds and workers (the `--json` flags print the raw objects). */
import type { Build, Worker } from '@buildfleet/protocol';

/** Seconds between two ISO timestamps, e.g. `12.3s`; '' when either is missing. */
export function duration(from: string | null, to: string | null): string {
  if (!from || !to) return '';
  const ms = Date.parse(to) - Date.parse(from);
  if (!Number.isFinite(ms) || ms < 0) return '';
  return ms < 60_000 ? `${(ms / 1000).toFixed(1)}s` : `${Math.floor(ms / 60_000)}m${Math.round((ms % 60_000) / 1000)}s`;
}

/** A build's outcome in a few words: `failed (exit code 3)`, `succeeded`, `canceled`. */
export function outcome(build: Build): string {
  let s = build.state as string;
  if (build.cancelRequested && !['canceled', 'succeeded', 'failed', 'timed_out'].includes(build.state)) s += ' (cancel requested)';
  if (build.state === 'failed' && build.exitCode !== null) s += ` (exit code ${build.exitCode})`;
  else if (build.reason && build.state !== 'succeeded' && build.reason !== build.state) s += ` (${build.reason})`;
  return s;
}

/** `status ID` output: one field per line. */
export function formatBuild(build: Build): string {
  const lines: [string, string][] = [
    ['id', build.id],
    ['state', outcome(build)],
    ['attempt', `${build.attempt} of ${build.spec.maxAttempts}`],
    ['worker', build.workerId ?? '-'],
    ['script', build.spec.script],
    ['labels', build.spec.labels.join(', ') || '-'],
    ['artifacts', build.spec.artifacts.join(', ') || '-'],
    ['created', build.createdAt],
    ['started', build.startedAt ?? '-'],
    ['finished', build.finishedAt ?? '-'],
  ];
  const took = duration(build.startedAt, build.finishedAt);
  if (took) lines.push(['duration', took]);
  if (build.exitCode !== null) lines.push(['exit code', String(build.exitCode)]);
  if (build.reason) lines.push(['reason', build.reason]);
  if (build.message) lines.push(['message', build.message]);
  let out = lines.map(([k, v]) => `${k.padEnd(10)} ${v}`).join('\n');
  if (build.attempts.length > 1) {
    out += '\nattempts:';
    for (const a of build.attempts)
      out += `\n  #${a.attempt} ${a.state}${a.reason ? ` (${a.reason})` : ''} on ${a.workerId ?? '-'} ${duration(a.startedAt, a.finishedAt)}`;
  }
  return out;
}

/** Left-aligned columns. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

export function buildRows(builds: Build[]): string {
  return table(
    ['ID', 'STATE', 'ATTEMPT', 'CREATED', 'DURATION', 'SCRIPT'],
    builds.map((b) => [
      b.id,
      outcome(b),
      String(b.attempt),
      b.createdAt,
      duration(b.startedAt, b.finishedAt),
      b.spec.script.length > 40 ? `${b.spec.script.slice(0, 39)}…` : b.spec.script,
    ]),
  );
}

export function workerRows(workers: Worker[]): string {
  return table(
    ['ID', 'NAME', 'STATUS', 'CONNECTED', 'BUILDS', 'EXECUTOR', 'LABELS', 'LAST SEEN'],
    workers.map((w) => [
      w.id,
      w.name,
      w.status,
      w.connected ? 'yes' : 'no',
      `${w.activeBuildCount}/${w.maxConcurrentBuilds}`,
      // `shell` does not isolate builds: say so where an operator looks (issue 8).
      w.executor === 'shell' ? 'shell (not isolated)' : (w.executor ?? '-'),
      w.labels.join(',') || '-',
      w.lastSeenAt ?? '-',
    ]),
  );
}
