/**
 * Authentication for each credential kind a route declares (docs/protocol.md
 * "Credentials"; the declarations are checked by `access.ts`). `authenticate`
 * runs in an onRequest hook, before the body is parsed, so 401/403 always
 * come before existence (404), lease (409) and body validation (400).
 */
import type { FastifyRequest } from 'fastify';
import { ApiError, ID_PATTERN, TOKEN_PREFIX, bearerToken } from '@buildfleet/protocol';
import { hashToken, type BuildTokenClaims } from '../credentials.js';
import type { AppContext } from './context.js';
import type { RouteAuth } from './access.js';
import { rateLimited } from './rate-limit.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set for build-token routes after the token verified and names the path's build. */
    buildClaims?: BuildTokenClaims;
    /** Set for access-token routes: the path's worker and the presented token's hash (the store checks it). */
    workerAuth?: { workerId: string; tokenHash: string };
    /**
     * Set once the request's credential was accepted: a 401 after that (a
     * parked poll whose token a re-registration rotated) is not a guess and
     * does not count toward the address's failed authentications.
     */
    credentialAccepted?: boolean;
  }
}

/** The bearer token, or 401 TOKEN_INVALID when absent. */
export function requireBearer(request: FastifyRequest): string {
  const token = bearerToken(request.headers.authorization);
  if (!token) throw new ApiError('TOKEN_INVALID', 'missing "Authorization: Bearer <token>" header');
  return token;
}

/** What `generateToken` makes: a prefix and 32 random bytes in base64url (43 characters). */
const GENERATED = /^[A-Za-z0-9_-]{43}$/;

/** Whether `token` has the shape of a generated token of `prefix` (no store lookup). */
export function isWellFormed(token: string, prefix: string): boolean {
  return token.startsWith(prefix) && GENERATED.test(token.slice(prefix.length));
}

/**
 * Authenticates a request as its route declares (the onRequest hook):
 * - `api`: a known, unrevoked API token (401 TOKEN_INVALID otherwise);
 * - `build`: a genuine build token naming the path's build (401 / 403);
 * - `access`: a well-formed worker access token (anything else is 401
 *   TOKEN_INVALID before the store is asked); the store checks it against
 *   the path's worker in the same transaction as the route's work, so every
 *   access-token route must pass `request.workerAuth` to the store;
 * - `enrollment` / `workerSecret` (registration): need the body to know
 *   which one applies, so `authenticateRegistration` checks them once it
 *   is parsed;
 * - `public`: nothing.
 */
export async function authenticate(ctx: AppContext, request: FastifyRequest, auth: RouteAuth | undefined): Promise<void> {
  // No route: the not-found handler answers 404 and touches nothing.
  if (request.is404) return;
  // Never undefined for a registered route (onRoute refuses it); refuse anyway.
  if (auth === undefined) throw new ApiError('TOKEN_INVALID', 'this route accepts no credential');
  if (auth === 'public') return;
  if (auth.includes('api')) return authenticateApi(ctx, request);
  if (auth.includes('build')) {
    request.buildClaims = authenticateBuild(ctx, request);
    return;
  }
  if (auth.includes('access')) {
    request.workerAuth = authenticateAccessShape(request);
    return;
  }
}

/**
 * Authenticates a route that takes an enrollment token or a worker secret
 * (registration), once the body is parsed (a preHandler), in docs/protocol.md's
 * order even when the body is invalid: with `workerId` and `workerSecret`
 * in the body, the secret (404 WORKER_NOT_FOUND, 401 TOKEN_INVALID; the
 * bearer is ignored); otherwise the bearer must be a usable enrollment token
 * (401), checked without taking a use. A `workerId` without a secret, or
 * either one malformed, is left to body validation (400). Nothing is written.
 */
export async function authenticateRegistration(ctx: AppContext, request: FastifyRequest, auth: RouteAuth | undefined): Promise<void> {
  if (request.is404 || auth === undefined || auth === 'public') return;
  const takesSecret = auth.includes('workerSecret');
  if (!takesSecret && !auth.includes('enrollment')) return;
  const body = (typeof request.body === 'object' && request.body !== null ? request.body : {}) as Record<string, unknown>;
  const { workerId, workerSecret, registrationId } = body;
  if (takesSecret && workerId !== undefined) {
    if (typeof workerId !== 'string' || !ID.test(workerId) || typeof workerSecret !== 'string' || !PRINTABLE.test(workerSecret)) return;
    await ctx.store.checkWorkerSecret(workerId, hashToken(workerSecret));
    return;
  }
  if (!auth.includes('enrollment')) throw new ApiError('TOKEN_INVALID', 'this route needs workerId and workerSecret');
  const bearer = bearerToken(request.headers.authorization);
  const hash = bearer ? hashToken(bearer) : undefined;
  const rid = typeof registrationId === 'string' && ID.test(registrationId) ? registrationId : undefined;
  await ctx.store.checkEnrollmentToken(hash, ctx.clock.now(), rid);
  // New registrations per enrollment token (a leaked token cannot flood the fleet with workers).
  const wait = ctx.limits.registrations.blockedFor(hash!);
  if (wait > 0) throw rateLimited('too many registrations with this enrollment token', wait);
  ctx.limits.registrations.hit(hash!);
}

const ID = new RegExp(ID_PATTERN);
const PRINTABLE = /^[\x21-\x7e]{1,500}$/;

/** Checks an API token (`bfa_`); 401 TOKEN_INVALID otherwise. */
export async function authenticateApi(ctx: AppContext, request: FastifyRequest): Promise<void> {
  const token = requireBearer(request);
  if (!token.startsWith(TOKEN_PREFIX.api) || !(await ctx.store.isApiToken(hashToken(token)))) {
    throw new ApiError('TOKEN_INVALID', 'this route needs a valid API token (bfa_…)');
  }
}

/**
 * Checks a build token and that it names the build in the path: a forged or
 * other-kind token is 401 TOKEN_INVALID, another build's token 403 FORBIDDEN.
 */
export function authenticateBuild(ctx: AppContext, request: FastifyRequest): BuildTokenClaims {
  const token = requireBearer(request);
  const claims = ctx.tokens.verify(token);
  if (!claims) throw new ApiError('TOKEN_INVALID', 'this route needs the build token (bfb_…) of this build');
  const id = (request.params as { id?: unknown } | undefined)?.id;
  if (typeof id !== 'string' || id !== claims.buildId) {
    throw new ApiError('FORBIDDEN', 'this build token belongs to another build');
  }
  return claims;
}

/**
 * A worker access token's shape and the path's worker id. A token that is
 * not a well-formed `bfw_` token is 401 TOKEN_INVALID at once, even for an
 * unknown worker: docs/protocol.md lets WORKER_NOT_FOUND win over 401 only for
 * that worker's own access token, and garbage cannot be one.
 */
function authenticateAccessShape(request: FastifyRequest): { workerId: string; tokenHash: string } {
  const token = requireBearer(request);
  if (!isWellFormed(token, TOKEN_PREFIX.access)) throw new ApiError('TOKEN_INVALID', 'this route needs a worker access token (bfw_…)');
  const id = (request.params as { id?: unknown } | undefined)?.id;
  return { workerId: typeof id === 'string' ? id : '', tokenHash: hashToken(token) };
}

/** The path's worker and the token hash set by `authenticate` for an access-token route. */
export function workerAuthOf(request: FastifyRequest): { workerId: string; tokenHash: string } {
  if (!request.workerAuth) throw new ApiError('TOKEN_INVALID', 'missing worker access token');
  return request.workerAuth;
}
