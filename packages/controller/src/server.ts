/**
 * Starting and stopping a controller: store, blobs, notifier, tokens, the
 * HTTP app and the reaper, in that order; closed in reverse.
 */
import { ensurePrivateDatabaseFile, ensurePrivateDir } from './data-dir.js';
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import type { Server as HttpsServer } from 'node:https';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import pg from 'pg';
import { systemClock, type Clock } from '@buildfleet/protocol';
import { writeFileDurable } from '@buildfleet/protocol/node';
import { buildApp, createLogger } from './app.js';
import { ConfigError, type ControllerConfig } from './config.js';
import { generateToken, hashToken } from './credentials.js';
import { openBlobStore, type OpenedBlobStore } from './blobs/index.js';
import { InProcessNotifier, PgNotifier, type Notifier } from './store/notifier.js';
import { openStore, type WorkerLockDecorator } from './store/index.js';
import type { Store } from './store/types.js';
import { Reaper } from './reaper.js';
import { DatabaseClock, PG_NOW_SQL } from './db-clock.js';
import { Collector } from './gc/collector.js';
import { WebhookDeliverer } from './webhooks/deliverer.js';
import { observeEnded } from './ops/metrics.js';
import { loadSecretsKey } from './secrets/cipher.js';

/** Credentials generated on a controller's first start (printed by the CLI). */
export interface FirstStartCredentials {
  apiToken: string;
  enrollmentToken: string;
  /** `<dataDir>/credentials.json` (mode 0600) holding both and the URL. */
  credentialsFile: string;
}

export interface RunningController {
  /**
   * `http://host:port` the controller listens on, or `https://…` with TLS
   * (then `host` is the certificate's first DNS name when the certificate
   * does not cover the listen address, so clients on this host verify it).
   */
  url: string;
  port: number;
  app: FastifyInstance;
  store: Store;
  reaper: Reaper;
  /** Retention (issue 14): runs every BUILDFLEET_GC_INTERVAL; `collectOnce()` for tests. */
  collector: Collector;
  /** Webhook delivery loop (issue 14). */
  deliverer: WebhookDeliverer;
  /** Ends parked polls (204), stops the reaper, closes the server, notifier, blobs and store. */
  close(): Promise<void>;
  /**
   * Reads BUILDFLEET_TLS_CERT and BUILDFLEET_TLS_KEY again and serves new
   * connections with them (a renewed certificate without a restart; the CLI
   * calls it on SIGHUP). A no-op without TLS; throws ConfigError for
   * unreadable files, keeping the old certificate.
   */
  reloadTls(): Promise<void>;
  /** Set only on the first start without BUILDFLEET_API_TOKEN. */
  firstStart?: FirstStartCredentials;
}

export interface StartOptions {
  clock?: Clock;
  logger?: FastifyBaseLogger;
  /** Start the periodic reaper (default true; the simulation drives `reaper.reapOnce`). */
  reaper?: boolean;
  /** Wraps the store's worker row lock (the race tests' barriers; see `WorkerLockDecorator`). */
  decorateWorkerLock?: WorkerLockDecorator;
  /** Start the retention collector's rounds (default true; tests call `collector.collectOnce`). */
  collector?: boolean;
  /** Start the webhook delivery loop (default true). */
  webhooks?: boolean;
}

/**
 * Opens everything the configuration names, migrates, makes sure the
 * tokens exist and listens. Throws when the database cannot be reached or
 * the port is taken; whatever was opened is closed again.
 */
