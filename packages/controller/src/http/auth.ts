/**
 * Authentication for the three kinds of callers (PROTOCOL.md "Credentials").
 * These run before the body is parsed (an onRequest hook), so 401/403 always
 * come before existence (404), lease (409) and body validation (400).
 */
import type { FastifyRequest } from 'fastify';
import { ApiError, TOKEN_PREFIX, bearerToken } from '@buildfleet/protocol';
import { hashToken, type BuildTokenClaims } from '../credentials.js';
import type { AppContext } from './context.js';

/** Which credential a route takes. */
export type AuthKind = 'none' | 'api' | 'worker' | 'build' | 'register';

declare module 'fastify' {
  interface FastifyContextConfig {
    auth?: AuthKind;
  }
  interface FastifyRequest {
    /** Set for build-token routes after the token verified and names the path's build. */
    buildClaims?: BuildTokenClaims;
  }
}

/** The bearer token, or 401 TOKEN_INVALID when absent. */
export function requireBearer(request: FastifyRequest): string {
  const token = bearerToken(request.headers.authorization);
  if (!token) throw new ApiError('TOKEN_INVALID', 'missing "Authorization: Bearer <token>" header');
  return token;
}

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

/** SHA-256 of the worker access token presented (the store decides what it means). */
export function workerTokenHash(request: FastifyRequest): string {
  return hashToken(requireBearer(request));
}
