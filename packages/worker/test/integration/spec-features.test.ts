/**
 * Spec fields of issue 13 with real workers and a real controller in this
 * process: a concurrency group runs its builds one at a time in submission
 * order even with free slots on two workers (SQLite and PostgreSQL), and
 * `shell` chooses what runs the script (`bash` with `set -o pipefail`, an
 * interpreter by path), `name` is what lists show.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { paths, type Build } from '@buildfleet/protocol';
import { describePg } from '../../../controller/test/support/pg.js';
import { tarGz } from '../support/tarball.js';
import { waitFor } from '../support/wait.js';
import { fleet } from './harness.js';

const f = fleet();
const worker = (concurrency: number) => f.worker({ maxConcurrentBuilds: concurrency });

function groupSuite(store: 'sqlite' | 'postgres'): void {
  it('five builds of one group run one at a time, in order, on two workers with four free slots', { timeout: 120_000 }, async () => {
    const ctl = await f.controller({ store, config: { heartbeatIntervalMs: 300, leaseMs: 10_000 } });
    const shared = await f.dir('bf-group-');
    // A root worker runs builds as nobody: they must be able to write the trace.
    await fs.chmod(shared, 0o777);
    const trace = path.join(shared, 'trace');
    const builds: Build[] = [];
    for (let i = 1; i <= 5; i++) {
      builds.push(
        await ctl.api.submit(
          {
            // Two lines with a pause between: another build of the group running meanwhile would interleave its own.
            script: `echo "start ${i}" >> "$TRACE"; sleep 0.3; echo "end ${i}" >> "$TRACE"`,
            env: { TRACE: trace },
            concurrency: { group: 'deploy-prod' },
          },
          tarGz([]),
        ),
      );
    }
    // All five are queued before any worker exists: the order is the group's, not the arrival of polls.
    await worker(2);
    await worker(2);
    // The last one cannot start before the four ahead of it ended: while it waits, the group is why.
    await waitFor(async () => (await ctl.api.build(builds[0]!.id)).state !== 'queued', { what: 'the first build to be taken' });
    expect((await ctl.api.build(builds[4]!.id)).waiting).toMatchObject({ reason: 'concurrency_group' });
    const done = await Promise.all(builds.map((b) => ctl.api.finished(b.id, 60_000)));
    expect(done.map((b) => b.state)).toEqual(Array(5).fill('succeeded'));
    const expected = [1, 2, 3, 4, 5].flatMap((i) => [`start ${i}`, `end ${i}`]);
    expect((await fs.readFile(trace, 'utf8')).trim().split('\n')).toEqual(expected);
    for (let i = 1; i < 5; i++) expect(Date.parse(done[i]!.startedAt!)).toBeGreaterThanOrEqual(Date.parse(done[i - 1]!.finishedAt!));
  });
}

describe('concurrency groups with real workers (SQLite)', () => groupSuite('sqlite'));
describePg('concurrency groups with real workers (PostgreSQL)', () => groupSuite('postgres'));

describe('spec shell and name', () => {
  it('bash with set -o pipefail fails on a failed pipeline stage; sh by default does not; an interpreter by path reads the script; name is what lists show', { timeout: 60_000 }, async () => {
    const ctl = await f.controller();
    await worker(3);
    const [bash, sh, node] = await Promise.all([
      ctl.api.submit({ script: 'set -eo pipefail; false | cat; echo "not reached"', shell: 'bash', name: 'strict pipeline' }, tarGz([])),
      ctl.api.submit({ script: 'set -e; false | cat; echo "reached: the last stage decides under sh"' }, tarGz([])),
      ctl.api.submit({ script: 'console.log("node ran the script:", typeof process.versions.node)', shell: process.execPath }, tarGz([])),
    ]);
    expect(await ctl.api.finished(bash.id)).toMatchObject({ state: 'failed', exitCode: 1 });
    expect(await ctl.api.scriptLog(bash.id)).toBe('');
    expect((await ctl.api.finished(sh.id)).state).toBe('succeeded');
    expect(await ctl.api.scriptLog(sh.id)).toBe('reached: the last stage decides under sh\n');
    expect((await ctl.api.finished(node.id)).state).toBe('succeeded');
    expect(await ctl.api.scriptLog(node.id)).toBe('node ran the script: string\n');

    const list = await ctl.api.ok<{ builds: Build[] }>('GET', paths.builds());
    expect(list.builds.find((x) => x.id === bash.id)?.spec.name).toBe('strict pipeline');
  });
});
