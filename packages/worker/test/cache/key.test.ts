import { mkdtemp, mkdir, rm, writeFile, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KeyTemplateError, parseKeyTemplate } from '@buildfleet/protocol';
import { hashFiles, renderKey, type KeyContext } from '../../src/cache/key.js';

describe('cache key templates', () => {
  let ws: string;
  let ctx: KeyContext;
  beforeEach(async () => {
    ws = await mkdtemp(path.join(tmpdir(), 'bf-key-'));
    ctx = { workspace: ws, os: 'linux', arch: 'x64', labels: ['node', 'linux'], env: { NODE: '20' }, metadata: { repo: 'acme/app', n: 3 } };
  });
  afterEach(async () => {
    await rm(ws, { recursive: true, force: true });
  });

  it('renders hashFiles of the lock file, which changes when the file does', async () => {
    await writeFile(path.join(ws, 'package-lock.json'), '{"lockfileVersion":3}');
    const a = await renderKey("npm-{{ os }}-{{ hashFiles('package-lock.json') }}", ctx);
    expect(a).toMatch(/^npm-linux-[0-9a-f]{64}$/);
    expect(await renderKey("npm-{{ os }}-{{hashFiles('package-lock.json')}}", ctx)).toBe(a);
    await writeFile(path.join(ws, 'package-lock.json'), '{"lockfileVersion":2}');
    expect(await renderKey("npm-{{ os }}-{{ hashFiles('package-lock.json') }}", ctx)).not.toBe(a);
  });

  it('hashFiles takes several patterns and globs, in path order, and is empty when nothing matches', async () => {
    await mkdir(path.join(ws, 'a', 'b'), { recursive: true });
    await writeFile(path.join(ws, 'a', 'x.lock'), '1');
    await writeFile(path.join(ws, 'a', 'b', 'y.lock'), '2');
    const both = await hashFiles(ws, ['**/*.lock']);
    expect(both).toMatch(/^[0-9a-f]{64}$/);
    expect(await hashFiles(ws, ['a/b/y.lock', 'a/x.lock'])).toBe(both);
    expect(await hashFiles(ws, ['a/x.lock'])).not.toBe(both);
    expect(await hashFiles(ws, ['nothing.lock'])).toBe('');
  });

  it('does not hash files outside the workspace through a symlink', async () => {
    const outside = await mkdtemp(path.join(tmpdir(), 'bf-out-'));
    await writeFile(path.join(outside, 'secret.lock'), 'x');
    await symlink(path.join(outside, 'secret.lock'), path.join(ws, 'link.lock'));
    expect(await hashFiles(ws, ['*.lock'])).toBe('');
    await rm(outside, { recursive: true, force: true });
  });

  it('renders variables of the worker and the spec', async () => {
    expect(await renderKey('{{ arch }}/{{ labels }}/{{ env.NODE }}/{{ metadata.repo }}/{{ metadata.n }}/{{ env.NONE }}.', ctx)).toBe(
      'x64/linux-node/20/acme/app/3/.',
    );
  });

  it('refuses unknown expressions, unclosed braces, patterns outside the workspace and empty keys', async () => {
    expect(() => parseKeyTemplate('{{ secrets.X }}')).toThrow(KeyTemplateError);
    expect(() => parseKeyTemplate('a-{{ os')).toThrow(/without "}}"/);
    expect(() => parseKeyTemplate("{{ hashFiles('../etc/passwd') }}")).toThrow(/relative to the workspace/);
    expect(() => parseKeyTemplate('{{ hashFiles(lock) }}')).toThrow(/quoted/);
    await expect(renderKey("{{ hashFiles('none') }}", ctx)).rejects.toThrow(/cache key is empty/);
  });
});
