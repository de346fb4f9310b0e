/**
 * Build routes (PROTOCOL.md "Builds"): the user side with an API token and
 * the worker side with a build token.
 */
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { MultipartFile, MultipartValue } from '@fastify/multipart';
import { Type } from 'typebox';
import { Compile } from 'typebox/compile';
import { v7 as uuidv7 } from 'uuid';
import {
  ApiError,
  ArtifactListSchema,
  BuildEnvelopeSchema,
  BuildListQuerySchema,
  BuildListSchema,
  BuildSpecInputSchema,
  CHECKSUM_HEADER,
  ErrorBodySchema,
  FinishRequestSchema,
  IdParamsSchema,
  LogChunkRequestSchema,
  LogChunkResponseSchema,
  LogQuerySchema,
  StartRequestSchema,
  artifactNameProblem,
  isTerminal,
  normalizeSecretRefs,
  normalizeSpec,
  parseKeyTemplate,
  type Build,
  type BuildSpec,
  type BuildSpecInput,
} from '@buildfleet/protocol';
import type { AttemptRef } from '../store/types.js';
import { observeEnded, observeStarted } from '../ops/metrics.js';
import { buildView, buildViews } from '../views.js';
import { deferredBodyError, isRawBody } from './body.js';
import { LOG_READ_BYTES } from './log-follow.js';
import { jsonValueProblem, parseJsonChecked } from './validation.js';
import type { AppContext } from './context.js';

const errors = {
  400: ErrorBodySchema,
  401: ErrorBodySchema,
  403: ErrorBodySchema,
  404: ErrorBodySchema,
  409: ErrorBodySchema,
};

const SHA256_HEX = /^[0-9a-f]{64}$/;
const specCheck = Compile(BuildSpecInputSchema);

const ArtifactPathParams = Type.Object({ id: IdParamsSchema.properties.id, '*': Type.String() });

