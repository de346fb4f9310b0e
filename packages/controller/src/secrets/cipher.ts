/**
 * Secrets at rest (issue 13): AES-256-GCM with a key the controller is given
 * (`BUILDFLEET_SECRETS_KEY`, or a key file), never stored in the database:
 * the database holds only sealed values. (A controller given another key
 * notices at start: it cannot open the stored secrets; secrets/service.ts.)
 *
 * Sealed form: `v1.<nonce>.<ciphertext+tag>` (base64url), a fresh 96-bit
 * random nonce per value (NIST SP 800-38D, 8.2.2) and the secret's name as
 * additional authenticated data, so a sealed value moved to another name in
 * the database does not decrypt.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** Key length for AES-256, bytes. */
export const SECRETS_KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const VERSION = 'v1';

/** A sealed value does not open: wrong key, wrong name, or tampered with. */
export class SecretDecryptError extends Error {
  constructor(name: string) {
    super(`secret ${name} cannot be decrypted with this controller's key (another key, or the stored value was altered)`);
    this.name = 'SecretDecryptError';
  }
}

/** The key's text is unusable (length or encoding); `message` says which source. */
export class SecretsKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SecretsKeyError';
  }
}

function aad(name: string): Buffer {
  return Buffer.from(`buildfleet-secret:${VERSION}:${name}`, 'utf8');
}

/** Seals and opens secret values with one 32-byte key. */
export class SecretCipher {
  constructor(private readonly key: Buffer) {
    if (key.length !== SECRETS_KEY_BYTES) throw new SecretsKeyError(`the secrets key must be ${SECRETS_KEY_BYTES} bytes, got ${key.length}`);
  }

  /** Seals `value` for the secret called `name`. */
  seal(name: string, value: string): string {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.key, nonce);
    cipher.setAAD(aad(name));
    const body = Buffer.concat([cipher.update(value, 'utf8'), cipher.final(), cipher.getAuthTag()]);
    return `${VERSION}.${nonce.toString('base64url')}.${body.toString('base64url')}`;
  }

  /** Opens a sealed value of the secret `name`. Throws SecretDecryptError. */
  open(name: string, sealed: string): string {
    const [version, nonceText, bodyText] = sealed.split('.');
    if (version !== VERSION || nonceText === undefined || bodyText === undefined) throw new SecretDecryptError(name);
    const nonce = Buffer.from(nonceText, 'base64url');
    const body = Buffer.from(bodyText, 'base64url');
    if (nonce.length !== NONCE_BYTES || body.length < TAG_BYTES) throw new SecretDecryptError(name);
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.key, nonce);
      decipher.setAAD(aad(name));
      decipher.setAuthTag(body.subarray(body.length - TAG_BYTES));
      return Buffer.concat([decipher.update(body.subarray(0, body.length - TAG_BYTES)), decipher.final()]).toString('utf8');
    } catch {
      throw new SecretDecryptError(name);
    }
  }
}

/**
 * Parses a key given as text: 32 bytes in base64 (44 characters, standard
 * or URL alphabet) or hex (64 characters); surrounding whitespace is
 * ignored. Throws SecretsKeyError naming `source`.
 */
export function parseSecretsKey(text: string, source: string): Buffer {
  const t = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(t)) return Buffer.from(t, 'hex');
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(t)) {
    const key = Buffer.from(t.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    if (key.length === SECRETS_KEY_BYTES) return key;
  }
  throw new SecretsKeyError(
    `${source} must hold a 32-byte key as 64 hex characters or 44 base64 characters (make one with: openssl rand -base64 32)`,
  );
}

export interface SecretsKeyOptions {
  /** `BUILDFLEET_SECRETS_KEY`: the key itself. */
  key?: string;
  /** `BUILDFLEET_SECRETS_KEY_FILE`: a file holding the key. */
  keyFile?: string;
  /** Where the default key file lives (`<dataDir>/secrets.key`). */
  dataDir: string;
  /**
   * Create the default key file when no key is given and none exists yet:
   * right for one controller on SQLite; with PostgreSQL every controller
   * needs the same key, so the operator must give it.
   */
  generate: boolean;
}

/** Where the key came from (for the startup log line; never the key). */
export type SecretsKeySource = 'env' | 'file' | 'data-dir' | 'generated';

/** The default key file in the data directory. */
export function defaultKeyFile(dataDir: string): string {
  return path.join(dataDir, 'secrets.key');
}

/**
 * Loads the controller's secrets key: `key`, else `keyFile`, else
 * `<dataDir>/secrets.key` when it exists, else (with `generate`) a new random
 * key written there with mode 0600. Returns undefined when there is none:
 * the controller then refuses to store or hand out secrets. Throws
 * SecretsKeyError for an unusable key and the file system's error for an
 * unreadable file.
 */
export function loadSecretsKey(opts: SecretsKeyOptions): { cipher: SecretCipher; source: SecretsKeySource } | undefined {
  if (opts.key !== undefined && opts.key !== '') {
    return { cipher: new SecretCipher(parseSecretsKey(opts.key, 'BUILDFLEET_SECRETS_KEY')), source: 'env' };
  }
  if (opts.keyFile !== undefined && opts.keyFile !== '') {
    const text = readFileSync(opts.keyFile, 'utf8');
    return { cipher: new SecretCipher(parseSecretsKey(text, `the key file ${opts.keyFile}`)), source: 'file' };
  }
  const file = defaultKeyFile(opts.dataDir);
  if (existsSync(file)) {
    return { cipher: new SecretCipher(parseSecretsKey(readFileSync(file, 'utf8'), `the key file ${file}`)), source: 'data-dir' };
  }
  if (!opts.generate) return undefined;
  mkdirSync(opts.dataDir, { recursive: true });
  const key = randomBytes(SECRETS_KEY_BYTES);
  // 'wx': two controllers starting at once on one data dir must not both write one.
  try {
    writeFileSync(file, `${key.toString('base64')}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    return { cipher: new SecretCipher(parseSecretsKey(readFileSync(file, 'utf8'), `the key file ${file}`)), source: 'data-dir' };
  }
  chmodSync(file, 0o600);
  return { cipher: new SecretCipher(key), source: 'generated' };
}
