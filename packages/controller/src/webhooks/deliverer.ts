/**
 * The webhook delivery loop (one loop per file, design rule 19). Every
 * controller runs one; the queue's claim makes each delivery go out from one
 * controller at a time. A round claims up to `concurrency` due deliveries,
 * POSTs each with its signature headers, records the outcome and, when it
 * found a full batch, goes again at once; otherwise it waits `pollMs` (or a
 * `kick()`).
 *
 * Time is injected (`clock`): the timeout of each request, the pause
 * between rounds and the retry schedule all run on it.
 */
import type { Clock, TimerHandle } from '@buildfleet/protocol';
import { DEFAULT_RETRY_POLICY, nextAttemptAt, type RetryPolicy } from './backoff.js';
import { WEBHOOK_HEADERS, signWebhook } from './signature.js';
import type { ClaimedDelivery, DeliveryOutcome, WebhookQueue } from './types.js';

/** pino-compatible. */
export interface DelivererLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface DelivererOptions {
  queue: WebhookQueue;
  clock: Clock;
  logger?: DelivererLogger;
  /** Pause between rounds that found less than a full batch, ms (default 1000). */
  pollMs?: number;
  /** Deliveries in flight at once (default 4). */
  concurrency?: number;
  /** One request's timeout, ms (default 10 000). */
  timeoutMs?: number;
  retry?: RetryPolicy;
  /** For the jitter; default Math.random. */
  random?: () => number;
  /** The HTTP client; default the global fetch. Redirects are not followed. */
  fetch?: typeof fetch;
  /** Told about each recorded outcome (metrics). */
  onOutcome?: (outcome: DeliveryOutcome, delivery: ClaimedDelivery) => void;
}

export class WebhookDeliverer {
  private readonly pollMs: number;
  private readonly concurrency: number;
  private readonly timeoutMs: number;
  private readonly retry: RetryPolicy;
  private timer: TimerHandle | undefined;
  private running = false;
  private round: Promise<void> | undefined;
  private again = false;
  /** Aborts requests in flight when the loop stops (their leases run out; another round sends them again). */
  private readonly stopping = new AbortController();

  constructor(private readonly opts: DelivererOptions) {
    this.pollMs = opts.pollMs ?? 1_000;
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.retry = opts.retry ?? DEFAULT_RETRY_POLICY;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.schedule(0);
  }

  /** Looks for due deliveries now (after an event was written here). */
  kick(): void {
    if (!this.running) return;
    if (this.round) {
      this.again = true;
      return;
    }
    this.schedule(0);
  }

  /** Stops the loop, aborts requests in flight (they are sent again after their lease) and waits for the round. */
  async stop(): Promise<void> {
    this.running = false;
    this.stopping.abort();
    this.opts.clock.clearTimeout(this.timer);
    this.timer = undefined;
    await this.round;
  }

  /**
   * One round now (tests): claims, sends and records up to `concurrency`
   * deliveries. Resolves with how many it handled; a queue error rejects.
   */
  async deliverOnce(): Promise<number> {
    const claimed = await this.opts.queue.claimDeliveries({
      now: this.opts.clock.now(),
      limit: this.concurrency,
      // A try ends within timeoutMs; the lease adds room for recording it.
      leaseMs: this.timeoutMs + 5_000,
    });
    await Promise.all(claimed.map((d) => this.deliver(d)));
    return claimed.length;
  }

  private schedule(ms: number): void {
    this.opts.clock.clearTimeout(this.timer);
    this.timer = this.opts.clock.setTimeout(() => {
      this.timer = undefined;
      this.round = this.runRound().finally(() => {
        this.round = undefined;
      });
    }, ms);
  }

  private async runRound(): Promise<void> {
    let full = false;
    try {
      full = (await this.deliverOnce()) >= this.concurrency;
    } catch (err) {
      this.opts.logger?.warn({ err }, 'webhook delivery round failed; trying again later');
    }
    if (!this.running) return;
    const now = full || this.again;
    this.again = false;
    this.schedule(now ? 0 : this.pollMs);
  }

  private async deliver(d: ClaimedDelivery): Promise<void> {
    const { clock } = this.opts;
    const started = clock.monotonic();
    const timestamp = Math.floor(clock.now() / 1000);
    const controller = new AbortController();
    const timeout = clock.setTimeout(() => controller.abort(), this.timeoutMs);
    let statusCode: number | null = null;
    let error: string | null = null;
    try {
      const res = await (this.opts.fetch ?? fetch)(d.url, {
        method: 'POST',
        redirect: 'manual',
        signal: AbortSignal.any([controller.signal, this.stopping.signal]),
        headers: {
          'content-type': 'application/json',
          'user-agent': 'buildfleet-webhooks/1',
          [WEBHOOK_HEADERS.eventId]: d.eventId,
          [WEBHOOK_HEADERS.eventType]: d.eventType,
          [WEBHOOK_HEADERS.timestamp]: String(timestamp),
          [WEBHOOK_HEADERS.signature]: signWebhook(d.secret, timestamp, d.body),
        },
        body: d.body,
      });
      statusCode = res.status;
      // Read (and drop) the answer so the connection can be reused.
      await res.arrayBuffer().catch(() => undefined);
      if (res.status < 200 || res.status >= 300) error = `HTTP ${res.status}`;
    } catch (err) {
      error = controller.signal.aborted ? `timed out after ${this.timeoutMs} ms` : describe(err);
    } finally {
      clock.clearTimeout(timeout);
    }
    // Stopped mid-request: leave the delivery to its lease (at least once).
    if (this.stopping.signal.aborted) return;
    const now = clock.now();
    const ok = error === null;
    const outcome: DeliveryOutcome = {
      id: d.id,
      attempt: d.attempt,
      now,
      ok,
      statusCode,
      error,
      durationMs: Math.round(clock.monotonic() - started),
      nextAttemptAt: ok ? null : nextAttemptAt(this.retry, d.attempt, d.eventAt, now, this.opts.random),
    };
    try {
      await this.opts.queue.recordDelivery(outcome);
    } catch (err) {
      // The lease runs out and another round tries again: at least once.
      this.opts.logger?.warn({ err, deliveryId: d.id }, 'could not record a webhook delivery; it will be sent again');
      return;
    }
    if (!ok && outcome.nextAttemptAt === null) {
      this.opts.logger?.warn({ deliveryId: d.id, webhookId: d.webhookId, eventId: d.eventId, attempts: d.attempt, error }, 'webhook delivery given up after its retry window');
    }
    this.opts.onOutcome?.(outcome, d);
  }
}

/** `ECONNREFUSED`, `ENOTFOUND`, … from fetch's cause, else the message. */
function describe(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  return (cause?.code ?? cause?.message ?? (err as Error).message ?? String(err)).slice(0, 200);
}
