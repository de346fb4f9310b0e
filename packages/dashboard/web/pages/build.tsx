/**
 * `/builds/{id}` (`?attempt=N` picks an attempt): what the build is, how it
 * stands or ended in words, why it waits, its attempts, the live log and the
 * artifacts; cancel and retry ask first.
 */
import { Link, useLocation, useParams, useSearch } from 'wouter-preact';
import type { Artifact, Build } from '@buildfleet/protocol';
import { api, saveBlob } from '../api.js';
import {
  absolute,
  attemptText,
  buildName,
  bytes,
  duration,
  metadataPairs,
  ms,
  outcomeText,
  queuedFor,
  shortId,
  TERMINAL,
  took,
  waitingText,
} from '../format.js';
import { useLive } from '../live.js';
import { useDebounced, useLoad } from '../components/load.js';
import { ConfirmButton } from '../components/confirm.js';
import { CopyButton, Empty, ErrorNote, Labels, PageHeader, RelTime, StateBadge, useNow } from '../components/ui.js';
import { BuildLog } from './build-log.js';

export function BuildPage() {
  const { id } = useParams<{ id: string }>();
  const search = useSearch();
  const [, navigate] = useLocation();
  const build = useLoad<Build>((signal) => api.getBuild(id, signal), [id]);
  const b = build.data;
  const artifacts = useLoad<Artifact[]>((signal) => api.listArtifacts(id, signal), [id, b ? TERMINAL.has(b.state) : false]);
  const now = useNow();

  const reloadSoon = useDebounced(build.reload, 500);
  useLive((e) => {
    if (e.type === 'hello') build.reload();
    else if (e.type === 'build' && e.build.id === id) build.setData(() => e.build);
    // The fleet changed: why a queued build waits may have too.
    else if ((e.type === 'worker' || e.type === 'worker-deleted') && build.data?.state === 'queued') reloadSoon();
  });

  if (!b) {
    return (
      <>
        <PageHeader title={`Build ${shortId(id)}`} />
        <ErrorNote error={build.error} />
        {build.loading ? <Empty>Loading…</Empty> : null}
      </>
    );
  }

  const requested = Number(new URLSearchParams(search).get('attempt'));
  const attempt = Number.isInteger(requested) && requested >= 1 && requested <= b.attempt ? requested : b.attempt;
  const terminal = TERMINAL.has(b.state);
  const q = queuedFor(b, now);
  const t = took(b, now);
  const meta = metadataPairs(b);

  return (
    <>
      <nav class="crumbs" aria-label="Breadcrumb">
        <Link href="/builds">Builds</Link> <span aria-hidden="true">/</span> <span class="mono">{shortId(b.id)}</span>
      </nav>
      <PageHeader
        title={buildName(b)}
        sub={
          <>
            <span class="mono">{b.id}</span> · submitted <RelTime iso={b.createdAt} now={now} />
          </>
        }
      >
        {terminal ? (
          <ConfirmButton
            label="Retry"
            title="Retry this build?"
            confirmLabel="Retry build"
            onConfirm={async () => {
              const next = await api.retryBuild(b.id);
              navigate(`/builds/${encodeURIComponent(next.id)}`);
            }}
          >
            A new build runs with the same source and spec. This one stays as it is.
          </ConfirmButton>
        ) : (
          <ConfirmButton
            label="Cancel"
            title="Cancel this build?"
            confirmLabel="Cancel build"
            danger
            disabled={b.cancelRequested}
            onConfirm={() => cancel(b, build.setData)}
          >
            {b.state === 'running'
              ? 'The worker stops the build (SIGTERM, then SIGKILL after a grace period) and reports it canceled.'
              : 'The build will not run.'}
          </ConfirmButton>
        )}
      </PageHeader>

      <section class={`card status status-${b.state}`} aria-label="Status">
        <StateBadge state={b.state} cancelRequested={b.cancelRequested} />
        <div class="status-text">
          <strong class="outcome">{outcomeText(b)}</strong>
          {b.state === 'queued' && b.waiting ? (
            <div class="waiting" data-reason={b.waiting.reason}>
              {waitingText(b.waiting, b.spec.labels)}
            </div>
          ) : null}
          {b.message && !['succeeded'].includes(b.state) && b.reason !== 'exit_code' ? <div class="muted">{b.message}</div> : null}
        </div>
      </section>

      <section class="card details" aria-label="Details">
        <dl class="kv">
          <div>
            <dt>Labels</dt>
            <dd>
              <Labels labels={b.spec.labels} empty="none (any worker)" />
            </dd>
          </div>
          <div>
            <dt>Worker</dt>
            <dd>
              {b.workerId ? (
                <Link href={`/workers/${encodeURIComponent(b.workerId)}`}>{b.workerName ?? shortId(b.workerId)}</Link>
              ) : (
                <span class="muted">–</span>
              )}
            </dd>
          </div>
          <div>
            <dt>Attempt</dt>
            <dd>
              {b.attempt} of {b.spec.maxAttempts}
            </dd>
          </div>
          <div>
            <dt>Queued for</dt>
            <dd>{q === null ? '–' : duration(q)}</dd>
          </div>
          <div>
            <dt>Took</dt>
            <dd>{t === null ? '–' : duration(t)}</dd>
          </div>
          <div>
            <dt>Finished</dt>
            <dd>{b.finishedAt ? <RelTime iso={b.finishedAt} now={now} /> : '–'}</dd>
          </div>
          <div>
            <dt>Priority</dt>
            <dd>{b.spec.priority}</dd>
          </div>
          <div>
            <dt>Timeout</dt>
            <dd>{duration(b.spec.timeoutSeconds * 1000)}</dd>
          </div>
          <div>
            <dt>Source</dt>
            <dd>
              {bytes(b.sourceSize)} <span class="mono muted" title={b.sourceSha256}>sha256 {b.sourceSha256.slice(0, 12)}…</span>
            </dd>
          </div>
          {meta.map(([k, v]) => (
            <div key={k}>
              <dt>{k}</dt>
              <dd class="mono wrap">{v}</dd>
            </div>
          ))}
        </dl>
        <details class="script">
          <summary>Script{Object.keys(b.spec.env).length ? ` and ${Object.keys(b.spec.env).length} environment variables` : ''}</summary>
          <pre class="code">{b.spec.script}</pre>
          {Object.keys(b.spec.env).length ? (
            <p class="muted small">Environment: {Object.keys(b.spec.env).sort().join(', ')}</p>
          ) : null}
        </details>
      </section>

      <section class="card" aria-label="Attempts and log">
        <div class="section-head">
          <h2>Log</h2>
          {b.attempts.length > 1 ? (
            <nav class="attempts" aria-label="Attempts">
              {b.attempts.map((a) => (
                <Link
                  key={a.attempt}
                  href={`/builds/${encodeURIComponent(b.id)}?attempt=${a.attempt}`}
                  class={`attempt-tab${a.attempt === attempt ? ' active' : ''}`}
                  aria-current={a.attempt === attempt ? 'page' : undefined}
                >
                  <StateBadge state={a.state} /> Attempt {a.attempt}
                  <span class="muted small">
                    {' '}
                    · {a.workerName ?? (a.workerId ? shortId(a.workerId) : 'no worker')}
                    {a.startedAt ? ` · ${duration((ms(a.finishedAt) ?? now) - (ms(a.startedAt) ?? now))}` : ''}
                  </span>
                </Link>
              ))}
            </nav>
          ) : null}
        </div>
        {b.attempts.length > 1 ? (
          <ul class="attempt-notes">
            {b.attempts.map((a) => (
              <li key={a.attempt}>
                Attempt {a.attempt}: {attemptText(a, b)}
                {a.startedAt ? <span class="muted"> · started {absolute(a.startedAt)}</span> : null}
              </li>
            ))}
          </ul>
        ) : null}
        <BuildLog key={`${b.id}/${attempt}`} build={b} attempt={attempt} />
      </section>

      <section class="card" aria-label="Artifacts">
        <div class="section-head">
          <h2>Artifacts</h2>
        </div>
        <ErrorNote error={artifacts.error} />
        <Artifacts build={b} list={artifacts.data} />
      </section>
    </>
  );
}

