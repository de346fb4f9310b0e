/**
 * Build cgroups. On a fake cgroup tree (plain files): which version is
 * chosen, which files get which limits, how the kernel's counters are read.
 * On the real host (root only): a leftover build cgroup of a previous run is
 * found and emptied, its processes killed while frozen.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '@buildfleet/protocol';
import { BuildCgroup, parseKeyed, setupCgroups, type CgroupHost } from '../../src/sandbox/index.js';
import { removeCgroupHost, testCgroupHost } from '../support/sandbox.js';
import { expectAllGone } from '../support/procs.js';
import { waitFor } from '../support/wait.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-cgfake-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const read = (p: string) => fs.readFile(p, 'utf8');

describe('setupCgroups on a fake tree', () => {
  it('cgroup v2 with memory and pids: enables them for its parent and writes the limits', async () => {
    const mnt = path.join(dir, 'v2');
    const own = path.join(mnt, 'system.slice', 'bf.service');
    await fs.mkdir(own, { recursive: true });
    await fs.writeFile(path.join(own, 'cgroup.controllers'), 'cpuset cpu io memory pids\n');
    await fs.writeFile(path.join(own, 'cgroup.subtree_control'), '');
    const r = setupCgroups('k1', {
      mountinfo: `30 1 0:26 / ${mnt} rw,nosuid - cgroup2 cgroup2 rw\n`,
      selfCgroup: '0::/system.slice/bf.service\n',
      pid: 1234,
    });
    expect(r).toEqual({ ok: true, host: { version: 2, parent: path.join(own, 'buildfleet-k1') } });
    expect(await read(path.join(own, 'cgroup.subtree_control'))).toBe('+memory +pids +cpu');
    expect(await read(path.join(own, 'buildfleet-k1', 'cgroup.subtree_control'))).toBe('+memory +pids +cpu');

    const host = (r as { host: CgroupHost }).host;
    const cg = BuildCgroup.create(host, 'b1', { memoryMb: 64, processes: 50 });
    const b = path.join(own, 'buildfleet-k1', 'b1');
    expect(await read(path.join(b, 'memory.max'))).toBe(String(64 * 1024 * 1024));
    expect(await read(path.join(b, 'pids.max'))).toBe('50');
    await fs.writeFile(path.join(b, 'memory.events'), 'low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n');
    await fs.writeFile(path.join(b, 'pids.events'), 'max 3\n');
    await fs.writeFile(path.join(b, 'cpu.stat'), 'usage_usec 2500000\nuser_usec 2000000\n');
    expect(cg.events()).toEqual({ oomKills: 1, pidsMax: 3 });
    expect(cg.cpuSeconds()).toBe(2.5);
    cg.add(4321);
    expect(await read(path.join(b, 'cgroup.procs'))).toBe('4321');
    expect(BuildCgroup.leftovers(host).map((c) => c.paths)).toEqual([[b]]);
  });

  it('cgroup v1: a build cgroup in each hierarchy below its own cgroup, and v1 counters', async () => {
    const mnt = path.join(dir, 'v1');
    const mi: string[] = [];
    for (const c of ['memory', 'pids', 'cpu,cpuacct', 'freezer']) {
      await fs.mkdir(path.join(mnt, c, 'own'), { recursive: true });
      mi.push(`40 1 0:3${mi.length} / ${path.join(mnt, c)} rw - cgroup cgroup rw,${c}`);
    }
    const r = setupCgroups('k2', {
      mountinfo: mi.join('\n'),
      selfCgroup: '5:memory:/own\n4:pids:/own\n3:cpu,cpuacct:/own\n2:freezer:/own\n1:name=systemd:/\n0::/\n',
      pid: 1,
    });
    expect(r.ok).toBe(true);
    const host = (r as { host: CgroupHost }).host;
    expect(host).toEqual({
      version: 1,
      parents: {
        memory: path.join(mnt, 'memory/own/buildfleet-k2'),
        pids: path.join(mnt, 'pids/own/buildfleet-k2'),
        cpuacct: path.join(mnt, 'cpu,cpuacct/own/buildfleet-k2'),
        freezer: path.join(mnt, 'freezer/own/buildfleet-k2'),
      },
    });
    const cg = BuildCgroup.create(host, 'b1', { memoryMb: 10, processes: 7 });
    expect(await read(path.join(mnt, 'memory/own/buildfleet-k2/b1/memory.limit_in_bytes'))).toBe(String(10 * 1024 * 1024));
    expect(await read(path.join(mnt, 'pids/own/buildfleet-k2/b1/pids.max'))).toBe('7');
    await fs.writeFile(path.join(mnt, 'memory/own/buildfleet-k2/b1/memory.oom_control'), 'oom_kill_disable 0\nunder_oom 0\noom_kill 2\n');
    await fs.writeFile(path.join(mnt, 'pids/own/buildfleet-k2/b1/pids.events'), 'max 0\n');
    await fs.writeFile(path.join(mnt, 'cpu,cpuacct/own/buildfleet-k2/b1/cpuacct.usage'), '1500000000\n');
    expect(cg.events()).toEqual({ oomKills: 2, pidsMax: 0 });
    expect(cg.cpuSeconds()).toBe(1.5);
  });

  it('neither: says why', () => {
    const r = setupCgroups('k3', { mountinfo: '22 1 0:5 / /proc rw - proc proc rw\n', selfCgroup: '0::/\n', pid: 1 });
    expect(r.ok).toBe(false);
    expect((r as { reason: string }).reason).toMatch(/cgroup/);
  });

  it('v2 without the memory controller, nor v1: unavailable', async () => {
    const mnt = path.join(dir, 'v2-nomem');
    await fs.mkdir(mnt, { recursive: true });
    await fs.writeFile(path.join(mnt, 'cgroup.controllers'), 'cpu io\n');
    const r = setupCgroups('k4', { mountinfo: `30 1 0:26 / ${mnt} rw - cgroup2 cgroup2 rw\n`, selfCgroup: '0::/\n', pid: 1 });
    expect(r.ok).toBe(false);
    expect((r as { reason: string }).reason).toMatch(/memory and pids/);
  });

  it('parseKeyed reads "key value" lines', () => {
    expect(parseKeyed('max 3\noom_kill 0\nbad\n')).toEqual({ max: 3, oom_kill: 0 });
  });
});

describe('a real build cgroup left behind by a previous run', () => {
  let host: CgroupHost | undefined;
  beforeAll(() => {
    host = testCgroupHost();
  });
  afterAll(() => removeCgroupHost(host));

  it('is found by the next run and emptied, also of a process that forks while it dies', async (ctx) => {
    if (!host) ctx.skip();
    const cg = BuildCgroup.create(host!, 'left-behind', { memoryMb: 256, processes: 100 });
    const child = spawn('/bin/sh', ['-c', 'read _; while :; do sleep 1000 & sleep 0.01; done'], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
    cg.add(child.pid!);
    child.stdin.end('\n');
    child.unref();
    await waitFor(() => cg.procs().length > 2, { what: 'the forking processes in the cgroup' });
    const before = cg.procs();

    const found = BuildCgroup.leftovers(host!);
    expect(found.map((c) => c.paths)).toEqual([cg.paths]);
    expect(await found[0]!.killAll(systemClock)).toEqual([]);
    await expectAllGone(before);
    found[0]!.remove();
    for (const p of cg.paths) expect(existsSync(p)).toBe(false);
  });
});
