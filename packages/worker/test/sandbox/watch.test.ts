/** The limit watcher on a fake clock: each counter it reads becomes the right breach, once. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeClock } from '@buildfleet/protocol';
import { waitFor } from '../support/wait.js';
import { LimitWatcher, diskUsage, limitsFromEnv, type CgroupEvents, type LimitBreach } from '../../src/sandbox/index.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-watch-'));
});
afterAll(() => fs.rm(dir, { recursive: true, force: true }));

const limits = limitsFromEnv({
  BUILDFLEET_LIMIT_CPU_SECONDS: '10',
  BUILDFLEET_LIMIT_MEMORY_MB: '100',
  BUILDFLEET_LIMIT_PROCESSES: '20',
  BUILDFLEET_LIMIT_DISK_MB: '1',
});

function watch(over: Partial<ConstructorParameters<typeof LimitWatcher>[0]> = {}) {
  const clock = new FakeClock();
  const seen: LimitBreach[] = [];
  const w = new LimitWatcher({ clock, limits, diskDirs: [], onBreach: (b) => seen.push(b), ...over });
  w.start();
  return { clock, seen, w };
}

describe('LimitWatcher', () => {
  it('an OOM kill in the cgroup is limit_memory, reported once', async () => {
    const ev: CgroupEvents = { oomKills: 0, pidsMax: 0 };
    const { clock, seen, w } = watch({ cgroup: { events: () => ev, cpuSeconds: () => 0 } });
    await clock.advance(1000);
    expect(seen).toEqual([]);
    ev.oomKills = 1;
    await clock.advance(250);
    ev.pidsMax = 5;
    await clock.advance(1000);
    expect(seen.map((b) => b.reason)).toEqual(['limit_memory']);
    expect(w.breach?.message).toMatch(/memory limit reached \(100 MiB\)/);
    w.stop();
  });

  it('refused forks are limit_processes; CPU time at the limit is limit_cpu', async () => {
    const forks = watch({ cgroup: { events: () => ({ oomKills: 0, pidsMax: 1 }), cpuSeconds: () => 0 } });
    await forks.clock.advance(250);
    expect(forks.seen.map((b) => b.reason)).toEqual(['limit_processes']);
    forks.w.stop();

    let cpu = 9.5;
    const busy = watch({ cgroup: { events: () => ({ oomKills: 0, pidsMax: 0 }), cpuSeconds: () => cpu } });
    await busy.clock.advance(1000);
    expect(busy.seen).toEqual([]);
    cpu = 10.2;
    await busy.clock.advance(250);
    expect(busy.seen.map((b) => b.reason)).toEqual(['limit_cpu']);
    expect(busy.seen[0]!.message).toContain('10.2 CPU seconds used');
    busy.w.stop();
  });

  it('without a cgroup, a process count at the limit is limit_processes', async () => {
    let n = 5;
    const { clock, seen, w } = watch({ countProcesses: () => n });
    await clock.advance(500);
    n = 20;
    await clock.advance(250);
    expect(seen.map((b) => b.reason)).toEqual(['limit_processes']);
    w.stop();
  });

  it('a workspace over the disk limit is limit_disk, found by a walk on the clock', async () => {
    const ws = await fs.mkdtemp(path.join(dir, 'ws-'));
    await fs.writeFile(path.join(ws, 'small'), Buffer.alloc(100_000, 1));
    const { clock, seen, w } = watch({ diskDirs: [ws], diskIntervalMs: 2000 });
    await clock.advance(10);
    await new Promise((r) => setImmediate(r));
    expect(seen).toEqual([]);
    await fs.writeFile(path.join(ws, 'big'), Buffer.alloc(2 * 1024 * 1024, 1));
    // The walk is real I/O: move the clock on until the scheduled walk has run and reported.
    await waitFor(async () => {
      await clock.advance(2000);
      return seen.length > 0;
    }, { what: 'the watcher to see it' });
    expect(seen.map((b) => b.reason)).toEqual(['limit_disk']);
    w.stop();
  });

  it('stops checking when stopped', async () => {
    let calls = 0;
    const { clock, w } = watch({
      cgroup: {
        events: () => {
          calls++;
          return { oomKills: 0, pidsMax: 0 };
        },
        cpuSeconds: () => 0,
      },
    });
    await clock.advance(500);
    w.stop();
    const at = calls;
    await clock.advance(5000);
    expect(calls).toBe(at);
    expect(clock.pending()).toBe(0);
  });
});

describe('diskUsage', () => {
  it('counts allocated blocks, a hard-linked file once, and no symlink target', async () => {
    const d = await fs.mkdtemp(path.join(dir, 'du-'));
    await fs.writeFile(path.join(d, 'a'), Buffer.alloc(1024 * 1024, 7));
    const one = await diskUsage([d]);
    expect(one).toBeGreaterThanOrEqual(1024 * 1024);
    await fs.link(path.join(d, 'a'), path.join(d, 'b'));
    await fs.symlink('/usr', path.join(d, 'usr'));
    const again = await diskUsage([d]);
    expect(again - one).toBeLessThan(64 * 1024);
  });
});
