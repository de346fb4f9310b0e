/**
 * The one table: per figure, buildfleet on PostgreSQL and on SQLite, the
 * peer (graphile-worker, or the raw SKIP LOCKED claim), buildfleet ÷ peer,
 * and issue 12's goal with whether every repetition met it. With several
 * repetitions each cell is the range (min–max).
 */
import type { PeerResults, RepResults, StoreResults } from './bench.js';

type Pick = (s: StoreResults) => number | undefined;
type PickPeer = (p: PeerResults) => number | undefined;

/** Goal on buildfleet's figure, or on its ratio to the peer. */
interface Goal {
  text: string;
  on: 'ratio' | 'value';
  max?: number;
  min?: number;
}

interface Spec {
  figure: string;
  bf?: Pick;
  peer?: PickPeer;
  goal?: Goal;
}

export interface Row {
  figure: string;
  postgres: number[];
  sqlite: number[];
  peer: number[];
  /** buildfleet ÷ peer per repetition, for each store. */
  ratio: { postgres: number[]; sqlite: number[] };
  goal: string;
  /** 'yes' | 'no' | 'partly' (some repetitions or one store), '' without a goal. */
  met: string;
}

function specs(reps: RepResults[]): Spec[] {
  const sizes = reps.flatMap((r) => Object.values(r.stores).flatMap((s) => s?.idle?.map((i) => i.workers) ?? []));
  const fleets = [...new Set(sizes)].sort((a, b) => a - b);
  const idle = (n: number, f: (i: NonNullable<StoreResults['idle']>[number]) => number | null): Pick => (s) => {
    const v = s.idle?.find((i) => i.workers === n);
    return v ? (f(v) ?? undefined) : undefined;
  };
  return [
    { figure: 'dispatch p50, ms (submit → parked worker holds it)', bf: (s) => s.dispatch?.p50, peer: (p) => p.graphile.dispatch.p50, goal: { text: '≤ 1.5×', on: 'ratio', max: 1.5 } },
    { figure: 'dispatch p95, ms', bf: (s) => s.dispatch?.p95, peer: (p) => p.graphile.dispatch.p95 },
    { figure: 'dispatch p99, ms', bf: (s) => s.dispatch?.p99, peer: (p) => p.graphile.dispatch.p99, goal: { text: '≤ 2×', on: 'ratio', max: 2 } },
    { figure: 'backlog drain, builds/s (jobs/s)', bf: (s) => s.drain?.buildsPerSecond, peer: (p) => p.graphile.drain.jobsPerSecond, goal: { text: '≥ 1×', on: 'ratio', min: 1 } },
    { figure: '  requests answered 503 and retried', bf: (s) => (s.drain ? s.drain.retried + (s.steady?.retried ?? 0) : s.steady?.retried) },
    { figure: '  attempts lost (ack deadline) and rerun', bf: (s) => (s.drain ? (s.drain.lostAttempts ?? 0) + (s.steady?.lostAttempts ?? 0) : s.steady?.lostAttempts) },
    { figure: '  raw SKIP LOCKED claim, rows/s (4 conns)', bf: (s) => s.drain?.buildsPerSecond, peer: (p) => p.skipLocked.rowsPerSecond },
    { figure: 'steady submit → finish, builds/s (jobs/s)', bf: (s) => s.steady?.buildsPerSecond, peer: (p) => p.graphile.steady.jobsPerSecond, goal: { text: '≥ 1×', on: 'ratio', min: 1 } },
    { figure: '  steady submit → finish p50, ms', bf: (s) => s.steady?.latency.p50, peer: (p) => p.graphile.steady.latency.p50 },
    { figure: 'SQL statements per build, one at a time', bf: (s) => s.steps?.statementsPerBuild, peer: (p) => p.graphile.steady.statementsPerJob, goal: { text: '≤ 8', on: 'value', max: 8 } },
    { figure: '  transactions per build, one at a time', bf: (s) => s.steps?.transactionsPerBuild, peer: (p) => p.graphile.steady.transactionsPerJob },
    { figure: '  statements per build, steady (all work)', bf: (s) => s.steady?.statementsPerBuild, peer: (p) => p.graphile.steady.statementsPerJob },
    { figure: '  statements per build while draining', bf: (s) => (s.drain ? s.drain.statementsPerBuild.submit + s.drain.statementsPerBuild.drain : undefined) },
    { figure: 're-registration p50, ms (workers parked)', bf: (s) => s.reregister?.p50 },
    { figure: 're-registration p99, ms', bf: (s) => s.reregister?.p99 },
    ...fleets.flatMap((n): Spec[] => [
      { figure: `idle ${n} workers: transactions/s`, bf: idle(n, (i) => i.xactPerSecond ?? i.transactionsPerSecond), goal: { text: '≤ 1', on: 'value', max: 1 } },
      { figure: `  statements/s`, bf: idle(n, (i) => i.statementsPerSecond) },
      { figure: `  controller CPU, % of a core`, bf: idle(n, (i) => i.cpuPercent) },
      { figure: `  controller RSS, MiB`, bf: idle(n, (i) => i.rssMiB.max) },
      { figure: `  dispatch p99 into the fleet, ms`, bf: idle(n, (i) => i.dispatch.p99) },
    ]),
    { figure: 'artifact upload, MB/s', bf: (s) => s.artifact?.upload.mbPerSecond },
    { figure: '  controller RSS growth, MiB', bf: (s) => s.artifact?.upload.rssGrowthMiB },
    { figure: 'artifact download, MB/s', bf: (s) => s.artifact?.download.mbPerSecond },
    { figure: '  controller RSS growth, MiB', bf: (s) => s.artifact?.download.rssGrowthMiB, goal: { text: '≤ 64', on: 'value', max: 64 } },
  ];
}

