/**
 * The controller under simulation: the real fastify app (`buildApp`), the
 * real Reaper and the real SQLite store, on the simulation's clock. It can go
 * down and come back on the same database file and blob directory (a
 * restart), and its store can fail: a proxy throws `UNAVAILABLE` before a
 * call (nothing happened) or after it (it committed, but the caller hears
 * 503), and refuses access tokens the simulation declared expired.
 */
import path from 'node:path';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import pino from 'pino';
import { ApiError, type Clock } from '@buildfleet/protocol';
import {
  buildApp,
  hashToken,
  InProcessNotifier,
  loadControllerConfig,
  openStore,
  Reaper,
  type BlobStore,
  type ControllerConfig,
  type Store,
} from '@buildfleet/controller';
import type { Random } from './random.js';

import type { Trace } from './trace.js';

export interface DbFaults {
  /** Probability per store call of an error before / after it runs. */
  before: number;
  after: number;
}

/** Store methods that never fail in the simulation (lifecycle, not requests). */
const NO_FAULT = new Set<PropertyKey>(['migrate', 'close', 'dialect', 'getOrCreateSecret', 'ensureApiToken', 'ensureEnrollmentToken', 'countApiTokens']);

export interface SimControllerOptions {
  dataDir: string;
  clock: Clock;
  rng: Random;
  trace: Trace;
  blobs: BlobStore;
  config: Partial<ControllerConfig>;
  apiToken: string;
  enrollmentToken: string;
  dbFaults: DbFaults;
  faultsOn: () => boolean;
  /** Wraps the real store once more (the checker's self-test breaks it on purpose). */
  wrapStore?: (store: Store) => Store;
}

export class SimController {
  readonly config: ControllerConfig;
  private app: FastifyInstance | undefined;
  private store: Store | undefined;
  private reaper: Reaper | undefined;
  private notifier: InProcessNotifier | undefined;
  private op: Promise<void> = Promise.resolve();
  /** Access-token hashes the simulation declared expired. */
  private readonly expired = new Set<string>();
  /** Last access-token hash seen per worker id. */
  readonly lastToken = new Map<string, string>();
  private readonly logger: FastifyBaseLogger;
  restarts = 0;

  constructor(private readonly opts: SimControllerOptions) {
    this.config = loadControllerConfig({}, { ...opts.config, dataDir: opts.dataDir, logLevel: 'silent', apiToken: opts.apiToken, enrollmentToken: opts.enrollmentToken });
    this.logger = pino({ level: 'silent' }) as unknown as FastifyBaseLogger;
  }

  get dbFile(): string {
    return path.join(this.opts.dataDir, 'buildfleet.db');
  }

  /** The app while the controller is up (the network delivers to it). */
  current(): FastifyInstance | undefined {
    return this.app;
  }

  start(): Promise<void> {
    return (this.op = this.op.then(() => this.doStart()));
  }

  stop(): Promise<void> {
    const app = this.app;
    this.app = undefined; // refuse new requests at once
    return (this.op = this.op.then(() => this.doStop(app)));
  }

  /** Declares a worker's current access token expired from now on. */
  expireToken(workerId: string): boolean {
    const h = this.lastToken.get(workerId);
    if (!h) return false;
    this.expired.add(h);
    return true;
  }

  private async doStart(): Promise<void> {
    const { clock, trace } = this.opts;
    const raw = await openStore({ sqlitePath: this.dbFile });
    await raw.migrate();
    const now = clock.now();
    await raw.ensureApiToken(hashToken(this.opts.apiToken), 'sim', now);
    await raw.ensureEnrollmentToken(hashToken(this.opts.enrollmentToken), 'sim', now);
    const wrapped = this.opts.wrapStore ? this.opts.wrapStore(raw) : raw;
    const store = this.faulty(wrapped);
    const notifier = new InProcessNotifier({});
    const app = await buildApp({ config: this.config, store, blobs: this.opts.blobs, notifier, clock, logger: this.logger });
    await app.ready();
    const reaper = new Reaper({
      store,
      clock,
      ackTimeoutMs: this.config.ackTimeoutMs,
      leaseMs: this.config.leaseMs,
      onReaped: (r) => {
        trace.add('reaper', `requeued=${JSON.stringify(r.requeued)} failed=${JSON.stringify(r.failed)} canceled=${JSON.stringify(r.canceled)} timedOut=${JSON.stringify(r.timedOut)}`);
        if (r.requeued.length) app.buildfleet.hint('builds');
        app.buildfleet.hint('logs');
      },
    });
    reaper.start();
    this.store = raw;
    this.notifier = notifier;
    this.reaper = reaper;
    this.app = app;
    trace.add('controller', 'up');
  }

  private async doStop(app: FastifyInstance | undefined): Promise<void> {
    if (!app) return;
    this.restarts++;
    this.opts.trace.add('controller', 'down');
    await this.reaper?.stop();
    await app.close();
    await this.notifier?.close();
    await this.store?.close();
    this.reaper = undefined;
    this.store = undefined;
    this.notifier = undefined;
  }

  /** Closes everything for good (end of the run). */
  async shutdown(): Promise<void> {
    await this.stop();
    await this.op;
  }

  private faulty(inner: Store): Store {
    const { rng, trace, dbFaults, faultsOn } = this.opts;
    const expired = this.expired;
    const lastToken = this.lastToken;
    return new Proxy(inner, {
      get(target, prop) {
        const v = Reflect.get(target, prop, target) as unknown;
        if (typeof v !== 'function') return v;
        const fn = v as (...a: unknown[]) => Promise<unknown>;
        if (NO_FAULT.has(prop)) return fn.bind(target);
        return async (...args: unknown[]) => {
          const a0 = args[0] as { tokenHash?: unknown; workerId?: unknown } | undefined;
          if (a0 && typeof a0.tokenHash === 'string') {
            if (expired.has(a0.tokenHash)) throw new ApiError('TOKEN_EXPIRED', 'access token expired (simulated)');
            if (typeof a0.workerId === 'string') lastToken.set(a0.workerId, a0.tokenHash);
          }
          const on = faultsOn();
          if (on && rng.chance(dbFaults.before)) {
            trace.add('database', `error before ${String(prop)}`);
            throw new ApiError('UNAVAILABLE', `database unreachable (simulated, before ${String(prop)})`);
          }
          const result = await fn.apply(target, args);
          if (on && rng.chance(dbFaults.after)) {
            trace.add('database', `error after ${String(prop)} (it committed)`);
            throw new ApiError('UNAVAILABLE', `database connection lost (simulated, after ${String(prop)})`);
          }
          return result;
        };
      },
    });
  }
}
