/**
 * Secrets (issue 13): named values an admin stores on the controller
 * (`PUT /secrets/{name}`, write-only: no answer ever carries a value) and
 * builds ask for in their spec (`secrets: ["NPM_TOKEN"]`). Only the current
 * attempt of a build receives them, with its build token
 * (`GET /builds/{id}/secrets`), and only when the build is inside the
 * secret's scope. Imports nothing but typebox (schemas.ts builds on it).
 */
import { Type, type Static } from 'typebox';

/** A secret's name doubles as its environment variable: `[A-Za-z_][A-Za-z0-9_]*`, at most 100 characters. */
export const SecretNameSchema = Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z_][A-Za-z0-9_]*$' });

/**
 * Which builds may receive a secret (and, for caches, which builds share
 * entries): every listed label must be among the build's labels and every
 * listed metadata pair must equal the build's metadata value (compared as
 * text). An empty scope admits every build.
 */
export const ScopeSchema = Type.Object(
  {
    labels: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 100, pattern: '^[^,\\s]+$' }), { maxItems: 50 })),
    metadata: Type.Optional(Type.Record(Type.String({ minLength: 1, maxLength: 100 }), Type.String({ maxLength: 1000 }))),
  },
  { additionalProperties: false },
);
export type Scope = Static<typeof ScopeSchema>;

/** A scope in words for messages and tables: `labels linux,x64; repo=acme/app`, or `any build` when empty. */
export function describeScope(scope: Scope): string {
  const parts: string[] = [];
  if (scope.labels?.length) parts.push(`labels ${scope.labels.join(',')}`);
  for (const [k, v] of Object.entries(scope.metadata ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) parts.push(`${k}=${v}`);
  return parts.length ? parts.join('; ') : 'any build';
}

/** `PUT /secrets/{name}` body. `value`: the secret (UTF-8, up to 64 KiB). */
export const SecretPutRequestSchema = Type.Object(
  {
    value: Type.String({ minLength: 1, maxLength: 65_536 }),
    scope: Type.Optional(ScopeSchema),
  },
  { additionalProperties: false },
);
export type SecretPutRequest = Static<typeof SecretPutRequestSchema>;

/** A secret as the API shows it: never its value. */
export const SecretSchema = Type.Object({
  name: Type.String(),
  scope: ScopeSchema,
  createdAt: Type.String({ description: 'ISO-8601 UTC' }),
  updatedAt: Type.String({ description: 'ISO-8601 UTC' }),
});
export type Secret = Static<typeof SecretSchema>;
export const SecretEnvelopeSchema = Type.Object({ secret: SecretSchema });
export const SecretListSchema = Type.Object({ secrets: Type.Array(SecretSchema) });
export const SecretParamsSchema = Type.Object({ name: Type.String({ minLength: 1, maxLength: 200 }) });

/** One hand-out of a secret to an attempt of a build (the audit record). */
export const SecretHandoutSchema = Type.Object({
  buildId: Type.String(),
  attempt: Type.Integer(),
  name: Type.String(),
  handedOutAt: Type.String({ description: 'ISO-8601 UTC' }),
});
export type SecretHandout = Static<typeof SecretHandoutSchema>;
export const SecretHandoutListSchema = Type.Object({ handouts: Type.Array(SecretHandoutSchema) });
export const SecretHandoutQuerySchema = Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) });

/**
 * How a build receives one secret: as the environment variable `env`
 * (default: the secret's name) holding the value, or, with `as: "file"`, as
 * that variable holding the path of a file (mode 0400) with the value.
 */
export const SecretRefSchema = Type.Object(
  {
    name: SecretNameSchema,
    as: Type.Optional(Type.Union([Type.Literal('env'), Type.Literal('file')])),
    env: Type.Optional(Type.String({ minLength: 1, maxLength: 100, pattern: '^[A-Za-z_][A-Za-z0-9_]*$' })),
  },
  { additionalProperties: false },
);
/** Spec `secrets`: names, or objects for files and renamed variables. */
export const SpecSecretsInputSchema = Type.Array(Type.Union([SecretNameSchema, SecretRefSchema]), { maxItems: 50 });
export type SpecSecretsInput = Static<typeof SpecSecretsInputSchema>;

/** A normalized secret reference (what a stored spec carries). */
export const SecretRefNormalSchema = Type.Object({
  name: Type.String(),
  as: Type.Union([Type.Literal('env'), Type.Literal('file')]),
  env: Type.String(),
});
export type SecretRef = Static<typeof SecretRefNormalSchema>;

/** Fills the defaults of spec `secrets`; a name listed twice keeps its first entry. */
export function normalizeSecretRefs(input: SpecSecretsInput): SecretRef[] {
  const out: SecretRef[] = [];
  const seen = new Set<string>();
  for (const item of input) {
    const ref = typeof item === 'string' ? { name: item } : item;
    if (seen.has(ref.name)) continue;
    seen.add(ref.name);
    out.push({ name: ref.name, as: ref.as ?? 'env', env: ref.env ?? ref.name });
  }
  return out;
}

/** `GET /builds/{id}/secrets` (build token): the values of the secrets the spec asks for. */
export const BuildSecretsResponseSchema = Type.Object({
  secrets: Type.Array(Type.Object({ name: Type.String(), value: Type.String() })),
});
export type BuildSecretsResponse = Static<typeof BuildSecretsResponseSchema>;
