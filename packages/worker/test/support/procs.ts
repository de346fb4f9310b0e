/** Process checks for tests (zombies count as gone: nobody may reap orphans in a container). */
import { isAlive } from '../../src/process.js';

export function alivePids(pids: number[]): number[] {
  return pids.filter((p) => isAlive(p));
}

/** Pids printed by a build as `PID <n>` lines. */
export function pidsFromLog(log: string): number[] {
  return [...log.matchAll(/^PID (\d+)$/gm)].map((m) => Number(m[1]));
}