export async function startController(config: ControllerConfig, opts: StartOptions = {}): Promise<RunningController> {
  let clock: Clock = opts.clock ?? systemClock;
  const logger: FastifyBaseLogger = opts.logger ?? createLogger(config.logLevel);
  const cleanups: Array<() => Promise<void>> = [];
  const closeAll = async () => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (err) {
        logger.warn({ err }, 'error while closing');
      }
    }
  };
  try {
    await ensurePrivateDir(config.dataDir);
    if (!config.databaseUrl) await ensurePrivateDatabaseFile(path.join(config.dataDir, 'buildfleet.db'));
    const store = await openStore({
      databaseUrl: config.databaseUrl,
      sqlitePath: path.join(config.dataDir, 'buildfleet.db'),
      logger,
      ...(opts.decorateWorkerLock ? { decorateWorkerLock: opts.decorateWorkerLock } : {}),
    });
    cleanups.push(() => store.close());
    await store.migrate();

    let blobs: OpenedBlobStore;
    let notifier: Notifier;
    if (config.databaseUrl) {
      const pool = new pg.Pool({ connectionString: config.databaseUrl, max: 4, connectionTimeoutMillis: 5_000 });
      pool.on('error', (err) => logger.warn({ err }, 'postgres pool error (blobs/notify)'));
      cleanups.push(() => pool.end());
      if (!opts.clock) {
        // Leases and deadlines from the database's clock, so controllers with skewed clocks agree.
        const dbClock = new DatabaseClock({
          base: systemClock,
          readDbNow: async () => Number((await pool.query<{ now: number }>(PG_NOW_SQL)).rows[0]!.now),
          onError: (err) => logger.warn({ err }, 'database clock re-sync failed; keeping the last offset'),
        });
        await dbClock.start();
        cleanups.push(async () => dbClock.stop());
        if (Math.abs(dbClock.offsetMs) > 1_000) logger.warn({ offsetMs: dbClock.offsetMs }, 'local clock differs from the database clock; using the database clock');
        clock = dbClock;
      }
      blobs = await openBlobStore({
        databaseUrl: config.databaseUrl,
        pool,
        dataDir: config.dataDir,
        ...(config.blobDir ? { blobDir: config.blobDir } : {}),
        clock,
      });
      cleanups.push(() => blobs.close());
      const pgNotifier = new PgNotifier({
        pool,
        listen: config.databaseUrl,
        clock,
        onError: (err, context) => logger.warn({ err, context }, 'notifier error; re-checks cover missed wake-ups'),
      });
      cleanups.push(() => pgNotifier.close());
      await pgNotifier.start();
      notifier = pgNotifier;
    } else {
      blobs = await openBlobStore({ dataDir: config.dataDir, clock });
      cleanups.push(() => blobs.close());
      notifier = new InProcessNotifier({ onError: (err) => logger.warn({ err }, 'wake-up listener failed') });
      cleanups.push(() => notifier.close());
    }

    const firstStart = await ensureTokens(store, config, clock);

    // Generated only for SQLite: several PostgreSQL controllers must share one key, which the operator gives.
    const secretsKey = loadSecretsKey({
      key: config.secretsKey,
      keyFile: config.secretsKeyFile,
      dataDir: config.dataDir,
      generate: !config.databaseUrl,
    });
    if (secretsKey?.source === 'generated') logger.info({ file: path.join(config.dataDir, 'secrets.key') }, 'generated the secrets key (back it up: without it stored secrets cannot be read)');
    if (!secretsKey) logger.warn({}, 'no secrets key (BUILDFLEET_SECRETS_KEY or BUILDFLEET_SECRETS_KEY_FILE): secrets are refused');
    const tls = await readTls(config);
    const app = await buildApp({ config, store, blobs, notifier, clock, logger, ...(secretsKey ? { secretsKey } : {}), ...(tls ? { https: tls } : {}) });
    cleanups.push(() => app.close());

    const reaper = new Reaper({
      store,
      clock,
      ackTimeoutMs: config.ackTimeoutMs,
      leaseMs: config.leaseMs,
      onReaped: (r) => {
        const m = app.buildfleet.metrics.buildTransitions;
        if (r.requeued.length) m.inc({ to: 'queued' }, r.requeued.length);
        if (r.failed.length) m.inc({ to: 'failed' }, r.failed.length);
        if (r.canceled.length) m.inc({ to: 'canceled' }, r.canceled.length);
        if (r.timedOut.length) m.inc({ to: 'timed_out' }, r.timedOut.length);
        observeEnded(app.buildfleet.metrics, 'failed', r.failed.length);
        observeEnded(app.buildfleet.metrics, 'canceled', r.canceled.length);
        observeEnded(app.buildfleet.metrics, 'timed_out', r.timedOut.length);
        logger.info(r, 'reaped builds');
        // A requeued build, and a build that ended (its concurrency group has room now), are news for parked polls.
        if (r.requeued.length + r.failed.length + r.canceled.length + r.timedOut.length > 0) app.buildfleet.hint('builds');
        for (const id of [...r.requeued, ...r.failed, ...r.canceled, ...r.timedOut]) app.buildfleet.hint('logs', id);
      },
      onError: (err) => logger.warn({ err }, 'reap failed; retrying next round'),
    });
    if (opts.reaper ?? true) reaper.start();
    cleanups.push(() => reaper.stop());

    const collector = new Collector({ store: store.retention, blobs, clock, config: config.ops, metrics: app.buildfleet.metrics, logger });
    if (opts.collector ?? true) collector.start();
    cleanups.push(() => collector.stop());

    const deliverer = new WebhookDeliverer({
      queue: store.webhooks,
      clock,
      logger,
      retry: config.ops.webhookRetry,
      timeoutMs: config.ops.webhookTimeoutMs,
      onOutcome: (o) =>
        app.buildfleet.metrics.webhookDeliveries.inc({ result: o.ok ? 'delivered' : o.nextAttemptAt === null ? 'failed' : 'retry' }),
    });
    if (opts.webhooks ?? true) deliverer.start();
    cleanups.push(() => deliverer.stop());

    await app.listen({ host: config.host, port: config.port });
    const address = app.server.address();
    const port = typeof address === 'object' && address ? address.port : config.port;
    const local = config.host === '0.0.0.0' ? '127.0.0.1' : config.host === '::' ? '::1' : config.host;
    const name = tls ? certificateHost(tls.cert, local) : local;
    const url = `${tls ? 'https' : 'http'}://${name.includes(':') ? `[${name}]` : name}:${port}`;

    let credentials: FirstStartCredentials | undefined;
    if (firstStart) {
      const credentialsFile = path.join(config.dataDir, 'credentials.json');
      await writeFileDurable(credentialsFile, JSON.stringify({ ...firstStart, url }, null, 2) + '\n', 0o600);
      credentials = { ...firstStart, credentialsFile };
    }
    logger.info({ url, database: store.dialect, blobs: blobs.kind }, 'controller listening');

    let closing: Promise<void> | undefined;
    return {
      url,
      port,
      app,
      store,
      reaper,
      collector,
      deliverer,
      ...(credentials ? { firstStart: credentials } : {}),
      close: () => (closing ??= closeAll()),
      reloadTls: async () => {
        if (!tls) return;
        const fresh = (await readTls(config))!;
        (app.server as unknown as HttpsServer).setSecureContext(fresh);
        logger.info({ cert: config.tlsCertFile }, 'TLS certificate reloaded');
      },
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

/** The PEM certificate and key the configuration names, or undefined without TLS. Throws ConfigError naming the file. */
async function readTls(config: ControllerConfig): Promise<{ cert: string; key: string } | undefined> {
  if (!config.tlsCertFile || !config.tlsKeyFile) return undefined;
  const read = async (file: string, name: string) => {
    try {
      return await readFile(file, 'utf8');
    } catch (err) {
      throw new ConfigError(`${name}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  };
  const cert = await read(config.tlsCertFile, 'BUILDFLEET_TLS_CERT');
  const key = await read(config.tlsKeyFile, 'BUILDFLEET_TLS_KEY');
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    throw new ConfigError(`BUILDFLEET_TLS_CERT: ${config.tlsCertFile} is not a PEM certificate (${(err as Error).message})`);
  }
  let privateKey;
  try {
    privateKey = createPrivateKey(key);
  } catch (err) {
    throw new ConfigError(`BUILDFLEET_TLS_KEY: ${config.tlsKeyFile} is not a PEM private key (${(err as Error).message})`);
  }
  if (!x509.checkPrivateKey(privateKey)) throw new ConfigError(`BUILDFLEET_TLS_KEY: ${config.tlsKeyFile} is not the key of the certificate in ${config.tlsCertFile}`);
  return { cert, key };
}

/**
 * The host name clients should use: `local` when the certificate covers it
 * (an IP or DNS subject alternative name), else the certificate's first DNS
 * name (a real certificate names the host, not 127.0.0.1).
 */
function certificateHost(pem: string, local: string): string {
  const cert = new X509Certificate(pem);
  const covers = /^[\d.]+$|:/.test(local) ? cert.checkIP(local) : cert.checkHost(local);
  if (covers) return local;
  const dns = (cert.subjectAltName ?? '').split(', ').find((n) => n.startsWith('DNS:') && !n.includes('*'));
  return dns ? dns.slice(4) : local;
}

/**
 * Makes sure the API and enrollment tokens exist: configured ones are
 * ensured (idempotent); with none configured and no API token stored yet
 * (first start) both are generated and returned once.
 */
async function ensureTokens(
  store: Store,
  config: ControllerConfig,
  clock: Clock,
): Promise<{ apiToken: string; enrollmentToken: string } | undefined> {
  const now = clock.now();
  if (config.apiToken) await store.ensureApiToken(hashToken(config.apiToken), 'from BUILDFLEET_API_TOKEN', now);
  if (config.enrollmentToken) {
    await store.ensureEnrollmentToken(hashToken(config.enrollmentToken), 'from BUILDFLEET_ENROLLMENT_TOKEN', now);
  }
  if (config.apiToken || (await store.countApiTokens()) > 0) return undefined;
  const apiToken = generateToken('api');
  const enrollmentToken = config.enrollmentToken ?? generateToken('enrollment');
  await store.ensureApiToken(hashToken(apiToken), 'generated on first start', now);
  if (!config.enrollmentToken) await store.ensureEnrollmentToken(hashToken(enrollmentToken), 'generated on first start', now);
  return { apiToken, enrollmentToken };
}

