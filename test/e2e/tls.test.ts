/**
 * End to end over HTTPS (issue 9): a controller process serving a
 * certificate of a private CA made at test time (BUILDFLEET_TLS_CERT,
 * BUILDFLEET_TLS_KEY), a worker process and the CLI that trust that CA
 * through BUILDFLEET_CA_FILE; without it, the CLI and the worker say what is
 * wrong and what to set.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock } from '@buildfleet/protocol';
import { Connection } from '../../packages/worker/src/client/connection.js';
import { API_TOKEN, ENROLLMENT_TOKEN, startTestController, type TestController } from '../support/controller.js';
import { childEnv, runCli, startService, waitFor, type Service } from '../support/process.js';
import { describeWithOpenssl, makeCertificates, type TestCertificates } from '../support/tls.js';

describeWithOpenssl('buildfleet over HTTPS with a private CA', () => {
  let dir: string;
  let certs: TestCertificates;
  let controller: TestController;
  let worker: Service | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bf-e2e-tls-'));
    certs = makeCertificates(dir);
    controller = await startTestController({
      process: true,
      dataDir: join(dir, 'controller'),
      env: { BUILDFLEET_TLS_CERT: certs.certFile, BUILDFLEET_TLS_KEY: certs.keyFile, BUILDFLEET_HEARTBEAT_INTERVAL_MS: '300', BUILDFLEET_LEASE_MS: '10000' },
      caFile: certs.caFile,
    });
  }, 90_000);
  afterAll(async () => {
    await worker?.stop();
    await controller?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 60_000);

  it('a worker and the CLI trusting BUILDFLEET_CA_FILE register, submit, run and follow a build', { timeout: 120_000 }, async () => {
    expect(controller.url).toMatch(/^https:\/\//);
    const w = (worker = startService(
      ['worker'],
      childEnv({
        BUILDFLEET_CONTROLLER_URL: controller.url,
        BUILDFLEET_ENROLLMENT_TOKEN: ENROLLMENT_TOKEN,
        BUILDFLEET_DATA_DIR: join(dir, 'worker'),
        BUILDFLEET_CA_FILE: certs.caFile,
      }),
    ));
    await waitFor(
      async () => {
        if (w.proc.exitCode !== null) throw new Error(`worker exited ${w.proc.exitCode}:\n${w.output()}`);
        return (await controller.api.workers()).length > 0;
      },
      'the worker to register over HTTPS',
      30_000,
    );
    const project = join(dir, 'project');
    await mkdir(project);
    await writeFile(join(project, 'greeting.txt'), 'hello over TLS\n');
    const r = await runCli(
      ['submit', project, '--script', 'cat greeting.txt', '--follow'],
      childEnv({ BUILDFLEET_CONTROLLER_URL: controller.url, BUILDFLEET_API_TOKEN: API_TOKEN, BUILDFLEET_CA_FILE: certs.caFile }),
    );
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toContain('hello over TLS');
  });

  it('without the CA the CLI exits 3 naming BUILDFLEET_CA_FILE, and the worker says the certificate is not trusted', async () => {
    const r = await runCli(['list'], childEnv({ BUILDFLEET_CONTROLLER_URL: controller.url, BUILDFLEET_API_TOKEN: API_TOKEN }));
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/certificate this CLI does not trust \(UNABLE_TO_VERIFY_LEAF_SIGNATURE\); set BUILDFLEET_CA_FILE/);
    const missing = await runCli(['list'], childEnv({ BUILDFLEET_CONTROLLER_URL: controller.url, BUILDFLEET_API_TOKEN: API_TOKEN, BUILDFLEET_CA_FILE: join(dir, 'nope.pem') }));
    expect(missing.code).toBe(3);
    expect(missing.stderr).toMatch(/BUILDFLEET_CA_FILE: cannot read .*nope\.pem \(ENOENT\)/);
    // The worker's transport (its own default fetch), in this process.
    const conn = new Connection({ urls: [controller.url], clock: systemClock, requestTimeoutMs: 10_000 });
    await expect(conn.json({ method: 'GET', path: '/healthz' })).rejects.toThrow(/UNABLE_TO_VERIFY_LEAF_SIGNATURE: the controller's TLS certificate is not trusted; BUILDFLEET_CA_FILE/);
  });
});
