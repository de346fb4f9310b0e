import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  SecretCipher,
  SecretDecryptError,
  SecretsKeyError,
  defaultKeyFile,
  loadSecretsKey,
  parseSecretsKey,
} from '../../src/secrets/cipher.js';

describe('SecretCipher (AES-256-GCM)', () => {
  const cipher = new SecretCipher(randomBytes(32));

  it('opens what it sealed, for any value, and the sealed form never contains the value', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1 }), fc.stringMatching(/^[A-Z_]{1,20}$/), (value, name) => {
        const sealed = cipher.seal(name, value);
        expect(cipher.open(name, sealed)).toBe(value);
        if (value.length >= 4) expect(sealed).not.toContain(value);
      }),
      { numRuns: 200 },
    );
  });

  it('uses a fresh nonce each time', () => {
    expect(cipher.seal('A', 'same')).not.toBe(cipher.seal('A', 'same'));
  });

  it('refuses another key, another name, or an altered value', () => {
    const sealed = cipher.seal('NPM_TOKEN', 'npm_secret_value');
    expect(() => new SecretCipher(randomBytes(32)).open('NPM_TOKEN', sealed)).toThrow(SecretDecryptError);
    expect(() => cipher.open('OTHER', sealed)).toThrow(SecretDecryptError);
    const [v, n, body] = sealed.split('.');
    const bytes = Buffer.from(body!, 'base64url');
    bytes[0]! ^= 1;
    expect(() => cipher.open('NPM_TOKEN', `${v}.${n}.${bytes.toString('base64url')}`)).toThrow(SecretDecryptError);
    expect(() => cipher.open('NPM_TOKEN', 'garbage')).toThrow(SecretDecryptError);
  });

});

describe('secrets key loading', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'bf-key-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('accepts 32 bytes as hex or base64 (either alphabet), nothing else', () => {
    const key = randomBytes(32);
    expect(parseSecretsKey(key.toString('hex'), 'x')).toEqual(key);
    expect(parseSecretsKey(` ${key.toString('base64')}\n`, 'x')).toEqual(key);
    expect(parseSecretsKey(key.toString('base64url'), 'x')).toEqual(key);
    expect(() => parseSecretsKey(randomBytes(16).toString('hex'), 'BUILDFLEET_SECRETS_KEY')).toThrow(/BUILDFLEET_SECRETS_KEY must hold a 32-byte key/);
    expect(() => parseSecretsKey('hunter2', 'x')).toThrow(SecretsKeyError);
  });

  it('prefers the environment, then the key file, then the data directory', async () => {
    const envKey = randomBytes(32);
    const fileKey = randomBytes(32);
    const keyFile = path.join(dir, 'k');
    await writeFile(keyFile, fileKey.toString('hex'));
    const sealedBy = (key: Buffer) => new SecretCipher(key).seal('K', 'v');
    const fromEnv = loadSecretsKey({ key: envKey.toString('base64'), keyFile, dataDir: dir, generate: true })!;
    expect(fromEnv.source).toBe('env');
    expect(fromEnv.cipher.open('K', sealedBy(envKey))).toBe('v');
    const fromFile = loadSecretsKey({ keyFile, dataDir: dir, generate: true })!;
    expect(fromFile.source).toBe('file');
    expect(fromFile.cipher.open('K', sealedBy(fileKey))).toBe('v');
  });

  it('generates a 0600 key file in the data directory only when asked, and reuses it', async () => {
    expect(loadSecretsKey({ dataDir: dir, generate: false })).toBeUndefined();
    const first = loadSecretsKey({ dataDir: dir, generate: true })!;
    expect(first.source).toBe('generated');
    expect((await stat(defaultKeyFile(dir))).mode & 0o777).toBe(0o600);
    expect(parseSecretsKey(await readFile(defaultKeyFile(dir), 'utf8'), 'f')).toHaveLength(32);
    const again = loadSecretsKey({ dataDir: dir, generate: false })!;
    expect(again.source).toBe('data-dir');
    expect(again.cipher.open('K', first.cipher.seal('K', 'v'))).toBe('v');
  });
});
