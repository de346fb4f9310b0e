/**
 * Credentials of docs/protocol.md ("Credentials"): random prefixed tokens of 256
 * bits, stored only as SHA-256, compared in constant time; build tokens are
 * derived with HMAC-SHA256 from a key kept in the database, so every
 * controller re-issues the same token for the same attempt.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { TOKEN_PREFIX, type TokenKind } from '@buildfleet/protocol';
import type { Store } from './store/types.js';

/** A fresh token: `<prefix of kind>` + 32 random bytes, base64url. */
export function generateToken(kind: TokenKind): string {
  return TOKEN_PREFIX[kind] + randomBytes(32).toString('base64url');
}

/** Lowercase hex SHA-256 of a token: the only form the store keeps. */
export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** Constant-time string equality (length leaks, content does not). */
export function safeEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a, 'utf8');
  const bb = Buffer.from(b, 'utf8');
  if (ab.length !== bb.length) {
    // Compare anyway so the time does not depend on where the strings differ.
    timingSafeEqual(ab, ab);
    return false;
  }
  return timingSafeEqual(ab, bb);
}

/** Name of the database secret that keys build tokens. */
export const BUILD_TOKEN_SECRET = 'build_token_hmac';

/** The build and attempt a verified build token names. */
export interface BuildTokenClaims {
  buildId: string;
  attempt: number;
}

/**
 * Derives and verifies build tokens `bfb_<buildId>.<attempt>.<mac>`, mac =
 * base64url(HMAC-SHA256(key, `${buildId}.${attempt}`)). Build ids must not
 * contain '.' (UUIDs never do); the parser splits at the last two dots anyway.
 */
export class BuildTokens {
  constructor(private readonly key: Buffer) {}

  /** Loads (or creates, once for all controllers) the HMAC key from the store. */
  static async fromStore(store: Store): Promise<BuildTokens> {
    const secret = await store.getOrCreateSecret(BUILD_TOKEN_SECRET, () => randomBytes(32).toString('base64url'));
    return new BuildTokens(Buffer.from(secret, 'utf8'));
  }

  private mac(buildId: string, attempt: number): string {
    return createHmac('sha256', this.key).update(`${buildId}.${attempt}`, 'utf8').digest('base64url');
  }

  /** The token of one attempt of one build. */
  issue(buildId: string, attempt: number): string {
    return `${TOKEN_PREFIX.build}${buildId}.${attempt}.${this.mac(buildId, attempt)}`;
  }

  /** The claims of a genuine token; undefined for anything else (→ 401 TOKEN_INVALID). */
  verify(token: string): BuildTokenClaims | undefined {
    if (!token.startsWith(TOKEN_PREFIX.build)) return undefined;
    const body = token.slice(TOKEN_PREFIX.build.length);
    const macDot = body.lastIndexOf('.');
    if (macDot <= 0) return undefined;
    const attemptDot = body.lastIndexOf('.', macDot - 1);
    if (attemptDot <= 0) return undefined;
    const buildId = body.slice(0, attemptDot);
    const attemptText = body.slice(attemptDot + 1, macDot);
    const mac = body.slice(macDot + 1);
    if (!/^[1-9][0-9]{0,8}$/.test(attemptText)) return undefined;
    const attempt = Number(attemptText);
    if (!safeEqual(mac, this.mac(buildId, attempt))) return undefined;
    return { buildId, attempt };
  }
}
