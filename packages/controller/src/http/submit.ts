/**
 * Submitting a build (docs/protocol.md `POST /builds`): the multipart body
 * read in order (spec, then source streamed into the blob store), the spec
 * checked strictly, and what follows a new build (metrics, hints, the
 * concurrency group's cancels).
 */
import type { FastifyRequest } from 'fastify';
import type { MultipartFile, MultipartValue } from '@fastify/multipart';
import { Compile } from 'typebox/compile';
import { v7 as uuidv7 } from 'uuid';
import {
  ApiError,
  BuildSpecInputSchema,
  normalizeSecretRefs,
  normalizeSpec,
  parseKeyTemplate,
  type Build,
  type BuildSpec,
  type BuildSpecInput,
} from '@buildfleet/protocol';
import { jsonValueProblem, parseJsonChecked } from './validation.js';
import type { AppContext } from './context.js';

const specCheck = Compile(BuildSpecInputSchema);

/**
 * Hints after a cancel: the build's followers look again, and a running
 * build's worker hears it on its parked poll at once, on whichever
 * controller that poll waits (docs/protocol.md "poll", `watchCancel`).
 */
export function hintCanceled(ctx: AppContext, build: Build): void {
  ctx.hint('logs', build.id);
  if (build.state === 'running' && build.cancelRequested && build.workerId) ctx.hint('workers', build.workerId);
}

/**
 * What follows every new build (issue 13): one that asks for a secret it
 * may not have fails at once; one with `concurrency.cancelInProgress`
 * cancels the older builds of its group. Counts and announces it.
 */
export async function afterSubmit(ctx: AppContext, created: Build): Promise<Build> {
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
export async function submitBuild(ctx: AppContext, request: FastifyRequest): Promise<Build> {
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
  // A pattern reaching outside the workspace could never match an artifact (docs/protocol.md: names are relative, no '..').
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
