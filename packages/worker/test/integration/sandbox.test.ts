/**
 * Issue 8 "Done when", with a real controller (in this process), real
 * workers (in this process: the build's would-be victim is this very test
 * process) and real bubblewrap: what a sandboxed build cannot reach, the
 * limits that end it, and that nothing it starts survives it, in both
 * executors. (`buildfleet worker` and `buildfleet up` as processes:
 * test/e2e/isolation.test.ts.)
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants, readFileSync, readdirSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { paths, type Build } from '@buildfleet/protocol';
import { startWorker, type RunningWorker } from '../../src/agent.js';
import { DEFAULT_SANDBOX_HIDE, type WorkerConfigOverrides } from '../../src/config.js';
import { defaultLogger, silentLogger } from '../../src/logger.js';
import { describeSandbox } from '../support/sandbox.js';
import { tempDir, testConfig } from '../support/harness.js';
import { tarGz } from '../support/tarball.js';
import { waitFor } from '../support/wait.js';
import { startCtl, type Ctl } from './harness.js';

const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const EMPTY = tarGz([]);
/** The credential prefixes of docs/protocol.md "Credentials": none may be in reach of a build. */
const TOKEN_SCAN = [
  // What the build can read: its environment, every /proc it sees, the files it can reach.
  `{ env; for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do tr '\\0' '\\n' < "$f"; done 2>/dev/null;`,
  `  grep -rhoaE 'bf[swae]_[A-Za-z0-9_-]+' /etc /workspace /tmp 2>/dev/null; }`,
  `  | grep -oaE 'bf[swae]_[A-Za-z0-9_-]{8,}' | sort -u > /tmp/found || true`,
].join(' ') + `\necho "TOKENS[$(tr '\\n' ' ' < /tmp/found)]"`;
/** Lines `SEES <path>` / `READS <path>` for each path of `$PATHS` (colon-separated) the build can see or read. */
const PROBE_PATHS = `IFS=:; for p in $PATHS; do [ -e "$p" ] && echo "SEES $p"; cat "$p" >/dev/null 2>&1 && echo "READS $p"; ls "$p" >/dev/null 2>&1 && echo "LISTS $p"; done; echo probed`;

async function finished(ctl: Ctl, id: string, timeoutMs = 60_000): Promise<Build> {
  let b: Build | undefined;
  await waitFor(
    async () => {
      b = await ctl.build(id);
      return ['succeeded', 'failed', 'canceled', 'timed_out'].includes(b.state);
    },
    { what: `build ${id} to finish`, timeoutMs, intervalMs: 50 },
  );
  return b!;
}

/** Pids of host processes whose command line contains `needle`. */
function hostProcs(needle: string): number[] {
  const out: number[] = [];
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const stat = readFileSync(`/proc/${n}/stat`, 'utf8');
      if (/\) [ZX] /.test(stat)) continue;
      if (readFileSync(`/proc/${n}/cmdline`, 'utf8').split('\0').join(' ').includes(needle)) out.push(Number(n));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** The host's /etc, where operators keep secrets (/etc/buildfleet): a test puts its own there (and removes them) when it may. */
const ETC_WRITABLE = (() => {
  try {
    accessSync('/etc', constants.W_OK);
    return true;
  } catch {
    return false;
  }
})();

function packDir(dir: string): Buffer {
  return execFileSync('tar', ['-czf', '-', '--exclude=build', '-C', dir, '.']);
}

