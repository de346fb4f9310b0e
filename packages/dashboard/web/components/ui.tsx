/** Small shared pieces: state badges, label chips, times, copy buttons, errors. */
import type { ComponentChildren } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import type { BuildState, WorkerState } from '@buildfleet/protocol';
import { ApiFailure } from '../api.js';
import { absolute, relative, STATE_LABEL, WORKER_STATE_LABEL } from '../format.js';

const tickers = new Set<(n: number) => void>();
let tickTimer: ReturnType<typeof setInterval> | undefined;

/** The current time, re-rendering every `second` while mounted (one shared timer; a UI clock, not a poll). */
export function useNow(): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    tickers.add(setNow);
    if (!tickTimer) tickTimer = setInterval(() => tickers.forEach((t) => t(Date.now())), 1000);
    return () => {
      tickers.delete(setNow);
      if (tickers.size === 0 && tickTimer) {
        clearInterval(tickTimer);
        tickTimer = undefined;
      }
    };
  }, []);
  return now;
}

export function StateBadge({ state, cancelRequested }: { state: BuildState; cancelRequested?: boolean }) {
  return (
    <span class={`badge st-${state}`} data-state={state}>
      <span class="dot" aria-hidden="true" />
      {cancelRequested && state === 'running' ? 'Canceling' : STATE_LABEL[state]}
    </span>
  );
}

export function WorkerBadge({ state }: { state: WorkerState }) {
  return (
    <span class={`badge ws-${state}`} data-state={state}>
      <span class="dot" aria-hidden="true" />
      {WORKER_STATE_LABEL[state]}
    </span>
  );
}

export function Labels({ labels, empty = '–' }: { labels: string[]; empty?: string }) {
  if (labels.length === 0) return <span class="muted">{empty}</span>;
  return (
    <span class="labels">
      {labels.map((l) => (
        <span class="chip" key={l}>
          {l}
        </span>
      ))}
    </span>
  );
}

export function RelTime({ iso, now }: { iso: string | null | undefined; now: number }) {
  if (!iso) return <span class="muted">–</span>;
  return (
    <time dateTime={iso} title={absolute(iso)}>
      {relative(iso, now)}
    </time>
  );
}

/** Copies `text`; says so for two seconds. */
export function CopyButton({ text, label }: { text: string; label: string }) {
  const [done, setDone] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Clipboard refused (not a secure context): the text stays selectable.
      return;
    }
    setDone(true);
    setTimeout(() => setDone(false), 2000);
  };
  return (
    <button type="button" class="btn small" aria-label={label} onClick={copy}>
      {done ? 'Copied' : 'Copy'}
    </button>
  );
}

export function errorText(err: unknown): string {
  if (err instanceof ApiFailure) return `${err.message} (${err.code})`;
  return err instanceof Error ? err.message : String(err);
}

export function ErrorNote({ error }: { error: unknown }) {
  if (!error) return null;
  return (
    <div class="note error" role="alert">
      {errorText(error)}
    </div>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="empty">{children}</div>;
}

export function PageHeader({ title, children, sub }: { title: ComponentChildren; children?: ComponentChildren; sub?: ComponentChildren }) {
  return (
    <div class="page-header">
      <div class="page-title">
        <h1>{title}</h1>
        {sub ? <div class="sub">{sub}</div> : null}
      </div>
      {children ? <div class="actions">{children}</div> : null}
    </div>
  );
}
