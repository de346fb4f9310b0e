/**
 * Wake-ups for parked long polls and log followers, across controllers.
 *
 * A wake-up is a hint that says "look again", never a fact (docs/design.md
 * "Concurrency rules: wake-ups are hints"): the database is the truth, and
 * the HTTP layer also re-checks periodically, so a lost or duplicated
 * wake-up costs latency, never correctness.
 */
import pg from 'pg';
import type { Clock, TimerHandle } from '@buildfleet/protocol';

/** What changed: queued/assigned builds, log bytes of a build, workers. */
export type WakeTopic = 'builds' | 'logs' | 'workers';

export const WAKE_TOPICS: readonly WakeTopic[] = ['builds', 'logs', 'workers'];

/**
 * Called for every wake-up. `key` narrows it (a build id for 'logs'); an
 * undefined key means "anything under this topic may have changed".
 */
export type WakeListener = (topic: WakeTopic, key?: string) => void;

export interface Notifier {
  /**
   * Announces a change to every subscriber on every controller. Call after
   * the change is committed. Never rejects: a failed hint is reported to
   * `onError` and covered by the periodic re-check.
   */
  notify(topic: WakeTopic, key?: string): Promise<void>;
  /** Adds a listener; returns the function that removes it. Listener errors are contained. */
  subscribe(listener: WakeListener): () => void;
  /**
   * Whether every controller's wake-ups reach this one's listeners right now
   * (PostgreSQL: the LISTEN connection is up). While it is false a waiter
   * cannot tell "nothing changed" from "the hint was lost" and must look
   * at the database itself; when it comes back, a keyless wake-up per topic
   * tells everyone to look.
   */
  readonly delivering: boolean;
  /** Stops delivering and releases connections it opened (not a pool passed in). */
  close(): Promise<void>;
}

/** Reports a listener's or the connection's error; wake-ups go on regardless. */
export type NotifierErrorHandler = (err: unknown, context: string) => void;

/** Shared listener bookkeeping: delivery to every listener, errors contained. */
class Listeners {
  private readonly set = new Set<WakeListener>();
  constructor(private readonly onError: NotifierErrorHandler) {}
  add(listener: WakeListener): () => void {
    this.set.add(listener);
    return () => {
      this.set.delete(listener);
    };
  }
  emit(topic: WakeTopic, key: string | undefined): void {
    for (const l of [...this.set]) {
      try {
        l(topic, key);
      } catch (err) {
        this.onError(err, 'wake-up listener');
      }
    }
  }
  clear(): void {
    this.set.clear();
  }
  get size(): number {
    return this.set.size;
  }
}

/** One controller (SQLite mode): wake-ups stay in this process, delivered synchronously. */
export class InProcessNotifier implements Notifier {
  private readonly listeners: Listeners;
  private closed = false;

  constructor(opts: { onError?: NotifierErrorHandler } = {}) {
    this.listeners = new Listeners(opts.onError ?? (() => {}));
  }

  async notify(topic: WakeTopic, key?: string): Promise<void> {
    if (!this.closed) this.listeners.emit(topic, key);
  }

  subscribe(listener: WakeListener): () => void {
    return this.listeners.add(listener);
  }

  get delivering(): boolean {
    return !this.closed;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.listeners.clear();
  }
}

/** Channel of `LISTEN`/`NOTIFY`; payload `<topic>:<key>` (key may be empty). */
export const NOTIFY_CHANNEL = 'buildfleet';

/** Encodes a wake-up as a NOTIFY payload (PostgreSQL limits payloads to 8000 bytes). */
export function encodeWake(topic: WakeTopic, key?: string): string {
  return `${topic}:${key ?? ''}`;
}

/** Decodes a NOTIFY payload; undefined for a payload this version does not know. */
export function decodeWake(payload: string | undefined): { topic: WakeTopic; key: string | undefined } | undefined {
  if (payload === undefined) return undefined;
  const i = payload.indexOf(':');
  const topic = (i < 0 ? payload : payload.slice(0, i)) as WakeTopic;
  if (!WAKE_TOPICS.includes(topic)) return undefined;
  const key = i < 0 ? '' : payload.slice(i + 1);
  return { topic, key: key === '' ? undefined : key };
}

