/**
 * Credential kinds of docs/protocol.md ("Credentials"). Tokens are opaque random
 * strings whose prefix names their kind; the controller stores only SHA-256.
 */
export const TOKEN_PREFIX = {
  api: 'bfa_',
  enrollment: 'bfe_',
  workerSecret: 'bfs_',
  access: 'bfw_',
  build: 'bfb_',
} as const;

export type TokenKind = keyof typeof TOKEN_PREFIX;

/** The kind a token's prefix names, or undefined for an unknown prefix. */
export function tokenKind(token: string): TokenKind | undefined {
  for (const [kind, prefix] of Object.entries(TOKEN_PREFIX) as [TokenKind, string][]) {
    if (token.startsWith(prefix)) return kind;
  }
  return undefined;
}

/** Reads `Authorization: Bearer <token>`; undefined when absent or malformed. */
export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1];
}

/**
 * Field names whose values are credentials. Loggers censor them wherever
 * they appear (docs/protocol.md "Credentials": tokens are never logged).
 */
export const SECRET_FIELDS = [
  'authorization',
  'accessToken',
  'workerSecret',
  'buildToken',
  'enrollmentToken',
  'apiToken',
  'token',
  'secret',
  'secretsKey',
  'value',
] as const;

/**
 * pino `redact.paths` for every `SECRET_FIELDS` name at the top level and
 * one or two objects deep, plus the Authorization header of a logged
 * request (`req.headers.authorization`, `headers.authorization`).
 */
export function secretLogPaths(): string[] {
  const out = ['req.headers.authorization', 'headers.authorization', '*.headers.authorization'];
  for (const f of SECRET_FIELDS) out.push(f, `*.${f}`, `*.*.${f}`);
  return out;
}

const TOKEN_IN_TEXT = /\b(bf[aesbw]_)[A-Za-z0-9_\-.]+/g;

/**
 * Replaces every token of docs/protocol.md's kinds inside free text (a log
 * message, an error message or stack) with its prefix and `[redacted]`:
 * the safety net for a token that reached a message instead of a field.
 */
export function redactTokens(text: string): string {
  return text.replace(TOKEN_IN_TEXT, '$1[redacted]');
}
