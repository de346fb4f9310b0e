/**
 * The launcher with real processes, real bubblewrap and (as root) real
 * cgroups: nothing a build starts survives it in either executor, with or
 * without a cgroup; the sandbox hides the host and allows writes only to
 * the workspace and /tmp; the limits end a build with the right cause.
 */
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '@buildfleet/protocol';
import {
  BuildCgroup,
  launchBuild,
  limitFromExit,
  limitsFromEnv,
  effectiveLimits,
  rootEntries,
  type CgroupHost,
  type LaunchSpec,
  type LaunchedBuild,
} from '../../src/sandbox/index.js';
import { SANDBOX, TEST_BUILD_USER, buildDirs, describeSandbox, removeCgroupHost, testCgroupHost } from '../support/sandbox.js';
import { alivePids, expectAllGone, pidsFromLog } from '../support/procs.js';
import { waitFor as waitUntil } from '../support/wait.js';

const waitFor = (cond: () => boolean) => waitUntil(cond, { what: 'the condition' });

let base: string;
let cgHost: CgroupHost | undefined;
let n = 0;

beforeAll(async () => {
  base = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-launch-'));
  cgHost = testCgroupHost();
});
const cgroups: BuildCgroup[] = [];
afterAll(async () => {
  for (const c of cgroups) {
    await c.killAll(systemClock);
    c.remove();
  }
  await removeCgroupHost(cgHost);
  await fs.rm(base, { recursive: true, force: true });
});

type Mode = { name: string; sandbox: boolean; cgroup: boolean };
const MODES: Mode[] = [
  { name: 'shell, no cgroup (process group + cookie)', sandbox: false, cgroup: false },
  { name: 'shell, cgroup', sandbox: false, cgroup: true },
  { name: 'sandbox, no cgroup (PID namespace)', sandbox: true, cgroup: false },
  { name: 'sandbox, cgroup', sandbox: true, cgroup: true },
];

interface Started {
  b: LaunchedBuild;
  output: () => string;
  cgroup: BuildCgroup | undefined;
  dirs: { workspace: string; tmp: string; root: string };
}

const NO_LIMITS = limitsFromEnv({}, { cpuSeconds: null, memoryMb: null, processes: null, fileSizeMb: null, diskMb: null });

async function start(mode: Mode, script: string, extra: Partial<LaunchSpec> = {}): Promise<Started> {
  const dirs = await buildDirs(base, `b${n++}`);
  const limits = extra.limits ?? NO_LIMITS;
  const cgroup = mode.cgroup && cgHost ? BuildCgroup.create(cgHost, `build-${process.pid}-${n}`, limits) : undefined;
  if (cgroup) cgroups.push(cgroup);
  if (mode.sandbox && !SANDBOX.ok) throw new Error('no sandbox');
  const b = launchBuild({
    script,
    env: { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: '/workspace', LANG: 'C.UTF-8' },
    workspace: dirs.workspace,
    tmp: dirs.tmp,
    limits,
    ...(TEST_BUILD_USER ? { runAs: TEST_BUILD_USER } : {}),
    ...(cgroup ? { cgroup } : {}),
    ...(mode.sandbox && SANDBOX.ok ? { sandbox: { bwrap: SANDBOX.bwrap, mounts: { root: rootEntries(), hide: [], network: false, disableUserns: SANDBOX.disableUserns } } } : {}),
    ...(!mode.sandbox && !cgroup ? { cookie: `test-${process.pid}-${n}` } : {}),
    ...extra,
  });
  let out = '';
  b.child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  return { b, output: () => out, cgroup, dirs };
}

/** Runs to the end of the first process, kills what is left, and returns the output. */
async function finish(s: Started): Promise<{ exit: { code: number | null; signal: NodeJS.Signals | null }; out: string }> {
  const exit = await s.b.exited;
  expect(await s.b.killAll(systemClock)).toEqual([]);
  await s.b.closed;
  return { exit, out: s.output() };
}

const ESCAPE = `
trap '' TERM HUP
setsid sh -c 'trap "" TERM HUP; sleep 1000 & echo PID $!; nohup sleep 1001 >/dev/null 2>&1 & echo PID $!' &
wait
( ( sleep 1002 & echo PID $! ) & )
sleep 0.1
echo done
`;

