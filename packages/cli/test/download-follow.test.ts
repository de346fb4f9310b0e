import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ApiClient } from '../src/client.js';
import { downloadArtifacts } from '../src/download.js';
import { CliError, EXIT } from '../src/errors.js';
import { sendJson, startFakeController, type FakeController } from './fake-controller.js';

// downloadArtifacts against a scripted server: these tests need a controller that lies about
// checksums and names, which the real one cannot be made to do. followBuild runs against the
// real controller (follow.test.ts).
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

  it('fails (exit 3) when every artifact has expired, but not when only some have', async () => {
    const gone = { name: 'old.bin', size: 1, sha256: sha(Buffer.from('x')), expiredAt: '2026-01-01T00:00:00.000Z' };
    fake.routes.set('GET /api/v1/builds/b1/artifacts', (_q, _b, res) => sendJson(res, 200, { artifacts: [gone] }));
    const err = await downloadArtifacts(client, 'b1', out).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CliError);
    expect((err as CliError).exitCode).toBe(EXIT.error);
    expect((err as Error).message).toMatch(/every artifact of build b1 has expired/);
    serveArtifacts({ 'a.txt': Buffer.from('a') });
    const listed = { name: 'a.txt', size: 1, sha256: sha(Buffer.from('a')) };
    fake.routes.set('GET /api/v1/builds/b1/artifacts', (_q, _b, res) => sendJson(res, 200, { artifacts: [gone, listed] }));
    expect((await downloadArtifacts(client, 'b1', out)).map((a) => a.name)).toEqual(['a.txt']);
  });

  it('an --out that is a file is one CliError naming it, not a stack trace', async () => {
    serveArtifacts({ 'a.txt': Buffer.from('a') });
    const file = join(out, 'afile');
    await writeFile(file, 'x');
    const err = await downloadArtifacts(client, 'b1', file).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CliError);
    expect((err as Error).message).toMatch(/cannot create the directory .* for --out .*afile: a file is in the way \((EEXIST|ENOTDIR)\)/);
  });
});
