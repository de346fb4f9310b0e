import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { systemClock } from '@buildfleet/protocol';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ApiClient } from '../src/client.js';
import { downloadArtifacts } from '../src/download.js';
import { CliError, EXIT } from '../src/errors.js';
import { followBuild } from '../src/follow.js';
import { sendJson, startFakeController, type FakeController } from './fake-controller.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let fake: FakeController;
let out: string;
let client: ApiClient;
beforeEach(async () => {
  fake = await startFakeController();
  out = await mkdtemp(join(tmpdir(), 'bf-cli-dl-'));
  client = new ApiClient({ controllerUrl: fake.url, apiToken: 'bfa_t', tokenSource: 'test' });
});
afterEach(async () => {
  await fake.close();
  await rm(out, { recursive: true, force: true });
});

function serveArtifacts(files: Record<string, Buffer>, lie: Record<string, string> = {}): void {
  fake.routes.set('GET /api/v1/builds/b1/artifacts', (_q, _b, res) =>
    sendJson(res, 200, {
      artifacts: Object.entries(files).map(([name, data]) => ({ name, size: data.length, sha256: lie[name] ?? sha(data) })),
    }),
  );
  for (const [name, data] of Object.entries(files)) {
    fake.routes.set(`GET /api/v1/builds/b1/artifacts/${encodeURIComponent(name)}`, (_q, _b, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-checksum-sha256': lie[name] ?? sha(data) });
      res.end(data);
    });
  }
}

describe('downloadArtifacts', () => {
  it('writes each artifact under its relative name after checking its SHA-256', async () => {
    const bin = Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]);
    serveArtifacts({ 'build/hello': bin, 'report.txt': Buffer.from('ok\n') });
    const got = await downloadArtifacts(client, 'b1', out);
    expect(got.map((a) => a.name)).toEqual(['build/hello', 'report.txt']);
    expect(await readFile(join(out, 'build/hello'))).toEqual(bin);
    expect((await stat(join(out, 'build/hello'))).mode & 0o111).not.toBe(0);
    expect((await stat(join(out, 'report.txt'))).mode & 0o111).toBe(0);
    expect(sha(await readFile(join(out, 'report.txt')))).toBe(got[1]!.sha256);
  });

  it('refuses bytes whose SHA-256 differs from the listing and leaves no file behind', async () => {
    serveArtifacts({ 'a.bin': Buffer.from('real bytes') }, { 'a.bin': sha(Buffer.from('other bytes')) });
    const err = await downloadArtifacts(client, 'b1', out).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CliError);
    expect((err as Error).message).toMatch(/checksum mismatch/);
    // An exit code of its own, not the usage/connection error's 3.
    expect((err as CliError).exitCode).toBe(EXIT.checksumMismatch);
    expect(EXIT.checksumMismatch).not.toBe(EXIT.error);
    expect(await readdir(out)).toEqual([]);
  });

  it('refuses an artifact name that would leave the output directory', async () => {
    fake.routes.set('GET /api/v1/builds/b1/artifacts', (_q, _b, res) =>
      sendJson(res, 200, { artifacts: [{ name: '../evil', size: 1, sha256: sha(Buffer.from('x')) }] }),
    );
    await expect(downloadArtifacts(client, 'b1', out)).rejects.toThrow(/refusing artifact/);
  });
});

describe('followBuild', () => {
  it('prints the whole log across polls, switches to a new attempt, and returns the terminal build', async () => {
    // Scripted controller: attempt 1 writes "one\n" then is lost; attempt 2 writes two chunks and succeeds.
    const logs: Record<number, string> = { 1: '', 2: '' };
    let state = 'running';
    let attempt = 1;
    let step = 0;
    const advance = () => {
      step++;
      if (step === 1) logs[1] += 'one\n';
      if (step === 3) attempt = 2;
      if (step === 4) logs[2] += 'two\n';
      if (step === 6) logs[2] += 'three\n';
      if (step === 7) state = 'succeeded';
    };
    fake.routes.set('GET /api/v1/builds/b1', (_q, _b, res) => {
      advance();
      sendJson(res, 200, { build: { id: 'b1', state, attempt, exitCode: state === 'succeeded' ? 0 : null } });
    });
    fake.routes.set('GET /api/v1/builds/b1/logs', (_q, _b, res, url) => {
      const a = Number(url.searchParams.get('attempt'));
      const off = Number(url.searchParams.get('offset'));
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(Buffer.from(logs[a] ?? '').subarray(off));
    });
    let printed = '';
    const attempts: number[] = [];
    const build = await followBuild(client, 'b1', (c) => (printed += c.toString()), {
      clock: systemClock,
      intervalMs: 1,
      onAttempt: (a) => attempts.push(a),
    });
    expect(build.state).toBe('succeeded');
    expect(attempts).toEqual([2]);
    expect(printed).toBe('one\ntwo\nthree\n');
  });

  it('reports a missing build as BUILD_NOT_FOUND', async () => {
    await expect(followBuild(client, 'nope', () => {}, { clock: systemClock })).rejects.toMatchObject({ code: 'BUILD_NOT_FOUND' });
  });
});