for (const mode of MODES) {
  const suite = mode.sandbox ? describeSandbox : describe;
  suite(`launch: ${mode.name}`, () => {
    it('leaves no process behind after a double fork, setsid and nohup that ignore SIGTERM', async (ctx) => {
      if (mode.cgroup && !cgHost) ctx.skip();
      const s = await start(mode, ESCAPE);
      const exit = await s.b.exited;
      expect(exit.code).toBe(0);
      expect(s.output()).toContain('done');
      const pids = pidsFromLog(s.output());
      expect(pids).toHaveLength(3);
      if (mode.sandbox) {
        // The script was the namespace's main process: with it, bwrap and (--die-with-parent) its init end, and so the namespace.
        await waitFor(() => s.b.members().length === 0);
        if (s.cgroup) await waitFor(() => s.cgroup!.procs().length === 0);
      } else {
        // Outside a namespace they outlive the script until the launcher kills them.
        expect(alivePids(pids)).toEqual(pids);
        expect(s.b.members().length).toBeGreaterThanOrEqual(3);
      }
      expect(await s.b.killAll(systemClock)).toEqual([]);
      expect(s.b.members()).toEqual([]);
      if (!mode.sandbox) await expectAllGone(pids);
      await s.b.closed; // every holder of the output pipe is gone
    });

    it('stops gracefully: SIGTERM reaches the script, which may clean up', async (ctx) => {
      if (mode.cgroup && !cgHost) ctx.skip();
      const s = await start(mode, `trap 'echo got TERM; exit 7' TERM; echo ready; sleep 1000 & wait`);
      await waitFor(() => s.output().includes('ready'));
      await waitFor(() => s.b.members().length >= 2);
      expect(s.b.terminate()).toBeGreaterThan(0);
      const { exit, out } = await finish(s);
      expect(out).toContain('got TERM');
      expect(exit.code).toBe(7);
    });

    it('ends a script over its CPU time with SIGXCPU (RLIMIT_CPU)', async (ctx) => {
      if (mode.cgroup && !cgHost) ctx.skip();
      const s = await start(mode, 'while :; do :; done', { limits: effectiveLimits(NO_LIMITS, { cpuSeconds: 1 }) });
      const { exit } = await finish(s);
      expect(limitFromExit(exit)).toBe('cpuSeconds');
    });

    it('ends a write over the file size limit with SIGXFSZ (RLIMIT_FSIZE), and the file stops at the limit', async (ctx) => {
      if (mode.cgroup && !cgHost) ctx.skip();
      const s = await start(mode, 'head -c 3000000 /dev/zero > big', { limits: effectiveLimits(NO_LIMITS, { fileSizeMb: 1 }) });
      const { exit } = await finish(s);
      expect(limitFromExit(exit)).toBe('fileSizeMb');
      expect((await fs.stat(path.join(s.dirs.workspace, 'big'))).size).toBe(1024 * 1024);
    });

    it(`refuses forks over the process limit (${mode.cgroup ? 'pids.max' : 'RLIMIT_NPROC'})`, async (ctx) => {
      if (mode.cgroup && !cgHost) ctx.skip();
      // With a shared build user and no cgroup, RLIMIT_NPROC counts every process of that user: not per build.
      if (!mode.sandbox && !mode.cgroup) ctx.skip();
      const s = await start(mode, 'i=0; while [ $i -lt 60 ]; do sleep 1000 & i=$((i+1)); done; echo started all', {
        limits: effectiveLimits(NO_LIMITS, { processes: 20 }),
      });
      const { exit, out } = await finish(s);
      expect(out).toMatch(/fork/i);
      expect(out).not.toContain('started all');
      expect(exit.code).not.toBe(0);
      if (s.cgroup) expect(s.cgroup.events().pidsMax).toBeGreaterThan(0);
    });
  });
}

describe('launch: memory limit', () => {
  it('a memory hog in a cgroup is ended by the OOM killer, which the cgroup counts', async (ctx) => {
    if (!cgHost) ctx.skip();
    const s = await start(MODES[1]!, 'x=$(head -c 400000000 /dev/zero | tr "\\0" a); echo survived ${#x}', {
      limits: effectiveLimits(NO_LIMITS, { memoryMb: 64 }),
    });
    const { out } = await finish(s);
    expect(out).not.toContain('survived');
    expect(s.cgroup!.events().oomKills).toBeGreaterThan(0);
  });

  it('without a cgroup, RLIMIT_AS refuses the allocation', async () => {
    const s = await start(MODES[0]!, 'x=$(head -c 400000000 /dev/zero | tr "\\0" a); echo survived ${#x}', {
      limits: effectiveLimits(NO_LIMITS, { memoryMb: 64 }),
    });
    const { out } = await finish(s);
    expect(out).not.toContain('survived 400000000');
  });
});

