/**
 * Webhook signatures (docs/protocol.md "Webhooks"): the header
 * `X-Buildfleet-Signature: sha256=<hex>` carries HMAC-SHA256, keyed with the
 * webhook's own secret, over `<timestamp>.<body>`, where `<timestamp>` is the
 * `X-Buildfleet-Timestamp` header (Unix seconds) and `<body>` the exact bytes
 * sent. Binding the timestamp lets a receiver refuse replays of old
 * deliveries; the same scheme as Stripe's and Slack's signed requests.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** Header names, lowercase as Node reports them. */
export const WEBHOOK_HEADERS = {
  eventId: 'x-buildfleet-event-id',
  eventType: 'x-buildfleet-event',
  timestamp: 'x-buildfleet-timestamp',
  signature: 'x-buildfleet-signature',
} as const;

/** Prefix of a webhook signing secret (256 random bits follow). */
export const WEBHOOK_SECRET_PREFIX = 'bfh_';

/** A fresh signing secret: `bfh_` and 43 base64url characters (256 bits). */
export function generateWebhookSecret(): string {
  return WEBHOOK_SECRET_PREFIX + randomBytes(32).toString('base64url');
}

/** `sha256=<lowercase hex>` of HMAC-SHA256(secret, `${timestampSeconds}.${body}`). */
export function signWebhook(secret: string, timestampSeconds: number, body: string | Buffer): string {
  const mac = createHmac('sha256', secret);
  mac.update(`${timestampSeconds}.`);
  mac.update(body);
  return `sha256=${mac.digest('hex')}`;
}

/**
 * What a receiver does: recomputes the signature and compares in constant
 * time. `toleranceSeconds` (default 300) bounds the age of `timestamp`
 * against `nowSeconds`; pass Infinity to skip that check. False for any
 * malformed input.
 */
export function verifyWebhook(input: {
  secret: string;
  body: string | Buffer;
  timestamp: string | undefined;
  signature: string | undefined;
  nowSeconds?: number;
  toleranceSeconds?: number;
}): boolean {
  const ts = Number(input.timestamp);
  if (!input.signature || !Number.isSafeInteger(ts)) return false;
  const tolerance = input.toleranceSeconds ?? 300;
  if (input.nowSeconds !== undefined && Math.abs(input.nowSeconds - ts) > tolerance) return false;
  const expected = Buffer.from(signWebhook(input.secret, ts, input.body));
  const got = Buffer.from(input.signature);
  return expected.length === got.length && timingSafeEqual(expected, got);
}
