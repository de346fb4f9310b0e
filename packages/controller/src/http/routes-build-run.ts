/**
 * Build routes for the worker running a build (docs/protocol.md "Builds",
 * build token): source, start, log chunks, artifacts, finish. Each checks
 * in the protocol's order: the token's attempt, the body's attempt (403),
 * existence (404) and lease (409), then the body (400).
 */
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import {
  ApiError,
  ArtifactListSchema,
  BuildEnvelopeSchema,
  CHECKSUM_HEADER,
  ErrorBodySchema,
  FinishRequestSchema,
  IdParamsSchema,
  LogChunkRequestSchema,
  LogChunkResponseSchema,
  StartRequestSchema,
  artifactNameProblem,
  type Build,
} from '@buildfleet/protocol';
import type { AttemptRef } from '../store/types.js';
import { observeEnded, observeStarted } from '../ops/metrics.js';
import { deferredBodyError, isRawBody } from './body.js';
import type { AppContext } from './context.js';

const errors = { 400: ErrorBodySchema, 401: ErrorBodySchema, 403: ErrorBodySchema, 404: ErrorBodySchema, 409: ErrorBodySchema };

const SHA256_HEX = /^[0-9a-f]{64}$/;

const ArtifactPathParams = Type.Object({ id: IdParamsSchema.properties.id, '*': Type.String() });

