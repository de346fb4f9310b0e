/**
 * Webhooks (docs/protocol.md "Webhooks"): which events exist, what the API
 * takes and answers, and what a receiver is sent. The signing scheme is
 * described there; the controller's `webhooks/signature.ts` implements it.
 */
import { Type, type Static } from 'typebox';
import { API_PREFIX } from './paths.js';
import { Nullable, type Build } from './schemas.js';

/**
 * Event types: `build.created` (submitted or retried, queued), `build.started`
 * (an attempt began running), `build.finished` (a terminal state; sent once
 * per build).
 */
export const WEBHOOK_EVENTS = ['build.created', 'build.started', 'build.finished'] as const;
export type WebhookEventType = (typeof WEBHOOK_EVENTS)[number];

/** Delivery states: `pending` (being tried), `delivered` (2xx), `failed` (retry window over). */
export const DELIVERY_STATES = ['pending', 'delivered', 'failed'] as const;
export type DeliveryState = (typeof DELIVERY_STATES)[number];

const Timestamp = Type.String({ description: 'ISO-8601 UTC' });

export const WebhookCreateSchema = Type.Object(
  {
    url: Type.String({ minLength: 8, maxLength: 2000, pattern: '^https?://', description: 'http:// or https:// URL the events are POSTed to' }),
    events: Type.Array(Type.Enum(WEBHOOK_EVENTS), { minItems: 1, uniqueItems: true }),
    description: Type.Optional(Type.String({ maxLength: 500 })),
  },
  { additionalProperties: false },
);
export type WebhookCreate = Static<typeof WebhookCreateSchema>;

export const WebhookSchema = Type.Object({
  id: Type.String(),
  url: Type.String(),
  events: Type.Array(Type.String()),
  description: Nullable(Type.String()),
  createdAt: Timestamp,
});
export type Webhook = Static<typeof WebhookSchema>;

/** `POST /webhooks` answer: the signing secret appears here only. */
export const WebhookCreatedSchema = Type.Object({
  webhook: WebhookSchema,
  secret: Type.String({ description: 'signing secret (bfh_…); shown once' }),
});
export const WebhookListSchema = Type.Object({ webhooks: Type.Array(WebhookSchema) });

export const WebhookDeliverySchema = Type.Object({
  id: Type.String(),
  eventId: Type.String(),
  eventType: Type.String(),
  buildId: Type.String(),
  state: Type.Enum(DELIVERY_STATES),
  attempts: Type.Integer({ description: 'tries so far' }),
  createdAt: Timestamp,
  lastAttemptAt: Nullable(Timestamp),
  lastStatusCode: Nullable(Type.Integer({ description: "the receiver's HTTP status; null when none came" })),
  lastError: Nullable(Type.String()),
  lastDurationMs: Nullable(Type.Integer()),
  nextAttemptAt: Nullable(Timestamp),
  deliveredAt: Nullable(Timestamp),
});
export type WebhookDelivery = Static<typeof WebhookDeliverySchema>;
export const WebhookDeliveryListSchema = Type.Object({ deliveries: Type.Array(WebhookDeliverySchema) });
export const WebhookDeliveryQuerySchema = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500 })),
  state: Type.Optional(Type.Enum(DELIVERY_STATES)),
});

/** `POST /builds/{id}/keep` body: `keep` defaults to true; false lets retention have the build again. */
export const KeepRequestSchema = Type.Object({ keep: Type.Optional(Type.Boolean()) }, { additionalProperties: false });

/** What a receiver gets as the body of every delivery. */
export interface WebhookEventBody {
  /** The event id (also `X-Buildfleet-Event-Id`): the same for every try, so receivers de-duplicate on it. */
  id: string;
  type: WebhookEventType;
  /** When the state change committed, ISO-8601 UTC. */
  createdAt: string;
  build: Build;
}

export const webhookPaths = {
  webhooks: () => `${API_PREFIX}/webhooks`,
  webhook: (id: string) => `${API_PREFIX}/webhooks/${encodeURIComponent(id)}`,
  deliveries: (id: string) => `${API_PREFIX}/webhooks/${encodeURIComponent(id)}/deliveries`,
  keep: (buildId: string) => `${API_PREFIX}/builds/${encodeURIComponent(buildId)}/keep`,
};
