/**
 * `buildfleet logs -f` and `buildfleet retry` run as commands, the way a
 * user runs them: `logs -f` prints the log as the build runs and exits with
 * the build's outcome (0 succeeded, 1 failed); `retry` submits a new build
 * with the same source and spec and prints its id.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startFleet, type E2eFleet } from './support.js';

let fleet: E2eFleet;
let scratch: string;
beforeAll(async () => {
  fleet = await startFleet();
  scratch = await mkdtemp(join(tmpdir(), 'bf-e2e-retry-'));
}, 120_000);
afterAll(async () => {
  await fleet?.close();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

const firstLine = (s: string) => s.trim().split('\n')[0]!;

describe('logs -f and retry', { timeout: 120_000 }, () => {
  it('logs -f follows a build to its end and exits with its outcome; retry runs it again from the same source', async () => {
    const proj = join(scratch, 'proj');
    await mkdir(proj, { recursive: true });
    await writeFile(join(proj, 'input.txt'), 'from the source\n');
    const sub = await runCli(['submit', proj, '--script', 'cat input.txt; sleep 1; echo "exit $CODE"; exit $CODE', '--env', 'CODE=3'], fleet.cliEnv);
    expect(sub.code, sub.stderr).toBe(0);
    const id = firstLine(sub.stdout);

    const followed = await runCli(['logs', '-f', id], fleet.cliEnv);
    expect(followed.code, followed.stderr).toBe(1); // failed
    expect(followed.stdout).toContain('from the source\nexit 3\n');
    expect(followed.stderr).toMatch(new RegExp(`build ${id} failed`));

    const retried = await runCli(['retry', id], fleet.cliEnv);
    expect(retried.code, retried.stderr).toBe(0);
    const again = firstLine(retried.stdout);
    expect(again).not.toBe(id);
    expect(retried.stderr).toContain(`retries ${id}`);
    const followedAgain = await runCli(['logs', '-f', again], fleet.cliEnv);
    expect(followedAgain.code).toBe(1);
    expect(followedAgain.stdout).toContain('from the source\nexit 3\n');
    const [a, b] = await Promise.all([id, again].map((x) => fleet.api<{ build: { spec: unknown; state: string } }>(`/api/v1/builds/${x}`)));
    expect(b!.build.spec).toEqual(a!.build.spec);
    expect(b!.build.state).toBe('failed');
  });
});
