/**
 * Routes of issue 14 (docs/protocol.md "Webhooks" and "Retention"), all with
 * the API token: webhook subscriptions and their delivery log, and the
 * `keep` flag that exempts a build from retention.
 */
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { v7 as uuidv7 } from 'uuid';
import {
  BuildEnvelopeSchema,
  ErrorBodySchema,
  IdParamsSchema,
  KeepRequestSchema,
  WebhookCreateSchema,
  WebhookCreatedSchema,
  WebhookDeliveryListSchema,
  WebhookDeliveryQuerySchema,
  WebhookListSchema,
} from '@buildfleet/protocol';
import { generateWebhookSecret } from '../webhooks/signature.js';
import { deferredBodyError } from './body.js';
import type { AppContext } from './context.js';

const errors = { 400: ErrorBodySchema, 401: ErrorBodySchema, 403: ErrorBodySchema, 404: ErrorBodySchema };

export function opsRoutes(app: FastifyInstance, ctx: AppContext): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const { store, clock } = ctx;

  r.post(
    '/webhooks',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['webhooks'],
        summary: 'Subscribe a URL to build events; the answer carries the signing secret, shown once',
        body: WebhookCreateSchema,
        response: { 201: WebhookCreatedSchema, ...errors },
      },
    },
    async (request, reply) => {
      const bodyError = deferredBodyError(request);
      if (bodyError) throw bodyError;
      const now = clock.now();
      const secret = generateWebhookSecret();
      const webhook = await store.webhooks.createWebhook({
        id: uuidv7({ msecs: now }),
        url: request.body.url,
        events: request.body.events,
        secret,
        description: request.body.description ?? null,
        now,
      });
      request.log.info({ webhookId: webhook.id, url: webhook.url, events: webhook.events }, 'webhook added');
      return reply.code(201).send({ webhook, secret });
    },
  );

  r.get(
    '/webhooks',
    { config: { auth: ['api'] }, schema: { tags: ['webhooks'], response: { 200: WebhookListSchema, ...errors } } },
    async () => ({ webhooks: await store.webhooks.listWebhooks() }),
  );

  r.delete(
    '/webhooks/:id',
    { config: { auth: ['api'] }, schema: { tags: ['webhooks'], params: IdParamsSchema, response: { 204: Type.Null(), ...errors } } },
    async (request, reply) => {
      await store.webhooks.deleteWebhook(request.params.id);
      request.log.info({ webhookId: request.params.id }, 'webhook removed');
      return reply.code(204).send(null);
    },
  );

  r.get(
    '/webhooks/:id/deliveries',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['webhooks'],
        summary: 'The delivery log of one webhook, newest first',
        params: IdParamsSchema,
        querystring: WebhookDeliveryQuerySchema,
        response: { 200: WebhookDeliveryListSchema, ...errors },
      },
    },
    async (request) => {
      const bodyError = deferredBodyError(request);
      if (bodyError) {
        await store.webhooks.listDeliveries(request.params.id, { limit: 1 });
        throw bodyError;
      }
      const q = request.query;
      return { deliveries: await store.webhooks.listDeliveries(request.params.id, { limit: q.limit ?? 100, ...(q.state ? { state: q.state } : {}) }) };
    },
  );

  r.post(
    '/builds/:id/keep',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['builds'],
        summary: 'Exempt a build from retention (keep: false lets retention have it again)',
        params: IdParamsSchema,
        body: KeepRequestSchema,
        response: { 200: BuildEnvelopeSchema, ...errors },
      },
    },
    async (request) => {
      const bodyError = deferredBodyError(request);
      if (bodyError) {
        await store.getBuild(request.params.id);
        throw bodyError;
      }
      const keep = request.body?.keep ?? true;
      const build = await store.setKeep(request.params.id, keep);
      request.log.info({ buildId: build.id, keep }, 'build keep flag set');
      return { build };
    },
  );
}
