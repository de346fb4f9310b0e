import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BuildTokens, generateToken, hashToken, safeEqual } from '../../src/credentials.js';
import { ConfigError, loadControllerConfig } from '../../src/config.js';

describe('credentials', () => {
  it('generates prefixed tokens with 256 random bits', () => {
    const a = generateToken('api');
    const b = generateToken('api');
    expect(a).toMatch(/^bfa_[A-Za-z0-9_-]{43}$/);
    expect(a).not.toBe(b);
    expect(generateToken('enrollment')).toMatch(/^bfe_/);
    expect(generateToken('access')).toMatch(/^bfw_/);
    expect(generateToken('workerSecret')).toMatch(/^bfs_/);
  });

  it('hashes with SHA-256 hex', () => {
    expect(hashToken('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('compares in constant time and tells different strings apart', () => {
    expect(safeEqual('abc', 'abc')).toBe(true);
    expect(safeEqual('abc', 'abd')).toBe(false);
    expect(safeEqual('abc', 'abcd')).toBe(false);
    expect(safeEqual('', '')).toBe(true);
  });

  it('derives the same build token from the same key (every controller agrees)', () => {
    const key = Buffer.from('k'.repeat(32));
    const t1 = new BuildTokens(key).issue('0190-build', 2);
    const t2 = new BuildTokens(Buffer.from('k'.repeat(32))).issue('0190-build', 2);
    expect(t1).toBe(t2);
    expect(t1).toMatch(/^bfb_0190-build\.2\.[A-Za-z0-9_-]{43}$/);
    expect(new BuildTokens(key).verify(t1)).toEqual({ buildId: '0190-build', attempt: 2 });
  });

  it('rejects forged, altered, other-key and other-attempt tokens', () => {
    const tokens = new BuildTokens(Buffer.from('secret-key'));
    const other = new BuildTokens(Buffer.from('other-key'));
    const good = tokens.issue('b1', 1);
    expect(tokens.verify(other.issue('b1', 1))).toBeUndefined();
    expect(tokens.verify(good.replace('.1.', '.2.'))).toBeUndefined();
    expect(tokens.verify(good.replace('b1', 'b2'))).toBeUndefined();
    expect(tokens.verify(good.slice(0, -1))).toBeUndefined();
    expect(tokens.verify('bfb_b1.1.')).toBeUndefined();
    expect(tokens.verify('bfb_')).toBeUndefined();
    expect(tokens.verify('bfa_whatever')).toBeUndefined();
    expect(tokens.verify(good.replace('.1.', '.01.'))).toBeUndefined();
  });

  it('never accepts a random string (property)', () => {
    const tokens = new BuildTokens(Buffer.from('secret-key'));
    fc.assert(
      fc.property(fc.string(), fc.string(), (a, b) => {
        expect(tokens.verify(`bfb_${a}.${b}`)).toBeUndefined();
        expect(tokens.verify(a)).toBeUndefined();
      }),
    );
  });

  it('round-trips any build id and attempt (property)', () => {
    const tokens = new BuildTokens(Buffer.from('secret-key'));
    fc.assert(
      fc.property(fc.uuid(), fc.integer({ min: 1, max: 1000 }), (id, attempt) => {
        expect(tokens.verify(tokens.issue(id, attempt))).toEqual({ buildId: id, attempt });
      }),
    );
  });
});

describe('controller config', () => {
  it('reads docs/protocol.md names with defaults and freezes the result', () => {
    const c = loadControllerConfig({ BUILDFLEET_PORT: '0', BUILDFLEET_LEASE_MS: '5000', BUILDFLEET_HEARTBEAT_INTERVAL_MS: '1000' });
    expect(c.port).toBe(0);
    expect(c.leaseMs).toBe(5000);
    expect(c.ackTimeoutMs).toBe(30_000);
    expect(c.pollWaitMs).toBe(30_000);
    expect(c.maxSourceBytes).toBe(1024 ** 3);
    expect(c.maxArtifactBytes).toBe(2 * 1024 ** 3);
    expect(c.host).toBe('127.0.0.1');
    expect(c.databaseUrl).toBeUndefined();
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('overrides win over the environment', () => {
    const c = loadControllerConfig({ BUILDFLEET_PORT: '9999' }, { port: 0 });
    expect(c.port).toBe(0);
  });

  it('refuses tokens without their prefix, naming the variable', () => {
    expect(() => loadControllerConfig({ BUILDFLEET_API_TOKEN: 'secret-without-prefix-1234567890' })).toThrow(
      /BUILDFLEET_API_TOKEN must start with "bfa_"/,
    );
    expect(() => loadControllerConfig({ BUILDFLEET_ENROLLMENT_TOKEN: 'bfa_1234567890abcdefghij' })).toThrow(ConfigError);
    const ok = loadControllerConfig({ BUILDFLEET_API_TOKEN: 'bfa_1234567890abcdefghij', BUILDFLEET_ENROLLMENT_TOKEN: 'bfe_1234567890abcdefghij' });
    expect(ok.apiToken).toBe('bfa_1234567890abcdefghij');
  });

  it('refuses bad numbers and a heartbeat not shorter than the lease', () => {
    expect(() => loadControllerConfig({ BUILDFLEET_PORT: 'eighty' })).toThrow(/BUILDFLEET_PORT/);
    expect(() => loadControllerConfig({ BUILDFLEET_LEASE_MS: '1000', BUILDFLEET_HEARTBEAT_INTERVAL_MS: '1000' })).toThrow(
      /BUILDFLEET_HEARTBEAT_INTERVAL_MS/,
    );
    expect(() => loadControllerConfig({ DATABASE_URL: 'mysql://x' })).toThrow(/DATABASE_URL/);
  });
});