export function buildRoutes(app: FastifyInstance, ctx: AppContext): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const { config, store, blobs, clock, metrics } = ctx;
  /** A build as people read it: worker names, and why it waits (views.ts). */
  const view = (build: Build) => buildView(store, build, clock.now(), config.leaseMs);

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
   * The preamble of a JSON build-token write in PROTOCOL.md's check order:
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
      const before = await store.getBuild(ref.buildId);
      const build = await store.startBuild(ref, clock.now(), config.leaseMs);
      if (before.state !== 'running' && build.state === 'running') {
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
      const before = await store.getBuild(ref.buildId);
      const build = await store.finishBuild({
        ...ref,
        outcome: body.outcome,
        exitCode: body.exitCode,
        message: body.message ?? null,
        now: clock.now(),
      });
      if (!isTerminal(before.state)) {
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

/**
 * Hints after a cancel: the build's followers look again, and a running
 * build's worker hears it on its parked poll at once, on whichever
 * controller that poll waits (docs/protocol.md "poll", `watchCancel`).
 */
function hintCanceled(ctx: AppContext, build: Build): void {
  ctx.hint('logs', build.id);
  if (build.state === 'running' && build.cancelRequested && build.workerId) ctx.hint('workers', build.workerId);
}

/**
 * What follows every new build (issue 13): one that asks for a secret it
 * may not have fails at once; one with `concurrency.cancelInProgress`
 * cancels the older builds of its group. Counts and announces it.
 */
async function afterSubmit(ctx: AppContext, created: Build): Promise<Build> {
  const now = ctx.clock.now();
  ctx.metrics.buildTransitions.inc({ to: 'queued' });
  // The event stream announces every new build (a 'logs' hint carries the build id).
  ctx.hint('logs', created.id);
  const build = await ctx.secrets.checkSubmitted(created, now);
  if (build.state !== 'queued') {
    ctx.metrics.buildTransitions.inc({ to: build.state });
    ctx.hint('logs', build.id);
    return build;
  }
  const group = build.spec.concurrency;
  if (group?.cancelInProgress) {
    for (const b of await ctx.store.cancelOlderInGroup(group.group, build.id, now)) {
      if (b.state === 'canceled') ctx.metrics.buildTransitions.inc({ to: 'canceled' });
      hintCanceled(ctx, b);
    }
  }
  ctx.hint('builds');
  return build;
}

/**
 * Reads the multipart submission: `spec` (JSON, validated, defaults filled)
 * must come before `source`, which is streamed into the blob store under
 * `sources/<id>`. The build row is created only after the source is stored,
 * so a failed upload leaves no build (and its blob is deleted).
 */
async function submitBuild(ctx: AppContext, request: FastifyRequest): Promise<Build> {
  const { store, blobs, config, clock } = ctx;
  if (!request.isMultipart()) {
    throw new ApiError('VALIDATION_FAILED', 'body must be multipart/form-data with the parts "spec" then "source"');
  }
  const length = Number(request.headers['content-length']);
  if (Number.isFinite(length) && length > config.maxSourceBytes + config.maxSpecBytes + 64 * 1024) {
    throw new ApiError('PAYLOAD_TOO_LARGE', `source is larger than ${config.maxSourceBytes} bytes`);
  }
  const id = uuidv7();
  const sourceKey = `sources/${id}`;
  let spec: BuildSpec | undefined;
  let source: { size: number; sha256: string } | undefined;
  try {
    const parts = request.parts({
      limits: { fileSize: config.maxSourceBytes + 1, fieldSize: config.maxSpecBytes, fields: 20, files: 5, parts: 25 },
    });
    for await (const part of parts) {
      if (part.fieldname === 'spec' && !source && !spec) {
        const text = part.type === 'field' ? fieldText(part, config.maxJsonDepth) : (await readSmall(part, config.maxSpecBytes)).toString('utf8');
        spec = parseSpec(text, config.maxJsonDepth);
      } else if (part.fieldname === 'source' && part.type === 'file' && !source) {
        if (!spec) {
          part.file.resume();
          throw new ApiError('VALIDATION_FAILED', 'part "spec" must come before part "source"');
        }
        source = await blobs.put(sourceKey, part.file, { maxBytes: config.maxSourceBytes });
        ctx.metrics.blobBytesWritten.inc({ kind: 'source' }, source.size);
        if (part.file.truncated) throw new ApiError('PAYLOAD_TOO_LARGE', `source is larger than ${config.maxSourceBytes} bytes`);
      } else if (part.type === 'file') {
        // Unknown or repeated parts are drained and ignored.
        part.file.resume();
      }
    }
    if (!spec) throw new ApiError('VALIDATION_FAILED', 'part "spec" is missing');
    if (!source) throw new ApiError('VALIDATION_FAILED', 'part "source" (a .tar.gz file) is missing');
    return await store.createBuild({ id, spec, sourceKey, sourceSize: source.size, sourceSha256: source.sha256, now: clock.now() });
  } catch (err) {
    // createBuild may have committed before its error (a connection lost on
    // COMMIT answers UNAVAILABLE): delete the source only when no build row
    // uses it. A leaked blob is harmless; a build without its source is not.
    if (source && !(await mayExist(store, id))) await blobs.delete(sourceKey).catch(() => {});
    if (err instanceof ApiError) throw err;
    const e = err as { statusCode?: number; message?: string; code?: string };
    if (e.statusCode === 413 || e.code === 'FST_REQ_FILE_TOO_LARGE') throw new ApiError('PAYLOAD_TOO_LARGE', e.message ?? 'too large');
    if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
      throw new ApiError('VALIDATION_FAILED', `malformed multipart body: ${e.message}`);
    }
    if (/multipart|boundary|unexpected end|part terminated|malformed/i.test(e.message ?? '')) {
      throw new ApiError('VALIDATION_FAILED', `malformed multipart body: ${e.message}`);
    }
    throw err;
  }
}

/** false only when the store says the build does not exist (any other error: it may). */
async function mayExist(store: AppContext['store'], id: string): Promise<boolean> {
  try {
    await store.getBuild(id);
    return true;
  } catch (err) {
    return !(err instanceof ApiError && err.code === 'BUILD_NOT_FOUND');
  }
}

/**
 * A field's text; @fastify/multipart has already parsed an `application/json`
 * field into a value, which must pass the JSON rules before it is
 * serialized again (a deep one would overflow the stack).
 */
function fieldText(part: MultipartValue, maxDepth: number): string {
  if (part.valueTruncated) throw new ApiError('PAYLOAD_TOO_LARGE', 'part "spec" is larger than the limit (BUILDFLEET_MAX_SPEC_BYTES)');
  if (typeof part.value === 'string') return part.value;
  const problem = jsonValueProblem(part.value, maxDepth, 'spec');
  if (problem) throw new ApiError('VALIDATION_FAILED', problem);
  return JSON.stringify(part.value);
}

async function readSmall(part: MultipartFile, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of part.file) {
    size += (chunk as Buffer).length;
    if (size > max) {
      part.file.resume();
      throw new ApiError('PAYLOAD_TOO_LARGE', `part "spec" is larger than ${max} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

function parseSpec(text: string, maxDepth: number): BuildSpec {
  const parsed = parseJsonChecked(text, maxDepth, 'spec');
  if ('problem' in parsed) throw new ApiError('VALIDATION_FAILED', parsed.problem);
  const value = parsed.value;
  if (!specCheck.Check(value)) {
    const first = [...specCheck.Errors(value)].find((e) => e.keyword !== 'boolean') ?? [...specCheck.Errors(value)][0];
    const where = first?.instancePath ? `spec${first.instancePath.replace(/\//g, '.')}` : 'spec';
    const extra = (first?.params as { additionalProperties?: string[] } | undefined)?.additionalProperties;
    throw new ApiError('VALIDATION_FAILED', `${where} ${first?.message ?? 'is invalid'}${extra ? `: ${extra.join(', ')}` : ''}`);
  }
  // A pattern reaching outside the workspace could never match an artifact (PROTOCOL.md: names are relative, no '..').
  (value.artifacts ?? []).forEach((pattern, i) => {
    if (pattern.startsWith('/') || pattern.split('/').includes('..')) {
      throw new ApiError('VALIDATION_FAILED', `spec.artifacts.${i} must be relative to the workspace, without '..' segments`);
    }
  });
  specFeatureProblems(value);
  return normalizeSpec(value);
}

/** Issue 13's spec fields beyond their schema: key templates that parse, one variable per secret. Throws VALIDATION_FAILED. */
function specFeatureProblems(value: BuildSpecInput): void {
  (value.cache ?? []).forEach((c, i) => {
    for (const template of [c.key, ...(c.restoreKeys ?? [])]) {
      try {
        parseKeyTemplate(template);
      } catch (err) {
        throw new ApiError('VALIDATION_FAILED', `spec.cache.${i}: ${(err as Error).message}`);
      }
    }
  });
  const seen = new Set(Object.keys(value.env ?? {}));
  for (const ref of normalizeSecretRefs(value.secrets ?? [])) {
    if (seen.has(ref.env)) throw new ApiError('VALIDATION_FAILED', `spec.secrets: the variable ${ref.env} is set twice (by spec.env or another secret)`);
    seen.add(ref.env);
  }
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
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return 'unsatisfiable';
  return { start, end };
}
