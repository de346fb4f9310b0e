/**
 * API routes the dashboard added (docs/protocol.md "Events", "Stats",
 * "Admin"): the event stream of build and worker changes, the queue and
 * per-minute statistics, and resuming a drained worker. API token.
 */
import { PassThrough } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { ErrorBodySchema, IdParamsSchema, StatsQuerySchema, StatsSchema, WorkerEnvelopeSchema, type TimerHandle } from '@buildfleet/protocol';
import { EventHub } from '../live/events.js';
import { workerView } from '../views.js';
import { deferredBodyError } from './body.js';
import type { AppContext } from './context.js';

const errors = { 400: ErrorBodySchema, 401: ErrorBodySchema, 403: ErrorBodySchema, 404: ErrorBodySchema };
/** Longest silence on the event stream before a `: keepalive` comment, ms. */
const KEEPALIVE_MS = 15_000;

export function dashboardApiRoutes(app: FastifyInstance, ctx: AppContext): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const { store, clock, config } = ctx;
  const hub = new EventHub({
    store,
    notifier: ctx.notifier,
    clock,
    leaseMs: config.leaseMs,
    onError: (err) => ctx.log.warn({ err }, 'event stream round failed; the next hint or re-check tries again'),
  });
  app.addHook('preClose', async () => hub.close());

  r.get(
    '/events',
    {
      config: { auth: ['api'] },
      schema: {
        tags: ['dashboard'],
        summary: 'Live build and worker changes (text/event-stream): hello, build, worker, worker-deleted',
        produces: ['text/event-stream'],
      },
    },
    async (request, reply) => {
      const out = new PassThrough();
      const send = (event: string, data: unknown) => {
        out.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
      };
      let timer: TimerHandle | undefined;
      let closed = false;
      const unsubscribe = await hub.subscribe(send, () => end());
      const end = () => {
        if (closed) return;
        closed = true;
        unsubscribe();
        clock.clearTimeout(timer);
        out.end();
      };
      timer = clock.setTimeout(function keepalive() {
        out.write(': keepalive\n\n');
        timer = clock.setTimeout(keepalive, KEEPALIVE_MS);
      }, KEEPALIVE_MS);
      reply.raw.on('close', end);
      // Only now: every change after this line reaches the stream.
      send('hello', { now: new Date(clock.now()).toISOString() });
      request.log.debug({ listeners: hub.size }, 'event stream opened');
      return reply
        .header('content-type', 'text/event-stream; charset=utf-8')
        .header('cache-control', 'no-cache')
        .header('x-accel-buffering', 'no')
        .send(out);
    },
  );

  r.get(
    '/stats',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['dashboard'],
        summary: 'Queued builds per label set, and builds finished and queue wait per minute',
        querystring: StatsQuerySchema,
        response: { 200: StatsSchema, ...errors },
      },
    },
    async (request) => {
      const bodyError = deferredBodyError(request);
      if (bodyError) throw bodyError;
      const now = clock.now();
      return { now: new Date(now).toISOString(), ...(await store.stats(now, request.query.minutes ?? 60)) };
    },
  );

  r.post(
    '/workers/:id/resume',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['admin'],
        summary: 'Undo a drain: the worker takes new builds again',
        params: IdParamsSchema,
        response: { 200: WorkerEnvelopeSchema, ...errors },
      },
    },
    async (request) => {
      const worker = await store.resumeWorker(request.params.id, clock.now(), config.leaseMs);
      request.log.info({ workerId: worker.id }, 'worker resumed');
      // Its parked poll (if any) looks at the queue again.
      ctx.hint('workers', worker.id);
      ctx.hint('builds');
      return { worker: workerView(worker) };
    },
  );
}
