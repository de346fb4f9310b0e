/**
 * Build routes for users (docs/protocol.md "Builds", API token): submit,
 * list, read, logs, artifacts, cancel and retry. The worker side (build
 * token) is `routes-build-run.ts`; parsing a submit is `submit.ts`.
 */
import { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { v7 as uuidv7 } from 'uuid';
import {
  ApiError,
  ArtifactListSchema,
  BuildEnvelopeSchema,
  BuildListQuerySchema,
  BuildListSchema,
  CHECKSUM_HEADER,
  ErrorBodySchema,
  IdParamsSchema,
  LogQuerySchema,
  artifactNameProblem,
  type Build,
} from '@buildfleet/protocol';
import { observeEnded } from '../ops/metrics.js';
import { buildView, buildViews } from '../views.js';
import { deferredBodyError } from './body.js';
import { LOG_READ_BYTES } from './log-follow.js';
import type { AppContext } from './context.js';
import { afterSubmit, hintCanceled, submitBuild } from './submit.js';

const errors = { 400: ErrorBodySchema, 401: ErrorBodySchema, 403: ErrorBodySchema, 404: ErrorBodySchema, 409: ErrorBodySchema };

const ArtifactPathParams = Type.Object({ id: IdParamsSchema.properties.id, '*': Type.String() });

export function buildRoutes(app: FastifyInstance, ctx: AppContext): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const { config, store, blobs, clock, metrics } = ctx;
  /** A build as people read it: worker names, and why it waits (views.ts). */
  const view = (build: Build) => buildView(store, build, clock.now(), config.leaseMs);

  // --- user side (API token) -------------------------------------------------
  r.post(
    '/builds',
    {
      config: { auth: ['api'] },
      schema: {
        tags: ['builds'],
        summary: 'Submit a build: multipart/form-data with part `spec` (JSON) first, then `source` (.tar.gz)',
        consumes: ['multipart/form-data'],
        response: { 201: BuildEnvelopeSchema, ...errors, 413: ErrorBodySchema },
      },
    },
    async (request, reply) => {
      const build = await afterSubmit(ctx, await submitBuild(ctx, request));
      request.log.info({ buildId: build.id, labels: build.spec.labels, sourceSize: build.sourceSize, state: build.state }, 'build submitted');
      return reply.code(201).send({ build: await view(build) });
    },
  );

  r.get(
    '/builds',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: { tags: ['builds'], querystring: BuildListQuerySchema, response: { 200: BuildListSchema, ...errors } },
    },
    async (request) => {
      const bodyError = deferredBodyError(request);
      if (bodyError) throw bodyError;
      const q = request.query;
      const meta = q.meta === undefined ? undefined : typeof q.meta === 'string' ? [q.meta] : q.meta;
      const page = await store.listBuilds({ ...q, meta, limit: q.limit ?? 50 });
      return { ...page, builds: await buildViews(store, page.builds, clock.now(), config.leaseMs) };
    },
  );

  r.get(
    '/builds/:id',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: { tags: ['builds'], params: IdParamsSchema, response: { 200: BuildEnvelopeSchema, ...errors } },
    },
    async (request) => ({ build: await view(await store.getBuild(request.params.id)) }),
  );

  r.get(
    '/builds/:id/logs',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['builds'],
        summary: 'Log bytes of an attempt from an offset (text/plain), or a live stream (text/event-stream or follow=1)',
        params: IdParamsSchema,
        querystring: LogQuerySchema,
        produces: ['text/plain', 'text/event-stream'],
      },
    },
    async (request, reply) => {
      const build = await store.getBuild(request.params.id);
      const bodyError = deferredBodyError(request);
      if (bodyError) throw bodyError;
      const q = request.query;
      const follow = q.follow === '1' || q.follow === 'true' || /\btext\/event-stream\b/.test(request.headers.accept ?? '');
      if (q.attempt !== undefined && q.attempt > build.attempt) {
        throw new ApiError('VALIDATION_FAILED', `attempt must be between 1 and ${build.attempt}`);
      }
      if (follow) return ctx.logFollows.follow(request, reply, build, q.attempt, q.offset ?? 0);
      const attempt = q.attempt ?? build.attempt;
      let offset = q.offset ?? 0;
      async function* chunks() {
        for (;;) {
          const buf = await store.readLog(build.id, attempt, offset, LOG_READ_BYTES);
          if (buf.length === 0) return;
          offset += buf.length;
          yield buf;
          if (buf.length < LOG_READ_BYTES) return;
        }
      }
      return reply
        .header('content-type', 'text/plain; charset=utf-8')
        .header('x-build-state', build.state)
        .header('x-log-attempt', String(attempt))
        .send(Readable.from(chunks()));
    },
  );

  r.get(
    '/builds/:id/artifacts',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: { tags: ['builds'], params: IdParamsSchema, response: { 200: ArtifactListSchema, ...errors } },
    },
    async (request) => {
      await store.getBuild(request.params.id);
      const list = await store.listArtifacts(request.params.id);
      return { artifacts: list.map((a) => ({ name: a.name, size: a.size, sha256: a.sha256, ...(a.deletedAt !== null ? { expiredAt: new Date(a.deletedAt).toISOString() } : {}) })) };
    },
  );

  r.get(
    '/builds/:id/artifacts/*',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['builds'],
        summary: 'Download an artifact (Range supported; X-Checksum-SHA256 header)',
        params: ArtifactPathParams,
        produces: ['application/octet-stream'],
      },
    },
    async (request, reply) => {
      const { id } = request.params;
      const name = request.params['*'];
      await store.getBuild(id);
      const problem = artifactNameProblem(name);
      if (problem) throw new ApiError('VALIDATION_FAILED', `name: ${problem}`);
      const artifact = await store.getArtifact(id, name);
      reply
        .header('content-type', 'application/octet-stream')
        .header(CHECKSUM_HEADER, artifact.sha256)
        .header('accept-ranges', 'bytes')
        .header('content-disposition', `attachment; filename="${encodeURIComponent(name.split('/').pop() ?? 'artifact')}"`);
      const range = parseRange(request.headers.range, artifact.size);
      if (range === 'unsatisfiable') {
        return reply
          .code(416)
          .header('content-range', `bytes */${artifact.size}`)
          .type('application/json; charset=utf-8')
          .send({ error: { code: 'VALIDATION_FAILED', message: `Range is outside the artifact's ${artifact.size} bytes` } });
      }
      if (range) {
        const body = await blobs.get(artifact.blobKey, range);
        return reply
          .code(206)
          .header('content-range', `bytes ${range.start}-${range.end}/${artifact.size}`)
          .header('content-length', String(range.end - range.start + 1))
          .send(body);
      }
      if (artifact.size === 0) return reply.header('content-length', '0').send(Buffer.alloc(0));
      const body = await blobs.get(artifact.blobKey);
      return reply.header('content-length', String(artifact.size)).send(body);
    },
  );

  r.post(
    '/builds/:id/cancel',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: { tags: ['builds'], params: IdParamsSchema, response: { 200: BuildEnvelopeSchema, ...errors } },
    },
    async (request) => {
      const build = await store.cancelBuild(request.params.id, clock.now());
      if (build.state === 'canceled') {
        metrics.buildTransitions.inc({ to: 'canceled' });
        observeEnded(metrics, 'canceled');
      }
      request.log.info({ buildId: build.id, state: build.state, cancelRequested: build.cancelRequested }, 'build cancel requested');
      hintCanceled(ctx, build);
      // An assigned build that ended frees a place in its concurrency group.
      if (build.state === 'canceled' && build.spec.concurrency) ctx.hint('builds');
      return { build: await view(build) };
    },
  );

  r.post(
    '/builds/:id/retry',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['builds'],
        summary: 'Submit a new build with the same source and spec',
        params: IdParamsSchema,
        response: { 201: BuildEnvelopeSchema, ...errors },
      },
    },
    async (request, reply) => {
      const old = await store.getBuild(request.params.id);
      const sourceKey = await store.getSourceKey(old.id);
      const created = await store.createBuild({
        id: uuidv7(),
        spec: old.spec,
        sourceKey,
        sourceSize: old.sourceSize,
        sourceSha256: old.sourceSha256,
        now: clock.now(),
      });
      const build = await afterSubmit(ctx, created);
      request.log.info({ buildId: build.id, retryOf: old.id }, 'build retried');
      return reply.code(201).send({ build: await view(build) });
    },
  );
}

/** Parses `Range: bytes=…` (one range); undefined means "send it all" (RFC 9110 lets a server ignore Range). */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(m[1]);
  // A last byte before the first is not a range at all (RFC 9110 14.1.1): ignored, the whole body is sent.
  if (m[2] !== '' && Number(m[2]) < start) return undefined;
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return 'unsatisfiable';
  return { start, end };
}
