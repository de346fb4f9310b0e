/**
 * Build caches (issue 13): spec `cache: [{key, paths, restoreKeys?}]`. The
 * worker renders each key template, asks the controller for the newest entry
 * with that key (else the newest whose key starts with a `restoreKeys`
 * prefix, in order), restores it into the workspace before the script, and
 * after a successful build whose key missed packs `paths` and saves them.
 * Entries are content-addressed (SHA-256 of the archive) and scoped like
 * secrets. Imports nothing but typebox (schemas.ts builds on it).
 *
 * Key templates: text with `{{ expression }}` parts, after GitHub's
 * `actions/cache`:
 * - `hashFiles('package-lock.json', 'sub/**\/*.lock')`: SHA-256 over the
 *   matched workspace files (empty text when nothing matched);
 * - `os`, `arch`: the worker's platform (`linux`, `x64`);
 * - `labels`: the build's labels joined with `-`;
 * - `env.NAME`, `metadata.KEY`: a value of the build's spec (empty when unset).
 */
import { Type, type Static } from 'typebox';

/** Longest rendered cache key, characters. */
export const MAX_CACHE_KEY_LENGTH = 512;

/** A workspace-relative path (no absolute path, no `..` segment). */
const RelativePath = Type.String({ minLength: 1, maxLength: 1000, pattern: '^(?!/)(?!.*(^|/)\\.\\.(/|$)).+$' });
const KeyTemplate = Type.String({ minLength: 1, maxLength: 1000 });

export const SpecCacheSchema = Type.Object(
  {
    key: KeyTemplate,
    paths: Type.Array(RelativePath, { minItems: 1, maxItems: 20 }),
    restoreKeys: Type.Optional(Type.Array(KeyTemplate, { maxItems: 10 })),
  },
  { additionalProperties: false },
);
export type SpecCache = Static<typeof SpecCacheSchema>;
export const SpecCachesInputSchema = Type.Array(SpecCacheSchema, { maxItems: 10 });

/** One piece of a parsed key template. */
export type KeyTemplatePart =
  | { kind: 'text'; text: string }
  | { kind: 'hashFiles'; patterns: string[] }
  | { kind: 'variable'; name: string };

/** Variables a key template may name (besides `env.NAME` and `metadata.KEY`). */
export const CACHE_KEY_VARIABLES = ['os', 'arch', 'labels'] as const;

/** A key template that cannot be parsed; `message` says where. */
export class KeyTemplateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyTemplateError';
  }
}

const VARIABLE = /^(os|arch|labels|env\.[A-Za-z_][A-Za-z0-9_]*|metadata\.[A-Za-z0-9_.-]+)$/;
const HASH_FILES = /^hashFiles\(\s*(.*?)\s*\)$/s;
const STRING_ARG = /^\s*(?:'([^']*)'|"([^"]*)")\s*(?:,|$)/;

/**
 * Parses a key template into parts. Throws KeyTemplateError for an unclosed
 * `{{`, an unknown variable, or a `hashFiles` whose arguments are not
 * quoted workspace-relative patterns.
 */
export function parseKeyTemplate(template: string): KeyTemplatePart[] {
  const parts: KeyTemplatePart[] = [];
  let rest = template;
  while (rest.length > 0) {
    const open = rest.indexOf('{{');
    if (open < 0) {
      parts.push({ kind: 'text', text: rest });
      break;
    }
    if (open > 0) parts.push({ kind: 'text', text: rest.slice(0, open) });
    const close = rest.indexOf('}}', open + 2);
    if (close < 0) throw new KeyTemplateError(`"{{" without "}}" in ${JSON.stringify(template)}`);
    const expr = rest.slice(open + 2, close).trim();
    rest = rest.slice(close + 2);
    const hash = HASH_FILES.exec(expr);
    if (hash) {
      parts.push({ kind: 'hashFiles', patterns: hashFilesArgs(hash[1]!, template) });
    } else if (VARIABLE.test(expr)) {
      parts.push({ kind: 'variable', name: expr });
    } else {
      throw new KeyTemplateError(
        `unknown expression {{ ${expr} }} in ${JSON.stringify(template)}: use hashFiles('…'), ${CACHE_KEY_VARIABLES.join(', ')}, env.NAME or metadata.KEY`,
      );
    }
  }
  return parts;
}

