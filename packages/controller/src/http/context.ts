/**
 * What every route module receives: the frozen config, the store, blobs,
 * notifier, clock, and the app's own derived helpers.
 */
import type { FastifyBaseLogger } from 'fastify';
import type { AssignedBuild, Clock } from '@buildfleet/protocol';
import { API_PREFIX } from '@buildfleet/protocol';
import type { ControllerConfig } from '../config.js';
import type { BuildTokens } from '../credentials.js';
import type { HeldBuild, Store } from '../store/types.js';
import type { BlobStore } from '../blobs/types.js';
import type { ControllerMetrics } from './metrics.js';
import type { WakeChannel } from './wakeups.js';
import type { PollDispatcher } from './dispatch.js';
import type { RegisteredRoute } from './access.js';
import type { LogFollowHub } from './log-follow.js';
import type { SecretsService } from '../secrets/service.js';
import type { CacheService } from '../caches/service.js';
import type { AbuseLimits } from './rate-limit.js';

import type { Notifier, WakeTopic } from '../store/notifier.js';

export type { Notifier, WakeTopic };

export interface AppContext {
  config: ControllerConfig;
  store: Store;
  blobs: BlobStore;
  notifier: Notifier;
  clock: Clock;
  tokens: BuildTokens;
  /** Secrets: sealing, scope checks, hand-outs, the controller's log masking (issue 13). */
  secrets: SecretsService;
  /** Build caches of the build's scope (issue 13). */
  caches: CacheService;
  metrics: ControllerMetrics;
  /** Parked polls wait here; woken by 'builds' hints and the periodic re-check. */
  pollWake: WakeChannel;
  /**
   * Parked polls with no free slot that watch cancels (`watchCancel`) wait
   * here, apart from `pollWake` so the dispatcher never wakes them for a
   * claim; woken by 'workers' hints for their worker.
   */
  cancelWake: WakeChannel;
  /** Wakes parked polls one at a time after 'builds' hints; polls report back. */
  dispatcher: PollDispatcher;
  /** Followed log streams wait here; woken by 'logs' hints. */
  logWake: WakeChannel;
  /** Live log streams: one shared reader per followed build. */
  logFollows: LogFollowHub;
  /** Failed authentications per address, registrations per enrollment token. */
  limits: AbuseLimits;
  log: FastifyBaseLogger;
  /** Every route registered so far, with its credential declaration (the authorization matrix test walks them). */
  routes: RegisteredRoute[];
  /** Publishes a hint; never throws (a lost hint is covered by re-checks). */
  hint(channel: WakeTopic, payload?: string): void;
}

/** `/api/v1/builds/{id}/source`, resolved by the worker against its controller. */
export function sourceUrl(buildId: string): string {
  return `${API_PREFIX}/builds/${encodeURIComponent(buildId)}/source`;
}

/** Turns a held build into the wire form with its derived build token. */
export function toAssigned(ctx: AppContext, held: HeldBuild): AssignedBuild {
  return {
    id: held.id,
    attempt: held.attempt,
    state: held.state,
    buildToken: ctx.tokens.issue(held.id, held.attempt),
    spec: held.spec,
    sourceUrl: sourceUrl(held.id),
    ackDeadline: held.ackDeadline === null ? null : new Date(held.ackDeadline).toISOString(),
  };
}

export function iso(ms: number): string {
  return new Date(ms).toISOString();
}
