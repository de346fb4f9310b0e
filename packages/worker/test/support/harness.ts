/** Shared setup for worker tests: temp dirs, a session wired to a fake controller. */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { systemClock, type Clock, type HeartbeatResponse } from '@buildfleet/protocol';
import { loadWorkerConfig, type WorkerConfig, type WorkerConfigOverrides } from '../../src/config.js';
import type { Transport } from '../../src/client/connection.js';
import type { ControllerClient } from '../../src/client/controller-client.js';
import { createHttpClient } from '../../src/client/http-controller-client.js';
import { IdentityStore } from '../../src/identity.js';
import { silentLogger } from '../../src/logger.js';
import { Session } from '../../src/session.js';

export async function tempDir(prefix = 'bf-worker-'): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), prefix));
}

export function testConfig(fake: { url: string; enrollmentToken: string }, dataDir: string, over: WorkerConfigOverrides = {}): WorkerConfig {
  return loadWorkerConfig(
    {},
    {
      controllerUrls: [fake.url],
      enrollmentToken: fake.enrollmentToken,
      dataDir,
      name: 'test-worker',
      requestTimeoutMs: 5_000,
      // The sandbox has tests of its own (test/sandbox/); the rest need not pay for it.
      executor: 'shell',
      ...over,
    },
  );
}

export interface SessionRig {
  session: Session;
  client: ControllerClient;
  config: WorkerConfig;
  identity: IdentityStore;
}

export function makeSession(
  fake: { url: string; enrollmentToken: string },
  dataDir: string,
  opts: { clock?: Clock; active?: () => string[]; transport?: Transport; config?: WorkerConfigOverrides } = {},
): SessionRig {
  const clock = opts.clock ?? systemClock;
  const config = testConfig(fake, dataDir, opts.config);
  const client = createHttpClient({ urls: config.controllerUrls, clock, requestTimeoutMs: config.requestTimeoutMs, transport: opts.transport, backoff: { baseMs: 1, maxMs: 5 } });
  const identity = new IdentityStore(config.stateDir);
  const session = new Session({
    client,
    config,
    identityStore: identity,
    clock,
    logger: silentLogger,
    activeBuildIds: opts.active ?? (() => []),
  });
  return { session, client, config, identity };
}

/** One heartbeat through the session (the simplest authenticated call). */
export function heartbeat(rig: SessionRig, activeBuildIds: string[] = []): Promise<HeartbeatResponse> {
  return rig.session.call((accessToken, workerId) => rig.client.heartbeat({ workerId, accessToken }, { activeBuildIds }, rig.config.requestTimeoutMs));
}

/** The client's methods bound to it, to spread into a wrapper that changes a few (faults the real controller cannot make). */
export function bindClient(c: ControllerClient): ControllerClient {
  return {
    register: c.register.bind(c),
    poll: c.poll.bind(c),
    heartbeat: c.heartbeat.bind(c),
    start: c.start.bind(c),
    downloadSource: c.downloadSource.bind(c),
    appendLog: c.appendLog.bind(c),
    uploadArtifact: c.uploadArtifact.bind(c),
    finish: c.finish.bind(c),
    secrets: c.secrets.bind(c),
    cacheLookup: c.cacheLookup.bind(c),
    cacheDownload: c.cacheDownload.bind(c),
    cacheUpload: c.cacheUpload.bind(c),
    deregister: c.deregister.bind(c),
  };
}
