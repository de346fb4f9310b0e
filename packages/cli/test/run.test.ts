import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EventEmitter } from 'node:events';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IdentityLock } from '@buildfleet/worker';
import { systemClock } from '@buildfleet/protocol';
import { endOnBrokenPipe, run } from '../src/run.js';

let err: string;
let out: string;
beforeEach(() => {
  err = '';
  out = '';
  process.exitCode = undefined;
  vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => ((err += String(c)), true));
  vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => ((out += String(c)), true));
});
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

const argv = (...a: string[]) => ['node', 'buildfleet', ...a];

describe('run', () => {
  it('exits 3 with one line for usage errors, never a stack trace', async () => {
    expect(await run(argv('submit', '/nonexistent/dir'))).toBe(3);
    expect(err).toBe('buildfleet: /nonexistent/dir is not a directory\n');

    err = '';
    expect(await run(argv('submit', '.', '--env', 'NOEQUALS'))).toBe(3);
    expect(err).toMatch(/--env expects KEY=VALUE/);
    expect(err).not.toMatch(/\n\s+at /);

    err = '';
    expect(await run(argv('list', '--limit', 'lots'))).toBe(3);
    expect(err).toMatch(/--limit must be an integer/);

    err = '';
    expect(await run(argv('frobnicate'))).toBe(3);
    expect(err).toMatch(/unknown command/);
  });

  it('exits 0 for --help and --version', async () => {
    expect(await run(argv('--version'))).toBe(0);
    expect(out).toContain('0.1.0');
    expect(await run(argv('submit', '--help'))).toBe(0);
    expect(out).toContain('--artifact <glob>');
  });

  it('rejects a bad flag value and names the bad option of an invalid service configuration', async () => {
    expect(await run(argv('controller', '--port', '99999'))).toBe(3);
    expect(err).toMatch(/port must be an integer from 0 to 65535/);

    err = '';
    vi.stubEnv('BUILDFLEET_LEASE_MS', 'soon');
    try {
      expect(await run(argv('controller', '--port', '0'))).toBe(3);
      expect(err).toMatch(/^buildfleet: configuration: BUILDFLEET_LEASE_MS must be an integer/);
    } finally {
      vi.unstubAllEnvs();
    }
  });
});

describe('ordinary mistakes are one line', () => {
  it('a second worker on a data directory in use names the directory and the other pid, exit 3', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bf-cli-lock-'));
    const held = await IdentityLock.acquire(join(dir, 'worker'), systemClock);
    try {
      const code = await run(argv('worker', '--data-dir', dir, '--controller-url', 'http://127.0.0.1:9', '--enrollment-token', 'bfe_x', '--executor', 'shell'));
      expect(code).toBe(3);
      expect(err).toMatch(new RegExp(`^buildfleet: worker stopped: another buildfleet worker \\(pid ${process.pid}\\) is running on the data directory ${dir} `));
      expect(err).not.toMatch(/\n\s+at /);
    } finally {
      await held.release();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('up and controller refuse a data directory a running worker or SQLite controller holds, before starting anything', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bf-cli-up-'));
    try {
      const worker = await IdentityLock.acquire(join(dir, 'worker'), systemClock);
      expect(await run(argv('up', '--data-dir', dir, '--port', '0'))).toBe(3);
      expect(err).toBe(`buildfleet: the data directory ${dir} is in use by a running buildfleet worker (pid ${process.pid}): stop it first, or give this one another --data-dir\n`);
      await worker.release();
      err = '';
      const controller = await IdentityLock.acquire(dir, systemClock);
      expect(await run(argv('controller', '--data-dir', dir, '--port', '0'))).toBe(3);
      expect(err).toBe(`buildfleet: the data directory ${dir} is in use by a running buildfleet controller (pid ${process.pid}): stop it first, or give this one another --data-dir\n`);
      await controller.release();
      // Nothing was created: no SQLite file was opened.
      expect((await readdir(dir)).filter((f) => f !== 'worker')).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('stdout losing its reader (EPIPE) ends quietly with 0; another write error is one line and 3', () => {
    const stream = new EventEmitter();
    const codes: number[] = [];
    endOnBrokenPipe(stream, (c) => codes.push(c));
    stream.emit('error', Object.assign(new Error('write EPIPE'), { code: 'EPIPE' }));
    expect(codes).toEqual([0]);
    expect(err).toBe('');
    stream.emit('error', Object.assign(new Error('no space left on device'), { code: 'ENOSPC' }));
    expect(codes).toEqual([0, 3]);
    expect(err).toBe('buildfleet: cannot write the output: no space left on device\n');
  });
});
