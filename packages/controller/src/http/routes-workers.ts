/**
 * Worker-side routes (docs/protocol.md "Workers"): register, poll (long poll),
 * heartbeat; and the admin routes for workers and enrollment tokens.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { v7 as uuidv7 } from 'uuid';
import {
  ApiError,
  EnrollmentTokenCreateSchema,
  EnrollmentTokenListSchema,
  EnrollmentTokenSchema,
  ErrorBodySchema,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
  IdParamsSchema,
  PollQuerySchema,
  PollRequestSchema,
  PollResponseSchema,
  RegisterRequestSchema,
  RegisterResponseSchema,
  WorkerEnvelopeSchema,
  WorkerListSchema,
  type PollRequest,
  type RegisterResponse,
} from '@buildfleet/protocol';
import { generateToken, hashToken } from '../credentials.js';
import type { HeldBuild, RegisterResult } from '../store/types.js';
import { requireBearer, workerAuthOf } from './auth.js';
import { iso, toAssigned, type AppContext } from './context.js';
import { checkWorkerVersion } from '../ops/versions.js';
import { deferredBodyError } from './body.js';
import { workerView } from '../views.js';

const errors = { 400: ErrorBodySchema, 401: ErrorBodySchema, 403: ErrorBodySchema, 404: ErrorBodySchema, 409: ErrorBodySchema };

export function workerRoutes(app: FastifyInstance, ctx: AppContext): void {
  const r = app.withTypeProvider<TypeBoxTypeProvider>();
  const { config, store, clock } = ctx;

  const settings = {
    pollWaitMs: config.pollWaitMs,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    leaseMs: config.leaseMs,
    ackTimeoutMs: config.ackTimeoutMs,
    // Polls take `watchCancel` (older workers ignore this and never send it).
    watchCancel: true,
  };

  r.post(
    '/workers/register',
    {
      attachValidation: true,
      config: { auth: ['enrollment', 'workerSecret'] },
      schema: {
        tags: ['workers'],
        summary: 'Register a new worker, or re-register / refresh an existing one',
        body: RegisterRequestSchema,
        response: { 200: RegisterResponseSchema, 201: RegisterResponseSchema, ...errors },
      },
    },
    async (request, reply) => {
      // The credential was checked by authenticateRegistration (a preHandler).
      const bodyError = deferredBodyError(request);
      if (bodyError) throw bodyError;
      const body = request.body;
      if (body.workerId !== undefined && body.workerSecret === undefined) {
        throw new ApiError('VALIDATION_FAILED', 'workerSecret is required with workerId');
      }
      if (body.workerId === undefined && body.workerSecret !== undefined) {
        throw new ApiError('VALIDATION_FAILED', 'workerSecret needs workerId');
      }
      checkWorkerVersion(body.version, ctx.config.ops.minWorkerVersion);
      const now = clock.now();
      const accessToken = generateToken('access');
      const issued = { hash: hashToken(accessToken), expiresAt: now + config.accessTokenTtlMs };
      let result: RegisterResult;
      let workerSecret: string | undefined;
      if (body.workerId !== undefined) {
        if (body.activeBuildCount === undefined) {
          request.log.warn({ workerId: body.workerId }, 'worker registered without activeBuildCount (older worker); counting it as 0');
        }
        result = await store.reregister({
          workerId: body.workerId,
          secretHash: hashToken(body.workerSecret!),
          accessToken: issued,
          name: body.name,
          labels: body.labels,
          maxConcurrentBuilds: body.maxConcurrentBuilds,
          version: body.version,
          bootId: body.bootId,
          activeBuildCount: body.activeBuildCount,
          activeBuildIds: body.activeBuildIds,
          ...(body.executor !== undefined ? { executor: body.executor } : {}),
          now,
        });
        // A parked poll holding the rotated token must answer like a fresh request.
        ctx.hint('workers', result.workerId);
      } else {
        const enrollment = requireBearer(request);
        workerSecret = generateToken('workerSecret');
        if (body.activeBuildCount === undefined) {
          request.log.warn({ name: body.name }, 'worker registered without activeBuildCount (older worker); counting it as 0');
        }
        result = await store.registerNew({
          enrollmentTokenHash: hashToken(enrollment),
          registrationId: body.registrationId,
          newWorkerId: uuidv7(),
          secretHash: hashToken(workerSecret),
          accessToken: issued,
          name: body.name,
          labels: body.labels,
          maxConcurrentBuilds: body.maxConcurrentBuilds,
          version: body.version,
          bootId: body.bootId,
          ...(body.executor !== undefined ? { executor: body.executor } : {}),
          now,
        });
        ctx.hint('workers', result.workerId);
      }
      if (result.lost.length > 0) {
        ctx.metrics.buildTransitions.inc({ to: 'lost' }, result.lost.length);
        ctx.hint('builds');
        for (const id of result.lost) ctx.hint('logs', id);
      }
      request.log.info(
        { workerId: result.workerId, created: result.created, held: result.builds.length, lost: result.lost },
        body.workerId ? 'worker re-registered' : 'worker registered',
      );
      const answer: RegisterResponse = {
        workerId: result.workerId,
        ...(workerSecret !== undefined ? { workerSecret } : {}),
        accessToken,
        accessTokenExpiresAt: iso(issued.expiresAt),
        accessTokenExpiresInMs: config.accessTokenTtlMs,
        settings,
        builds: result.builds.map((b: HeldBuild) => toAssigned(ctx, b)),
        abandon: result.abandon,
      };
      return reply.code(body.workerId === undefined || result.created ? 201 : 200).send(answer);
    },
  );

  r.post(
    '/workers/:id/poll',
    {
      attachValidation: true,
      config: { auth: ['access'] },
      schema: {
        tags: ['workers'],
        summary: 'Long poll for builds',
        params: IdParamsSchema,
        querystring: PollQuerySchema,
        body: PollRequestSchema,
        response: { 200: PollResponseSchema, 204: Type.Null(), ...errors },
      },
    },
    async (request, reply) => {
      const auth = workerAuthOf(request);
      const bodyError = deferredBodyError(request);
      if (bodyError) {
        await store.authenticateWorker({ ...auth, now: clock.now() });
        throw bodyError;
      }
      const body: PollRequest = request.body;
      const watchCancel = body.watchCancel;
      // Nothing to hand out and no cancel to watch for: answer at once (older workers' behaviour).
      if (body.freeSlots === 0 && !watchCancel?.length) {
        await store.authenticateWorker({ ...auth, now: clock.now() });
        ctx.metrics.pollWaits.observe({ result: 'empty' }, 0);
        return reply.code(204).send(null);
      }
      const waitMs = Math.min(request.query.waitMs ?? config.pollWaitMs, config.pollWaitMs);
      const got = await longPoll(ctx, request, reply, { ...auth, freeSlots: body.freeSlots, activeBuildIds: body.activeBuildIds, watchCancel: watchCancel ?? [] }, waitMs);
      if (got.held.length === 0 && got.cancel.length === 0) return reply.code(204).send(null);
      return reply.code(200).send({ builds: got.held.map((b) => toAssigned(ctx, b)), ...(watchCancel ? { cancel: got.cancel } : {}) });
    },
  );

  r.post(
    '/workers/:id/heartbeat',
    {
      attachValidation: true,
      config: { auth: ['access'] },
      schema: {
        tags: ['workers'],
        summary: 'Extend leases of running builds; learn of cancellations',
        params: IdParamsSchema,
        body: HeartbeatRequestSchema,
        response: { 200: HeartbeatResponseSchema, ...errors },
      },
    },
    async (request) => {
      const auth = workerAuthOf(request);
      const bodyError = deferredBodyError(request);
      if (bodyError) {
        await store.authenticateWorker({ ...auth, now: clock.now() });
        throw bodyError;
      }
      const now = clock.now();
      const result = await store.heartbeat({ ...auth, activeBuildIds: request.body.activeBuildIds, leaseMs: config.leaseMs, now });
      return {
        cancel: result.cancel,
        abandon: result.abandon,
        accessTokenExpiresAt: iso(result.accessTokenExpiresAt),
        accessTokenExpiresInMs: Math.max(0, result.accessTokenExpiresAt - now),
        draining: result.draining,
      };
    },
  );

  r.post(
    '/workers/:id/deregister',
    {
      attachValidation: true,
      config: { auth: ['access'] },
      schema: {
        tags: ['workers'],
        summary: 'A worker leaves on purpose (--once, --idle-timeout): deleted unless it still holds builds (409 naming them)',
        params: IdParamsSchema,
        response: { 204: Type.Null(), ...errors },
      },
    },
    async (request, reply) => {
      await store.deregisterWorker({ ...workerAuthOf(request), now: clock.now() });
      request.log.info({ workerId: request.params.id }, 'worker deregistered itself');
      ctx.hint('workers', request.params.id);
      return reply.code(204).send(null);
    },
  );

  // --- admin (API token) ----------------------------------------------------
  r.get(
    '/workers',
    { config: { auth: ['api'] }, schema: { tags: ['admin'], summary: 'List workers', response: { 200: WorkerListSchema } } },
    async () => ({ workers: (await store.listWorkers(clock.now(), config.leaseMs)).map(workerView) }),
  );

  r.get(
    '/workers/:id',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: { tags: ['admin'], params: IdParamsSchema, response: { 200: WorkerEnvelopeSchema, ...errors } },
    },
    async (request) => {
      const worker = await store.getWorker(request.params.id, clock.now(), config.leaseMs);
      return { worker: workerView(worker) };
    },
  );

  r.post(
    '/workers/:id/drain',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['admin'],
        summary: 'Stop giving this worker new builds; running ones finish',
        params: IdParamsSchema,
        response: { 200: WorkerEnvelopeSchema, ...errors },
      },
    },
    async (request) => {
      const worker = await store.drainWorker(request.params.id, clock.now(), config.leaseMs);
      request.log.info({ workerId: worker.id }, 'worker draining');
      ctx.hint('workers', worker.id);
      return { worker: workerView(worker) };
    },
  );

  r.delete(
    '/workers/:id',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['admin'],
        summary: 'Delete a worker; its assigned and running builds are lost at once',
        params: IdParamsSchema,
        response: { 200: Type.Object({ lost: Type.Array(Type.String()) }), ...errors },
      },
    },
    async (request) => {
      const { lost } = await store.deleteWorker(request.params.id, clock.now());
      request.log.info({ workerId: request.params.id, lost }, 'worker deleted');
      if (lost.length) ctx.metrics.buildTransitions.inc({ to: 'lost' }, lost.length);
      ctx.hint('workers', request.params.id);
      if (lost.length) ctx.hint('builds');
      for (const id of lost) ctx.hint('logs', id);
      return { lost };
    },
  );

  r.post(
    '/enrollment-tokens',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: {
        tags: ['admin'],
        summary: 'Create an enrollment token (the token is shown only in this answer)',
        body: Type.Optional(EnrollmentTokenCreateSchema),
        response: { 201: EnrollmentTokenSchema, ...errors },
      },
    },
    async (request, reply) => {
      const bodyError = deferredBodyError(request);
      if (bodyError) throw bodyError;
      const body = request.body ?? {};
      let expiresAt: number | null = null;
      if (body.expiresAt !== undefined) {
        expiresAt = Date.parse(body.expiresAt);
        if (!Number.isFinite(expiresAt)) throw new ApiError('VALIDATION_FAILED', 'expiresAt must be an ISO-8601 timestamp');
        // A token that could never enrol anyone is a mistake (a typo'd year), not a request.
        if (expiresAt <= clock.now()) {
          throw new ApiError('VALIDATION_FAILED', `expiresAt ${body.expiresAt} is in the past: an enrollment token must expire later than now`);
        }
      }
      const token = generateToken('enrollment');
      const created = await store.createEnrollmentToken({
        id: uuidv7(),
        hash: hashToken(token),
        description: body.description ?? null,
        expiresAt,
        maxUses: body.maxUses ?? null,
        now: clock.now(),
      });
      return reply.code(201).send({ ...created, token });
    },
  );

  r.get(
    '/enrollment-tokens',
    { config: { auth: ['api'] }, schema: { tags: ['admin'], response: { 200: EnrollmentTokenListSchema } } },
    async () => ({ enrollmentTokens: await store.listEnrollmentTokens() }),
  );

  r.delete(
    '/enrollment-tokens/:id',
    {
      config: { auth: ['api'] },
      attachValidation: true,
      schema: { tags: ['admin'], summary: 'Revoke an enrollment token', params: IdParamsSchema, response: { 204: Type.Null(), ...errors } },
    },
    async (request, reply) => {
      await store.revokeEnrollmentToken(request.params.id, clock.now());
      return reply.code(204).send(null);
    },
  );
}

/**
 * Runs `store.poll` (and, for a poll that watches cancels, `cancelsRequested`
 * on its `watchCancel` ids) and, while it finds nothing, parks until a
 * wake-up, the end of `waitMs`, the client going away, or the controller
 * closing. Every re-check after a wake-up is a full `store.poll`, which
 * re-authenticates the worker under its row lock, so a parked poll answers
 * with the error a fresh request would get (docs/protocol.md "poll"); the end of
 * the wait costs no statement unless wake-ups may have been lost (docs/design.md
 * "An idle fleet costs the database nothing per worker"). A poll with free slots parks on
 * `pollWake` (the dispatcher wakes it for claims); one without parks on
 * `cancelWake`, which only the worker's own 'workers' hints reach (a cancel,
 * a token rotation, a drain, a deletion), so it never costs a claim query.
 */
