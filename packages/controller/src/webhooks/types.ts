/**
 * The store's side of webhook delivery: a transactional outbox. Event rows
 * and one delivery row per subscribed webhook are written in the same
 * transaction as the build's state change (so a crash never loses one and a
 * rollback never sends one); the deliverer claims due deliveries, sends them
 * and records the outcome.
 */

/** A delivery claimed by one controller (its lease runs until `leaseUntil`). */
export interface ClaimedDelivery {
  id: string;
  webhookId: string;
  url: string;
  /** The webhook's signing secret (`bfh_…`). */
  secret: string;
  eventId: string;
  eventType: string;
  /** The exact JSON body, fixed when the event was written; retries send the same bytes. */
  body: string;
  /** When the event was written, epoch ms (the 24 h retry window counts from here). */
  eventAt: number;
  /** This try's number, from 1 (already counted by the claim). */
  attempt: number;
}

/** What one try came to. */
export interface DeliveryOutcome {
  id: string;
  /** The `attempt` of the claim: a late outcome of a try whose lease was re-claimed changes nothing. */
  attempt: number;
  now: number;
  /** 2xx from the receiver. */
  ok: boolean;
  /** HTTP status, or null when no answer came (connection refused, timeout). */
  statusCode: number | null;
  /** Short reason for a failure (`HTTP 500`, `ECONNREFUSED`, `timed out after 10000 ms`), null on success. */
  error: string | null;
  /** Milliseconds from sending to the answer (or the failure). */
  durationMs: number;
  /** Next try, epoch ms; null after success or when the retry window is over (the delivery then ends `failed`). */
  nextAttemptAt: number | null;
}

export interface WebhookQueue {
  /**
   * Claims up to `limit` pending deliveries due at `now` (oldest first) with
   * `FOR UPDATE SKIP LOCKED` on PostgreSQL, so each is sent by one controller
   * of the cluster at a time: counts the try and moves its due time to
   * `now + leaseMs`, which is when another controller may take it over if
   * this one dies before recording the outcome (at-least-once delivery).
   */
  claimDeliveries(input: { now: number; limit: number; leaseMs: number }): Promise<ClaimedDelivery[]>;
  /** Records one try's outcome (conditional on `attempt`). */
  recordDelivery(outcome: DeliveryOutcome): Promise<void>;
}