export interface PgNotifierOptions {
  /** Sends NOTIFY (any connection will do; not ended by `close`). */
  pool: pg.Pool;
  /** Where the dedicated LISTEN connection goes: a URL or client config. */
  listen: string | pg.ClientConfig;
  /** Times reconnect backoff. */
  clock: Clock;
  /** First retry delay after a failed connect, ms (default 200); doubles up to `maxBackoffMs`. */
  initialBackoffMs?: number;
  /** Longest retry delay, ms (default 10,000). */
  maxBackoffMs?: number;
  /**
   * How often the LISTEN connection is asked `SELECT 1`, ms (default 30,000;
   * 0 disables). A connection whose peer vanished without a FIN (host
   * down, network cut) raises no error for hours; the ping notices.
   */
  pingIntervalMs?: number;
  /** A ping not answered within this many ms counts as a lost connection (default 10,000). */
  pingTimeoutMs?: number;
  onError?: NotifierErrorHandler;
  /** Told when the LISTEN connection comes up or goes down (logs, metrics, tests). */
  onState?: (state: { listening: boolean; failures: number }) => void;
}

/**
 * Several controllers on one PostgreSQL: a dedicated `pg.Client` runs
 * `LISTEN buildfleet`; `notify` sends `NOTIFY` through the pool, so every
 * controller's listeners (this one's too, by the echo) are woken.
 *
 * When the LISTEN connection drops it reconnects at once, then with
 * exponential backoff and jitter on the injected clock. Notifications sent
 * while it was down are lost, so after each reconnect it delivers a keyless
 * wake-up for every topic ('builds' first): everyone looks again.
 *
 * A silently dead connection is noticed by a periodic `SELECT 1` on the
 * injected clock (`pingIntervalMs`); until then the HTTP layer's periodic
 * re-check covers that window.
 */
export class PgNotifier implements Notifier {
  private readonly listeners: Listeners;
  private readonly onError: NotifierErrorHandler;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private client: pg.Client | undefined;
  private closed = false;
  private failures = 0;
  private connecting: Promise<void> | undefined;
  private everListened = false;
  private readonly abort = new AbortController();
  private pingTimer: TimerHandle | undefined;
  private pingDeadline: TimerHandle | undefined;
  private firstListen: { promise: Promise<void>; resolve: () => void };

  constructor(private readonly opts: PgNotifierOptions) {
    this.onError = opts.onError ?? (() => {});
    this.listeners = new Listeners(this.onError);
    this.initialBackoffMs = opts.initialBackoffMs ?? 200;
    this.maxBackoffMs = opts.maxBackoffMs ?? 10_000;
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.firstListen = { promise, resolve };
  }

  /**
   * Starts listening. Resolves once the first `LISTEN` succeeded; until then
   * it keeps retrying with backoff (a controller may start before its
   * database). Resolves at once after `close`.
   */
  start(): Promise<void> {
    this.connecting ??= this.connectLoop();
    return this.firstListen.promise;
  }

  /** Whether the LISTEN connection is up right now. */
  get listening(): boolean {
    return this.client !== undefined;
  }

  get delivering(): boolean {
    return this.client !== undefined;
  }

