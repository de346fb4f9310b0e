/**
 * Concurrency groups over real HTTP (issue 13): a full group keeps its
 * builds queued in order, and `cancelInProgress` cancels the group's older
 * builds instead (queued ones at once, a running one by cancel request).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { paths, type Build } from '@buildfleet/protocol';
import { API_TOKEN, startHarness, type Harness } from '../http/harness.js';
import { ProtocolWorker } from '../ops/protocol-worker.js';

describe('concurrency groups over HTTP', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });
  const get = async (id: string) => ((await (await h.req('GET', paths.build(id), { token: API_TOKEN })).json()) as { build: Build }).build;

  it('holds a full group in the queue, in order, and hands out the next one when a build ends', async () => {
    const w = await ProtocolWorker.register(h, 10, ['g1']);
    const spec = { script: 'true', labels: ['g1'], concurrency: { group: 'release' } };
    const a = await h.submitOk(spec);
    const b = await h.submitOk({ ...spec, priority: 9 });
    expect(a.spec.concurrency).toEqual({ group: 'release', limit: 1, cancelInProgress: false });
    expect((await w.claim(10, 0)).map((x) => x.id)).toEqual([a.id]);
    expect(await w.claim(10, 0)).toEqual([]);
    expect((await get(b.id)).waiting).toMatchObject({ reason: 'concurrency_group' });
    await w.start(a.id);
    await w.finish(a.id);
    expect((await w.claim(10, 0)).map((x) => x.id)).toEqual([b.id]);
  });

  it('cancelInProgress cancels the older builds of the group that have not ended', async () => {
    const w = await ProtocolWorker.register(h, 10, ['g2']);
    const spec = { script: 'true', labels: ['g2'], concurrency: { group: 'preview', cancelInProgress: true } };
    const running = await h.submitOk(spec);
    await w.claim(1, 0);
    await w.start(running.id);
    const queued = await h.submitOk(spec);
    const other = await h.submitOk({ ...spec, concurrency: { group: 'elsewhere', cancelInProgress: true } });
    const newest = await h.submitOk(spec);
    expect(newest.state).toBe('queued');
    expect(await get(queued.id)).toMatchObject({ state: 'canceled', reason: 'canceled' });
    expect(await get(running.id)).toMatchObject({ state: 'running', cancelRequested: true });
    expect((await get(other.id)).state).not.toBe('canceled');
    // The group stays full until the canceled running build reports.
    expect((await w.claim(10, 0)).map((x) => x.id)).toEqual([other.id]);
    await w.finish(running.id, 'failed');
    expect((await w.claim(10, 0)).map((x) => x.id)).toEqual([newest.id]);
  });
});
