/**
 * Prometheus metrics of one controller app, on its own Registry so several
 * apps in one process (tests, the simulation) do not collide.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { createOpsMetrics, type OpsMetrics } from '../ops/metrics.js';

export interface ControllerMetrics extends OpsMetrics {
  registry: Registry;
  /** Builds entering a state, labelled `to` (queued, assigned, running, terminal states, requeued). */
  buildTransitions: Counter<'to'>;
  /** Builds handed to workers by a poll (new claims and re-deliveries). */
  claims: Counter<'kind'>;
  /** Long polls by result (`builds`, `empty`, `error`) and how long they parked, seconds. */
  pollWaits: Histogram<'result'>;
  parkedPolls: Gauge;
  requestDuration: Histogram<'method' | 'route' | 'status'>;
  /** Cache lookups by result: `exact`, `restore_key` (a prefix matched), `miss` (issue 13). */
  cacheLookups: Counter<'result'>;
  /** Secret values handed to build attempts (counted, never named or shown; issue 13). */
  secretHandouts: Counter;
}

export function createMetrics(opts: { defaultMetrics?: boolean } = {}): ControllerMetrics {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'buildfleet_' });
  return {
    registry,
    ...createOpsMetrics(registry),
    buildTransitions: new Counter({
      name: 'buildfleet_build_transitions_total',
      help: 'Builds entering a state, by target state',
      labelNames: ['to'],
      registers: [registry],
    }),
    claims: new Counter({
      name: 'buildfleet_claims_total',
      help: 'Builds handed to workers by polls',
      labelNames: ['kind'],
      registers: [registry],
    }),
    pollWaits: new Histogram({
      name: 'buildfleet_poll_wait_seconds',
      help: 'Time a long poll waited before answering, by result',
      labelNames: ['result'],
      buckets: [0.01, 0.1, 0.5, 1, 5, 10, 30, 60],
      registers: [registry],
    }),
    parkedPolls: new Gauge({
      name: 'buildfleet_parked_polls',
      help: 'Long polls parked now',
      registers: [registry],
    }),
    requestDuration: new Histogram({
      name: 'buildfleet_http_request_duration_seconds',
      help: 'HTTP request duration by route and status',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
      registers: [registry],
    }),
    cacheLookups: new Counter({
      name: 'buildfleet_cache_lookups_total',
      help: 'Build cache lookups by result (exact, restore_key, miss)',
      labelNames: ['result'],
      registers: [registry],
    }),
    secretHandouts: new Counter({
      name: 'buildfleet_secret_handouts_total',
      help: 'Secret values handed to build attempts',
      registers: [registry],
    }),
  };
}
