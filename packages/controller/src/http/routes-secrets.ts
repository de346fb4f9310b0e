/**
 * Secret routes (issue 13; docs/protocol.md "Secrets"): admins store and
 * delete values with an API token and never read one back; a build's
 * current, running attempt receives the values its spec asks for with its
 * build token. No answer of any other route carries a value, and no log
 * line here names one (`value` is never logged; the body is not logged).
 */
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import {
  ApiError,
  BuildSecretsResponseSchema,
  ErrorBodySchema,
  IdParamsSchema,
  SecretEnvelopeSchema,
  SecretHandoutListSchema,
  SecretHandoutQuerySchema,
  SecretListSchema,
  SecretNameSchema,
  SecretParamsSchema,
  SecretPutRequestSchema,
} from '@buildfleet/protocol';
import { Compile } from 'typebox/compile';
import { deferredBodyError } from './body.js';
import type { AppContext } from './context.js';

const errors = { 400: ErrorBodySchema, 401: ErrorBodySchema, 403: ErrorBodySchema, 404: ErrorBodySchema, 409: ErrorBodySchema };
const nameCheck = Compile(SecretNameSchema);

/** 400 unless `name` can be a secret's name (it is also an environment variable). */
function checkName(name: string): void {
  if (!nameCheck.Check(name)) {
    throw new ApiError('VALIDATION_FAILED', 'name must be an environment variable name: [A-Za-z_][A-Za-z0-9_]*, at most 100 characters');
  }
}

export function secretRoutes(app: FastifyInstance, ctx: AppContext): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const { store, clock, secrets } = ctx;

  r.put(
    '/secrets/:name',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['secrets'],
        summary: 'Create or replace a secret (the value is write-only: no answer ever carries it)',
        params: SecretParamsSchema,
        body: SecretPutRequestSchema,
        response: { 200: SecretEnvelopeSchema, 201: SecretEnvelopeSchema, ...errors },
      },
    },
    async (request, reply) => {
      const bodyError = deferredBodyError(request);
      if (bodyError) throw bodyError;
      checkName(request.params.name);
      const { secret, created } = await secrets.put(request.params.name, request.body.value, request.body.scope ?? {}, clock.now());
      request.log.info({ secretName: secret.name, scope: secret.scope, created }, created ? 'secret created' : 'secret replaced');
      return reply.code(created ? 201 : 200).send({ secret });
    },
  );

  r.get(
    '/secrets',
    { config: { auth: ['api'] }, schema: { tags: ['secrets'], summary: 'List secrets: names and scopes, never values', response: { 200: SecretListSchema } } },
    async () => ({ secrets: await store.listSecrets() }),
  );

  r.get(
    '/secrets/:name',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: { tags: ['secrets'], summary: 'One secret without its value', params: SecretParamsSchema, response: { 200: SecretEnvelopeSchema, ...errors } },
    },
    async (request) => ({ secret: await store.getSecret(request.params.name) }),
  );

  r.delete(
    '/secrets/:name',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: { tags: ['secrets'], summary: 'Delete a secret', params: SecretParamsSchema, response: { 204: Type.Null(), ...errors } },
    },
    async (request, reply) => {
      await store.deleteSecret(request.params.name);
      request.log.info({ secretName: request.params.name }, 'secret deleted');
      return reply.code(204).send(null);
    },
  );

  r.get(
    '/secrets/:name/handouts',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['secrets'],
        summary: 'Which attempts of which builds received a secret, newest first',
        params: SecretParamsSchema,
        querystring: SecretHandoutQuerySchema,
        response: { 200: SecretHandoutListSchema, ...errors },
      },
    },
    async (request) => {
      const bodyError = deferredBodyError(request);
      if (bodyError) throw bodyError;
      return { handouts: await store.listHandouts(request.params.name, request.query.limit ?? 50) };
    },
  );

  r.get(
    '/builds/:id/secrets',
    {
      config: { auth: ['build'] },
      schema: {
        tags: ['worker builds'],
        summary: "The values of the secrets the build's spec asks for, for its current running attempt (recorded)",
        params: IdParamsSchema,
        response: { 200: BuildSecretsResponseSchema, ...errors },
      },
    },
    async (request) => {
      const claims = request.buildClaims;
      if (!claims) throw new ApiError('TOKEN_INVALID', 'missing build token');
      const build = await store.getBuild(claims.buildId);
      const values = await secrets.handOut(build, claims, clock.now()).catch((err: unknown) => {
        // The build was failed (a secret became unavailable): its worker learns from the 409, followers and its group now.
        ctx.hint('logs', build.id);
        if (build.spec.concurrency) ctx.hint('builds');
        throw err;
      });
      // Names only: the values are in this answer and nowhere else.
      ctx.metrics.secretHandouts.inc(values.length);
      if (values.length) request.log.info({ buildId: build.id, attempt: claims.attempt, secrets: values.map((v) => v.name) }, 'secrets handed out');
      return { secrets: values };
    },
  );
}
