/**
 * Tokens and settings: the controller's named secrets (the build-token HMAC
 * key), API tokens and enrollment tokens (docs/protocol.md "Credentials"). Only
 * SHA-256 hashes of tokens are stored. No dialect differences.
 */
import { sql, type Selectable } from 'kysely';
import { v7 as uuidv7 } from 'uuid';
import { ApiError, type EnrollmentToken } from '@buildfleet/protocol';
import type { DB } from '../schema.js';
import { run, type Db, type SqlContext } from './context.js';
import { toIso } from './rows.js';

/** Returns the named secret, inserting `generate()` first if absent (two controllers agree on one value). */
export function getOrCreateSecret(ctx: SqlContext, name: string, generate: () => string): Promise<string> {
  return run(async () => {
    await ctx.db
      .insertInto('settings')
      .values({ name, value: generate() })
      .onConflict((oc) => oc.column('name').doNothing())
      .execute();
    const row = await ctx.db.selectFrom('settings').select('value').where('name', '=', name).executeTakeFirstOrThrow();
    return row.value;
  });
}

/** Idempotent: makes sure an API token with this SHA-256 hex hash exists. */
export async function ensureApiToken(ctx: SqlContext, hash: string, description: string, now: number): Promise<void> {
  await run(() =>
    ctx.db
      .insertInto('api_tokens')
      .values({ hash, description, created_at: now, revoked_at: null })
      .onConflict((oc) => oc.column('hash').doNothing())
      .execute(),
  );
}

/** Whether a non-revoked API token with this hash exists. */
export function isApiToken(ctx: SqlContext, hash: string): Promise<boolean> {
  return run(async () => {
    const row = await ctx.db.selectFrom('api_tokens').select('hash').where('hash', '=', hash).where('revoked_at', 'is', null).executeTakeFirst();
    return row !== undefined;
  });
}

/** Number of non-revoked API tokens. */
export function countApiTokens(ctx: SqlContext): Promise<number> {
  return run(async () => {
    const row = await ctx.db
      .selectFrom('api_tokens')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('revoked_at', 'is', null)
      .executeTakeFirstOrThrow();
    return Number(row.n);
  });
}

function toEnrollmentToken(row: Selectable<DB['enrollment_tokens']>): EnrollmentToken {
  return {
    id: row.id,
    description: row.description,
    createdAt: toIso(row.created_at)!,
    expiresAt: toIso(row.expires_at),
    maxUses: row.max_uses,
    uses: row.uses,
    revoked: row.revoked_at !== null,
  };
}

/** Stores a new enrollment token (`expiresAt` epoch ms or null, `maxUses` null = unlimited). */
export function createEnrollmentToken(
  ctx: SqlContext,
  input: { id: string; hash: string; description: string | null; expiresAt: number | null; maxUses: number | null; now: number },
): Promise<EnrollmentToken> {
  return run(async () => {
    const row = {
      id: input.id,
      hash: input.hash,
      description: input.description,
      created_at: input.now,
      expires_at: input.expiresAt,
      max_uses: input.maxUses,
      uses: 0,
      revoked_at: null,
    };
    await ctx.db.insertInto('enrollment_tokens').values(row).execute();
    return toEnrollmentToken(row);
  });
}

/** Idempotent: makes sure an enrollment token with this hash exists (no expiry, unlimited uses). */
export async function ensureEnrollmentToken(ctx: SqlContext, hash: string, description: string, now: number): Promise<void> {
  await run(() =>
    ctx.db
      .insertInto('enrollment_tokens')
      .values({
        id: uuidv7({ msecs: now }),
        hash,
        description,
        created_at: now,
        expires_at: null,
        max_uses: null,
        uses: 0,
        revoked_at: null,
      })
      .onConflict((oc) => oc.column('hash').doNothing())
      .execute(),
  );
}