function hashFilesArgs(args: string, template: string): string[] {
  const out: string[] = [];
  let rest = args;
  while (rest.trim().length > 0) {
    const m = STRING_ARG.exec(rest);
    if (!m) throw new KeyTemplateError(`hashFiles takes quoted patterns, in ${JSON.stringify(template)}`);
    const pattern = m[1] ?? m[2]!;
    if (pattern === '' || pattern.startsWith('/') || pattern.split('/').includes('..')) {
      throw new KeyTemplateError(`hashFiles pattern ${JSON.stringify(pattern)} must be relative to the workspace, without '..'`);
    }
    out.push(pattern);
    rest = rest.slice(m[0].length);
  }
  if (out.length === 0) throw new KeyTemplateError(`hashFiles needs at least one pattern, in ${JSON.stringify(template)}`);
  return out;
}

/** A rendered key must be 1-512 characters without control characters. Returns the problem, or undefined. */
export function cacheKeyProblem(key: string): string | undefined {
  if (key.length === 0) return 'cache key is empty';
  if (key.length > MAX_CACHE_KEY_LENGTH) return `cache key is longer than ${MAX_CACHE_KEY_LENGTH} characters`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(key)) return 'cache key contains a control character';
  return undefined;
}

const CacheKeyQueryString = Type.String({ minLength: 1, maxLength: MAX_CACHE_KEY_LENGTH });

/** `GET /builds/{id}/cache?key=K&restoreKeys=P…` (build token). */
export const CacheLookupQuerySchema = Type.Object({
  key: CacheKeyQueryString,
  // One `restoreKeys=` arrives as a string, several as an array.
  restoreKeys: Type.Optional(Type.Union([Type.Array(CacheKeyQueryString, { maxItems: 10 }), CacheKeyQueryString])),
});

/** A cache entry as a build sees it. */
export const CacheHitSchema = Type.Object({
  key: Type.String(),
  sha256: Type.String({ description: 'of the archive (.tar.gz); also its address' }),
  size: Type.Integer({ description: 'bytes' }),
  exact: Type.Boolean({ description: 'the key matched exactly (not by a restoreKeys prefix)' }),
  createdAt: Type.String({ description: 'ISO-8601 UTC' }),
});
export type CacheHit = Static<typeof CacheHitSchema>;
export const CacheLookupResponseSchema = Type.Object({ entry: Type.Union([CacheHitSchema, Type.Null()]) });
export type CacheLookupResponse = Static<typeof CacheLookupResponseSchema>;

/** `PUT /builds/{id}/cache?key=K` (build token; body: the archive, `X-Checksum-SHA256`). */
export const CacheSaveQuerySchema = Type.Object({ key: CacheKeyQueryString });
export const CacheArchiveParamsSchema = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 200 }),
  sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
});

/** A cache entry as an admin sees it (`GET /caches`). */
export const CacheEntrySchema = Type.Object({
  id: Type.String(),
  scope: Type.String({ description: 'the builds that share it, e.g. "repo=acme/app" ("" for builds without scope metadata)' }),
  key: Type.String(),
  sha256: Type.String(),
  size: Type.Integer({ description: 'bytes' }),
  createdAt: Type.String({ description: 'ISO-8601 UTC' }),
  lastUsedAt: Type.String({ description: 'ISO-8601 UTC: last saved or restored' }),
  buildId: Type.String({ description: 'the build that saved it' }),
});
export type CacheEntry = Static<typeof CacheEntrySchema>;
export const CacheSaveResponseSchema = Type.Object({ entry: CacheEntrySchema, created: Type.Boolean() });
export const CacheListSchema = Type.Object({
  caches: Type.Array(CacheEntrySchema),
  totalBytes: Type.Integer(),
  maxBytes: Type.Integer({ description: 'BUILDFLEET_CACHE_MAX_MB in bytes: older entries are evicted past it' }),
});
export type CacheList = Static<typeof CacheListSchema>;
