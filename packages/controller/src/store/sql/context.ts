/**
 * What every SQL module of the store is handed: the database, its dialect,
 * the worker row lock, and the two ways to run an operation (`run` for a
 * single statement or a read, `tx` for a write transaction). The row-lock
 * helpers here are the only dialect switch most modules need; a module whose
 * SQL differs more (the claim, the label filter, the batch transition) keeps
 * its two variants side by side in that module.
 *
 * Concurrency (docs/design.md "Concurrency rules"):
 * - every write transaction excludes the others on SQLite (`BEGIN IMMEDIATE`,
 *   see `../sqlite-driver.ts`); on PostgreSQL a transaction that acts for a
 *   worker locks the worker's row first (`FOR UPDATE`), then build rows;
 * - every build state change takes its SET values from
 *   `domain/transition.ts` and is conditional on what it read (see
 *   `transitions.ts`); zero rows = a lost race, never a silent overwrite.
 */
import type { Kysely, Transaction } from 'kysely';
import { isUniqueViolation, mapDbError } from '../errors.js';
import type { DB, Dialect } from '../schema.js';
import type { WorkerRow } from './rows.js';

/** A connection or a transaction: what a read can run on. */
export type Db = Kysely<DB> | Transaction<DB>;

/** Minimal logger (pino-compatible). */
export interface StoreLogger {
  warn(obj: object, msg?: string): void;
}

/** The store operations that lock a worker's row (named for decorators of `WorkerLock`). */
export type WorkerLockOp = 'poll' | 'heartbeat' | 'reregister' | 'deleteWorker' | 'deregister';

/**
 * Reads and locks a worker's row inside `trx` (PostgreSQL `FOR UPDATE`; on
 * SQLite the transaction's `BEGIN IMMEDIATE` already excludes every writer).
 * Resolves `undefined` when the worker does not exist. While the returned
 * promise's transaction lives, no poll for this worker can claim.
 */
export type WorkerLock = (trx: Transaction<DB>, workerId: string, op: WorkerLockOp) => Promise<WorkerRow | undefined>;

/**
 * Wraps the worker row lock: the store's one extension point inside a
 * transaction. The race tests use it to stop at a barrier while the lock is
 * held (`test/support/store-hooks.ts`); tracing could use it too. Production
 * passes none, so the store's code has no test-only branch.
 */
export type WorkerLockDecorator = (lock: WorkerLock) => WorkerLock;

export interface SqlContext {
  readonly db: Kysely<DB>;
  readonly dialect: Dialect;
  readonly logger: StoreLogger | undefined;
  /** The worker row lock (possibly decorated). */
  readonly lockWorker: WorkerLock;
}

/**
 * Runs one store operation: maps driver errors to `ApiError('UNAVAILABLE')`,
 * and re-runs the whole operation (up to 3 times) after a unique violation
 * from a concurrent duplicate insert, so the retry finds the row and gives
 * the idempotent answer.
 */
export async function run<T>(fn: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await fn();
    } catch (err) {
      if (i < 3 && isUniqueViolation(err)) continue;
      throw mapDbError(err);
    }
  }
}

/** Runs `fn` in one write transaction under `run`'s error mapping and retries. */
export function tx<T>(ctx: SqlContext, fn: (trx: Transaction<DB>) => Promise<T>): Promise<T> {
  return run(() => ctx.db.transaction().execute(fn));
}

/** `FOR UPDATE` on PostgreSQL; unchanged on SQLite, whose write transactions already exclude each other. */
export function forUpdate<Q extends { forUpdate(): Q }>(ctx: SqlContext, q: Q): Q {
  return ctx.dialect === 'postgres' ? q.forUpdate() : q;
}

/** `FOR SHARE` on PostgreSQL (readers of a row that must not change under them); unchanged on SQLite. */
export function forShare<Q extends { forShare(): Q }>(ctx: SqlContext, q: Q): Q {
  return ctx.dialect === 'postgres' ? q.forShare() : q;
}

/** `FOR UPDATE SKIP LOCKED` on PostgreSQL, so concurrent controllers take disjoint rows; unchanged on SQLite. */
export function forUpdateSkipLocked<Q extends { forUpdate(): Q; skipLocked(): Q }>(ctx: SqlContext, q: Q): Q {
  return ctx.dialect === 'postgres' ? q.forUpdate().skipLocked() : q;
}

/** The production `WorkerLock`: a plain `SELECT … FOR UPDATE` of the worker row. */
export function workerRowLock(dialect: Dialect): WorkerLock {
  return (trx, workerId) => {
    const q = trx.selectFrom('workers').selectAll().where('id', '=', workerId);
    return (dialect === 'postgres' ? q.forUpdate() : q).executeTakeFirst();
  };
}
