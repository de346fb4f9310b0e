/**
 * `/workers` and `/workers/{id}`: who is in the fleet and what each one is
 * doing; drain, resume and delete ask first. Live from the event stream.
 */
import { Link, useLocation, useParams } from 'wouter-preact';
import type { Build, BuildList, Worker } from '@buildfleet/protocol';
import { api } from '../api.js';
import { buildName, duration, shortId, took, workerState } from '../format.js';
import { useLive } from '../live.js';
import { useLoad } from '../components/load.js';
import { ConfirmButton } from '../components/confirm.js';
import { Empty, ErrorNote, Labels, PageHeader, RelTime, StateBadge, useNow, WorkerBadge } from '../components/ui.js';

function upsert(list: Worker[] | undefined, w: Worker): Worker[] | undefined {
  if (!list) return list;
  return list.some((x) => x.id === w.id) ? list.map((x) => (x.id === w.id ? w : x)) : [...list, w];
}

export function WorkersPage() {
  const workers = useLoad<Worker[]>((signal) => api.listWorkers(signal), []);
  const now = useNow();
  useLive((e) => {
    if (e.type === 'hello') workers.reload();
    else if (e.type === 'worker') workers.setData((l) => upsert(l, e.worker));
    else if (e.type === 'worker-deleted') workers.setData((l) => l?.filter((w) => w.id !== e.id));
  });
  const list = [...(workers.data ?? [])].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
  const counts = list.reduce<Record<string, number>>((acc, w) => {
    const s = workerState(w);
    acc[s] = (acc[s] ?? 0) + 1;
    return acc;
  }, {});
  return (
    <>
      <PageHeader
        title="Workers"
        sub={list.length ? Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(' · ') : 'The machines that run builds'}
      >
        <Link class="btn" href="/tokens">
          Add a worker
        </Link>
      </PageHeader>
      <ErrorNote error={workers.error} />
      <div class="card table-card">
        <table class="table workers-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">State</th>
              <th scope="col">Labels</th>
              <th scope="col">Executor</th>
              <th scope="col">Version</th>
              <th scope="col" class="num">Builds</th>
              <th scope="col">Last seen</th>
              <th scope="col">Token expires</th>
            </tr>
          </thead>
          <tbody>
            {list.map((w) => (
              <tr key={w.id} data-worker-id={w.id}>
                <td class="cell-main" data-label="Name">
                  <Link href={`/workers/${encodeURIComponent(w.id)}`}>{w.name}</Link>
                  <div class="muted small mono">#{shortId(w.id)}</div>
                </td>
                <td data-label="State">
                  <WorkerBadge state={workerState(w)} />
                </td>
                <td data-label="Labels">
                  <Labels labels={w.labels} />
                </td>
                <td data-label="Executor">{w.executor ?? <span class="muted">–</span>}</td>
                <td data-label="Version" class="mono">
                  {w.version}
                </td>
                <td data-label="Builds" class="num">
                  {w.activeBuildCount} / {w.maxConcurrentBuilds}
                </td>
                <td data-label="Last seen">
                  <RelTime iso={w.lastSeenAt} now={now} />
                </td>
                <td data-label="Token expires">
                  <RelTime iso={w.accessTokenExpiresAt} now={now} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {workers.data && list.length === 0 ? (
          <Empty>
            No workers yet. <Link href="/tokens">Create an enrollment token</Link> and start one with <code>buildfleet worker</code>.
          </Empty>
        ) : null}
        {!workers.data && workers.loading ? <Empty>Loading…</Empty> : null}
      </div>
    </>
  );
}

export function WorkerPage() {
  const { id } = useParams<{ id: string }>();
  const [, navigate] = useLocation();
  const worker = useLoad<Worker>((signal) => api.getWorker(id, signal), [id]);
  const builds = useLoad<BuildList>((signal) => api.listBuilds({ worker: id, limit: 20 }, signal), [id]);
  const now = useNow();
  useLive((e) => {
    if (e.type === 'hello') {
      worker.reload();
      builds.reload();
    } else if (e.type === 'worker' && e.worker.id === id) worker.setData(() => e.worker);
    else if (e.type === 'build' && (e.build.workerId === id || builds.data?.builds.some((b) => b.id === e.build.id))) builds.reload();
  });
  const w = worker.data;
  if (!w) {
    return (
      <>
        <PageHeader title={`Worker ${shortId(id)}`} />
        <ErrorNote error={worker.error} />
        {worker.loading ? <Empty>Loading…</Empty> : null}
      </>
    );
  }
  const state = workerState(w);
  const running = (builds.data?.builds ?? []).filter((b) => b.workerId === w.id && (b.state === 'running' || b.state === 'assigned'));
  const recent = (builds.data?.builds ?? []).filter((b) => !running.includes(b));
  return (
    <>
      <nav class="crumbs" aria-label="Breadcrumb">
        <Link href="/workers">Workers</Link> <span aria-hidden="true">/</span> <span>{w.name}</span>
      </nav>
      <PageHeader title={w.name} sub={<span class="mono">{w.id}</span>}>
        {w.status === 'draining' ? (
          <ConfirmButton
            label="Resume"
            title={`Resume ${w.name}?`}
            confirmLabel="Resume worker"
            onConfirm={() => resume(w.id, worker.setData)}
          >
            It takes new builds again.
          </ConfirmButton>
        ) : (
          <ConfirmButton label="Drain" title={`Drain ${w.name}?`} confirmLabel="Drain worker" onConfirm={() => drain(w.id, worker.setData)}>
            It finishes the builds it is running and takes no new ones. It stays connected; resume it to give it builds again.
          </ConfirmButton>
        )}
        <ConfirmButton
          label="Delete"
          title={`Delete ${w.name}?`}
          confirmLabel="Delete worker"
          danger
          onConfirm={async () => {
            await api.deleteWorker(w.id);
            navigate('/workers');
          }}
        >
          {w.activeBuildCount > 0
            ? `Its ${w.activeBuildCount} build(s) are lost at once and go back to the queue as a new attempt while attempts remain. `
            : ''}
          A running worker process registers again as a new worker.
        </ConfirmButton>
      </PageHeader>
      <section class="card details" aria-label="Details">
        <dl class="kv">
          <div>
            <dt>State</dt>
            <dd>
              <WorkerBadge state={state} />
            </dd>
          </div>
          <div>
            <dt>Labels</dt>
            <dd>
              <Labels labels={w.labels} empty="none" />
            </dd>
          </div>
          <div>
            <dt>Executor</dt>
            <dd>{w.executor ?? '–'}</dd>
          </div>
          <div>
            <dt>Version</dt>
            <dd class="mono">{w.version}</dd>
          </div>
          <div>
            <dt>Builds</dt>
            <dd>
              {w.activeBuildCount} of {w.maxConcurrentBuilds} slots
            </dd>
          </div>
          <div>
            <dt>Last seen</dt>
            <dd>
              <RelTime iso={w.lastSeenAt} now={now} />
            </dd>
          </div>
          <div>
            <dt>Access token expires</dt>
            <dd>
              <RelTime iso={w.accessTokenExpiresAt} now={now} />
            </dd>
          </div>
          <div>
            <dt>Registered</dt>
            <dd>
              <RelTime iso={w.createdAt} now={now} />
            </dd>
          </div>
        </dl>
      </section>
      <section class="card" aria-label="Running builds">
        <div class="section-head">
          <h2>Running</h2>
        </div>
        <BuildLines builds={running} now={now} empty={state === 'offline' ? 'Offline.' : 'Nothing running.'} />
      </section>
      <section class="card" aria-label="Recent builds">
        <div class="section-head">
          <h2>Recent builds</h2>
          <Link href={`/builds?worker=${encodeURIComponent(w.id)}`}>All builds on {w.name}</Link>
        </div>
        <BuildLines builds={recent} now={now} empty="No builds yet." />
      </section>
    </>
  );
}

async function drain(id: string, set: (u: (c: Worker | undefined) => Worker | undefined) => void) {
  const w = await api.drainWorker(id);
  set(() => w);
}

async function resume(id: string, set: (u: (c: Worker | undefined) => Worker | undefined) => void) {
  const w = await api.resumeWorker(id);
  set(() => w);
}

function BuildLines({ builds, now, empty }: { builds: Build[]; now: number; empty: string }) {
  if (builds.length === 0) return <Empty>{empty}</Empty>;
  return (
    <ul class="build-lines">
      {builds.map((b) => {
        const t = took(b, now);
        return (
          <li key={b.id}>
            <StateBadge state={b.state} cancelRequested={b.cancelRequested} />
            <Link href={`/builds/${encodeURIComponent(b.id)}`}>{buildName(b)}</Link>
            <span class="muted small">
              #{shortId(b.id)}
              {t !== null ? ` · ${duration(t)}` : ''}
            </span>
          </li>
        );
      })}
    </ul>
  );
}
