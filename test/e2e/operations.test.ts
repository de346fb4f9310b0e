/**
 * Issue 14's operator commands as a user runs them, against a controller
 * and worker processes: `webhook add/list/deliveries/remove`, `keep`,
 * `logs`, and `backup` / `restore` of the running controller's embedded store.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebhookReceiver } from '../../packages/controller/test/support/receiver.js';
import { API_TOKEN, childEnv, runCli, startFleet, waitFor, type E2eFleet } from './support.js';

describe('operator commands (real processes)', () => {
  let fleet: E2eFleet;
  const rx = new WebhookReceiver();
  beforeAll(async () => {
    fleet = await startFleet();
    await rx.listen();
  });
  afterAll(async () => {
    await rx.close();
    await fleet?.close();
  });

  it('webhook add/list/deliveries/remove, keep, logs, then backup and restore while the controller runs', async () => {
    const add = await runCli(['webhook', 'add', rx.url, '--events', 'build.finished'], fleet.cliEnv);
    expect(add.code, add.stderr).toBe(0);
    const id = /^webhook (\S+) -> /m.exec(add.stdout)![1]!;
    rx.secret = /^signing secret: (bfh_\S+)$/m.exec(add.stdout)![1]!;
    expect((await runCli(['webhook', 'list'], fleet.cliEnv)).stdout).toContain(`${id}  ${rx.url}  build.finished`);

    const project = join(fleet.dir, 'project');
    await mkdir(project, { recursive: true });
    await writeFile(join(project, 'README'), 'hi\n');
    const submit = await runCli(['submit', project, '--script', 'echo hello from the build; echo out > out.txt', '--artifact', 'out.txt', '--follow'], fleet.cliEnv);
    expect(submit.code, submit.stderr).toBe(0);
    const buildId = submit.stdout.trim().split('\n')[0]!;
    await rx.until(() => rx.delivered.size === 1, 'the build.finished delivery');
    expect([...rx.delivered.values()][0]!.signatureValid).toBe(true);
    const deliveries = await runCli(['webhook', 'deliveries', id], fleet.cliEnv);
    expect(deliveries.stdout).toMatch(new RegExp(`build.finished\\s+build ${buildId}\\s+delivered\\s+1 tries\\s+HTTP 200`));

    expect((await runCli(['keep', buildId], fleet.cliEnv)).stdout).toContain(`build ${buildId} kept`);
    expect((await fleet.api<{ build: { keep: boolean } }>(`/api/v1/builds/${buildId}`)).build.keep).toBe(true);
    expect((await runCli(['logs', buildId], fleet.cliEnv)).stdout).toContain('hello from the build');

    // Backup of the running controller's data directory, restored elsewhere.
    const file = join(fleet.dir, 'backup.tar.gz');
    const backup = await runCli(['backup', file], childEnv({ BUILDFLEET_DATA_DIR: join(fleet.dir, 'controller') }));
    expect(backup.code, backup.stderr).toBe(0);
    expect(backup.stderr).toMatch(/backup of 1 builds and 2 blobs/);
    const restoreDir = join(fleet.dir, 'restored');
    const restore = await runCli(['restore', file, '--data-dir', restoreDir], childEnv({}));
    expect(restore.code, restore.stderr).toBe(0);
    expect(restore.stdout).toMatch(/restored 1 builds and 2 blobs/);
    const again = await runCli(['restore', file, '--data-dir', restoreDir], childEnv({}));
    expect(again.code).toBe(3);
    expect(again.stderr).toMatch(/exists: stop the controller, then restore with --force/);

    expect((await runCli(['webhook', 'remove', id], fleet.cliEnv)).stdout).toContain(`webhook ${id} removed`);
    expect((await runCli(['webhook', 'list'], fleet.cliEnv)).stdout.trim()).toBe('no webhooks');
    await waitFor(async () => (await fetch(`${fleet.url}/metrics`)).ok, 'metrics');
    const metrics = await (await fetch(`${fleet.url}/metrics`, { headers: { authorization: `Bearer ${API_TOKEN}` } })).text();
    expect(metrics).toMatch(/buildfleet_queue_wait_seconds_count\{labels=""\} 1/);
    expect(metrics).toMatch(/buildfleet_dispatch_latency_seconds_count 1/);
    expect(metrics).toMatch(/buildfleet_builds_finished_total\{outcome="succeeded"\} 1/);
    expect(metrics).toMatch(/buildfleet_workers\{state="active"\} 1/);
  });
});
