/**
 * `/builds`: every build, newest first, filtered by state, label, metadata
 * and free text, paged with cursors kept in the URL (so reload, back and a
 * shared link show the same page). Updates in place from the live stream.
 */
import { useState } from 'preact/hooks';
import { Link, useLocation, useSearch } from 'wouter-preact';
import { BUILD_STATES, type Build, type BuildList } from '@buildfleet/protocol';
import { api, type BuildQuery } from '../api.js';
import { buildName, duration, metadataPairs, queuedFor, shortId, STATE_LABEL, took } from '../format.js';
import { useLive } from '../live.js';
import { useDebounced, useLoad } from '../components/load.js';
import { Empty, ErrorNote, Labels, PageHeader, RelTime, StateBadge, useNow } from '../components/ui.js';

const PAGE = 50;

function queryFrom(search: string): BuildQuery {
  const p = new URLSearchParams(search);
  const get = (k: string) => p.get(k) ?? undefined;
  return {
    state: get('state'),
    label: get('label'),
    worker: get('worker'),
    meta: p.getAll('meta').filter(Boolean),
    q: get('q'),
    cursor: get('cursor'),
    before: get('before'),
  };
}

function searchFrom(q: BuildQuery): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) {
    if (Array.isArray(v)) for (const item of v) p.append(k, item);
    else if (v !== undefined && v !== '') p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : '';
}

/** Whether a live build belongs on the newest page of this filter (the server decides for text and metadata). */
function mayMatch(b: Build, q: BuildQuery): boolean {
  if (q.state && b.state !== q.state) return false;
  if (q.label && !b.spec.labels.includes(q.label)) return false;
  if (q.worker && !b.attempts.some((a) => a.workerId === q.worker) && b.workerId !== q.worker) return false;
  return true;
}

export function BuildsPage() {
  const search = useSearch();
  const [, navigate] = useLocation();
  const query = queryFrom(search);
  const list = useLoad<BuildList>((signal) => api.listBuilds({ ...query, limit: PAGE }, signal), [search]);
  const refetch = useDebounced(list.reload, 300);
  const now = useNow();
  const newest = !query.cursor && !query.before;

  useLive((e) => {
    if (e.type === 'hello') return list.reload();
    if (e.type !== 'build') return;
    const b = e.build;
    const shown = list.data?.builds.some((x) => x.id === b.id);
    if (shown) {
      list.setData((d) => d && { ...d, builds: d.builds.map((x) => (x.id === b.id ? b : x)) });
      if (query.state && b.state !== query.state) refetch();
    } else if (newest && mayMatch(b, query)) {
      refetch();
    }
  });

  const filtered = Boolean(query.state || query.label || query.q || query.worker || (query.meta && query.meta.length));
  const builds = list.data?.builds ?? [];

  return (
    <>
      <PageHeader title="Builds" sub={filtered ? 'Filtered' : 'All builds, newest first'} />
      <Filters query={query} onApply={(q) => navigate(`/builds${searchFrom(q)}`)} />
      <ErrorNote error={list.error} />
      <div class="card table-card">
        <table class="table builds-table">
          <thead>
            <tr>
              <th scope="col">Build</th>
              <th scope="col">State</th>
              <th scope="col">Labels</th>
              <th scope="col">Worker</th>
              <th scope="col" class="num">Attempt</th>
              <th scope="col" class="num">Queued for</th>
              <th scope="col" class="num">Took</th>
              <th scope="col">Submitted</th>
            </tr>
          </thead>
          <tbody>
            {builds.map((b) => (
              <BuildRow key={b.id} build={b} now={now} />
            ))}
          </tbody>
        </table>
        {list.data && builds.length === 0 ? (
          <Empty>{filtered ? 'No build matches these filters.' : 'No builds yet. Submit one with `buildfleet submit`.'}</Empty>
        ) : null}
        {!list.data && list.loading ? <Empty>Loading…</Empty> : null}
      </div>
      <nav class="pager" aria-label="Pages">
        {newest ? (
          <span />
        ) : (
          <Link class="btn" href={`/builds${searchFrom({ ...query, cursor: undefined, before: undefined })}`}>
            Newest
          </Link>
        )}
        <span class="spacer" />
        {list.data?.prevCursor ? (
          <Link class="btn" href={`/builds${searchFrom({ ...query, cursor: undefined, before: list.data.prevCursor })}`} aria-label="Newer builds">
            ← Newer
          </Link>
        ) : null}
        {list.data?.nextCursor ? (
          <Link class="btn" href={`/builds${searchFrom({ ...query, before: undefined, cursor: list.data.nextCursor })}`} aria-label="Older builds">
            Older →
          </Link>
        ) : list.data && !newest ? (
          <span class="muted">First build reached</span>
        ) : null}
      </nav>
    </>
  );
}

