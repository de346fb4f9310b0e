import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, DEFAULT_SANDBOX_HIDE, loadWorkerConfig } from '../src/config.js';

describe('loadWorkerConfig', () => {
  it('reads docs/protocol.md names, with defaults, and freezes the result', () => {
    const c = loadWorkerConfig({
      BUILDFLEET_CONTROLLER_URL: 'http://a:7700/, http://b:7700',
      BUILDFLEET_ENROLLMENT_TOKEN: 'bfe_x',
      BUILDFLEET_DATA_DIR: '/tmp/bf-data',
      BUILDFLEET_LABELS: 'linux, x64,,linux',
      BUILDFLEET_CONCURRENCY: '3',
    });
    expect(c.controllerUrls).toEqual(['http://a:7700', 'http://b:7700']);
    expect(c.enrollmentToken).toBe('bfe_x');
    expect(c.stateDir).toBe(path.join('/tmp/bf-data', 'worker'));
    expect(c.labels).toEqual(['linux', 'x64']);
    expect(c.maxConcurrentBuilds).toBe(3);
    expect(c.cancelGraceMs).toBe(10_000);
    // Host name plus a tag of the data directory: two workers on one host differ, a restart keeps its name.
    expect(c.name).toMatch(new RegExp(`^${os.hostname()}-[0-9a-f]{4}$`));
    expect(loadWorkerConfig({ BUILDFLEET_DATA_DIR: '/tmp/bf-data' }).name).toBe(c.name);
    expect(loadWorkerConfig({ BUILDFLEET_DATA_DIR: '/tmp/bf-data-2' }).name).not.toBe(c.name);
    expect(loadWorkerConfig({ BUILDFLEET_WORKER_NAME: 'rack4-a' }).name).toBe('rack4-a');
    expect(loadWorkerConfig({ BUILDFLEET_WORKER_NAME: 'rack4-a' }, { name: 'flag' }).name).toBe('flag');
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.labels)).toBe(true);
  });

  it('defaults to the local controller, concurrency 1, ./.buildfleet', () => {
    const c = loadWorkerConfig({});
    expect(c.controllerUrls).toEqual(['http://127.0.0.1:7700']);
    expect(c.maxConcurrentBuilds).toBe(1);
    expect(c.dataDir).toBe(path.resolve('.buildfleet'));
    expect(c.enrollmentToken).toBeUndefined();
    expect(c.cacheMaxBytes).toBe(2048 * 1024 * 1024);
    expect(loadWorkerConfig({ BUILDFLEET_WORKER_CACHE_MAX_MB: '0' }).cacheMaxBytes).toBe(0);
    expect(loadWorkerConfig({ BUILDFLEET_WORKER_CACHE_MAX_MB: '5' }).cacheMaxBytes).toBe(5 * 1024 * 1024);
  });

  it('hides /etc/buildfleet and every secret file a setting names from sandboxed builds', () => {
    expect(DEFAULT_SANDBOX_HIDE).toContain('/etc/buildfleet');
    expect(loadWorkerConfig({}).sandboxHide).toEqual(['/etc/buildfleet']);
    const c = loadWorkerConfig({
      BUILDFLEET_CA_FILE: '/etc/ssl/bf/ca.pem',
      BUILDFLEET_TLS_KEY: '/srv/tls/key.pem',
      BUILDFLEET_TLS_CERT: '/srv/tls/cert.pem',
      BUILDFLEET_SECRETS_KEY_FILE: 'keys/secrets.key',
      BUILDFLEET_BLOB_DIR: '/opt/bf/blobs',
    });
    expect([...c.sandboxHide].sort()).toEqual(
      ['/etc/buildfleet', '/etc/ssl/bf/ca.pem', '/srv/tls/key.pem', '/srv/tls/cert.pem', path.resolve('keys/secrets.key'), '/opt/bf/blobs'].sort(),
    );
    expect(loadWorkerConfig({}, { caFile: '/opt/ca.pem' }).sandboxHide).toContain('/opt/ca.pem');
  });

  it('overrides win over the environment', () => {
    const c = loadWorkerConfig({ BUILDFLEET_CONCURRENCY: '3' }, { maxConcurrentBuilds: 5, labels: ['gpu'], controllerUrls: 'http://c:1' });
    expect(c.maxConcurrentBuilds).toBe(5);
    expect(c.labels).toEqual(['gpu']);
    expect(c.controllerUrls).toEqual(['http://c:1']);
  });

  it.each([
    [{ BUILDFLEET_CONCURRENCY: '0' }, /BUILDFLEET_CONCURRENCY/],
    [{ BUILDFLEET_CONCURRENCY: 'two' }, /BUILDFLEET_CONCURRENCY/],
    [{ BUILDFLEET_CONTROLLER_URL: 'not a url' }, /BUILDFLEET_CONTROLLER_URL/],
    [{ BUILDFLEET_CONTROLLER_URL: 'ftp://x' }, /http/],
    [{ BUILDFLEET_CONTROLLER_URL: ' , ' }, /empty/],
    [{ BUILDFLEET_WORKER_CACHE_MAX_MB: '-1' }, /BUILDFLEET_WORKER_CACHE_MAX_MB/],
  ])('rejects %o naming the option', (env, msg) => {
    expect(() => loadWorkerConfig(env)).toThrow(ConfigError);
    expect(() => loadWorkerConfig(env)).toThrow(msg);
  });
});
