/**
 * Refusing a second service on a data directory in use, before it opens
 * anything: two controllers on one SQLite file, or `up` starting its worker
 * where another worker already runs, would fight over the same state.
 *
 * The locks are the worker package's `IdentityLock` (an abstract Unix socket
 * named after the directory, freed by the kernel however its holder dies):
 * the worker's on `<dataDir>/worker`, and the same kind on `<dataDir>` itself
 * for a controller on SQLite.
 */
import { join } from 'node:path';
import { systemClock } from '@buildfleet/protocol';
import { CliError } from './errors.js';
import type { WorkerModule } from './services.js';

type Lock = Awaited<ReturnType<WorkerModule['IdentityLock']['acquire']>>;

/**
 * Takes the lock of `dir`, or throws a CliError naming `dataDir`, the other
 * process's pid and the way out. `what` is the service that holds it.
 */
async function take(mod: WorkerModule, dir: string, dataDir: string, what: string): Promise<Lock> {
  try {
    return await mod.IdentityLock.acquire(dir, systemClock);
  } catch (err) {
    if (!(err instanceof mod.IdentityLockedError)) throw err;
    const pid = err.pid === undefined ? 'pid unknown' : `pid ${err.pid}`;
    throw new CliError(
      `the data directory ${dataDir} is in use by a running buildfleet ${what} (${pid}): stop it first, or give this one another --data-dir`,
    );
  }
}

/** Held by a controller on SQLite for as long as it runs: a second one on the same file is refused. */
export function lockControllerDataDir(mod: WorkerModule, dataDir: string): Promise<Lock> {
  return take(mod, dataDir, dataDir, 'controller');
}

/**
 * Checks that no worker runs on `dataDir` (for `up`, before its controller
 * starts); the lock is held until `release`, just before `up` starts its own.
 */
export function lockWorkerDataDir(mod: WorkerModule, dataDir: string): Promise<Lock> {
  return take(mod, join(dataDir, 'worker'), dataDir, 'worker');
}
