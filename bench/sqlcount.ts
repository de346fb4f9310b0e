/**
 * Counts SQL statements at the driver, not by estimate: every `pg`
 * `Client.query` and every better-sqlite3 statement execution (`run`, `get`,
 * `all`, `iterate`) and `prepare`. Each one is attributed to the HTTP route
 * whose request caused it (an AsyncLocalStorage entered when the server
 * emits 'request' and whenever the request stream emits, so body parsing
 * keeps it), or to `background` (reaper, clock re-sync, notifier).
 *
 * A transaction is a `BEGIN` or a statement run outside one (autocommit), as
 * PostgreSQL's `xact_commit` counts them. Install before the controller opens
 * its store; patches are process-wide and meant only for the benchmark.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import http from 'node:http';
import Database from 'better-sqlite3';
import pg from 'pg';

export interface StatementCounts {
  /** Statements executed (BEGIN and COMMIT included). */
  statements: number;
  /** Transactions: BEGINs plus statements run outside a transaction. */
  transactions: number;
  /** SQLite `prepare` calls (0 on PostgreSQL). */
  prepares: number;
  /** Statements by kind: begin, commit, rollback, select, insert, update, delete, notify, other. */
  byKind: Record<string, number>;
  /** Per route (`POST /workers/:id/poll`) or `background`: requests and what they ran. */
  byRoute: Record<string, { requests: number; statements: number; transactions: number; byKind: Record<string, number> }>;
  /** Distinct statement texts per route, in first-run order, with the first run's parameters (at most 200 in all). */
  texts: Array<{ route: string; sql: string; params: unknown[]; count: number }>;
}

const route = new AsyncLocalStorage<string>();
let counts: StatementCounts = empty();

function empty(): StatementCounts {
  return { statements: 0, transactions: 0, prepares: 0, byKind: {}, byRoute: {}, texts: [] };
}

/** The counts so far; `reset` starts again from zero. */
export function takeCounts(reset = false): StatementCounts {
  const c = counts;
  if (reset) {
    counts = empty();
    textIndex.clear();
  }
  return c;
}

/** `GET /api/v1/builds/0190…/logs?x` → `GET /builds/:id/logs`. */
export function routeKey(method: string, url: string): string {
  const path = url.split('?')[0]!.replace(/^\/api\/v1/, '');
  const parts = path.split('/');
  for (let i = 1; i < parts.length; i++) {
    if (parts[i - 1] === 'artifacts' && i >= 3) parts[i] = ':name';
    else if (/^[0-9a-f]{8}-[0-9a-f-]{27}$/i.test(parts[i]!)) parts[i] = ':id';
  }
  return `${method} ${parts.join('/')}`;
}

/** The statement's kind from its first keyword (`notify` for `pg_notify`). */
export function kindOf(sql: string): string {
  const s = sql.trimStart().toLowerCase();
  if (s.includes('pg_notify')) return 'notify';
  const word = /^[a-z]+/.exec(s)?.[0] ?? 'other';
  if (word === 'start') return 'begin';
  if (word === 'with') return /\b(update|insert|delete)\b/.exec(s)?.[1] ?? 'select';
  return ['begin', 'commit', 'rollback', 'select', 'insert', 'update', 'delete'].includes(word) ? word : 'other';
}

function routeEntry(key: string) {
  return (counts.byRoute[key] ??= { requests: 0, statements: 0, transactions: 0, byKind: {} });
}

const textIndex = new Map<string, { count: number }>();

function record(sql: string, inTransaction: boolean, params: unknown): void {
  const kind = kindOf(sql);
  const tx = kind === 'begin' || (!inTransaction && kind !== 'commit' && kind !== 'rollback') ? 1 : 0;
  const key = route.getStore() ?? 'background';
  const r = routeEntry(key);
  const seen = textIndex.get(`${key}\0${sql}`);
  if (seen) seen.count++;
  else if (counts.texts.length < 200) {
    const t = { route: key, sql, params: Array.isArray(params) ? params.map((p) => (Buffer.isBuffer(p) ? `<${p.length} bytes>` : p)) : [], count: 1 };
    counts.texts.push(t);
    textIndex.set(`${key}\0${sql}`, t);
  }
  counts.statements++;
  counts.transactions += tx;
  counts.byKind[kind] = (counts.byKind[kind] ?? 0) + 1;
  r.statements++;
  r.transactions += tx;
  r.byKind[kind] = (r.byKind[kind] ?? 0) + 1;
}

let installed = false;

/** Patches `http.Server`, `pg.Client` and better-sqlite3 once. */
export function installCounters(): void {
  if (installed) return;
  installed = true;

  const emit = http.Server.prototype.emit as (this: unknown, event: string | symbol, ...args: unknown[]) => boolean;
  http.Server.prototype.emit = function (this: http.Server, event: string | symbol, ...args: unknown[]): boolean {
    if (event !== 'request') return emit.call(this, event, ...args);
    const req = args[0] as http.IncomingMessage;
    const key = routeKey(req.method ?? 'GET', req.url ?? '/');
    routeEntry(key).requests++;
    const reqEmit = req.emit;
    req.emit = function (this: http.IncomingMessage, ...a: Parameters<typeof reqEmit>) {
      return route.run(key, () => reqEmit.apply(this, a));
    } as typeof reqEmit;
    return route.run(key, () => emit.call(this, event, ...args));
  } as typeof http.Server.prototype.emit;

  type TxClient = pg.Client & { __benchInTx?: boolean };
  const query = pg.Client.prototype.query as (...a: unknown[]) => unknown;
  (pg.Client.prototype as unknown as { query: unknown }).query = function (this: TxClient, ...a: unknown[]) {
    const first = a[0] as string | { text?: string } | undefined;
    const sql = typeof first === 'string' ? first : (first?.text ?? '');
    record(sql, this.__benchInTx === true, Array.isArray(a[1]) ? a[1] : typeof first === 'object' ? (first as { values?: unknown }).values : undefined);
    const kind = kindOf(sql);
    if (kind === 'begin') this.__benchInTx = true;
    else if (kind === 'commit' || kind === 'rollback') this.__benchInTx = false;
    return query.apply(this, a);
  };

  const probe = new Database(':memory:');
  const stmtProto = Object.getPrototypeOf(probe.prepare('select 1')) as Record<string, (...a: unknown[]) => unknown>;
  probe.close();
  for (const m of ['run', 'get', 'all', 'iterate']) {
    const orig = stmtProto[m]!;
    stmtProto[m] = function (this: { source: string; database: Database.Database }, ...a: unknown[]) {
      record(this.source, this.database.inTransaction, a.length === 1 && Array.isArray(a[0]) ? a[0] : a);
      return orig.apply(this, a);
    };
  }
  const dbProto = Database.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
  const prepare = dbProto.prepare!;
  dbProto.prepare = function (this: unknown, ...a: unknown[]) {
    counts.prepares++;
    return prepare.apply(this, a);
  };
}