describeSandbox('launch: what a sandboxed build can reach', () => {
  const mode = MODES[2]!;

  it('sees no host process, cannot signal the worker, runs as uid 1000 without capabilities', async () => {
    const s = await start(mode, `
      echo "procs $(ls /proc | grep -c '^[0-9]')"
      kill -0 ${process.pid} 2>/dev/null && echo "worker reachable" || echo "worker unreachable"
      echo "id $(id -u):$(id -g)"
      grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
      unshare -U true 2>/dev/null && echo "nested userns" || echo "no nested userns"
    `);
    const { exit, out } = await finish(s);
    expect(exit.code).toBe(0);
    expect(Number(/procs (\d+)/.exec(out)![1])).toBeLessThan(10);
    expect(out).toContain('worker unreachable');
    expect(out).toContain('id 1000:1000');
    expect(out).toMatch(/CapEff:\s+0+\n/);
    expect(out).toMatch(/NoNewPrivs:\s+1/);
    if (SANDBOX.ok && SANDBOX.disableUserns) expect(out).toContain('no nested userns');
  });

  it('writes only to its workspace and /tmp; the host sees its files owned by the build user', async () => {
    const s = await start(mode, `
      for p in / /etc /usr /usr/local /opt /var /home /root /dev /proc /run /srv; do
        if touch "$p/bf-probe" 2>/dev/null; then echo "WROTE $p"; fi
      done
      touch /workspace/ok /tmp/ok /var/tmp/ok2 && echo wrote-allowed
      ls /home /root /run /srv /mnt /work 2>&1 | head -n 3
    `);
    const { exit, out } = await finish(s);
    expect(exit.code).toBe(0);
    expect(out).not.toContain('WROTE');
    expect(out).toContain('wrote-allowed');
    const st = await fs.stat(path.join(s.dirs.workspace, 'ok'));
    expect(st.uid).toBe(TEST_BUILD_USER?.uid ?? process.getuid!());
    expect((await fs.readdir(s.dirs.tmp)).sort()).toEqual(['ok', 'ok2']);
  });

  it('a worker directory inside a bound directory is covered: the build sees it empty', async () => {
    // Outside /tmp (the sandbox's /tmp is the build's own): bound at /srv/bf-shown.
    const shown = await fs.mkdtemp(path.join(base, 'shown-'));
    await fs.chmod(shown, 0o755);
    await fs.mkdir(path.join(shown, 'worker-data'), { mode: 0o755 });
    await fs.writeFile(path.join(shown, 'worker-data', 'identity.json'), '{"workerSecret":"bfs_x"}', { mode: 0o644 });
    await fs.writeFile(path.join(shown, 'visible.txt'), 'ok', { mode: 0o644 });
    const s = await start(mode, 'cat /srv/bf-shown/visible.txt; echo; ls -A /srv/bf-shown/worker-data | wc -l; cat /srv/bf-shown/worker-data/identity.json 2>&1 || true', {
      sandbox: {
        bwrap: SANDBOX.ok ? SANDBOX.bwrap : 'bwrap',
        mounts: {
          root: [...rootEntries(), { name: '/srv/bf-shown', source: shown }],
          hide: ['/srv/bf-shown/worker-data'],
          network: false,
          disableUserns: SANDBOX.ok && SANDBOX.disableUserns,
        },
      },
    });
    const { out } = await finish(s);
    expect(out).toMatch(/^ok\n0\n/);
    expect(out).not.toContain('bfs_x');
  });

  it('has no network unless shared: a TCP connection to a host port fails, then works with network', async () => {
    const server = net.createServer((c) => c.end('hello\n'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const script = `bash -c 'exec 3<>/dev/tcp/127.0.0.1/${port} && head -n1 <&3' 2>/dev/null && echo CONNECTED || echo REFUSED`;
    try {
      const closed = await finish(await start(mode, script));
      expect(closed.out).toContain('REFUSED');
      const open = await finish(
        await start(mode, script, {
          sandbox: { bwrap: SANDBOX.ok ? SANDBOX.bwrap : 'bwrap', mounts: { root: rootEntries(), hide: [], network: true, disableUserns: SANDBOX.ok && SANDBOX.disableUserns } },
        }),
      );
      expect(open.out).toContain('hello');
      expect(open.out).toContain('CONNECTED');
    } finally {
      server.close();
    }
  });

  it('gets exactly the environment it is given', async () => {
    const s = await start(mode, 'env | sort', { env: { PATH: '/usr/bin:/bin', HOME: '/workspace', LANG: 'C.UTF-8', FOO: 'bar' } });
    const { out } = await finish(s);
    const names = out
      .trim()
      .split('\n')
      .map((l) => l.split('=')[0])
      .filter((k) => k !== 'PWD' && k !== 'SHLVL' && k !== '_' && k !== 'OLDPWD');
    expect(names.sort()).toEqual(['FOO', 'HOME', 'LANG', 'PATH']);
  });
});
