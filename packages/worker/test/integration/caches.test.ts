/**
 * Caches end to end (issue 13; docs/protocol.md "Caches"): a real npm
 * project (two dependencies in its `package-lock.json`, installed by
 * `npm ci --offline` from tarballs in the source, so no registry is needed)
 * built three times against a real controller in this process (SQLite,
 * then PostgreSQL) by real workers:
 *
 * 1. worker A: the key misses, `npm ci` installs, `node_modules` is saved;
 * 2. worker A again: `node_modules` comes from A's own copy (no archive
 *    download at all: the worker's requests are recorded), `npm ci` is
 *    skipped, and nothing is saved (the key hit);
 * 3. worker B (its own data directory): the same entry is downloaded from
 *    the controller.
 *
 * The build's log says what was restored and saved, with sizes and times.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { paths, systemClock } from '@buildfleet/protocol';
import { ShellExecutor } from '../../src/executor/shell.js';
import type { Workspace } from '../../src/executor/types.js';
import { silentLogger } from '../../src/logger.js';
import { describePg } from '../../../controller/test/support/pg.js';
import { tarGz } from '../support/tarball.js';
import { fleet } from './harness.js';

const f = fleet();

/** An npm package tarball as `npm pack` makes it (`package/…`). */
function npmPackage(name: string, body: string): Buffer {
  return tarGz([
    { path: 'package/package.json', data: JSON.stringify({ name, version: '1.0.0', main: 'index.js' }) },
    { path: 'package/index.js', data: body },
  ]);
}

/** The project: package.json, a package-lock.json in sync with it, and its dependencies' tarballs. */
function npmProject(): { source: Buffer; lock: string } {
  const deps = {
    greet: npmPackage('greet', 'module.exports = (n) => `hello ${n}`;\n'),
    shout: npmPackage('shout', 'module.exports = (s) => s.toUpperCase();\n'),
  };
  const dependencies: Record<string, string> = {};
  const packages: Record<string, unknown> = {};
  for (const [name, tgz] of Object.entries(deps)) {
    const resolved = `file:vendor/${name}-1.0.0.tgz`;
    dependencies[name] = resolved;
    packages[`node_modules/${name}`] = { version: '1.0.0', resolved, integrity: `sha512-${createHash('sha512').update(tgz).digest('base64')}` };
  }
  const pkg = { name: 'app', version: '1.0.0', private: true, dependencies };
  const lock = JSON.stringify({ name: 'app', version: '1.0.0', lockfileVersion: 3, requires: true, packages: { '': { name: 'app', version: '1.0.0', dependencies }, ...packages } }, null, 2);
  const source = tarGz([
    { path: 'package.json', data: JSON.stringify(pkg, null, 2) },
    { path: 'package-lock.json', data: lock },
    { path: 'vendor/', type: 'Directory' },
    ...Object.entries(deps).map(([name, tgz]) => ({ path: `vendor/${name}-1.0.0.tgz`, data: tgz })),
  ]);
  return { source, lock };
}

const SPEC = {
  // The usual CI pattern: install only when the cache did not bring node_modules.
  script: [
    'if [ -d node_modules/greet ]; then echo "node_modules already there"; else npm ci --offline --no-audit --no-fund; fi',
    `node -e "console.log(require('shout')(require('greet')('fleet')))"`,
  ].join('\n'),
  metadata: { repo: 'acme/app' },
  cache: [{ key: "npm-{{ hashFiles('package-lock.json') }}", paths: ['node_modules'], restoreKeys: ['npm-'] }],
};

/** A worker that records the method and path of every request it makes. */
function worker(labels: string[], requests: string[], changed: string[]) {
  return f.worker(
    { labels },
    {
      transport: (url, init) => {
        requests.push(`${init.method ?? 'GET'} ${new URL(url).pathname}`);
        return fetch(url, init);
      },
    },
    // The shell executor, telling when the worker wrote into a workspace (a sandbox gives such files to its build user).
    (config) =>
      new (class extends ShellExecutor {
        async workspaceChanged(ws: Workspace): Promise<void> {
          changed.push(ws.buildId);
        }
      })({ stateDir: config.stateDir, clock: systemClock, logger: silentLogger, sourceLimits: config.sourceLimits }),
  );
}

function cacheSuite(store: 'sqlite' | 'postgres'): void {
  it('an npm project: the second build restores node_modules from the worker, a third on another worker from the controller', { timeout: 120_000 }, async () => {
    const ctl = await f.controller({ store, config: { heartbeatIntervalMs: 200, leaseMs: 10_000 } });
    const { source, lock } = npmProject();
    const key = `npm-${createHash('sha256').update(createHash('sha256').update(lock).digest()).digest('hex')}`;
    const reqA: string[] = [];
    const reqB: string[] = [];
    const changed: string[] = [];
    await worker([], reqA, changed);

    const run = async (labels: string[]) => {
      const b = await ctl.api.submit({ ...SPEC, labels }, source);
      const done = await ctl.api.finished(b.id, 60_000);
      const log = await ctl.api.log(b.id);
      expect(done.state, log).toBe('succeeded');
      expect(log).toContain('HELLO FLEET\n');
      return { id: b.id, log };
    };

    const first = await run([]);
    expect(first.log).toContain(`cache miss: no entry for key "${key}" or restore keys "npm-"`);
    expect(first.log).toMatch(/added 2 packages/);
    expect(first.log).toMatch(new RegExp(`cache saved: key "${key}", node_modules, [\\d.]+ (B|kB|MB), packed in \\d+\\.\\d\\d s, uploaded in \\d+\\.\\d\\d s`));
    const listed = await ctl.api.ok<{ caches: { key: string; sha256: string; size: number; buildId: string }[] }>('GET', paths.caches());
    expect(listed.caches).toEqual([expect.objectContaining({ key, buildId: first.id })]);
    const { sha256 } = listed.caches[0]!;

    reqA.length = 0;
    const second = await run([]);
    expect(second.log).toMatch(new RegExp(`cache restored: node_modules from key "${key}", [\\d.]+ (B|kB|MB) from the worker's local copy, \\d+\\.\\d\\d s in all`));
    expect(second.log).toContain('node_modules already there\n');
    expect(second.log).not.toMatch(/added \d+ packages|cache saved/);
    expect(reqA.filter((r) => r.includes('/cache'))).toEqual([`GET ${paths.buildCache(second.id)}`]);

    await worker(['b'], reqB, changed);
    const third = await run(['b']);
    expect(third.log).toMatch(new RegExp(`cache restored: node_modules from key "${key}", [\\d.]+ (B|kB|MB) from the controller \\(downloaded in \\d+\\.\\d\\d s\\)`));
    expect(third.log).toContain('node_modules already there\n');
    expect(reqB).toContain(`GET ${paths.buildCacheArchive(third.id, sha256)}`);
    expect((await ctl.api.ok<{ caches: unknown[] }>('GET', paths.caches())).caches).toHaveLength(1);
    // Only the builds that restored something told their executor.
    expect(changed).toEqual([second.id, third.id]);
  });
}

describe('caches on the worker (SQLite)', () => cacheSuite('sqlite'));
describePg('caches on the worker (PostgreSQL)', () => cacheSuite('postgres'));
