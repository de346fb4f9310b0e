/**
 * Cache routes (issue 13; docs/protocol.md "Caches"): a build's current,
 * running attempt looks up, downloads and saves entries of its own cache
 * scope with its build token; admins list and delete entries with an API
 * token.
 */
import { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import {
  ApiError,
  CHECKSUM_HEADER,
  CacheArchiveParamsSchema,
  CacheListSchema,
  CacheLookupQuerySchema,
  CacheLookupResponseSchema,
  CacheSaveQuerySchema,
  CacheSaveResponseSchema,
  ErrorBodySchema,
  IdParamsSchema,
} from '@buildfleet/protocol';
import { publicCacheEntry } from '../caches/service.js';
import { deferredBodyError, isRawBody } from './body.js';
import type { AppContext } from './context.js';

const errors = { 400: ErrorBodySchema, 401: ErrorBodySchema, 403: ErrorBodySchema, 404: ErrorBodySchema, 409: ErrorBodySchema };
const SHA256_HEX = /^[0-9a-f]{64}$/;

export function cacheRoutes(app: FastifyInstance, ctx: AppContext): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const { store, clock, caches } = ctx;

  const claimsOf = (request: { buildClaims?: { buildId: string; attempt: number } }) => {
    const c = request.buildClaims;
    if (!c) throw new ApiError('TOKEN_INVALID', 'missing build token');
    return { buildId: c.buildId, attempt: c.attempt };
  };

  r.get(
    '/builds/:id/cache',
    {
      config: { auth: ['build'] },
      attachValidation: true,
      schema: {
        tags: ['worker builds'],
        summary: "Look up the newest cache entry of the build's scope for a key, else for restore-key prefixes",
        params: IdParamsSchema,
        querystring: CacheLookupQuerySchema,
        response: { 200: CacheLookupResponseSchema, ...errors },
      },
    },
    async (request) => {
      const ref = claimsOf(request);
      const build = await store.getBuild(ref.buildId);
      const bodyError = deferredBodyError(request);
      if (bodyError) {
        caches.checkAttempt(build, ref);
        throw bodyError;
      }
      const q = request.query;
      const restoreKeys = q.restoreKeys === undefined ? [] : typeof q.restoreKeys === 'string' ? [q.restoreKeys] : q.restoreKeys;
      const entry = await caches.lookup(build, ref, q.key, restoreKeys, clock.now());
      ctx.metrics.cacheLookups.inc({ result: entry === null ? 'miss' : entry.exact ? 'exact' : 'restore_key' });
      return { entry };
    },
  );

  r.get(
    '/builds/:id/cache/:sha256',
    {
      config: { auth: ['build'] },
      attachValidation: true,
      schema: {
        tags: ['worker builds'],
        summary: "Download a cache archive of the build's scope (X-Checksum-SHA256)",
        params: CacheArchiveParamsSchema,
        produces: ['application/gzip'],
      },
    },
    async (request, reply) => {
      const ref = claimsOf(request);
      const build = await store.getBuild(ref.buildId);
      caches.checkAttempt(build, ref);
      const bodyError = deferredBodyError(request);
      if (bodyError) throw bodyError;
      const { entry, body } = await caches.archive(build, ref, request.params.sha256, clock.now());
      return reply
        .header('content-type', 'application/gzip')
        .header(CHECKSUM_HEADER, entry.sha256)
        .header('content-length', String(entry.size))
        .send(entry.size === 0 ? Buffer.alloc(0) : body);
    },
  );

  r.put(
    '/builds/:id/cache',
    {
      config: { auth: ['build'] },
      attachValidation: true,
      schema: {
        tags: ['worker builds'],
        summary: 'Save a cache archive for a key (streamed; X-Checksum-SHA256 required); an existing key is kept',
        params: IdParamsSchema,
        querystring: CacheSaveQuerySchema,
        consumes: ['application/octet-stream'],
        response: { 200: CacheSaveResponseSchema, 201: CacheSaveResponseSchema, ...errors, 413: ErrorBodySchema, 422: ErrorBodySchema },
      },
    },
    async (request, reply) => {
      const ref = claimsOf(request);
      // Lease first, before a single byte of the body is read.
      const build = await store.getBuild(ref.buildId);
      caches.checkAttempt(build, ref);
      if (request.validationError) throw new ApiError('VALIDATION_FAILED', request.validationError.message);
      const declared = request.headers[CHECKSUM_HEADER];
      const sha256 = typeof declared === 'string' ? declared.trim().toLowerCase() : '';
      if (!SHA256_HEX.test(sha256)) throw new ApiError('VALIDATION_FAILED', 'header X-Checksum-SHA256 must be the lowercase hex SHA-256 of the body');
      const length = Number(request.headers['content-length']);
      if (Number.isFinite(length) && length > caches.settings.maxBytes) {
        throw new ApiError('PAYLOAD_TOO_LARGE', `a cache archive may be at most ${caches.settings.maxBytes} bytes (BUILDFLEET_CACHE_MAX_MB)`);
      }
      let body: Readable;
      if (isRawBody(request.body)) body = request.body;
      else if (request.body === undefined || request.body === null) body = Readable.from([]);
      else throw new ApiError('VALIDATION_FAILED', 'content-type must be application/octet-stream');
      const { entry, created } = await caches.save(build, ref, request.query.key, sha256, body, clock.now());
      return reply.code(created ? 201 : 200).send({ entry: publicCacheEntry(entry), created });
    },
  );

  r.get(
    '/caches',
    {
      config: { auth: ['api'] },
      schema: { tags: ['caches'], summary: 'List cache entries, most recently used first', response: { 200: CacheListSchema } },
    },
    async () => {
      const { entries, totalBytes } = await store.listCaches();
      return { caches: entries.map(publicCacheEntry), totalBytes, maxBytes: caches.settings.maxBytes };
    },
  );

  r.delete(
    '/caches/:id',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: { tags: ['caches'], summary: 'Delete a cache entry', params: IdParamsSchema, response: { 204: Type.Null(), ...errors } },
    },
    async (request, reply) => {
      await caches.delete(request.params.id);
      return reply.code(204).send(null);
    },
  );
}
