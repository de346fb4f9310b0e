/**
 * The log of one attempt: followed live over the log's event stream while
 * the attempt runs (docs/protocol.md `GET /builds/{id}/logs` with
 * `Accept: text/event-stream`), read once as text when it is over.
 * Rendering waits for the next animation frame, so a burst of chunks costs
 * one render. A huge log (over `HUGE_LOG` bytes) opens at its last
 * `TAIL_BYTES`, where the error usually is; the reader can load all of it.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { paths, type Build } from '@buildfleet/protocol';
import { api, saveBlob } from '../api.js';
import { LogBuffer } from '../log-buffer.js';
import { readEvents } from '../sse.js';
import { LogView } from '../components/log-view.js';
import { ErrorNote } from '../components/ui.js';
import { TERMINAL, bytes } from '../format.js';

/** A log longer than this, bytes, opens at its end. */
export const HUGE_LOG = 4 * 1024 * 1024;
/** How much of a huge log's end is shown first, bytes. */
export const TAIL_BYTES = 1024 * 1024;

/** Where to start reading: 0, or `TAIL_BYTES` before the end of a huge log unless a line anchor asks for all of it. */
function tailStart(logBytes: number, whole: boolean): number {
  if (whole || logBytes <= HUGE_LOG || /^#L\d+$/.test(location.hash)) return 0;
  return logBytes - TAIL_BYTES;
}

export function BuildLog({ build, attempt }: { build: Build; attempt: number }) {
  const buffer = useRef(new LogBuffer()).current;
  const [version, setVersion] = useState(0);
  const [error, setError] = useState<unknown>(null);
  const [live, setLive] = useState(false);
  const [whole, setWhole] = useState(false);
  const logBytes = build.attempts.find((a) => a.attempt === attempt)?.logBytes ?? 0;
  // Decided when the attempt is opened, like `follow`: later growth does not move the start.
  const start = useRef(0);
  // Follow only the current attempt of an unfinished build; anything else is
  // over. Decided when the attempt is opened: a followed stream ends by itself.
  const follow = attempt === build.attempt && !TERMINAL.has(build.state);
  const streamKey = `${build.id}/${attempt}/${whole}`;

  useEffect(() => {
    const ctl = new AbortController();
    let frame = 0;
    const flush = () => {
      frame = 0;
      setVersion(buffer.version);
    };
    const changed = () => {
      if (!frame) frame = requestAnimationFrame(flush);
    };
    start.current = tailStart(logBytes, whole);
    buffer.clear(start.current > 0);
    setVersion(buffer.version);
    setError(null);
    setLive(follow);
    const run = async () => {
      if (!follow) {
        buffer.append(await api.logText(build.id, attempt, ctl.signal, start.current));
        changed();
        return;
      }
      await readEvents(
        `${paths.logs(build.id)}?attempt=${attempt}&follow=1${start.current ? `&offset=${start.current}` : ''}`,
        {
          onEvent(type, data) {
            const d = data as { text?: string; code?: string; message?: string };
            if (type === 'log' && typeof d.text === 'string') {
              buffer.append(d.text);
              changed();
            } else if (type === 'error') {
              setError(new Error(`${d.message ?? 'log stream failed'} (${d.code ?? 'error'})`));
            }
          },
        },
        ctl.signal,
      );
      if (!ctl.signal.aborted) setLive(false);
    };
    run().catch((err: unknown) => {
      if (!ctl.signal.aborted) {
        setError(err);
        setLive(false);
      }
    });
    return () => {
      ctl.abort();
      if (frame) cancelAnimationFrame(frame);
    };
  }, [streamKey]);

  const download = async () => {
    try {
      const text = await api.logText(build.id, attempt);
      saveBlob(new Blob([text], { type: 'text/plain' }), `build-${build.id}-attempt-${attempt}.log`);
    } catch (err) {
      setError(err);
    }
  };

  const empty =
    build.state === 'queued' && attempt === build.attempt
      ? 'No output yet: the build is waiting for a worker.'
      : live
        ? 'No output yet.'
        : 'This attempt printed nothing.';

  return (
    <>
      <ErrorNote error={error} />
      {start.current > 0 ? (
        <div class="note warn log-tail" role="status">
          Showing the last {bytes(logBytes - start.current)} of a {bytes(logBytes)} log; line numbers count from the first line shown.{' '}
          <button type="button" class="btn small" onClick={() => setWhole(true)}>
            Show the whole log
          </button>
        </div>
      ) : null}
      <LogView buffer={buffer} version={version} live={live} emptyText={empty} onDownload={download} />
    </>
  );
}
