/**
 * The log of one attempt: followed live over the log's event stream while
 * the attempt runs (PROTOCOL.md `GET /builds/{id}/logs` with
 * `Accept: text/event-stream`), read once as text when it is over.
 * Rendering waits for the next animation frame, so a burst of chunks costs
 * one render.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { paths, type Build } from '@buildfleet/protocol';
import { api, saveBlob } from '../api.js';
import { LogBuffer } from '../log-buffer.js';
import { readEvents } from '../sse.js';
import { LogView } from '../components/log-view.js';
import { ErrorNote } from '../components/ui.js';
import { TERMINAL } from '../format.js';

export function BuildLog({ build, attempt }: { build: Build; attempt: number }) {
  const buffer = useRef(new LogBuffer()).current;
  const [version, setVersion] = useState(0);
  const [error, setError] = useState<unknown>(null);
  const [live, setLive] = useState(false);
  // Follow only the current attempt of an unfinished build; anything else is
  // over. Decided when the attempt is opened: a followed stream ends by itself.
  const follow = attempt === build.attempt && !TERMINAL.has(build.state);
  const streamKey = `${build.id}/${attempt}`;

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
    buffer.clear();
    setVersion(buffer.version);
    setError(null);
    setLive(follow);
    const run = async () => {
      if (!follow) {
        buffer.append(await api.logText(build.id, attempt, ctl.signal));
        changed();
        return;
      }
      await readEvents(
        `${paths.logs(build.id)}?attempt=${attempt}&follow=1`,
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
      <LogView buffer={buffer} version={version} live={live} emptyText={empty} onDownload={download} />
    </>
  );
}
