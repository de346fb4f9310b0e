/**
 * `buildfleet up` as a new user runs it (`npm start` runs the same command
 * from dist): controller and worker in one process, the bundled example built
 * on first start, credentials saved, SIGTERM stops it cleanly.
 */
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { childEnv, runCli, startService, waitFor } from './support.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bf-e2e-up-'));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('buildfleet up', { timeout: 120_000 }, () => {
  it('prints the credentials, builds the example on first start, and drains on SIGTERM', async () => {
    const dataDir = join(dir, 'data');
    const up = startService(['up'], childEnv({ BUILDFLEET_PORT: '0', BUILDFLEET_DATA_DIR: dataDir }));
    try {
      const buildLine = await waitFor(
        () => {
          if (up.proc.exitCode !== null) throw new Error(`up exited ${up.proc.exitCode}:\n${up.output()}`);
          return /build (\S+) (succeeded|failed|canceled|timed_out)/.exec(up.output());
        },
        'the example build to end',
        90_000,
      );
      const out = up.output();
      expect(buildLine[2], out).toBe('succeeded');
      expect(out).toContain('ALL TESTS PASSED');
      const apiToken = /API token:\s+(bfa_\S+)/.exec(out)?.[1];
      const enrollment = /enrollment token:\s+(bfe_\S+)/.exec(out)?.[1];
      expect(apiToken).toBeDefined();
      expect(enrollment).toBeDefined();
      const url = /listening on (http:\/\/\S+)/.exec(out)?.[1];
      expect(url).toBeDefined();

      const credFile = join(dataDir, 'credentials.json');
      const creds = JSON.parse(await readFile(credFile, 'utf8'));
      expect(creds.apiToken).toBe(apiToken);
      expect(creds.enrollmentToken).toBe(enrollment);
      expect((await stat(credFile)).mode & 0o777).toBe(0o600);

      // The CLI finds the token in the data dir's credentials.json by itself.
      const status = await runCli(['status', buildLine[1]!, '--json'], childEnv({ BUILDFLEET_CONTROLLER_URL: url!, BUILDFLEET_DATA_DIR: dataDir }));
      expect(status.code, status.stderr).toBe(0);
      expect(JSON.parse(status.stdout).state).toBe('succeeded');

      expect(await up.stop()).toBe(0);
    } finally {
      await up.stop();
    }
  });
});