  async notify(topic: WakeTopic, key?: string): Promise<void> {
    if (this.closed) return;
    try {
      await this.opts.pool.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, encodeWake(topic, key)]);
    } catch (err) {
      this.onError(err, 'NOTIFY');
    }
  }

  subscribe(listener: WakeListener): () => void {
    return this.listeners.add(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort(new Error('notifier closed'));
    this.listeners.clear();
    this.firstListen.resolve();
    const c = this.client;
    this.client = undefined;
    this.stopPing();
    await this.connecting?.catch(() => {});
    if (c) {
      // end() waits for the server's goodbye, which a vanished peer never
      // sends: give it 2 s on the clock, then drop the socket.
      const ac = new AbortController();
      const giveUp = this.opts.clock.sleep(2_000, ac.signal).then(
        () => destroySocket(c),
        () => {},
      );
      await Promise.race([c.end().catch(() => {}), giveUp]);
      ac.abort();
    }
  }

  private schedulePing(c: pg.Client): void {
    const every = this.opts.pingIntervalMs ?? 30_000;
    if (every <= 0) return;
    this.pingTimer = this.opts.clock.setTimeout(() => {
      this.pingTimer = undefined;
      if (this.client !== c) return;
      this.pingDeadline = this.opts.clock.setTimeout(() => {
        this.pingDeadline = undefined;
        const ms = this.opts.pingTimeoutMs ?? 10_000;
        this.lost(c, new Error(`LISTEN connection did not answer a ping within ${ms}ms`), true);
      }, this.opts.pingTimeoutMs ?? 10_000);
      c.query('SELECT 1').then(
        () => {
          if (this.client !== c) return;
          this.opts.clock.clearTimeout(this.pingDeadline);
          this.pingDeadline = undefined;
          this.schedulePing(c);
        },
        (err: unknown) => this.lost(c, err),
      );
    }, every);
  }

  private stopPing(): void {
    this.opts.clock.clearTimeout(this.pingTimer);
    this.opts.clock.clearTimeout(this.pingDeadline);
    this.pingTimer = this.pingDeadline = undefined;
  }

  private setState(listening: boolean): void {
    this.opts.onState?.({ listening, failures: this.failures });
  }

  private backoffMs(): number {
    const base = Math.min(this.maxBackoffMs, this.initialBackoffMs * 2 ** Math.max(0, this.failures - 1));
    // Jitter spreads the reconnects of many controllers after a database restart.
    return Math.round(base / 2 + (Math.random() * base) / 2);
  }

  private async connectLoop(): Promise<void> {
    let reconnect = this.failures > 0 || this.everListened;
    while (!this.closed) {
      try {
        const { client: c, dead } = await this.connectOnce();
        if (this.closed || dead()) {
          // Closed meanwhile, or the connection died between LISTEN and here.
          c.removeAllListeners();
          c.on('error', () => {});
          await c.end().catch(() => {});
          if (this.closed) return;
          throw new Error('LISTEN connection lost right after connecting');
        }
        this.client = c;
        this.failures = 0;
        this.everListened = true;
        this.setState(true);
        this.schedulePing(c);
        this.firstListen.resolve();
        if (reconnect) for (const t of ['builds', 'workers', 'logs'] as const) this.listeners.emit(t, undefined);
        return;
      } catch (err) {
        if (this.closed) return;
        this.failures++;
        reconnect = true;
        this.onError(err, 'LISTEN connection');
        this.setState(false);
        try {
          await this.opts.clock.sleep(this.backoffMs(), this.abort.signal);
        } catch {
          return; // closed
        }
      }
    }
  }

  private async connectOnce(): Promise<{ client: pg.Client; dead: () => boolean }> {
    const base: pg.ClientConfig = typeof this.opts.listen === 'string' ? { connectionString: this.opts.listen } : this.opts.listen;
    const c = new pg.Client({ keepAlive: true, connectionTimeoutMillis: 10_000, ...base });
    let dead = false;
    const lost = (err?: unknown) => {
      dead = true;
      this.lost(c, err);
    };
    c.on('error', lost);
    c.on('end', () => lost());
    c.on('notification', (msg) => {
      if (msg.channel !== NOTIFY_CHANNEL || this.client !== c) return;
      const wake = decodeWake(msg.payload);
      if (wake) this.listeners.emit(wake.topic, wake.key);
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${NOTIFY_CHANNEL}`);
      return { client: c, dead: () => dead };
    } catch (err) {
      c.removeAllListeners();
      c.on('error', () => {});
      await c.end().catch(() => {});
      throw err;
    }
  }

  private lost(c: pg.Client, err: unknown, unresponsive = false): void {
    if (this.client !== c) return; // a failed connect attempt, or already handled
    this.client = undefined;
    this.stopPing();
    c.removeAllListeners();
    c.on('error', () => {});
    c.end().catch(() => {});
    // A peer that stopped answering will not complete the polite goodbye
    // either: drop the socket so it does not linger.
    if (unresponsive) destroySocket(c);
    if (this.closed) return;
    if (err) this.onError(err, 'LISTEN connection lost');
    this.setState(false);
    this.connecting = this.connectLoop();
  }
}

/** pg.Client has no public destroy; its connection's stream is the net.Socket. */
function destroySocket(c: pg.Client): void {
  (c as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

/**
 * The notifier for a deployment mode: SQLite (no `pool`) → in-process;
 * PostgreSQL → a started PgNotifier listening on `listen` (defaults to the
 * pool's connection settings). Resolves once it listens; a database that is
 * down at start keeps it retrying in the background rather than failing,
 * unless `waitForListen` is true (the default), in which case the promise
 * waits for it.
 */
export async function openNotifier(opts: {
  pool?: pg.Pool;
  listen?: string | pg.ClientConfig;
  clock: Clock;
  onError?: NotifierErrorHandler;
  onState?: (state: { listening: boolean; failures: number }) => void;
  waitForListen?: boolean;
}): Promise<Notifier> {
  if (!opts.pool) return new InProcessNotifier(opts.onError ? { onError: opts.onError } : {});
  const listen = opts.listen ?? (opts.pool.options as pg.ClientConfig);
  const n = new PgNotifier({
    pool: opts.pool,
    listen,
    clock: opts.clock,
    ...(opts.onError ? { onError: opts.onError } : {}),
    ...(opts.onState ? { onState: opts.onState } : {}),
  });
  const started = n.start();
  if (opts.waitForListen !== false) await started;
  return n;
}