function BuildRow({ build: b, now }: { build: Build; now: number }) {
  const q = queuedFor(b, now);
  const t = took(b, now);
  const meta = metadataPairs(b).filter(([k]) => k === 'branch' || k === 'commit');
  return (
    <tr data-build-id={b.id}>
      <td class="cell-main" data-label="Build">
        <Link class="build-link" href={`/builds/${encodeURIComponent(b.id)}`}>
          {buildName(b)}
        </Link>
        <div class="muted small mono">
          #{shortId(b.id)}
          {meta.map(([k, v]) => (
            <span key={k}> · {k === 'commit' ? v.slice(0, 10) : v}</span>
          ))}
        </div>
      </td>
      <td data-label="State">
        <StateBadge state={b.state} cancelRequested={b.cancelRequested} />
      </td>
      <td data-label="Labels">
        <Labels labels={b.spec.labels} />
      </td>
      <td data-label="Worker">
        {b.workerId ? (
          <Link href={`/workers/${encodeURIComponent(b.workerId)}`}>{b.workerName ?? `…${shortId(b.workerId)}`}</Link>
        ) : (
          <span class="muted">–</span>
        )}
      </td>
      <td data-label="Attempt" class="num">
        {b.attempt > 1 ? `${b.attempt} of ${b.spec.maxAttempts}` : b.attempt}
      </td>
      <td data-label="Queued for" class="num">
        {q === null ? <span class="muted">–</span> : duration(q)}
      </td>
      <td data-label="Took" class="num">
        {t === null ? <span class="muted">–</span> : duration(t)}
      </td>
      <td data-label="Submitted">
        <RelTime iso={b.createdAt} now={now} />
      </td>
    </tr>
  );
}

function Filters({ query, onApply }: { query: BuildQuery; onApply(q: BuildQuery): void }) {
  const [q, setQ] = useState(query.q ?? '');
  const [label, setLabel] = useState(query.label ?? '');
  const [meta, setMeta] = useState((query.meta ?? []).join(' '));
  const apply = (patch: Partial<BuildQuery> = {}) =>
    onApply({
      q: q.trim() || undefined,
      state: query.state,
      label: label.trim() || undefined,
      worker: query.worker,
      meta: meta.split(/\s+/).filter((m) => m.includes('=')),
      ...patch,
    });
  return (
    <form
      class="filters card"
      role="search"
      aria-label="Filter builds"
      onSubmit={(e) => {
        e.preventDefault();
        apply();
      }}
    >
      <label class="field grow">
        <span>Search</span>
        <input type="search" name="q" placeholder="id, name or script" value={q} onInput={(e) => setQ((e.target as HTMLInputElement).value)} />
      </label>
      <label class="field">
        <span>State</span>
        <select name="state" value={query.state ?? ''} onChange={(e) => apply({ state: (e.target as HTMLSelectElement).value || undefined })}>
          <option value="">Any state</option>
          {BUILD_STATES.map((s) => (
            <option key={s} value={s}>
              {STATE_LABEL[s]}
            </option>
          ))}
        </select>
      </label>
      <label class="field">
        <span>Label</span>
        <input name="label" placeholder="linux" value={label} onInput={(e) => setLabel((e.target as HTMLInputElement).value)} />
      </label>
      <label class="field">
        <span>Metadata</span>
        <input name="meta" placeholder="branch=main" value={meta} onInput={(e) => setMeta((e.target as HTMLInputElement).value)} />
      </label>
      <div class="field-actions">
        <button type="submit" class="btn primary">
          Filter
        </button>
        {query.q || query.state || query.label || query.worker || query.meta?.length ? (
          <button
            type="button"
            class="btn"
            onClick={() => {
              setQ('');
              setLabel('');
              setMeta('');
              onApply({});
            }}
          >
            Clear
          </button>
        ) : null}
      </div>
    </form>
  );
}
