/**
 * Following a build against the real controller (in process): the log comes
 * from one event stream (`Accept: text/event-stream`), not from polling, and
 * survives an attempt being lost and requeued. The build is driven step by
 * step over the real protocol by a scripted worker.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { paths, systemClock } from '@buildfleet/protocol';
import { API_TOKEN, startTestController, type TestController } from '../../../test/support/controller.js';
import { RecordingProxy } from '../../../test/support/proxy.js';
import { ScriptedWorker } from '../../../test/support/scripted-worker.js';
import { waitFor } from '../../controller/test/support/wait.js';
import { ApiClient } from '../src/client.js';
import { followBuild, waitForBuild } from '../src/follow.js';

let ctl: TestController;
let proxy: RecordingProxy;
let client: ApiClient;
/** The Accept header of every log request the follower sent. */
const logRequests = () => proxy.seen.filter((r) => r.method === 'GET' && /\/logs(\?|$)/.test(r.path)).map((r) => r.accept);

beforeEach(async () => {
  ctl = await startTestController({ config: { logFollowRecheckMs: 100 } });
  proxy = await RecordingProxy.start(ctl.url);
  client = new ApiClient({ controllerUrl: proxy.url, apiToken: API_TOKEN, tokenSource: 'test' });
});
afterEach(async () => {
  await proxy.close();
  await ctl.close();
});

describe('followBuild', () => {
  it('prints the whole log from one event stream, switches to a new attempt, and returns the terminal build', async () => {
    const build = await ctl.api.submit({ script: 'scripted', maxAttempts: 2 });
    const w1 = await ScriptedWorker.register(ctl.api);
    const a1 = await w1.claim();
    await w1.start(a1);

    let printed = '';
    const attempts: number[] = [];
    const following = followBuild(client, build.id, (c) => (printed += c.toString()), { clock: systemClock, onAttempt: (a) => attempts.push(a) });

    await w1.log(a1, 'one\n');
    await waitFor(() => printed === 'one\n', { what: 'the first line' });
    // Attempt 1 is lost with its worker; attempt 2 runs elsewhere.
    await ctl.api.ok('DELETE', paths.worker(w1.id));
    const w2 = await ScriptedWorker.register(ctl.api);
    const a2 = await w2.claim();
    expect(a2.attempt).toBe(2);
    await w2.start(a2);
    await w2.log(a2, 'two\n');
    await w2.log(a2, 'three\n');
    await w2.finish(a2, 'succeeded');

    const final = await following;
    expect(final).toMatchObject({ id: build.id, state: 'succeeded', attempt: 2 });
    expect(attempts).toEqual([2]);
    expect(printed).toBe('one\ntwo\nthree\n');
    // One stream, no polling.
    expect(logRequests()).toEqual(['text/event-stream']);
  });

  it('waitForBuild resolves with the terminal build from the same stream', async () => {
    const build = await ctl.api.submit({ script: 'scripted' });
    const w = await ScriptedWorker.register(ctl.api);
    const a = await w.claim();
    await w.start(a);
    const waiting = waitForBuild(client, build.id, { clock: systemClock });
    await w.log(a, 'x\n');
    await w.finish(a, 'failed', 3);
    expect(await waiting).toMatchObject({ state: 'failed', exitCode: 3 });
    expect(logRequests()).toEqual(['text/event-stream']);
  });

  it('reports a missing build as BUILD_NOT_FOUND', async () => {
    await expect(followBuild(client, 'nope', () => {}, { clock: systemClock })).rejects.toMatchObject({ code: 'BUILD_NOT_FOUND' });
  });
});