async function longPoll(
  ctx: AppContext,
  request: FastifyRequest,
  reply: FastifyReply,
  input: { workerId: string; tokenHash: string; freeSlots: number; activeBuildIds: string[]; watchCancel: string[] },
  waitMs: number,
): Promise<{ held: HeldBuild[]; cancel: string[] }> {
  const { clock, store, metrics } = ctx;
  const claims = input.freeSlots > 0;
  const pollWake = claims ? ctx.pollWake : ctx.cancelWake;
  const started = clock.monotonic();
  const deadline = started + waitMs;
  const abort = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableEnded) abort.abort();
  };
  reply.raw.on('close', onClose);
  let parked = false;
  let result: 'builds' | 'cancel' | 'empty' | 'error' = 'empty';
  const release = pollWake.retain(input.workerId);
  let woken = false;
  try {
    for (;;) {
      const generation = pollWake.snapshot(input.workerId);
      let held: HeldBuild[] = [];
      try {
        held = await store.poll({ ...input, ackTimeoutMs: ctx.config.ackTimeoutMs, now: clock.now() });
        request.credentialAccepted = true;
      } finally {
        // Tell the dispatcher this woken poll has looked, so it moves on.
        if (woken && claims) ctx.dispatcher.report(input.workerId, held.length);
      }
      // After store.poll: the worker is authenticated before it learns anything.
      const cancel = input.watchCancel.length > 0 ? await store.cancelsRequested(input.workerId, input.watchCancel) : [];
      if (held.length > 0 || cancel.length > 0) {
        result = held.length > 0 ? 'builds' : 'cancel';
        if (held.length > 0) metrics.claims.inc({ kind: 'poll' }, held.length);
        // Assigned: log followers and the event stream look again.
        for (const b of held) ctx.hint('logs', b.id);
        return { held, cancel };
      }
      const left = deadline - clock.monotonic();
      if (left <= 0 || abort.signal.aborted || pollWake.isClosed) return { held: [], cancel: [] };
      if (!parked) {
        parked = true;
        metrics.parkedPolls.inc();
      }
      const why = await pollWake.waitForChange(generation, left, abort.signal);
      woken = why === 'woken';
      if (why === 'aborted' || why === 'closed') return { held: [], cancel: [] };
      // A wait that ran out with every hint delivered has nothing to look at:
      // the queue did not change for this worker (the dispatcher's periodic
      // re-check covers hints lost in a silent connection), and the worker's
      // next poll, sent as soon as this answer arrives, authenticates and
      // claims afresh. Only while wake-ups may be lost (the LISTEN connection
      // is down) is one last look worth a transaction per worker.
      if (why === 'timeout' && ctx.notifier.delivering) return { held: [], cancel: [] };
    }
  } catch (err) {
    result = 'error';
    throw err;
  } finally {
    release();
    reply.raw.off('close', onClose);
    if (parked) metrics.parkedPolls.dec();
    metrics.pollWaits.observe({ result }, (clock.monotonic() - started) / 1000);
    if (abort.signal.aborted) request.log.debug({ workerId: input.workerId }, 'poll client went away while parked');
  }
}
