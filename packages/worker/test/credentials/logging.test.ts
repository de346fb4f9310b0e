/**
 * Tokens are never logged, worker side (issue 4; docs/protocol.md "Credentials"):
 * the worker's default logger at debug level, through registration, a
 * build, a proactive refresh, a 401 re-registration and a deletion against
 * the real controller, writes no token of any kind.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { paths } from '@buildfleet/protocol';
import { IdentityStore } from '../../src/identity.js';
import { defaultLogger } from '../../src/logger.js';
import type { RegisteredEvent } from '../../src/session.js';
import { tarGz } from '../support/tarball.js';
import { once } from '../support/wait.js';
import { API_TOKEN, ENROLLMENT_TOKEN, startRig, type Rig } from './harness.js';

const LEAKED = /\bbf[aesbw]_[A-Za-z0-9_.-]{8,}/;

describe('worker logs', () => {
  let rig: Rig | undefined;
  afterEach(async () => {
    await rig?.close();
    rig = undefined;
  });

  it('carry no token through registration, a build, refreshes, a 401 and a deletion', async () => {
    const r = (rig = await startRig('sqlite'));
    const lines: string[] = [];
    const logger = defaultLogger({ write: (s: string) => void lines.push(s) }, 'debug');
    const dir = await r.workerDir();
    const w = await r.worker({}, { logger }, dir);
    const secrets = new Set<string>([API_TOKEN, ENROLLMENT_TOKEN, w.session.accessToken!]);
    w.events.on('registered', (e: RegisteredEvent) => {
      secrets.add(e.answer.accessToken);
      if (e.answer.workerSecret) secrets.add(e.answer.workerSecret);
      for (const b of e.answer.builds) secrets.add(b.buildToken);
    });
    const identity = new IdentityStore(path.join(dir, 'worker'));
    const first = await identity.load();
    secrets.add(first.workerSecret!);

    const go = path.join(dir, 'go');
    const running = once(w.events, 'build:running', 15_000);
    const build = await r.submit({ script: 'echo hi; while [ ! -f "$GO" ]; do sleep 0.02; done', env: { GO: go } }, tarGz([]));
    await running;
    await w.session.reregister('proactive refresh'); // its answer lists the running build with its build token
    // Someone rotates the token behind the worker's back: its next call gets 401 and it re-registers.
    const reregistered = new Promise<RegisteredEvent>((resolve) => w.events.once('registered', resolve));
    const rotated = await r.registerOk({ workerId: w.workerId, workerSecret: first.workerSecret, bootId: w.session.bootId, activeBuildIds: [build.id] }, null);
    secrets.add(rotated.accessToken);
    for (const b of rotated.builds) secrets.add(b.buildToken);
    expect((await reregistered).reason).toMatch(/TOKEN_INVALID/);
    await fs.writeFile(go, '');
    expect((await r.finished(build.id)).state).toBe('succeeded');
    // Deleted: 404, then a new registration with the enrollment token.
    const anew = new Promise<RegisteredEvent>((resolve) => w.events.once('registered', resolve));
    expect((await r.api('DELETE', paths.worker(w.workerId))).status).toBe(200);
    expect((await anew).kind).toBe('new');
    secrets.add((await identity.load()).workerSecret!);

    logger.warn({ accessToken: w.session.accessToken, deep: { answer: { workerSecret: 'plain-secret' } } }, `oops ${w.session.accessToken}`);
    logger.error({ err: new Error(`failed with ${w.session.accessToken}`) }, 'error');
    secrets.add('plain-secret');

    const text = lines.join('');
    expect(lines.length).toBeGreaterThan(5);
    expect(text).toContain('registered');
    expect(secrets.size).toBeGreaterThan(8);
    for (const s of secrets) expect(text.includes(s), `a token was logged: ${s.slice(0, 6)}…`).toBe(false);
    expect(text).not.toMatch(LEAKED);
    expect(text).toContain('[redacted]');
  });
});
