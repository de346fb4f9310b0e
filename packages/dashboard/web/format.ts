/**
 * How the dashboard says things: build names, outcomes and waiting reasons
 * in words, durations, relative times and sizes. Pure functions of their
 * arguments (`now` is passed in, epoch ms).
 */
import type { Attempt, Build, BuildState, Waiting, Worker, WorkerState } from '@buildfleet/protocol';

export const STATE_LABEL: Record<BuildState, string> = {
  queued: 'Queued',
  assigned: 'Assigned',
  running: 'Running',
  succeeded: 'Passed',
  failed: 'Failed',
  canceled: 'Canceled',
  timed_out: 'Timed out',
};

export const TERMINAL: ReadonlySet<BuildState> = new Set(['succeeded', 'failed', 'canceled', 'timed_out']);

/** What a list shows as the build's name: the spec's `name`, else metadata, else the script's first line. */
export function buildName(build: Build): string {
  if (build.spec.name) return build.spec.name;
  const m = build.spec.metadata;
  if (typeof m.name === 'string' && m.name) return m.name;
  const repo = typeof m.repo === 'string' ? m.repo.replace(/\.git$/, '').split(/[/:]/).pop() : undefined;
  const branch = typeof m.branch === 'string' ? m.branch : undefined;
  if (repo && branch) return `${repo} · ${branch}`;
  if (repo) return repo;
  const line = build.spec.script.split('\n').find((l) => l.trim() !== '') ?? build.spec.script;
  return line.length > 80 ? `${line.slice(0, 79)}…` : line.trim();
}

export function shortId(id: string): string {
  return id.length > 8 ? id.slice(-8) : id;
}

/** Metadata values a list can show in a line (strings and numbers), as `key=value`. */
export function metadataPairs(build: Build): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const [k, v] of Object.entries(build.spec.metadata)) {
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out.push([k, String(v)]);
  }
  return out;
}

const LOST: Record<string, string> = {
  ack_timeout: 'the worker did not start it in time',
  lease_expired: 'the worker stopped reporting',
  worker_deleted: 'the worker was deleted',
  worker_restarted: 'the worker restarted',
  worker_lost: 'the worker was lost',
};

function workerLabel(name: string | null | undefined, id: string | null): string {
  if (name) return name;
  return id ? `worker …${shortId(id)}` : 'a worker';
}

/** One sentence for where a build stands or how it ended. */
export function outcomeText(build: Build): string {
  const worker = workerLabel(build.workerName, build.workerId);
  switch (build.state) {
    case 'queued':
      return build.attempt > 1 ? `Queued again as attempt ${build.attempt}` : 'Waiting for a worker';
    case 'assigned':
      return `Assigned to ${worker}, starting`;
    case 'running':
      return build.cancelRequested ? `Canceling on ${worker}` : `Running on ${worker}`;
    case 'succeeded': {
      const t = took(build, Date.now());
      return t === null ? 'Passed' : `Passed in ${duration(t)}`;
    }
    case 'failed':
      if (build.reason === 'worker_lost') {
        const last = build.attempts[build.attempts.length - 1];
        const why = last?.reason ? LOST[last.reason] : undefined;
        return `Worker lost on all ${build.attempt} attempts${why ? ` (last: ${why})` : ''}`;
      }
      if (build.exitCode !== null) return `Script exited with code ${build.exitCode}`;
      return build.message ? `Failed: ${build.message}` : 'Failed';
    case 'canceled':
      return build.startedAt ? 'Canceled by a user while running' : 'Canceled by a user before it ran';
    case 'timed_out':
      return `Timed out after ${duration(build.spec.timeoutSeconds * 1000)}`;
  }
}

/** How one attempt ended, in words. */
export function attemptText(a: Attempt, build: Build): string {
  const next = a.attempt < build.attempt ? `; retried as attempt ${a.attempt + 1}` : '';
  if (a.reason && LOST[a.reason]) {
    const why = LOST[a.reason]!;
    return `Worker lost: ${why}${next}`;
  }
  switch (a.state) {
    case 'succeeded':
      return 'Passed';
    case 'failed':
      return a.exitCode !== null ? `Script exited with code ${a.exitCode}` : `Failed${next}`;
    case 'canceled':
      return 'Canceled by a user';
    case 'timed_out':
      return 'Timed out';
    case 'running':
      return 'Running';
    case 'assigned':
      return 'Starting';
    default:
      return STATE_LABEL[a.state];
  }
}

/** Why a queued build waits, in words. */
export function waitingText(w: Waiting, labels: string[]): string {
  const which = labels.length ? `labels ${labels.join(', ')}` : 'no labels';
  const pos = w.position > 1 ? ` ${ordinal(w.position)} in line.` : ' Next in line.';
  switch (w.reason) {
    case 'no_matching_worker':
      return `No connected worker has ${labels.length ? `all of the ${which}` : 'room for it'}: it waits until one registers.`;
    case 'workers_draining':
      return `Every worker with the ${which} is draining.${pos}`;
    case 'workers_busy':
      return `All workers with the ${which} are busy.${pos}`;
    case 'concurrency_group':
      return `Its concurrency group is full: it runs when an earlier build of the group ends.${pos}`;
    default:
      return `Waiting (${w.reason}).${pos}`;
  }
}

function ordinal(n: number): string {
  const s = n % 100 >= 11 && n % 100 <= 13 ? 'th' : ({ 1: 'st', 2: 'nd', 3: 'rd' } as Record<number, string>)[n % 10] ?? 'th';
  return `${n}${s}`;
}

/** The worker's state for people (the API's `state`, derived when an older controller lacks it). */
export function workerState(w: Worker): WorkerState {
  if (w.state) return w.state;
  if (!w.connected) return 'offline';
  if (w.status === 'draining') return 'draining';
  return w.activeBuildCount > 0 ? 'building' : 'idle';
}

export const WORKER_STATE_LABEL: Record<WorkerState, string> = {
  idle: 'Idle',
  building: 'Building',
  draining: 'Draining',
  offline: 'Offline',
};

/** `1h 2m`, `3m 4s`, `5.2s`, `340ms`. */
export function duration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '–';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function ms(iso: string | null | undefined): number | null {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isFinite(t) ? t : null;
}

/** `just now`, `5m ago`, `in 3h` … */
export function relative(iso: string | null | undefined, now: number): string {
  const t = ms(iso);
  if (t === null) return 'never';
  const d = now - t;
  if (Math.abs(d) < 5000) return 'just now';
  const text = duration(Math.abs(d)).replace(/\.\d+s$/, 's').split(' ')[0]!;
  return d > 0 ? `${text} ago` : `in ${text}`;
}

export function absolute(iso: string | null | undefined): string {
  const t = ms(iso);
  return t === null ? '' : new Date(t).toLocaleString();
}

/** How long the build waited for a worker (so far, while it waits). */
export function queuedFor(build: Build, now: number): number | null {
  const created = ms(build.createdAt);
  if (created === null) return null;
  const first = build.attempts[0]?.assignedAt ?? (build.attempt === 1 ? build.assignedAt : null);
  const assigned = ms(first);
  if (assigned !== null) return assigned - created;
  if (build.state === 'queued') return now - created;
  if (build.state === 'canceled' || build.state === 'failed') return (ms(build.finishedAt) ?? now) - created;
  return null;
}

/** How long the build ran (so far, while it runs). */
export function took(build: Build, now: number): number | null {
  const started = ms(build.startedAt);
  if (started === null) return null;
  return (ms(build.finishedAt) ?? now) - started;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}
