/**
 * The controller's HTTP layer: one fastify instance (not listening) with
 * every route of docs/protocol.md, validated with the protocol package's schemas.
 *
 * Check order (docs/protocol.md "Conventions"): authentication 401 and
 * authorization 403 run in an onRequest hook before the body is parsed;
 * routes then check existence (404) and lease/state (409) through the store,
 * and only then report body problems (400), which were deferred
 * (`attachValidation` + `deferredBodyError`).
 */
import fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import pino, { type DestinationStream, type LoggerOptions } from 'pino';
import type { FastifyBaseLogger } from 'fastify';
import multipart from '@fastify/multipart';
import swagger from '@fastify/swagger';
import { Type } from 'typebox';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import {
  API_PREFIX,
  ApiError,
  ErrorBodySchema,
  PROTOCOL_VERSION,
  redactTokens,
  secretLogPaths,
  systemClock,
  type Clock,
} from '@buildfleet/protocol';
import type { ControllerConfig } from './config.js';
import { BuildTokens } from './credentials.js';
import type { Store } from './store/types.js';
import type { BlobStore } from './blobs/types.js';
import { authenticate, authenticateRegistration } from './http/auth.js';
import { installAccessCheck, securitySchemes } from './http/access.js';
import { installBodyParsers } from './http/body.js';
import { installEarlyAnswers } from './http/early-answers.js';
import { installSecurityHeaders } from './http/headers.js';
import { buildValidator, checkPathAndQuery } from './http/validation.js';
import type { AppContext, Notifier, WakeTopic } from './http/context.js';
import { RETRY_AFTER_SECONDS, toApiError } from './http/errors.js';
import { createMetrics, type ControllerMetrics } from './http/metrics.js';
import { buildRoutes } from './http/routes-builds.js';
import { buildRunRoutes } from './http/routes-build-run.js';
import { workerRoutes } from './http/routes-workers.js';
import { opsRoutes } from './http/routes-ops.js';
import { countWorkerStates } from './ops/metrics.js';
import { CONTROLLER_VERSION } from './ops/versions.js';
import { WakeChannel } from './http/wakeups.js';
import { PollDispatcher } from './http/dispatch.js';
import { LogFollowHub } from './http/log-follow.js';
import { countAuthFailure, createAbuseLimits, isOverAuthFailureLimit } from './http/rate-limit.js';
import { dashboardRoutes } from './dashboard.js';
import { dashboardApiRoutes } from './http/routes-dashboard.js';
import { secretRoutes } from './http/routes-secrets.js';
import { cacheRoutes } from './http/routes-caches.js';
import { SecretsService } from './secrets/service.js';
import type { SecretCipher, SecretsKeySource } from './secrets/cipher.js';
import { CacheService } from './caches/service.js';

export interface AppDeps {
  config: ControllerConfig;
  store: Store;
  blobs: BlobStore;
  notifier: Notifier;
  clock?: Clock;
  /** A pino logger; default: one built from `config.logLevel` with secrets redacted. */
  logger?: FastifyBaseLogger;
  /** The key sealing secrets (server.ts loads it); without one, secrets are refused with SECRETS_KEY_MISSING. */
  secretsKey?: { cipher: SecretCipher; source: SecretsKeySource };
  /** PEM certificate (chain) and key: the app's server speaks HTTPS (BUILDFLEET_TLS_CERT/KEY; server.ts reads them). */
  https?: { cert: string; key: string };
}

/**
 * Paths in log lines that may carry credentials; pino replaces them
 * (every `SECRET_FIELDS` name up to two objects deep, and the Authorization
 * header).
 */
export const REDACT_PATHS = secretLogPaths();

/** pino options the controller uses: level and the redacted paths. */
export function loggerOptions(level: string): LoggerOptions {
  return { level, redact: { paths: REDACT_PATHS, censor: '[redacted]' } };
}

/**
 * A pino destination that censors every token (`bfa_…`, `bfe_…`, `bfs_…`,
 * `bfw_…`, `bfb_…`) in each finished line before `dest` sees it: the safety
 * net behind `REDACT_PATHS` for a token inside a message, an error's stack
 * or a field deeper than the paths reach. Default `dest`: stdout.
 */
