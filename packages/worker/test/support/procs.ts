/** Process checks for tests (zombies count as gone: nobody may reap orphans in a container). */
import { isAlive } from '../../src/process.js';

export function alivePids(pids: number[]): number[] {
  return pids.filter((p) => isAlive(p));
}

/** Pids printed by a build as `PID <n>` lines. */
export function pidsFromLog(log: string): number[] {
  return [...log.matchAll(/^PID (\d+)$/gm)].map((m) => Number(m[1]));
}

/**
 * Resolves when none of `pids` is alive. SIGKILL is delivered asynchronously,
 * so "killed" is checked with a short deadline (far below any grace period
 * the tests use), not the instant the signal was sent.
 */
export async function expectAllGone(pids: number[], timeoutMs = 2_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (alivePids(pids).length > 0) {
    if (performance.now() > deadline) throw new Error(`still alive after ${timeoutMs}ms: ${alivePids(pids).join(', ')}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