/** Every enrollment token, oldest first. */
export function listEnrollmentTokens(ctx: SqlContext): Promise<EnrollmentToken[]> {
  return run(async () => {
    const rows = await ctx.db.selectFrom('enrollment_tokens').selectAll().orderBy('created_at').orderBy('id').execute();
    return rows.map(toEnrollmentToken);
  });
}

/** Revokes (idempotently: the first revocation time stays). Throws NOT_FOUND when absent. */
export async function revokeEnrollmentToken(ctx: SqlContext, id: string, now: number): Promise<void> {
  await run(async () => {
    const res = await ctx.db
      .updateTable('enrollment_tokens')
      .set({ revoked_at: sql<number>`coalesce(revoked_at, ${now})` })
      .where('id', '=', id)
      .executeTakeFirst();
    if (Number(res.numUpdatedRows) === 0) throw new ApiError('NOT_FOUND', `enrollment token ${id} not found`);
  });
}

/**
 * Checks an enrollment token inside a registration transaction (docs/protocol.md
 * "register", case 1); with `consume`, takes one use, conditional on uses
 * left. Resolves the token's id. Throws TOKEN_INVALID (missing, unknown,
 * revoked, used up) or TOKEN_EXPIRED.
 */
export async function useEnrollmentToken(trx: Db, hash: string | undefined, now: number, consume: boolean): Promise<string> {
  if (!hash) throw new ApiError('TOKEN_INVALID', 'an enrollment token is required to register a new worker');
  const tok = await trx.selectFrom('enrollment_tokens').selectAll().where('hash', '=', hash).executeTakeFirst();
  if (!tok || tok.revoked_at !== null) throw new ApiError('TOKEN_INVALID', 'enrollment token unknown or revoked');
  if (!consume) return tok.id;
  if (tok.expires_at !== null && tok.expires_at <= now) throw new ApiError('TOKEN_EXPIRED', 'enrollment token expired');
  const res = await trx
    .updateTable('enrollment_tokens')
    .set({ uses: sql<number>`uses + 1` })
    .where('id', '=', tok.id)
    .where((eb) => eb.or([eb('max_uses', 'is', null), eb('uses', '<', eb.ref('max_uses'))]))
    .executeTakeFirst();
  if (Number(res.numUpdatedRows) === 0) throw new ApiError('TOKEN_INVALID', 'enrollment token used up');
  return tok.id;
}

/**
 * Checks an enrollment token the way a new registration would, without
 * taking a use or writing anything (a registration with a bad body still
 * answers 401 for a bad token, docs/protocol.md check order). Like `registerNew`,
 * a retry of a registration this token made (`registrationId`) needs no
 * uses left and no unexpired token. Throws TOKEN_INVALID (missing, unknown,
 * revoked, used up) or TOKEN_EXPIRED.
 */
export function checkEnrollmentToken(ctx: SqlContext, hash: string | undefined, now: number, registrationId?: string): Promise<void> {
  return run(async () => {
    if (!hash) throw new ApiError('TOKEN_INVALID', 'an enrollment token is required to register a new worker');
    const tok = await ctx.db.selectFrom('enrollment_tokens').selectAll().where('hash', '=', hash).executeTakeFirst();
    if (!tok || tok.revoked_at !== null) throw new ApiError('TOKEN_INVALID', 'enrollment token unknown or revoked');
    if (registrationId !== undefined) {
      const pending = await ctx.db
        .selectFrom('workers')
        .select('registration_token_id')
        .where('registration_id', '=', registrationId)
        .executeTakeFirst();
      if (pending && (pending.registration_token_id === null || pending.registration_token_id === tok.id)) return;
    }
    if (tok.expires_at !== null && tok.expires_at <= now) throw new ApiError('TOKEN_EXPIRED', 'enrollment token expired');
    if (tok.max_uses !== null && tok.uses >= tok.max_uses) throw new ApiError('TOKEN_INVALID', 'enrollment token used up');
  });
}
