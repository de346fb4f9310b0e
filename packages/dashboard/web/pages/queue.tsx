/**
 * `/queue`: what waits and why: queued builds per label set with the oldest
 * wait, label sets no connected worker serves, and the last hour's builds
 * finished per minute and queue wait (`GET /stats`, kept by the controller).
 */
import { useMemo } from 'preact/hooks';
import { Link } from 'wouter-preact';
import type { QueueGroup, Stats, Worker } from '@buildfleet/protocol';
import { api } from '../api.js';
import { duration, ms, workerState } from '../format.js';
import { useLive } from '../live.js';
import { useDebounced, useLoad } from '../components/load.js';
import { Chart } from '../components/chart.js';
import { Empty, ErrorNote, Labels, PageHeader, useNow } from '../components/ui.js';

/** Workers that could take a build with these labels now or later (connected; draining ones counted apart). */
function servers(group: QueueGroup, workers: Worker[]): { ready: number; draining: number } {
  let ready = 0;
  let draining = 0;
  for (const w of workers) {
    const s = workerState(w);
    if (s === 'offline' || !group.labels.every((l) => w.labels.includes(l))) continue;
    if (s === 'draining') draining += 1;
    else ready += 1;
  }
  return { ready, draining };
}

export function QueuePage() {
  const stats = useLoad<Stats>((signal) => api.stats(60, signal), []);
  const workers = useLoad<Worker[]>((signal) => api.listWorkers(signal), []);
  const now = useNow();
  const reload = useDebounced(() => {
    stats.reload();
    workers.reload();
  }, 2000);
  useLive((e) => {
    if (e.type === 'hello') {
      stats.reload();
      workers.reload();
    } else reload();
  });

  const groups = stats.data?.queue ?? [];
  const fleet = workers.data ?? [];
  const unserved = groups.filter((g) => servers(g, fleet).ready + servers(g, fleet).draining === 0);
  const total = groups.reduce((n, g) => n + g.count, 0);

  const series = useMemo(() => {
    const m = stats.data?.minutes ?? [];
    return {
      x: m.map((p) => (ms(p.at) ?? 0) / 1000),
      finished: [m.map((p) => p.finished), m.map((p) => p.failed)],
      wait: [m.map((p) => (p.queueWaitAvgMs === null ? null : p.queueWaitAvgMs / 1000)), m.map((p) => (p.queueWaitMaxMs === null ? null : p.queueWaitMaxMs / 1000))],
    };
  }, [stats.data]);

  return (
    <>
      <PageHeader title="Queue" sub={stats.data ? `${total} queued` : 'What waits, and why'} />
      <ErrorNote error={stats.error ?? workers.error} />
      {unserved.length ? (
        <div class="note warn" role="status">
          <strong>No connected worker serves {unserved.length === 1 ? 'this label set' : 'these label sets'}:</strong>{' '}
          {unserved.map((g, i) => (
            <span key={i}>
              {i ? '; ' : ''}
              {g.labels.length ? g.labels.join(', ') : '(no labels)'}
            </span>
          ))}
          . Those builds wait until a worker with the labels registers.
        </div>
      ) : null}
      <section class="card table-card" aria-label="Queued builds by labels">
        <div class="section-head">
          <h2>Queued by labels</h2>
          <Link href="/builds?state=queued">All queued builds</Link>
        </div>
        <table class="table queue-table">
          <thead>
            <tr>
              <th scope="col">Labels</th>
              <th scope="col" class="num">Queued</th>
              <th scope="col" class="num">Oldest waits</th>
              <th scope="col">Workers</th>
            </tr>
          </thead>
          <tbody>
            {groups.map((g) => {
              const s = servers(g, fleet);
              const oldest = ms(g.oldestCreatedAt);
              return (
                <tr key={g.labels.join(',')}>
                  <td data-label="Labels">
                    <Labels labels={g.labels} empty="(none)" />
                  </td>
                  <td class="num" data-label="Queued">
                    <Link href={`/builds?state=queued${g.labels.length === 1 ? `&label=${encodeURIComponent(g.labels[0]!)}` : ''}`}>{g.count}</Link>
                  </td>
                  <td class="num" data-label="Oldest waits">
                    {oldest === null ? '–' : duration(now - oldest)}
                  </td>
                  <td data-label="Workers">
                    {s.ready + s.draining === 0 ? (
                      <span class="badge ws-offline">none</span>
                    ) : (
                      `${s.ready} ready${s.draining ? `, ${s.draining} draining` : ''}`
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
        {stats.data && groups.length === 0 ? <Empty>Nothing is waiting.</Empty> : null}
      </section>
      <div class="charts">
        <section class="card" aria-label="Builds finished per minute">
          <div class="section-head">
            <h2>Builds finished per minute</h2>
            <span class="muted small">last hour</span>
          </div>
          {stats.data ? (
            <Chart
              label="Builds finished per minute over the last hour"
              x={series.x}
              ys={series.finished}
              yLabel="builds"
              series={[
                // Failed bars are drawn over the finished ones: a stack of two.
                { label: 'finished', stroke: '#12a150', fill: 'rgba(18,161,80,0.6)', bars: true },
                { label: 'of which failed', stroke: '#e5484d', fill: 'rgba(229,72,77,0.85)', bars: true },
              ]}
            />
          ) : null}
        </section>
        <section class="card" aria-label="Queue wait">
          <div class="section-head">
            <h2>Queue wait</h2>
            <span class="muted small">submit to first worker, last hour</span>
          </div>
          {stats.data ? (
            <Chart
              label="Queue wait per minute over the last hour"
              x={series.x}
              ys={series.wait}
              yLabel="seconds"
              series={[
                { label: 'mean', stroke: '#3e63dd', format: (v) => duration(v * 1000) },
                { label: 'longest', stroke: '#f76b15', format: (v) => duration(v * 1000) },
              ]}
            />
          ) : null}
        </section>
      </div>
    </>
  );
}
