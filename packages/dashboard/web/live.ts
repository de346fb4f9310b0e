/**
 * The live connection: one `GET /events` stream per tab, shared by every
 * page (docs/protocol.md: `hello`, `build`, `worker`, `worker-deleted`). Pages
 * subscribe and update what they show in place; after `hello` (first
 * connect or a reconnect) they re-read, since changes in between were not
 * sent. A dropped stream reconnects after 1, 2, 4 … 30 s; nothing polls.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { paths, type Build, type Worker } from '@buildfleet/protocol';
import { ApiFailure } from './api.js';
import { readEvents } from './sse.js';

export type LiveEvent =
  | { type: 'hello' }
  | { type: 'build'; build: Build }
  | { type: 'worker'; worker: Worker }
  | { type: 'worker-deleted'; id: string };

export type LiveStatus = 'connecting' | 'live' | 'reconnecting' | 'unavailable';

const subscribers = new Set<(e: LiveEvent) => void>();
const statusListeners = new Set<(s: LiveStatus) => void>();
let status: LiveStatus = 'connecting';
let controller: AbortController | undefined;
let retryTimer: ReturnType<typeof setTimeout> | undefined;

function setStatus(s: LiveStatus) {
  status = s;
  for (const l of statusListeners) l(s);
}

function publish(e: LiveEvent) {
  for (const s of subscribers) s(e);
}

/** Opens the stream (once); `stopLive` closes it (sign-out). */
export function startLive(): void {
  if (controller) return;
  const ctl = new AbortController();
  controller = ctl;
  let failures = 0;
  const connect = async () => {
    retryTimer = undefined;
    try {
      await readEvents(
        paths.events(),
        {
          onEvent(type, data) {
            const d = data as Record<string, unknown>;
            if (type === 'hello') {
              failures = 0;
              setStatus('live');
              publish({ type: 'hello' });
            } else if (type === 'build' && d.build) publish({ type: 'build', build: d.build as Build });
            else if (type === 'worker' && d.worker) publish({ type: 'worker', worker: d.worker as Worker });
            else if (type === 'worker-deleted' && typeof d.id === 'string') publish({ type: 'worker-deleted', id: d.id });
          },
        },
        ctl.signal,
      );
    } catch (err) {
      if (err instanceof ApiFailure && (err.status === 404 || err.status === 401 || err.status === 403)) {
        // An older controller without the stream, or signed out: stop.
        setStatus('unavailable');
        return;
      }
    }
    if (ctl.signal.aborted) return;
    failures += 1;
    setStatus('reconnecting');
    retryTimer = setTimeout(() => void connect(), Math.min(30_000, 1000 * 2 ** Math.min(failures - 1, 5)));
  };
  setStatus('connecting');
  void connect();
}

export function stopLive(): void {
  controller?.abort();
  controller = undefined;
  if (retryTimer) clearTimeout(retryTimer);
  retryTimer = undefined;
  setStatus('connecting');
}

/** Calls `fn` for every live event while the component is mounted. */
export function useLive(fn: (e: LiveEvent) => void): void {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    const s = (e: LiveEvent) => ref.current(e);
    subscribers.add(s);
    return () => void subscribers.delete(s);
  }, []);
}

export function useLiveStatus(): LiveStatus {
  const [s, set] = useState(status);
  useEffect(() => {
    statusListeners.add(set);
    set(status);
    return () => void statusListeners.delete(set);
  }, []);
  return s;
}
