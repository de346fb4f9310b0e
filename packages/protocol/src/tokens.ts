/**
 * Credential kinds of PROTOCOL.md ("Credentials"). Tokens are opaque random
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
