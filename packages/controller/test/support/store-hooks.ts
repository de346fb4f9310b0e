/**
 * Deterministic barriers inside store transactions for the race tests,
 * injected through the store's one extension point, the worker row lock
 * decorator (`WorkerLockDecorator`): production code carries no test hook.
 */
import type { WorkerLockDecorator, WorkerLockOp } from '../../src/store/index.js';

/** Runs while a transaction holds the worker's row lock (PostgreSQL) or the write lock (SQLite). */
export type AfterWorkerLock = (op: WorkerLockOp, workerId: string) => Promise<void> | void;

/**
 * A decorator that calls `hook` right after the worker row is locked, inside
 * the transaction; the operation continues when `hook`'s promise resolves.
 */
export function afterWorkerLock(hook: AfterWorkerLock): WorkerLockDecorator {
  return (lock) => async (trx, workerId, op) => {
    const row = await lock(trx, workerId, op);
    await hook(op, workerId);
    return row;
  };
}