async function cancel(b: Build, set: (u: (c: Build | undefined) => Build | undefined) => void) {
  const next = await api.cancelBuild(b.id);
  set(() => next);
}

function Artifacts({ build, list }: { build: Build; list: Artifact[] | undefined }) {
  if (!list) return <Empty>Loading…</Empty>;
  if (list.length === 0) {
    return (
      <Empty>
        {TERMINAL.has(build.state)
          ? build.spec.artifacts.length
            ? `No file matched ${build.spec.artifacts.join(', ')}.`
            : 'This build keeps no artifacts.'
          : build.spec.artifacts.length
            ? `Uploaded when the build ends: ${build.spec.artifacts.join(', ')}`
            : 'This build keeps no artifacts.'}
      </Empty>
    );
  }
  return (
    <table class="table artifacts-table">
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col" class="num">Size</th>
          <th scope="col">SHA-256</th>
          <th scope="col">
            <span class="sr-only">Download</span>
          </th>
        </tr>
      </thead>
      <tbody>
        {list.map((a) => (
          <tr key={a.name}>
            <td class="mono wrap" data-label="Name">
              {a.name}
            </td>
            <td class="num" data-label="Size">
              {bytes(a.size)}
            </td>
            <td class="mono" data-label="SHA-256">
              <span class="sha" title={a.sha256}>
                {a.sha256.slice(0, 16)}…
              </span>{' '}
              <CopyButton text={a.sha256} label={`Copy the SHA-256 of ${a.name}`} />
            </td>
            <td data-label="">
              <button
                type="button"
                class="btn small"
                aria-label={`Download ${a.name}`}
                onClick={async () => saveBlob(await api.artifactBlob(build.id, a.name), a.name.split('/').pop() ?? a.name)}
              >
                Download
              </button>
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
