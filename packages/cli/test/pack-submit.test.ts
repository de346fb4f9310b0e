import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { extract } from 'tar';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ApiClient } from '../src/client.js';
import { listSourceFiles } from '../src/pack.js';
import { loadSpec, submitDirectory } from '../src/submit.js';
import { sendJson, startFakeController, type FakeController } from './fake-controller.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bf-cli-pack-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function put(rel: string, content: string): Promise<void> {
  await mkdir(join(dir, rel, '..'), { recursive: true });
  await writeFile(join(dir, rel), content);
}

describe('listSourceFiles', () => {
  it('honours root and nested .gitignore files and always skips .git', async () => {
    await put('.gitignore', 'build/\n*.o\n!keep.o\n');
    await put('src/main.c', 'int main(void){return 0;}');
    await put('src/main.o', 'obj');
    await put('src/keep.o', 'kept by negation');
    await put('build/hello', 'binary');
    await put('.git/HEAD', 'ref: refs/heads/main');
    await put('sub/.gitignore', 'secret.txt\n/local-only\n');
    await put('sub/secret.txt', 'x');
    await put('sub/local-only/a', 'x');
    await put('sub/ok.txt', 'x');
    await put('local-only/b', 'not ignored: the nested rule is anchored to sub/');
    await put('node_modules/pkg/index.js', 'kept: only .gitignore decides');
    expect(await listSourceFiles(dir)).toEqual([
      '.gitignore',
      'local-only/b',
      'node_modules/pkg/index.js',
      'src/keep.o',
      'src/main.c',
      'sub/.gitignore',
      'sub/ok.txt',
    ]);
  });
});

describe('loadSpec', () => {
  it('reads buildfleet.json and lets flags override, merging env', async () => {
    await put('buildfleet.json', JSON.stringify({ script: 'make', artifacts: ['a'], env: { A: '1', B: '2' }, priority: 1 }));
    const spec = await loadSpec(dir, { script: 'make test', env: { B: 'x' }, labels: ['linux'] });
    expect(spec).toEqual({ script: 'make test', artifacts: ['a'], env: { A: '1', B: 'x' }, priority: 1, labels: ['linux'] });
  });
  it('refuses a spec without a script and a file that is not a JSON object', async () => {
    await expect(loadSpec(dir, {})).rejects.toThrow(/no build script/);
    await put('buildfleet.json', '[1]');
    await expect(loadSpec(dir, { script: 'x' })).rejects.toThrow(/JSON object/);
  });
});

describe('submitDirectory', () => {
  let fake: FakeController;
  beforeEach(async () => {
    fake = await startFakeController();
  });
  afterEach(async () => {
    await fake.close();
  });

  it('streams multipart with the spec part first, then a tar.gz of the non-ignored files', async () => {
    await put('.gitignore', 'out/\n');
    await put('a.txt', 'alpha');
    await put('deep/b.txt', 'beta'.repeat(100_000));
    await put('out/junk', 'ignored');
    let raw: Buffer = Buffer.alloc(0);
    let form: FormData | undefined;
    fake.routes.set('POST /api/v1/builds', async (req, body, res) => {
      raw = body;
      form = await new Response(body, { headers: { 'content-type': req.headers['content-type'] ?? '' } }).formData();
      sendJson(res, 201, { build: { id: 'b1', state: 'queued' } });
    });
    const progress: [number, number][] = [];
    const client = new ApiClient({ controllerUrl: fake.url, apiToken: 'bfa_test', tokenSource: 'test' });
    const build = await submitDirectory(client, dir, { script: 'true' }, { onProgress: (s, t) => progress.push([s, t]) });

    expect(build.id).toBe('b1');
    expect(fake.requests[0]?.auth).toBe('Bearer bfa_test');
    expect(raw.indexOf('name="spec"')).toBeGreaterThan(-1);
    expect(raw.indexOf('name="spec"')).toBeLessThan(raw.indexOf('name="source"'));
    expect(JSON.parse(String(form!.get('spec')))).toEqual({ script: 'true' });
    const last = progress.at(-1)!;
    expect(last[0]).toBe(last[1]);
    expect(last[1]).toBe(raw.length);

    const source = form!.get('source') as File;
    const tgz = join(dir, '..', `${dir.split('/').pop()}-src.tar.gz`);
    const into = await mkdtemp(join(tmpdir(), 'bf-cli-x-'));
    try {
      await writeFile(tgz, Buffer.from(await source.arrayBuffer()));
      await extract({ file: tgz, cwd: into });
      expect(await readFile(join(into, 'a.txt'), 'utf8')).toBe('alpha');
      expect((await readFile(join(into, 'deep/b.txt'), 'utf8')).length).toBe(400_000);
      await expect(readFile(join(into, 'out/junk'))).rejects.toThrow();
    } finally {
      await rm(into, { recursive: true, force: true });
      await rm(tgz, { force: true });
    }
  });

  it('turns protocol error bodies into ApiErrors with their code', async () => {
    await put('a.txt', 'a');
    fake.routes.set('POST /api/v1/builds', (_req, _body, res) =>
      sendJson(res, 401, { error: { code: 'TOKEN_INVALID', message: 'unknown token' } }),
    );
    const client = new ApiClient({ controllerUrl: fake.url, apiToken: 'bfa_wrong', tokenSource: 'BUILDFLEET_API_TOKEN' });
    await expect(submitDirectory(client, dir, { script: 'true' })).rejects.toMatchObject({
      code: 'TOKEN_INVALID',
      message: expect.stringContaining('BUILDFLEET_API_TOKEN'),
    });
  });
});

describe('packSource', () => {
  it('packs an empty project as an archive with only its root entry (a build may need only its script)', async () => {
    const { packSource } = await import('../src/pack.js');
    const tgz = `${dir}.tar.gz`;
    try {
      const r = await packSource(dir, tgz);
      expect(r.files).toBe(0);
      const into = await mkdtemp(join(tmpdir(), 'bf-cli-empty-'));
      await extract({ file: tgz, cwd: into });
      await rm(into, { recursive: true, force: true });
    } finally {
      await rm(tgz, { force: true });
    }
  });
});