describeSandbox('sandbox executor through a real controller and worker', () => {
  let ctl: Ctl;
  let base: string;
  const workers: Record<'sbx' | 'net' | 'sh', RunningWorker> = {} as never;
  const dataDirs: Record<string, string> = {};
  /** Stand-ins for /etc/buildfleet and a TLS key, in the host's /etc (which the sandbox binds). */
  let etcSecrets: { dir: string; file: string } | undefined;

  async function worker(name: 'sbx' | 'net' | 'sh', over: WorkerConfigOverrides): Promise<void> {
    dataDirs[name] = path.join(base, name);
    workers[name] = await startWorker(testConfig(ctl, dataDirs[name], { name, labels: [name], maxConcurrentBuilds: 3, ...over }), {
      logger: silentLogger,
      retryBaseMs: 10,
      retryMaxMs: 100,
    });
  }

  beforeAll(async () => {
    ctl = await startCtl();
    base = await tempDir('bf-sbx-');
    // The build user (nobody, when the tests run as root) passes through to the workspaces.
    await fs.chmod(base, 0o711);
    if (ETC_WRITABLE) {
      const dir = await fs.mkdtemp('/etc/bf-test-hidden-');
      await fs.writeFile(path.join(dir, 'worker.env'), 'BUILDFLEET_ENROLLMENT_TOKEN=bfe_hiddenhidden\n');
      const file = `${dir}.key`;
      await fs.writeFile(file, 'PRIVATE KEY\n');
      // As readable as the build user could ever find them: only the hiding keeps them away.
      await fs.chmod(dir, 0o755);
      await fs.chmod(path.join(dir, 'worker.env'), 0o644);
      await fs.chmod(file, 0o644);
      etcSecrets = { dir, file };
    }
    await worker('sbx', { executor: 'sandbox', ...(etcSecrets ? { sandboxHide: [...DEFAULT_SANDBOX_HIDE, etcSecrets.dir, etcSecrets.file] } : {}) });
    await worker('net', { executor: 'sandbox', allowNetwork: true });
    await worker('sh', { executor: 'shell' });
  });
  afterAll(async () => {
    for (const w of Object.values(workers)) await w?.stop().catch(() => undefined);
    await ctl?.close();
    await fs.rm(base, { recursive: true, force: true });
    if (etcSecrets) {
      await fs.rm(etcSecrets.dir, { recursive: true, force: true });
      await fs.rm(etcSecrets.file, { force: true });
    }
    for (const n of Object.keys(dataDirs)) await fs.rm(`${dataDirs[n]}-workspaces`, { recursive: true, force: true });
  });

  async function run(spec: Record<string, unknown>, source = EMPTY): Promise<{ build: Build; log: string }> {
    const submitted = await ctl.submit({ timeoutSeconds: 120, labels: ['sbx'], ...spec }, source);
    const build = await finished(ctl, submitted.id);
    return { build, log: await (await ctl.api('GET', `${paths.logs(build.id)}?offset=0`)).text() };
  }
  const attemptDir = (worker: string, build: Build) => path.join(`${dataDirs[worker]}-workspaces`, `bf-${build.id}-${build.attempt}`);

  it('registers as sandbox and runs a build as an unprivileged user in /workspace with a clean environment', async () => {
    expect(workers.sbx.executor.kind).toBe('sandbox');
    const w = (await (await ctl.api('GET', paths.worker(workers.sbx.workerId))).json()) as { worker: { executor: string; labels: string[] } };
    expect(w.worker.executor).toBe('sandbox');
    const { build, log } = await run({ script: 'id -u; pwd; env | sort', env: { MINE: 'yes' } });
    expect(build.state).toBe('succeeded');
    expect(log.split('\n')[0]).toMatch(/^\[buildfleet\] executor sandbox/);
    expect(log).toMatch(/^1000$/m);
    expect(log).toMatch(/^\/workspace$/m);
    const vars = [...log.matchAll(/^([A-Z_][A-Z0-9_]*)=/gm)].map((m) => m[1]);
    // Only spec.env, the build's BUILDFLEET_* variables, PATH, HOME, LANG, TMPDIR (and what the shell itself sets).
    const allowed = /^(MINE|BUILDFLEET_(BUILD_ID|BUILD_ATTEMPT|WORKSPACE|WORKER_ID|WORKER_NAME)|PATH|HOME|LANG|TMPDIR|PWD|OLDPWD|SHLVL|_)$/;
    expect(vars.filter((v) => !allowed.test(v!))).toEqual([]);
    expect(log).toContain('HOME=/workspace');
  });

  it('cannot read the identity file, the data directories or another running build, finds no token, cannot signal the worker', async () => {
    const blocker = await ctl.submit({ script: 'echo secret-of-a > mine.txt; echo A-RUNNING; sleep 600', labels: ['sbx'], timeoutSeconds: 600 }, EMPTY);
    await waitFor(async () => (await (await ctl.api('GET', `${paths.logs(blocker.id)}?offset=0`)).text()).includes('A-RUNNING'), { what: 'build A to run' });
    const other = path.join(attemptDir('sbx', await ctl.build(blocker.id)), 'workspace', 'mine.txt');
    await expect(fs.readFile(other, 'utf8')).resolves.toBe('secret-of-a\n'); // it is there, on the host
    const probe = [
      path.join(dataDirs.sbx!, 'worker', 'identity.json'),
      dataDirs.sbx!,
      `${dataDirs.sbx}-workspaces`,
      other,
      path.dirname(other),
      ctl.fixture.dataDir,
      path.join(ctl.fixture.dataDir, 'credentials.json'),
      '/root',
      '/home',
      '/run',
      '/var/lib',
    ];
    const { build, log } = await run({
      script: `${PROBE_PATHS}\n${TOKEN_SCAN}\nkill -9 ${process.pid} 2>/dev/null && echo KILLED || echo KILL-REFUSED\nls /proc | grep -cE '^[0-9]+$' | sed 's/^/PROCS /'`,
      env: { PATHS: probe.join(':') },
    });
    expect(build.state, log).toBe('succeeded');
    expect(log).toContain('probed');
    expect(log.split('\n').filter((l) => /^(SEES|READS|LISTS) /.test(l))).toEqual([]);
    expect(/^TOKENS\[(.*)\]$/m.exec(log)?.[1]).toBe('');
    expect(log).toContain('KILL-REFUSED');
    // Its own processes only: the sandbox's init, the shell, ls and grep.
    expect(Number(/^PROCS (\d+)$/m.exec(log)![1])).toBeLessThan(10);
    expect(process.pid).toBeGreaterThan(0); // still here to say so
    await ctl.api('POST', paths.cancel(blocker.id));
    expect((await finished(ctl, blocker.id)).state).toBe('canceled');
  });

  it.skipIf(!ETC_WRITABLE)("cannot read the operator's secrets in /etc: the hidden directory and file are empty", async () => {
    const { dir, file } = etcSecrets!;
    // On the host they are there, and the other sandboxed worker (without them in its list) shows them.
    const script = `cat ${dir}/worker.env ${file} 2>&1; ls -A ${dir} | sed 's/^/ENTRY /'; echo "SIZE $(wc -c < ${file})"; echo done`;
    const shown = await run({ script, labels: ['net'] });
    expect(shown.log).toContain('bfe_hiddenhidden');
    expect(shown.log).toContain('PRIVATE KEY');
    const { build, log } = await run({ script });
    expect(build.state, log).toBe('succeeded');
    expect(log).toContain('done');
    expect(log).not.toContain('bfe_hiddenhidden');
    expect(log).not.toContain('PRIVATE KEY');
    expect(log).not.toMatch(/^ENTRY /m);
    expect(log).toMatch(/^SIZE 0$/m);
  });

  it('no TCP connection to the controller unless the build asks and the worker allows it', async () => {
    const port = new URL(ctl.url).port;
    const script = `if (echo > /dev/tcp/127.0.0.1/${port}) 2>/dev/null; then echo NET-OPEN; else echo NET-CLOSED; fi`;
    const [denied, notAsked, allowed] = await Promise.all([
      run({ script, shell: 'bash', network: true, labels: ['sbx'] }),
      run({ script, shell: 'bash', labels: ['net'] }),
      run({ script, shell: 'bash', network: true, labels: ['net'] }),
    ]);
    expect(denied.log).toContain('NET-CLOSED');
    expect(denied.log).toContain('this worker denies it');
    expect(notAsked.log).toContain('NET-CLOSED');
    expect(allowed.log).toContain('NET-OPEN');
  });

  it('cannot write outside its workspace and /tmp, and its /tmp is gone afterwards', async () => {
    const { build, log } = await run({
      script: [
        'for d in / /usr /etc /opt /var /home /root /srv /dev /proc/sys /workspace/..; do (echo x > "$d/bf-probe") 2>/dev/null && echo "WROTE $d"; done',
        'echo kept > /tmp/inside && echo TMP-OK',
        'echo kept > /workspace/inside && echo WS-OK',
      ].join('\n'),
    });
    expect(build.state, log).toBe('succeeded');
    expect(log).not.toContain('WROTE');
    expect(log).toContain('TMP-OK');
    expect(log).toContain('WS-OK');
    const dir = attemptDir('sbx', build);
    await waitFor(async () => !(await fs.stat(dir).catch(() => undefined)), { what: `${dir} to be removed`, timeoutMs: 10_000 });
  });

  it('a fork bomb ends failed with the process limit as its reason; the worker and the next build are fine', async () => {
    // Every process waits for its two children: the count only grows, until forks fail.
    const bomb = await run({ script: 'bomb() { bomb | bomb; }; bomb', limits: { processes: 64 } });
    expect(bomb.build).toMatchObject({ state: 'failed', reason: 'limit_processes' });
    const lines = bomb.log.trimEnd().split('\n');
    expect(lines.at(-1)).toMatch(/^\[buildfleet\] failed: process limit reached \(64 processes\)/);
    const next = await run({ script: 'echo fine' });
    expect(next.build.state).toBe('succeeded');
    expect(next.log).toContain('fine');
  });

  it('a memory hog ends failed with the memory limit as its reason', async () => {
    const hog = await run({ script: "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ${#x}", limits: { memoryMb: 64 } });
    expect(hog.build).toMatchObject({ state: 'failed', reason: 'limit_memory' });
    expect(hog.log.trimEnd().split('\n').at(-1)).toMatch(/^\[buildfleet\] failed: memory limit reached \(64 MiB\)/);
  });

  it('a restored cache belongs to the build user: the next build can change it', async () => {
    const spec = {
      script: 'mkdir -p dep && echo v >> dep/file && cat dep/file',
      metadata: { repo: `acme/sbx-${process.pid}` },
      cache: [{ key: 'sbx-dep', paths: ['dep'] }],
    };
    const first = await run(spec);
    expect(first.build.state, first.log).toBe('succeeded');
    const second = await run(spec);
    expect(second.build.state, second.log).toBe('succeeded');
    expect(second.log).toContain('v\nv\n');
  });

  it('CPU time, file size and disk limits end a build failed, each with its reason', async () => {
    const [cpu, file, disk] = await Promise.all([
      run({ script: 'while :; do :; done', limits: { cpuSeconds: 1 } }),
      run({ script: 'head -c 3000000 /dev/zero > big && echo wrote', limits: { fileSizeMb: 1 } }),
      run({ script: 'head -c 3000000 /dev/zero > a; head -c 3000000 /dev/zero > /tmp/b; sleep 30', limits: { diskMb: 4 } }),
    ]);
    expect(cpu.build).toMatchObject({ state: 'failed', reason: 'limit_cpu' });
    expect(cpu.log.trimEnd().split('\n').at(-1)).toMatch(/^\[buildfleet\] failed: CPU time limit reached \(1 CPU seconds\)/);
    expect(file.build).toMatchObject({ state: 'failed', reason: 'limit_file_size' });
    expect(file.log).not.toContain('wrote');
    expect(file.log.trimEnd().split('\n').at(-1)).toMatch(/^\[buildfleet\] failed: file size limit reached/);
    expect(disk.build).toMatchObject({ state: 'failed', reason: 'limit_disk' });
    expect(disk.log.trimEnd().split('\n').at(-1)).toMatch(/^\[buildfleet\] failed: disk limit reached \(4 MiB in the workspace and \/tmp\)/);
  });

  it.each(['sbx', 'sh'])('a double fork with setsid and nohup leaves no process behind (%s)', async (label) => {
    const mark = `1000.${process.pid}${label === 'sh' ? 1 : 2}`;
    const { build, log } = await run({
      script: `( setsid sh -c 'exec sleep ${mark}' & ); ( nohup sleep ${mark}1 >/dev/null 2>&1 & ); sleep 0.2; echo spawned`,
      labels: [label],
    });
    expect(build.state, log).toBe('succeeded');
    expect(log).toContain('spawned');
    await waitFor(() => hostProcs(`sleep ${mark}`).length === 0, { what: `the build's sleeps to be gone`, timeoutMs: 5_000 });
  });

  it('the bundled example and a real C project build and pass their tests in the sandbox', async () => {
    const spec = (dir: string) => JSON.parse(readFileSync(path.join(dir, 'buildfleet.json'), 'utf8')) as Record<string, unknown>;
    const hello = path.join(ROOT, 'examples/hello-c');
    const rpn = path.join(ROOT, 'examples/rpn-c');
    const [a, b] = await Promise.all([run({ ...spec(hello), labels: ['sbx'] }, packDir(hello)), run({ ...spec(rpn) }, packDir(rpn))]);
    expect(a.build.state, a.log).toBe('succeeded');
    expect(a.log).toContain('ALL TESTS PASSED');
    expect(a.log).toContain('[buildfleet] executor sandbox');
    expect(b.build.state, b.log).toBe('succeeded');
    expect(b.build.spec.isolation).toBe('sandbox');
    expect(b.build.workerId).toBe(workers.sbx.workerId);
    expect(b.log).toContain('RPN TESTS PASSED');
    expect(b.log).toMatch(/^14$/m);
  });

  it('auto picks shell with a warning where bubblewrap is missing; sandbox refuses to start and says how to fix it', async () => {
    const lines: string[] = [];
    const dir = path.join(base, 'auto');
    const w = await startWorker(testConfig(ctl, dir, { name: 'auto', labels: ['auto'], executor: 'auto', bwrap: '/nonexistent/bwrap' }), {
      logger: defaultLogger({ write: (s: string) => void lines.push(s) }, 'info'),
      retryBaseMs: 10,
      retryMaxMs: 100,
    });
    try {
      expect(w.executor.kind).toBe('shell');
      expect(lines.join('')).toMatch(/NOT isolated.*apt-get install bubblewrap/);
      const { build, log } = await run({ script: 'echo ran', labels: ['auto'] });
      expect(build.state).toBe('succeeded');
      expect(log.split('\n')[0]).toMatch(/^\[buildfleet\] WARNING: this build is NOT isolated/);
      // A build that requires isolation never lands there: it waits for a sandbox worker.
      const isolated = await ctl.submit({ script: 'echo ran', labels: ['auto'], isolation: 'sandbox' }, EMPTY);
      await waitFor(async () => (await ctl.build(isolated.id)).waiting?.reason === 'no_matching_worker', { what: 'the isolated build to wait' });
      await ctl.api('POST', paths.cancel(isolated.id));
    } finally {
      await w.stop();
      await fs.rm(`${dir}-workspaces`, { recursive: true, force: true });
    }
    await expect(
      startWorker(testConfig(ctl, path.join(base, 'strict'), { executor: 'sandbox', bwrap: '/nonexistent/bwrap' }), { logger: silentLogger }),
    ).rejects.toThrow(/--executor sandbox: bubblewrap \(\/nonexistent\/bwrap\) was not found.*apt-get install bubblewrap/);
  });
});