export function buildRunRoutes(app: FastifyInstance, ctx: AppContext): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const { config, store, blobs, clock, metrics } = ctx;

  /** The verified build token's attempt (set by the auth hook). */
  const claimsOf = (request: FastifyRequest): AttemptRef => {
    const c = request.buildClaims;
    if (!c) throw new ApiError('TOKEN_INVALID', 'missing build token');
    return { buildId: c.buildId, attempt: c.attempt };
  };

  /** Existence (404) then lease (409 LEASE_LOST) for an attempt, without a state check. */
  const checkAttemptCurrent = async (ref: AttemptRef): Promise<Build> => {
    const build = await store.getBuild(ref.buildId);
    if (build.attempt !== ref.attempt) {
      throw new ApiError('LEASE_LOST', `attempt ${ref.attempt} of build ${ref.buildId} is no longer current (attempt ${build.attempt} is)`);
    }
    return build;
  };

  /** A body `attempt` must be the token's own (403, an authorization check). */
  const checkBodyAttempt = (request: FastifyRequest, ref: AttemptRef) => {
    const attempt = (request.body as { attempt?: unknown } | undefined)?.attempt;
    if (typeof attempt === 'number' && attempt !== ref.attempt) {
      throw new ApiError('FORBIDDEN', `this build token is for attempt ${ref.attempt}, not ${attempt}`);
    }
  };

  /**
   * The preamble of a JSON build-token write in docs/protocol.md's check order:
   * the token's attempt, the body's attempt (403), then, only when the body is
   * malformed, `checkLease` (404/409) before the 400 it would otherwise get.
   */
  const jsonWriteRef = async (request: FastifyRequest, checkLease: (ref: AttemptRef) => Promise<unknown>): Promise<AttemptRef> => {
    const ref = claimsOf(request);
    checkBodyAttempt(request, ref);
    const bodyError = deferredBodyError(request);
    if (bodyError) {
      await checkLease(ref);
      throw bodyError;
    }
    return ref;
  };

  // --- worker side (build token) ----------------------------------------------
  r.get(
    '/builds/:id/source',
    {
      config: { auth: ['build'] },
      schema: { tags: ['worker builds'], summary: 'The source tarball', produces: ['application/gzip'] },
    },
    async (request, reply) => {
      const ref = claimsOf(request);
      const build = await checkAttemptCurrent(ref);
      const key = await store.getSourceKey(ref.buildId);
      const size = await blobs.size(key);
      reply.header('content-type', 'application/gzip').header('x-checksum-sha256', build.sourceSha256);
      if (size !== undefined) reply.header('content-length', String(size));
      if (size === 0) return reply.send(Buffer.alloc(0));
      return reply.send(await blobs.get(key));
    },
  );

  r.post(
    '/builds/:id/start',
    {
      config: { auth: ['build'] },
      attachValidation: true,
      schema: {
        tags: ['worker builds'],
        params: IdParamsSchema,
        body: StartRequestSchema,
        response: { 200: BuildEnvelopeSchema, ...errors },
      },
    },
    async (request) => {
      const ref = await jsonWriteRef(request, checkAttemptCurrent);
      const { build, changed } = await store.startBuild(ref, clock.now(), config.leaseMs);
      if (changed) {
        metrics.buildTransitions.inc({ to: 'running' });
        observeStarted(metrics, build);
      }
      ctx.hint('logs', build.id);
      return { build };
    },
  );

  r.post(
    '/builds/:id/logs',
    {
      config: { auth: ['build'] },
      // base64 grows data by 4/3; the rest of the chunk's JSON is small.
      bodyLimit: Math.ceil((config.maxLogChunkBytes * 4) / 3) + 64 * 1024,
      attachValidation: true,
      schema: {
        tags: ['worker builds'],
        summary: 'Append a log chunk (idempotent by attempt and seq)',
        params: IdParamsSchema,
        body: LogChunkRequestSchema,
        response: { 200: LogChunkResponseSchema, ...errors },
      },
    },
    async (request) => {
      const ref = await jsonWriteRef(request, (r) => store.checkWritable(r));
      const body = request.body;
      let data: Buffer;
      if (body.encoding === 'base64') {
        if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body.data) || body.data.length % 4 === 1) {
          await store.checkWritable(ref);
          throw new ApiError('VALIDATION_FAILED', 'data is not valid base64');
        }
        data = Buffer.from(body.data, 'base64');
      } else {
        data = Buffer.from(body.data, 'utf8');
      }
      if (data.length > config.maxLogChunkBytes) {
        await store.checkWritable(ref);
        throw new ApiError('PAYLOAD_TOO_LARGE', `a log chunk may carry at most ${config.maxLogChunkBytes} bytes, this one has ${data.length}`);
      }
      // The second line behind the worker's masking: same length, so offsets hold.
      data = await ctx.secrets.maskLog(ref.buildId, data);
      const result = await store.appendLog({ ...ref, seq: body.seq, offset: body.offset, data, now: clock.now(), maxBytes: config.ops.logMaxBytes });
      metrics.logBytes.inc(data.length);
      ctx.hint('logs', ref.buildId);
      return result;
    },
  );

  r.put(
    '/builds/:id/artifacts/*',
    {
      config: { auth: ['build'] },
      attachValidation: true,
      schema: {
        tags: ['worker builds'],
        summary: 'Upload an artifact (streamed; X-Checksum-SHA256 required)',
        params: ArtifactPathParams,
        consumes: ['application/octet-stream'],
        response: { 200: ArtifactListSchema.properties.artifacts.items, 201: ArtifactListSchema.properties.artifacts.items, ...errors, 413: ErrorBodySchema, 422: ErrorBodySchema },
      },
    },
    async (request, reply) => {
      const ref = claimsOf(request);
      // Lease first, before a single byte of the body is read.
      await store.checkWritable(ref);
      const name = request.params['*'];
      const problem = artifactNameProblem(name);
      if (problem) throw new ApiError('VALIDATION_FAILED', `name: ${problem}`);
      const declared = request.headers[CHECKSUM_HEADER];
      if (typeof declared !== 'string' || !SHA256_HEX.test(declared.trim().toLowerCase())) {
        throw new ApiError('VALIDATION_FAILED', 'header X-Checksum-SHA256 must be the lowercase hex SHA-256 of the body');
      }
      const sha256 = declared.trim().toLowerCase();
      const length = Number(request.headers['content-length']);
      if (Number.isFinite(length) && length > config.maxArtifactBytes) {
        throw new ApiError('PAYLOAD_TOO_LARGE', `artifact is larger than ${config.maxArtifactBytes} bytes`);
      }
      let body: Readable;
      if (isRawBody(request.body)) body = request.body;
      else if (request.body === undefined || request.body === null) body = Readable.from([]);
      else throw new ApiError('VALIDATION_FAILED', 'content-type must be application/octet-stream');
      const blobKey = `artifacts/${ref.buildId}/${ref.attempt}/${sha256}`;
      const stored = await blobs.put(blobKey, body, { maxBytes: config.maxArtifactBytes, expectSha256: sha256 });
      metrics.blobBytesWritten.inc({ kind: 'artifact' }, stored.size);
      const { created } = await store.recordArtifact({ ...ref, name, size: stored.size, sha256, blobKey, now: clock.now() });
      request.log.info({ buildId: ref.buildId, attempt: ref.attempt, name, size: stored.size, created }, 'artifact stored');
      return reply.code(created ? 201 : 200).send({ name, size: stored.size, sha256 });
    },
  );

  r.post(
    '/builds/:id/finish',
    {
      config: { auth: ['build'] },
      attachValidation: true,
      schema: {
        tags: ['worker builds'],
        summary: "Report the attempt's outcome (its last write)",
        params: IdParamsSchema,
        body: FinishRequestSchema,
        response: { 200: BuildEnvelopeSchema, ...errors },
      },
    },
    async (request) => {
      const ref = await jsonWriteRef(request, checkAttemptCurrent);
      const body = request.body;
      const { build, changed } = await store.finishBuild({
        ...ref,
        outcome: body.outcome,
        exitCode: body.exitCode,
        message: body.message ?? null,
        ...(body.reason !== undefined ? { limitReason: body.reason } : {}),
        now: clock.now(),
      });
      if (changed) {
        metrics.buildTransitions.inc({ to: build.state });
        observeEnded(metrics, build.state);
      }
      request.log.info({ buildId: build.id, attempt: ref.attempt, state: build.state, exitCode: build.exitCode }, 'build finished');
      ctx.hint('logs', build.id);
      ctx.hint('builds');
      return { build };
    },
  );
}
