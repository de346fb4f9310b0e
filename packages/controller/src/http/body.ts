/**
 * Body parsing that keeps docs/protocol.md's check order: a malformed or
 * wrongly typed body must not answer 400 before authentication (401),
 * authorization (403), existence (404) and lease (409) have been checked.
 * So parse failures are not thrown by the parser; they are remembered and
 * thrown by the route (`deferredBodyError`) after its own checks, together
 * with fastify's schema errors (routes use `attachValidation: true`).
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Readable } from 'node:stream';
import { ApiError } from '@buildfleet/protocol';
import { parseJsonChecked } from './validation.js';

/** Stands in for a body that could not be parsed. */
export class UnparsableBody {
  constructor(readonly reason: string) {}
}

/**
 * Installs the JSON parser (a body over the route's `bodyLimit` is 413
 * during parsing, which is cheap to reject early; NUL, `__proto__` and
 * nesting deeper than `maxJsonDepth` are deferred 400s, see validation.ts)
 * and a catch-all parser that hands the raw stream
 * over: artifact uploads stream it into the blob store; other routes see a
 * non-object body and fail validation.
 */
export function installBodyParsers(app: FastifyInstance, limits: { maxJsonBytes: number; maxJsonDepth: number }): void {
  app.removeContentTypeParser('application/json');
  // No parser bodyLimit: the route's (or the app's) bodyLimit applies.
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, text, done) => {
    const s = typeof text === 'string' ? text : text.toString('utf8');
    if (s.trim() === '') return done(null, new UnparsableBody('body is empty; expected JSON'));
    const parsed = parseJsonChecked(s, limits.maxJsonDepth);
    done(null, 'problem' in parsed ? new UnparsableBody(parsed.problem) : parsed.value);
  });
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
}

/** Whether a parsed body is the raw request stream (non-JSON content type). */
export function isRawBody(body: unknown): body is Readable {
  return typeof body === 'object' && body !== null && typeof (body as Readable).pipe === 'function';
}

/**
 * The body problem to report now that the route's own checks passed:
 * unparsable JSON, a non-JSON content type, or the schema's error (which
 * names the field). Undefined when the body is fine.
 */
export function deferredBodyError(request: FastifyRequest): ApiError | undefined {
  const body = request.body;
  if (body instanceof UnparsableBody) return new ApiError('VALIDATION_FAILED', body.reason);
  if (isRawBody(body)) {
    return new ApiError('VALIDATION_FAILED', `content-type must be application/json, got ${JSON.stringify(request.headers['content-type'] ?? '')}`);
  }
  const v = request.validationError;
  if (v) return new ApiError('VALIDATION_FAILED', v.message);
  return undefined;
}
