/**
 * Live logs (`GET /builds/{id}/logs` with `follow=1` or `Accept:
 * text/event-stream`) as Server-Sent Events, with one database reader per
 * followed build shared by all its followers: 300 clients following one
 * build used to re-read the build and its log every second each (/healthz
 * took seconds, the process grew by hundreds of MB); now a `LogFeed` reads
 * the build once per wake-up or re-check and the log's new bytes once,
 * keeping the newest `WINDOW_BYTES` in memory for followers to copy. Only a
 * follower that fell behind that window (a slow client, a late joiner
 * starting at offset 0, an older attempt) reads the store on its own.
 *
 * Events (each `data` is JSON): `log` `{attempt, offset, text}` (offset:
 * bytes of the attempt before this text), `attempt` `{attempt}` when
 * following the current attempt and the build moved to a new one (offsets
 * restart at 0), `state` `{state, attempt, cancelRequested}` when the state
 * changes, and a last `end` `{state, attempt, exitCode, reason}` once the
 * build is terminal and every byte was sent; `error` `{code, message}` if
 * the store fails mid-stream. Idle streams get a `: keepalive` comment every
 * 15 s.
 */
import { PassThrough } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ApiError, isTerminal, type Build } from '@buildfleet/protocol';
import type { AppContext } from './context.js';
import { toApiError } from './errors.js';

/** Longest silence on a followed log stream before a `: keepalive` comment, ms. */
const SSE_KEEPALIVE_MS = 15_000;
/** Bytes read from the store per log read. */
export const LOG_READ_BYTES = 256 * 1024;
/** Newest bytes of the current attempt a feed keeps for its followers. */
const WINDOW_BYTES = 1024 * 1024;

/**
 * The shared reader of one followed build: re-reads the build on each
 * 'logs' wake-up for it (or every `logFollowRecheckMs`), and reads new log
 * bytes of its current attempt once for every follower (`read`).
 */
class LogFeed {
  /** The build as of the latest round; undefined before the first. */
  build: Build | undefined;
  error: unknown;
  /** Increases with every round (a new build snapshot, an error, the end). */
  round = 0;
  followers = 0;
  private attempt = 0;
  /** Bytes of `attempt` known so far: the end of `window`. */
  private frontier = 0;
  private window: Array<{ offset: number; data: Buffer }> = [];
  private frontierRead: Promise<void> | undefined;
  private readonly waiters = new Set<() => void>();
  private readonly abort = new AbortController();
  private running = false;

  constructor(
    private readonly ctx: AppContext,
    readonly buildId: string,
    /** Removes the feed from the hub: no followers left, or it stopped without a terminal build. */
    private readonly detach: () => void,
  ) {}

  join(): void {
    this.followers++;
    if (!this.running) {
      this.running = true;
      void this.run();
    }
  }

  leave(): void {
    if (--this.followers > 0) return;
    this.abort.abort();
    this.detach();
  }

