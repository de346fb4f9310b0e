/**
 * The store reads behind the dashboard (docs/protocol.md "Builds" filters,
 * "Statistics"): the build list's filters, the queue in claim terms, and
 * the per-minute history. Read-only; their dialect differences (JSON access)
 * are here. All times are epoch ms.
 */
import { sql, type Expression, type Kysely, type SqlBool } from 'kysely';
import { ApiError, type MinuteStat, type QueueGroup } from '@buildfleet/protocol';
import type { FleetEntry, QueuedEntry } from '../../domain/waiting.js';
import type { Dialect } from '../schema.js';
import type { BuildListFilter } from '../types.js';
import { run, type SqlContext } from './context.js';

const MINUTE_MS = 60_000;

/** A `metadata` key a filter may name: no quote, backslash or control character (it becomes a JSON path). */
const META_KEY = /^[^"\\\u0000-\u001f]{1,200}$/;

function jsonText(dialect: Dialect, path: string[]): Expression<string | null> {
  if (dialect === 'postgres') return sql<string | null>`(builds.spec::jsonb #>> ${`{${path.map((p) => `"${p}"`).join(',')}}`})`;
  return sql<string | null>`cast(json_extract(builds.spec, ${`$.${path.map((p) => `"${p}"`).join('.')}`}) as text)`;
}

function likePattern(text: string): string {
  return `%${text.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

/**
 * The WHERE conditions of `GET /builds` beyond state and label: `worker`
 * (an attempt ran there, or it holds the build), `meta` (`key=value`:
 * metadata[key] as text equals value), `q` (case-insensitive, in the id,
 * the spec's name or its script). Throws VALIDATION_FAILED for a metadata
 * key that cannot be a JSON path.
 */
export function buildFilterConditions(dialect: Dialect, filter: BuildListFilter): Array<Expression<SqlBool>> {
  const out: Array<Expression<SqlBool>> = [];
  if (filter.worker !== undefined) {
    out.push(
      sql<SqlBool>`(builds.worker_id = ${filter.worker} or exists (select 1 from build_attempts a where a.build_id = builds.id and a.worker_id = ${filter.worker}))`,
    );
  }
  for (const pair of filter.meta ?? []) {
    const i = pair.indexOf('=');
    const key = pair.slice(0, i);
    if (i < 1 || !META_KEY.test(key)) throw new ApiError('VALIDATION_FAILED', `meta: ${JSON.stringify(pair)} is not key=value with a plain key`);
    out.push(sql<SqlBool>`${jsonText(dialect, ['metadata', key])} = ${pair.slice(i + 1)}`);
  }
  const q = filter.q?.trim();
  if (q) {
    const p = likePattern(q);
    out.push(
      sql<SqlBool>`(lower(builds.id) like ${p} escape '\\' or lower(${jsonText(dialect, ['name'])}) like ${p} escape '\\' or lower(${jsonText(dialect, ['script'])}) like ${p} escape '\\')`,
    );
  }
  return out;
}

/** Names of the workers with these ids (absent: deleted). */
export function workerNames({ db }: SqlContext, ids: string[]): Promise<Map<string, string>> {
  return run(async () => {
    if (ids.length === 0) return new Map<string, string>();
    const rows = await db.selectFrom('workers').select(['id', 'name']).where('id', 'in', ids).execute();
    return new Map(rows.map((r) => [r.id, r.name]));
  });
}

/** The fleet as `waiting` sees it: labels, status, and seen within `leaseMs` of `now`. */
export function waitingFleet({ db }: SqlContext, now: number, leaseMs: number): Promise<FleetEntry[]> {
  return run(async () => {
    const rows = await db.selectFrom('workers').select(['labels', 'status', 'last_seen_at']).execute();
    return rows.map((r) => ({
      labels: JSON.parse(r.labels) as string[],
      status: r.status,
      connected: r.last_seen_at !== null && now - Number(r.last_seen_at) <= leaseMs,
    }));
  });
}

/** Every queued build in claim terms (`waiting` is computed from these). */
export function listQueued(ctx: SqlContext): Promise<QueuedEntry[]> {
  return run(() => readQueued(ctx));
}

async function readQueued({ db }: SqlContext): Promise<QueuedEntry[]> {
  const rows = await db
    .selectFrom('builds')
    .select(['id', 'labels', 'priority', 'created_at', 'concurrency_group', 'concurrency_limit'])
    .where('state', '=', 'queued')
    .execute();
  // Issue 13: how many builds of each group with queued builds are assigned or running (builds_concurrency index).
  const groups = [...new Set(rows.map((r) => r.concurrency_group).filter((g): g is string => g !== null))];
  const active = new Map<string, number>();
  if (groups.length > 0) {
    const counts = await db
      .selectFrom('builds')
      .select(['concurrency_group', (eb) => eb.fn.countAll<number>().as('n')])
      .where('concurrency_group', 'in', groups)
      .where('state', 'in', ['assigned', 'running'])
      .groupBy('concurrency_group')
      .execute();
    for (const c of counts) active.set(c.concurrency_group!, Number(c.n));
  }
  return rows.map((r) => ({
    id: r.id,
    labels: JSON.parse(r.labels) as string[],
    priority: Number(r.priority),
    createdAt: Number(r.created_at),
    ...(r.concurrency_group !== null
      ? { group: { name: r.concurrency_group, limit: Number(r.concurrency_limit ?? 1), active: active.get(r.concurrency_group) ?? 0 } }
      : {}),
  }));
}

/**
 * Queued builds per label set (oldest first), and for each of the last
 * `minutes` minutes (the current one last): builds finished, of which failed
 * or timed out; builds assigned for the first time, and their mean and
 * longest wait from submission. Three grouped queries on indexed columns.
 */
export function queueStats(ctx: SqlContext, now: number, minutes: number): Promise<{ queue: QueueGroup[]; minutes: MinuteStat[] }> {
  return run(() => readStats(ctx, now, minutes));
}

async function readStats({ db }: SqlContext, now: number, minutes: number): Promise<{ queue: QueueGroup[]; minutes: MinuteStat[] }> {
  const current = now - (now % MINUTE_MS);
  const since = current - (minutes - 1) * MINUTE_MS;
  const queued = await db
    .selectFrom('builds')
    .select(['labels', (eb) => eb.fn.countAll<number>().as('n'), (eb) => eb.fn.min('created_at').as('oldest')])
    .where('state', '=', 'queued')
    .groupBy('labels')
    .execute();
  // A literal, not a parameter: PostgreSQL matches GROUP BY to SELECT by expression.
  const bucket = (col: string) => sql<number>`(${sql.ref(col)} - (${sql.ref(col)} % ${sql.lit(MINUTE_MS)}))`;
  const finished = await db
    .selectFrom('builds')
    .select([
      bucket('finished_at').as('m'),
      (eb) => eb.fn.countAll<number>().as('n'),
      sql<number>`sum(case when state in ('failed', 'timed_out') then 1 else 0 end)`.as('failed'),
    ])
    .where('finished_at', '>=', since)
    .groupBy(bucket('finished_at'))
    .execute();
  const assigned = await db
    .selectFrom('build_attempts')
    .innerJoin('builds', 'builds.id', 'build_attempts.build_id')
    .select([
      bucket('build_attempts.assigned_at').as('m'),
      (eb) => eb.fn.countAll<number>().as('n'),
      sql<number>`avg(build_attempts.assigned_at - builds.created_at)`.as('avg'),
      sql<number>`max(build_attempts.assigned_at - builds.created_at)`.as('max'),
    ])
    .where('build_attempts.attempt', '=', 1)
    .where('build_attempts.assigned_at', '>=', since)
    .groupBy(bucket('build_attempts.assigned_at'))
    .execute();
  const fin = new Map(finished.map((r) => [Number(r.m), r]));
  const asg = new Map(assigned.map((r) => [Number(r.m), r]));
  const series: MinuteStat[] = [];
  for (let m = since; m <= current; m += MINUTE_MS) {
    const f = fin.get(m);
    const a = asg.get(m);
    series.push({
      at: new Date(m).toISOString(),
      finished: Number(f?.n ?? 0),
      failed: Number(f?.failed ?? 0),
      assigned: Number(a?.n ?? 0),
      queueWaitAvgMs: a ? Math.round(Number(a.avg)) : null,
      queueWaitMaxMs: a ? Math.round(Number(a.max)) : null,
    });
  }
  return {
    queue: queued
      .map((r) => ({ labels: JSON.parse(r.labels) as string[], count: Number(r.n), oldest: Number(r.oldest) }))
      .sort((x, y) => x.oldest - y.oldest)
      .map((g) => ({ labels: g.labels, count: g.count, oldestCreatedAt: new Date(g.oldest).toISOString() })),
    minutes: series,
  };
}

/** Indexes for the history above (migration 0003). */
export async function createDashboardIndexes(db: Kysely<unknown>): Promise<void> {
  await sql`create index builds_finished on builds (finished_at) where finished_at is not null`.execute(db);
  await sql`create index build_attempts_first_assigned on build_attempts (assigned_at) where attempt = 1`.execute(db);
}