function ok(goal: Goal, v: number): boolean {
  return (goal.max === undefined || v <= goal.max) && (goal.min === undefined || v >= goal.min);
}

/** Rows that have at least one figure. */
export function buildTable(reps: RepResults[]): Row[] {
  const rows: Row[] = [];
  for (const spec of specs(reps)) {
    const row: Row = { figure: spec.figure, postgres: [], sqlite: [], peer: [], ratio: { postgres: [], sqlite: [] }, goal: spec.goal?.text ?? '', met: '' };
    const checks: boolean[] = [];
    for (const rep of reps) {
      const peer = rep.peer && spec.peer ? spec.peer(rep.peer) : undefined;
      if (peer !== undefined) row.peer.push(peer);
      for (const store of ['postgres', 'sqlite'] as const) {
        const s = rep.stores[store];
        const v = s && spec.bf ? spec.bf(s) : undefined;
        if (v === undefined || Number.isNaN(v)) continue;
        row[store].push(v);
        const ratio = peer ? v / peer : undefined;
        if (ratio !== undefined) row.ratio[store].push(ratio);
        if (spec.goal?.on === 'value') checks.push(ok(spec.goal, v));
        if (spec.goal?.on === 'ratio' && ratio !== undefined) checks.push(ok(spec.goal, ratio));
      }
    }
    if (checks.length) row.met = checks.every(Boolean) ? 'yes' : checks.some(Boolean) ? 'partly' : 'no';
    if (row.postgres.length || row.sqlite.length || row.peer.length) rows.push(row);
  }
  return rows;
}

function fmt(n: number): string {
  const a = Math.abs(n);
  return a >= 100 ? n.toFixed(0) : a >= 10 ? n.toFixed(1) : n.toFixed(2);
}

function range(v: number[], suffix = ''): string {
  if (!v.length) return '–';
  const lo = Math.min(...v);
  const hi = Math.max(...v);
  return (lo === hi ? fmt(lo) : `${fmt(lo)}–${fmt(hi)}`) + suffix;
}

/** Plain-text table (also valid Markdown). */
export function formatTable(rows: Row[]): string {
  const header = ['figure', 'buildfleet PG', 'buildfleet SQLite', 'peer', 'PG ÷ peer', 'SQLite ÷ peer', 'goal', 'met'];
  const body = rows.map((r) => [r.figure, range(r.postgres), range(r.sqlite), range(r.peer), range(r.ratio.postgres, '×'), range(r.ratio.sqlite, '×'), r.goal, r.met]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [line(header), `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...body.map(line)].join('\n');
}