  /** Resolves once a round newer than `seen` happened, or `signal` aborts. */
  nextRound(seen: number, signal: AbortSignal): Promise<void> {
    if (this.round !== seen || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.waiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  /**
   * Log bytes of `attempt` from `offset` (empty when there are none yet):
   * from the shared window when it covers `offset`, by one shared store
   * read when `offset` is the frontier, else by a read of the caller's own.
   */
  async read(attempt: number, offset: number): Promise<Buffer> {
    if (attempt !== this.attempt) return this.ctx.store.readLog(this.buildId, attempt, offset, LOG_READ_BYTES);
    for (;;) {
      const start = this.window[0]?.offset ?? this.frontier;
      if (offset < start || offset > this.frontier) return this.ctx.store.readLog(this.buildId, attempt, offset, LOG_READ_BYTES);
      if (offset < this.frontier) {
        const chunk = this.window.find((c) => c.offset + c.data.length > offset)!;
        return chunk.data.subarray(offset - chunk.offset);
      }
      const before = this.frontier;
      this.frontierRead ??= this.readFrontier(attempt).finally(() => (this.frontierRead = undefined));
      await this.frontierRead;
      // Nothing new, or the feed moved to another attempt meanwhile.
      if (this.frontier === before || attempt !== this.attempt) {
        return attempt === this.attempt ? Buffer.alloc(0) : this.ctx.store.readLog(this.buildId, attempt, offset, LOG_READ_BYTES);
      }
    }
  }

  private async readFrontier(attempt: number): Promise<void> {
    const buf = await this.ctx.store.readLog(this.buildId, attempt, this.frontier, LOG_READ_BYTES);
    if (attempt !== this.attempt || buf.length === 0) return;
    this.window.push({ offset: this.frontier, data: buf });
    this.frontier += buf.length;
    let kept = this.window.reduce((n, c) => n + c.data.length, 0);
    while (kept - this.window[0]!.data.length >= WINDOW_BYTES) kept -= this.window.shift()!.data.length;
  }

  private bump(): void {
    this.round++;
    for (const w of [...this.waiters]) w();
  }

  private async run(): Promise<void> {
    const { logWake, store, config } = this.ctx;
    const release = logWake.retain(this.buildId);
    try {
      while (!this.abort.signal.aborted && !logWake.isClosed) {
        const generation = logWake.snapshot(this.buildId);
        const build = await store.getBuild(this.buildId);
        if (build.attempt !== this.attempt) {
          this.attempt = build.attempt;
          this.frontier = 0;
          this.window = [];
        }
        this.build = build;
        this.bump();
        // Terminal: nothing changes any more; followers finish from here.
        if (isTerminal(build.state)) return;
        await logWake.waitForChange(generation, config.logFollowRecheckMs, this.abort.signal);
      }
    } catch (err) {
      this.error = err;
      // Followers that come later start a fresh feed instead of this error.
      this.detach();
    } finally {
      release();
      this.bump();
    }
  }
}

/** The feeds of the builds followed now, and how many streams each client has open. */
export class LogFollowHub {
  private readonly feeds = new Map<string, LogFeed>();
  private readonly perClient = new Map<string, number>();

  constructor(private readonly ctx: AppContext) {}

  /** Feeds running now (tests, metrics). */
  get size(): number {
    return this.feeds.size;
  }

  /** Streams `client` (an address) holds open now. */
  following(client: string): number {
    return this.perClient.get(client) ?? 0;
  }

  /**
   * Streams `first`'s log to `reply` as SSE. Throws 429 RATE_LIMITED when
   * `client` already follows `maxFollowersPerClient` logs.
   */
  follow(request: FastifyRequest, reply: FastifyReply, first: Build, fixedAttempt: number | undefined, startOffset: number): FastifyReply {
    const client = request.ip;
    const open = this.perClient.get(client) ?? 0;
    if (open >= this.ctx.config.maxFollowersPerClient) {
      throw new ApiError('RATE_LIMITED', `this client already follows ${open} logs (BUILDFLEET_MAX_FOLLOWERS_PER_CLIENT); close one first`);
    }
    this.perClient.set(client, open + 1);
    let feed = this.feeds.get(first.id);
    if (!feed) {
      const created: LogFeed = new LogFeed(this.ctx, first.id, () => {
        if (this.feeds.get(first.id) === created) this.feeds.delete(first.id);
      });
      feed = created;
      this.feeds.set(first.id, feed);
    }
    feed.join();
    const out = new PassThrough();
    const abort = new AbortController();
    reply.raw.on('close', () => abort.abort());
    void pump(this.ctx, request, feed, out, abort.signal, first, fixedAttempt, startOffset).finally(() => {
      feed.leave();
      const left = (this.perClient.get(client) ?? 1) - 1;
      if (left > 0) this.perClient.set(client, left);
      else this.perClient.delete(client);
      out.end();
    });
    return reply
      .header('content-type', 'text/event-stream; charset=utf-8')
      .header('cache-control', 'no-cache')
      .header('x-accel-buffering', 'no')
      .send(out);
  }
}

/** One follower: copies the feed's bytes and state changes to `out` until the build ends. */
async function pump(
  ctx: AppContext,
  request: FastifyRequest,
  feed: LogFeed,
  out: PassThrough,
  signal: AbortSignal,
  first: Build,
  fixedAttempt: number | undefined,
  startOffset: number,
): Promise<void> {
  let lastWrite = ctx.clock.monotonic();
  const send = async (event: string, data: unknown) => {
    if (signal.aborted) return;
    lastWrite = ctx.clock.monotonic();
    if (!out.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          out.off('drain', done);
          signal.removeEventListener('abort', done);
          resolve();
        };
        out.on('drain', done);
        signal.addEventListener('abort', done, { once: true });
      });
    }
  };
  let attempt = fixedAttempt ?? first.attempt;
  let offset = startOffset;
  let decoder = new StringDecoder('utf8');
  let lastState = '';
  // An older attempt than the build's current one gets no more bytes once read to its end.
  let drainedOldAttempt = false;
  try {
    while (!signal.aborted) {
      const seen = feed.round;
      const build = feed.build;
      if (build) {
        while (!drainedOldAttempt) {
          const buf = await feed.read(attempt, offset);
          if (buf.length === 0 && attempt < build.attempt) drainedOldAttempt = true;
          if (buf.length === 0 || signal.aborted) break;
          await send('log', { attempt, offset, text: decoder.write(buf) });
          offset += buf.length;
        }
        const stateKey = `${build.state}/${build.attempt}/${build.cancelRequested}`;
        if (stateKey !== lastState) {
          lastState = stateKey;
          await send('state', { state: build.state, attempt: build.attempt, cancelRequested: build.cancelRequested });
        }
        if (fixedAttempt === undefined && build.attempt !== attempt) {
          const rest = decoder.end();
          if (rest) await send('log', { attempt, offset, text: rest });
          attempt = build.attempt;
          offset = 0;
          drainedOldAttempt = false;
          decoder = new StringDecoder('utf8');
          await send('attempt', { attempt });
          continue;
        }
        if (isTerminal(build.state)) {
          const rest = decoder.end();
          if (rest) await send('log', { attempt, offset, text: rest });
          await send('end', { state: build.state, attempt: build.attempt, exitCode: build.exitCode, reason: build.reason });
          return;
        }
      }
      if (feed.error !== undefined) throw feed.error;
      if (ctx.logWake.isClosed) return;
      await feed.nextRound(seen, signal);
      // A comment line now and then keeps proxies from closing an idle stream.
      if (ctx.clock.monotonic() - lastWrite >= SSE_KEEPALIVE_MS && !signal.aborted) {
        lastWrite = ctx.clock.monotonic();
        out.write(': keepalive\n\n');
      }
    }
  } catch (err) {
    const { error, kind, errorId } = toApiError(err);
    if (kind === 'internal') request.log.error({ err, errorId }, 'log stream failed');
    else if (kind !== 'refused') request.log.warn({ err }, 'log stream failed');
    await send('error', error.toBody().error).catch(() => {});
  }
}