export function redactingDestination(dest: DestinationStream = pino.destination(1)): DestinationStream {
  return { write: (line: string) => dest.write(redactTokens(line)) };
}

/**
 * The controller's logger (docs/protocol.md "Credentials": tokens are never
 * logged): `loggerOptions(level)` writing through `redactingDestination(dest)`.
 */
export function createLogger(level: string, dest?: DestinationStream): FastifyBaseLogger {
  return pino(loggerOptions(level), redactingDestination(dest)) as unknown as FastifyBaseLogger;
}

/**
 * Answers an HTTP-level parse error (malformed request line or headers, data
 * after `Connection: close`, …) with the protocol's error body instead of
 * fastify's own shape, then closes the socket.
 */
function protocolClientError(err: Error & { code?: string }, socket: import('node:net').Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  const timeout = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
  const tooLarge = err.code === 'HPE_HEADER_OVERFLOW';
  const [status, text, code] = timeout
    ? [408, 'Request Timeout', 'VALIDATION_FAILED']
    : tooLarge
      ? [431, 'Request Header Fields Too Large', 'PAYLOAD_TOO_LARGE']
      : [400, 'Bad Request', 'VALIDATION_FAILED'];
  const body = JSON.stringify({ error: { code, message: `malformed HTTP request (${err.code ?? 'parse error'})` } });
  // An answer to HEAD has no body (RFC 9110 9.3.2): a client would read one as the start of another answer.
  const head = (err as { rawPacket?: Buffer }).rawPacket?.subarray(0, 5).toString('latin1') === 'HEAD ';
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${text}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${head ? '' : body}`,
    );
  }
  socket.destroy();
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The controller's shared parts (wake channels, metrics) for server.ts and tests. */
    buildfleet: AppContext;
  }
}

/**
 * Builds the fastify app. Resolves once the build-token key is loaded.
 * Closing the app ends parked polls (204) and followed log streams and
 * unsubscribes from the notifier; it does not close the store, blobs or
 * notifier (their owner does).
 */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const { config, store, blobs, notifier } = deps;
  const clock = deps.clock ?? systemClock;
  const app = fastify({
    // Typed as plain HTTP: an https.Server serves the same requests, and only server.ts touches its TLS side.
    ...((deps.https ? { https: deps.https } : {}) as Record<string, never>),
    loggerInstance: deps.logger ?? createLogger(config.logLevel),
    bodyLimit: config.maxJsonBytes,
    // Long polls park for up to pollWaitMs; keep the socket open beyond that.
    requestTimeout: 0,
    keepAliveTimeout: 72_000,
    return503OnClosing: false,
    forceCloseConnections: true,
    http: { maxHeaderSize: config.maxHeaderBytes },
    routerOptions: { ignoreTrailingSlash: true, maxParamLength: 2000 },
    // Bodies strictly, path and query coerced from text (http/validation.ts).
    schemaController: { compilersFactory: { buildValidator } },
    ajv: { customOptions: { removeAdditional: false, allErrors: false } },
    clientErrorHandler: protocolClientError,
    // Errors fastify raises before routing (a URL that does not decode).
    frameworkErrors: (error, _request, reply: FastifyReply) => {
      void reply.code(400).type('application/json; charset=utf-8').send(new ApiError('VALIDATION_FAILED', error.message).toBody());
    },
  }).withTypeProvider<TypeBoxTypeProvider>();

  // Fail closed: a route that does not declare who may call it stops the
  // controller from starting; its declaration becomes its OpenAPI security.
  const routes = installAccessCheck(app);

  const tokens = await BuildTokens.fromStore(store);
  const secrets = await SecretsService.open(store, deps.secretsKey);
  const caches = new CacheService(store, blobs, { maxBytes: config.cacheMaxBytes, scopeKeys: config.cacheScopeKeys }, app.log);
  let closed = false;
  const metrics: ControllerMetrics = createMetrics();
  const pollWake = new WakeChannel(clock);
  const cancelWake = new WakeChannel(clock);
  const logWake = new WakeChannel(clock);
  const wakeWorker = (key?: string) => {
    pollWake.wake(key);
    cancelWake.wake(key);
  };
  // One parked poll at a time looks at the queue after a 'builds' hint.
  const dispatcher = new PollDispatcher(pollWake, () => store.hasQueuedBuilds(), clock, (err) =>
    app.log.debug({ err }, 'poll dispatch check failed'),
  );
  const ctx: AppContext = {
    config,
    store,
    blobs,
    notifier,
    clock,
    tokens,
    secrets,
    caches,
    metrics,
    pollWake,
    cancelWake,
    logWake,
    // Set just below: the hub needs the finished context.
    logFollows: undefined as unknown as LogFollowHub,
    limits: createAbuseLimits(clock, config),
    dispatcher,
    log: app.log,
    routes,
    hint(channel: WakeTopic, payload?: string) {
      // Both notifiers deliver to this process too (in-process at once,
      // PostgreSQL by the LISTEN echo), so local waiters are woken by the
      // subscription below; waking them here as well would make each woken
      // waiter check the database twice.
      const wakeLocally = () => {
        if (channel === 'logs') logWake.wake(payload);
        else if (channel === 'builds') void dispatcher.poke();
        else wakeWorker(payload);
      };
      try {
        void notifier.notify(channel, payload).catch((err: unknown) => {
          app.log.warn({ err, channel }, 'notify failed; waking local waiters only');
          wakeLocally();
        });
      } catch (err) {
        app.log.warn({ err, channel }, 'notify failed; waking local waiters only');
        wakeLocally();
      }
    },
  };
  ctx.logFollows = new LogFollowHub(ctx);
  app.decorate('buildfleet', ctx);

  // Hints from this and other controllers.
  const unsubscribe: Array<() => void> = [
    notifier.subscribe((topic, key) => {
      if (topic === 'builds') void dispatcher.poke();
      else if (topic === 'workers') wakeWorker(key);
      else if (topic === 'logs') logWake.wake(key);
    }),
  ];

  // Periodic re-check of parked polls: one cheap query per controller, not
  // one per worker (docs/design.md "An idle fleet costs the database nothing").
  let recheckTimer: ReturnType<Clock['setTimeout']> | undefined;
  const recheck = async () => {
    recheckTimer = undefined;
    if (closed) return;
    await dispatcher.poke(true);
    if (!closed) recheckTimer = clock.setTimeout(() => void recheck(), config.pollRecheckMs);
  };
  recheckTimer = clock.setTimeout(() => void recheck(), config.pollRecheckMs);

  app.addHook('preClose', async () => {
    closed = true;
    clock.clearTimeout(recheckTimer);
    pollWake.close();
    cancelWake.close();
    logWake.close();
    for (const u of unsubscribe) {
      try {
        u();
      } catch {
        // best effort
      }
    }
  });

  installBodyParsers(app, config);
  installEarlyAnswers(app, config.maxDiscardBytes, clock);
  installSecurityHeaders(app);
  // Registration credentials need the body; checked before anything else the route does.
  app.addHook('preHandler', async (request) => authenticateRegistration(ctx, request, request.routeOptions.config?.auth));
  app.addHook('preHandler', checkPathAndQuery);
  await app.register(multipart, { limits: { fileSize: config.maxSourceBytes + 1 } });
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'buildfleet controller', version: PROTOCOL_VERSION, description: 'The wire protocol of docs/protocol.md' },
      // Per operation: `security` and `x-credentials` from its declaration (see http/access.ts).
      components: { securitySchemes: securitySchemes() },
    },
  });

  // Authentication before the body is read (docs/protocol.md check order).
  app.addHook('onRequest', async (request) => {
    await authenticate(ctx, request, request.routeOptions.config?.auth);
    // An access token is otherwise checked by the store with the route's work, after the body
    // is read; from an address over its limit of failures it is checked now, so that a guess is
    // refused (429, see countAuthFailure) before its body is read.
    if (request.workerAuth && isOverAuthFailureLimit(ctx.limits, request.ip)) {
      await ctx.store.authenticateWorker({ ...request.workerAuth, now: clock.now() });
    }
  });

  const started = new WeakMap<object, number>();
  app.addHook('onRequest', async (request) => {
    started.set(request, clock.monotonic());
  });
  app.addHook('onResponse', async (request, reply) => {
    const t0 = started.get(request);
    if (t0 === undefined) return;
    metrics.requestDuration.observe(
      { method: request.method, route: request.routeOptions.url ?? 'unknown', status: String(reply.statusCode) },
      (clock.monotonic() - t0) / 1000,
    );
  });

  app.setErrorHandler((err, request, reply) => {
    const clientGone = request.raw.aborted || (request.raw.destroyed && !request.raw.complete);
    const { error: found, kind, errorId } = toApiError(err, { clientGone });
    // A guess that failed counts toward the address's limit (a genuine but expired token does
    // not); past the limit it is answered 429 instead of 401.
    const guess = found.code === 'TOKEN_INVALID' && !request.credentialAccepted;
    const error = (guess && countAuthFailure(ctx.limits, request.ip)) || found;
    switch (kind) {
      case 'internal':
        request.log.error({ err, errorId }, 'unexpected error answered 500 INTERNAL');
        break;
      case 'storage':
        request.log.error({ err }, 'storage full; answered 507 STORAGE_FULL');
        break;
      case 'unavailable':
        request.log.warn({ err }, 'store unavailable; answered 503');
        break;
      case 'client-gone':
        request.log.info({ err: (err as Error)?.message }, 'client went away mid-request');
        break;
      default:
        request.log.debug({ code: error.code, message: error.message }, 'request refused');
    }
    if (error.status === 503 || error.status === 429) {
      const seconds = error.retryAfterMs !== undefined ? Math.max(1, Math.ceil(error.retryAfterMs / 1000)) : RETRY_AFTER_SECONDS;
      reply.header('retry-after', String(seconds));
    }
    // The rest of an unread upload is discarded or the connection closed: see http/early-answers.ts.
    return reply.code(error.status).type('application/json; charset=utf-8').send(error.toBody());
  });

  app.setNotFoundHandler((request, reply) => {
    return reply
      .code(404)
      .send(new ApiError('NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}`).toBody());
  });

  // --- operations --------------------------------------------------------------
  const hide = { hide: true };
  const pub = { auth: 'public' } as const;
  app.get(
    '/healthz',
    {
      config: pub,
      schema: {
        tags: ['operations'],
        response: { 200: Type.Object({ ok: Type.Boolean(), version: Type.String(), minWorkerVersion: Type.String() }) },
      },
    },
    async () => ({ ok: true, version: CONTROLLER_VERSION, minWorkerVersion: config.ops.minWorkerVersion }),
  );
  app.get(
    '/readyz',
    { config: pub, schema: { tags: ['operations'], response: { 200: Type.Object({ ok: Type.Boolean() }), 503: ErrorBodySchema } } },
    async () => {
      await store.ping();
      return { ok: true };
    },
  );
  app.get('/metrics', { config: pub, schema: { tags: ['operations'], produces: ['text/plain'] } }, async (_request, reply) => {
    metrics.parkedPolls.set(pollWake.size + cancelWake.size);
    await countWorkerStates(metrics, store, clock.now(), config.leaseMs);
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });
  app.get('/openapi.json', { config: pub, schema: hide }, async () => app.swagger());
  dashboardRoutes(app);
  app.get('/favicon.ico', { config: pub, schema: hide }, async (_request, reply) => reply.code(204).send());

  await app.register(
    async (api) => {
      workerRoutes(api, ctx);
      buildRoutes(api, ctx);
      buildRunRoutes(api, ctx);
      opsRoutes(api, ctx);
      dashboardApiRoutes(api, ctx);
      secretRoutes(api, ctx);
      cacheRoutes(api, ctx);
    },
    { prefix: API_PREFIX },
  );

  return app;
}
