/**
 * End to end: a controller and a worker as separate processes, driven by the
 * `buildfleet` CLI as a user would (see test/e2e/README.md).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DUPLICATE_WINDOW_MS } from '@buildfleet/worker';
import { ENROLLMENT_TOKEN, ROOT, childEnv, runCli, startFleet, startService, waitFor, type E2eFleet } from './support.js';

interface Build {
  id: string;
  state: string;
  exitCode: number | null;
  attempt: number;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let fleet: E2eFleet;
let scratch: string;

beforeAll(async () => {
  fleet = await startFleet();
  scratch = await mkdtemp(join(tmpdir(), 'bf-e2e-scratch-'));
  // Builds wait on markers here; a root worker runs them as nobody.
  await chmod(scratch, 0o711);
}, 90_000);

afterAll(async () => {
  await fleet?.close();
  if (scratch) await rm(scratch, { recursive: true, force: true });
}, 60_000);

function firstLine(s: string): string {
  return s.split('\n')[0]!.trim();
}

async function logOf(id: string): Promise<string> {
  const r = await runCli(['logs', id], fleet.cliEnv);
  expect(r.code, r.stderr).toBe(0);
  return r.stdout;
}

// Real processes on a shared 2-core machine: generous per-test limits; the waits inside are conditions.
describe('buildfleet end to end', { timeout: 120_000 }, () => {
  it('builds the bundled example: tests run in the build, the artifact matches the controller SHA-256 and a local build', async () => {
    const out = join(scratch, 'hello-artifacts');
    const r = await runCli(['submit', 'examples/hello-c', '--follow', '--download', out], fleet.cliEnv);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    const id = firstLine(r.stdout);
    expect(r.stdout).toContain('ALL TESTS PASSED');
    expect(r.stdout).toContain('Hello, never odd or even!');
    expect(r.stderr).toMatch(/upload 100%/);

    const { build } = await fleet.api<{ build: Build }>(`/api/v1/builds/${id}`);
    expect(build.state).toBe('succeeded');
    expect(await logOf(id)).toContain('8 checks, 0 failures');

    const { artifacts } = await fleet.api<{ artifacts: { name: string; size: number; sha256: string }[] }>(
      `/api/v1/builds/${id}/artifacts`,
    );
    expect(artifacts.map((a) => a.name)).toEqual(['build/hello']);
    const downloaded = await readFile(join(out, 'build/hello'));
    expect(sha256(downloaded)).toBe(artifacts[0]!.sha256);
    expect(downloaded.length).toBe(artifacts[0]!.size);

    // The same sources built here give the same bytes (gcc output is deterministic).
    const local = join(scratch, 'hello-local');
    await cp(join(ROOT, 'examples/hello-c'), local, { recursive: true });
    await rm(join(local, 'build'), { recursive: true, force: true });
    execFileSync('make', ['-s'], { cwd: local, stdio: 'ignore' });
    expect(sha256(await readFile(join(local, 'build/hello')))).toBe(artifacts[0]!.sha256);

    // `download` on its own verifies the same bytes.
    const again = await runCli(['download', id, '--out', join(scratch, 'again')], fleet.cliEnv);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/build\/hello .*verified/);
  });

  it('reports a failing build as failed with its exit code, a complete log, and CLI exit code 1', async () => {
    const r = await runCli(['submit', 'examples/failing', '--follow'], fleet.cliEnv);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(1);
    expect(r.stderr).toMatch(/failed \(exit code 3\)/);
    const id = firstLine(r.stdout);
    const { build } = await fleet.api<{ build: Build }>(`/api/v1/builds/${id}`);
    expect(build.state).toBe('failed');
    expect(build.exitCode).toBe(3);
    const log = await logOf(id);
    expect(log).toContain('checking the answer...');
    expect(log).toContain('expected 42, got 41');
    expect(log).toContain('FAILED: the answer is wrong');

    const status = await runCli(['status', id], fleet.cliEnv);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/state\s+failed \(exit code 3\)/);
  });

  it('cancels a running build and stops its whole process tree', async () => {
    const proj = join(scratch, 'tree');
    await mkdir(proj, { recursive: true });
    // Children and a grandchild, each printing its pid, then the shell waits.
    await writeFile(
      join(proj, 'tree.sh'),
      [
        'sleep 1000 & echo "pid $!"',
        'sleep 1000 & echo "pid $!"',
        "sh -c 'sleep 1000 & echo \"pid $!\"; wait' & echo \"pid $!\"",
        'echo "pid $$"',
        'echo ready',
        'wait',
      ].join('\n') + '\n',
    );
    const sub = await runCli(['submit', proj, '--script', 'sh ./tree.sh'], fleet.cliEnv);
    expect(sub.code, sub.stderr).toBe(0);
    const id = firstLine(sub.stdout);

    const log = await waitFor(async () => {
      const l = await fleet.log(id);
      return (l.match(/^pid \d+$/gm)?.length ?? 0) >= 5 && l.includes('ready') ? l : undefined;
    }, 'the build to print its process ids');
    const pids = [...log.matchAll(/^pid (\d+)$/gm)].map((m) => Number(m[1]));
    expect(pids).toHaveLength(5);
    for (const pid of pids) expect(alive(pid), `pid ${pid} should run before cancel`).toBe(true);

    const c = await runCli(['cancel', id], fleet.cliEnv);
    expect(c.code, c.stderr).toBe(0);
    await waitFor(async () => (await fleet.api<{ build: Build }>(`/api/v1/builds/${id}`)).build.state === 'canceled', 'state canceled');
    await waitFor(() => pids.every((p) => !alive(p)), `every process of the tree (${pids.join(', ')}) to be gone`, 15_000);

    const status = await runCli(['status', id, '--json'], fleet.cliEnv);
    expect(JSON.parse(status.stdout).state).toBe('canceled');
  });

  it('builds a C project that lives outside this repo, honouring its .gitignore, flags and env', async () => {
    const proj = join(scratch, 'vecstats');
    await writeCProject(proj);
    const out = join(scratch, 'vecstats-out');
    const r = await runCli(
      [
        'submit',
        proj,
        '--script',
        'test ! -e bin/stale && make check && make && ./bin/vecstats 3 1 4 1 5 9 2 6',
        '--artifact',
        'bin/*',
        '--env',
        'GREETING=hi from the e2e test',
        '--follow',
        '--download',
        out,
      ],
      fleet.cliEnv,
    );
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('vector tests: 6 passed');
    expect(r.stdout).toContain('stats tests: 4 passed');
    expect(r.stdout).toContain('n=8 min=1 max=9 sum=31 mean=3.88');
    expect(r.stdout).toContain('hi from the e2e test');
    const bin = join(out, 'bin/vecstats');
    expect(existsSync(bin)).toBe(true);
    expect(existsSync(join(out, 'bin/stale'))).toBe(false);
    // The downloaded binary runs here too (downloads of programs are made executable).
    expect(execFileSync(bin, ['2', '4'], { env: { GREETING: '' } }).toString()).toContain('n=2 min=2 max=4 sum=6 mean=3.00');
  });

  it('prints one-line errors with exit code 3 for a wrong token, an unknown build and no controller', async () => {
    const bad = await runCli(['status', 'x'], { ...fleet.cliEnv, BUILDFLEET_API_TOKEN: 'bfa_wrong_token_0123456789abcdef' });
    expect(bad.code).toBe(3);
    expect(bad.stderr).toMatch(/rejected the API token.*TOKEN_INVALID/);
    expect(bad.stderr).not.toMatch(/\n\s+at /);

    const missing = await runCli(['status', '01900000-0000-7000-8000-000000000000'], fleet.cliEnv);
    expect(missing.code).toBe(3);
    expect(missing.stderr).toMatch(/BUILD_NOT_FOUND/);
    expect(missing.stderr.trim().split('\n')).toHaveLength(1);

    // A port nothing listens on: the controller's own port after we learn it is in use is not safe,
    // so ask the OS for a free one and close it.
    const { createServer } = await import('node:net');
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((r) => srv.close(() => r()));
    const down = await runCli(['list'], childEnv({ BUILDFLEET_CONTROLLER_URL: `http://127.0.0.1:${port}`, BUILDFLEET_API_TOKEN: 'bfa_x' }));
    expect(down.code).toBe(3);
    expect(down.stderr).toMatch(/connection refused/);
  });

  // These two stop workers, so they run last: the first drains the fleet's worker.
  it('a worker drains on SIGTERM: the running build finishes, then the worker exits 0', async () => {
    const proj = join(scratch, 'drain');
    const marker = join(scratch, 'drain-marker');
    await mkdir(proj, { recursive: true });
    const script = `echo started; while [ ! -e '${marker}' ]; do sleep 0.05; done; echo finished`;
    const sub = await runCli(['submit', proj, '--script', script], fleet.cliEnv);
    expect(sub.code, sub.stderr).toBe(0);
    const id = firstLine(sub.stdout);
    await waitFor(async () => (await fleet.log(id)).includes('started'), 'the build to start');

    fleet.worker.proc.kill('SIGTERM');
    await waitFor(() => /draining/.test(fleet.worker.output()), 'the worker to say it drains');
    expect(fleet.worker.proc.exitCode).toBeNull();
    await writeFile(marker, '');
    expect(await fleet.worker.exited).toBe(0);
    const { build } = await fleet.api<{ build: Build }>(`/api/v1/builds/${id}`);
    expect(build.state).toBe('succeeded');
    expect(await fleet.log(id)).toContain('finished');
  });

  it('a second SIGTERM cancels the running builds and the worker exits', async () => {
    const worker = startService(
      ['worker'],
      childEnv({
        BUILDFLEET_CONTROLLER_URL: fleet.url,
        BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN,
        BUILDFLEET_DATA_DIR: join(scratch, 'worker-2'),
      }),
    );
    try {
      const proj = join(scratch, 'second-sigterm');
      await mkdir(proj, { recursive: true });
      const sub = await runCli(['submit', proj, '--script', 'echo started; sleep 1000'], fleet.cliEnv);
      expect(sub.code, sub.stderr).toBe(0);
      const id = firstLine(sub.stdout);
      await waitFor(async () => (await fleet.log(id)).includes('started'), 'the build to start on the new worker', 30_000);

      worker.proc.kill('SIGTERM');
      await waitFor(() => /draining/.test(worker.output()), 'the worker to say it drains');
      // Copies of one signal that arrive within DUPLICATE_WINDOW_MS count once (npm forwards the
      // terminal's Ctrl-C a moment later); a second signal meant as such comes after that.
      await new Promise((r) => setTimeout(r, DUPLICATE_WINDOW_MS + 50));
      worker.proc.kill('SIGTERM');
      expect(await worker.exited).toBe(0);
      await waitFor(async () => (await fleet.api<{ build: Build }>(`/api/v1/builds/${id}`)).build.state === 'canceled', 'state canceled');
    } finally {
      await worker.stop();
    }
  });
});

/** True while `pid` is a live (non-zombie) process. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 3, after the parenthesised command name, is the state; Z is a zombie (already dead).
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** A small C project with several files, its own Makefile, tests and .gitignore, written from scratch. */
async function writeCProject(dir: string): Promise<void> {
  const files: Record<string, string> = {
    '.gitignore': 'bin/\n*.o\n',
    'bin/stale': 'must not be uploaded: bin/ is ignored\n',
    'include/vec.h': `#ifndef VEC_H
#define VEC_H
#include <stddef.h>
typedef struct { double *items; size_t len, cap; } vec;
void vec_init(vec *v);
int vec_push(vec *v, double x);
void vec_free(vec *v);
#endif
`,
    'include/stats.h': `#ifndef STATS_H
#define STATS_H
#include "vec.h"
double stats_sum(const vec *v);
double stats_mean(const vec *v);
double stats_min(const vec *v);
double stats_max(const vec *v);
#endif
`,
    'src/vec.c': `#include <stdlib.h>
#include "vec.h"
void vec_init(vec *v) { v->items = NULL; v->len = v->cap = 0; }
int vec_push(vec *v, double x) {
  if (v->len == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 4;
    double *p = realloc(v->items, cap * sizeof *p);
    if (!p) return -1;
    v->items = p; v->cap = cap;
  }
  v->items[v->len++] = x;
  return 0;
}
void vec_free(vec *v) { free(v->items); vec_init(v); }
`,
    'src/stats.c': `#include "stats.h"
double stats_sum(const vec *v) { double s = 0; for (size_t i = 0; i < v->len; i++) s += v->items[i]; return s; }
double stats_mean(const vec *v) { return v->len ? stats_sum(v) / (double)v->len : 0; }
double stats_min(const vec *v) { double m = v->len ? v->items[0] : 0; for (size_t i = 1; i < v->len; i++) if (v->items[i] < m) m = v->items[i]; return m; }
double stats_max(const vec *v) { double m = v->len ? v->items[0] : 0; for (size_t i = 1; i < v->len; i++) if (v->items[i] > m) m = v->items[i]; return m; }
`,
    'src/main.c': `#include <stdio.h>
#include <stdlib.h>
#include "stats.h"
int main(int argc, char **argv) {
  const char *greeting = getenv("GREETING");
  if (greeting && *greeting) printf("%s\\n", greeting);
  vec v; vec_init(&v);
  for (int i = 1; i < argc; i++) vec_push(&v, atof(argv[i]));
  printf("n=%zu min=%g max=%g sum=%g mean=%.2f\\n", v.len, stats_min(&v), stats_max(&v), stats_sum(&v), stats_mean(&v));
  vec_free(&v);
  return 0;
}
`,
    'tests/test_vec.c': `#include <stdio.h>
#include "vec.h"
int main(void) {
  int ok = 0; vec v; vec_init(&v);
  ok += v.len == 0;
  for (int i = 0; i < 100; i++) vec_push(&v, i);
  ok += v.len == 100; ok += v.cap >= 100; ok += v.items[0] == 0; ok += v.items[99] == 99;
  vec_free(&v); ok += v.len == 0;
  printf("vector tests: %d passed\\n", ok);
  return ok == 6 ? 0 : 1;
}
`,
    'tests/test_stats.c': `#include <stdio.h>
#include "stats.h"
int main(void) {
  int ok = 0; vec v; vec_init(&v);
  double xs[] = {2, 8, -1, 3};
  for (int i = 0; i < 4; i++) vec_push(&v, xs[i]);
  ok += stats_sum(&v) == 12; ok += stats_mean(&v) == 3; ok += stats_min(&v) == -1; ok += stats_max(&v) == 8;
  vec_free(&v);
  printf("stats tests: %d passed\\n", ok);
  return ok == 4 ? 0 : 1;
}
`,
    Makefile: `CC ?= cc
CFLAGS ?= -std=c11 -Wall -Wextra -Werror -O2 -Iinclude
OBJS := bin/vec.o bin/stats.o
all: bin/vecstats
bin:
\tmkdir -p bin
bin/%.o: src/%.c | bin
\t$(CC) $(CFLAGS) -c $< -o $@
bin/vecstats: bin/main.o $(OBJS)
\t$(CC) $(CFLAGS) $^ -o $@
bin/test_%: tests/test_%.c $(OBJS) | bin
\t$(CC) $(CFLAGS) $^ -o $@
check: bin/test_vec bin/test_stats
\t./bin/test_vec && ./bin/test_stats
.PHONY: all check
`,
  };
  for (const [rel, content] of Object.entries(files)) {
    await mkdir(join(dir, rel, '..'), { recursive: true });
    await writeFile(join(dir, rel), content);
  }
}
