/**
 * Waits until the process is quiet: no file-system request in flight and a
 * few turns of the event loop without one. The scheduler settles before it
 * fires the next timer, so real I/O (SQLite is synchronous; workspaces,
 * identity files and blobs are not) always completes at the same simulated
 * instant, whatever the disk's speed. With UV_THREADPOOL_SIZE=1 (set by
 * main.ts) concurrent requests also complete in the order they were made.
 */
import { setImmediate as tick } from 'node:timers/promises';

function busy(): boolean {
  for (const r of process.getActiveResourcesInfo()) if (r.includes('Req') || r.toLowerCase().includes('zlib')) return true;
  return false;
}

/** Resolves once nothing was in flight for `quietTurns` consecutive turns. */
export async function settle(quietTurns = 3): Promise<void> {
  let quiet = 0;
  for (let i = 0; quiet < quietTurns; i++) {
    await tick();
    quiet = busy() ? 0 : quiet + 1;
    if (i > 1_000_000) throw new Error('settle: I/O never went quiet');
  }
}
