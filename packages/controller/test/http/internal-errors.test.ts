/**
 * An exception the controller did not expect is a bug and says so: `500
 * INTERNAL` with an error id that is also in the controller's log line. `503
 * UNAVAILABLE` is kept for an unreachable database or a lock timeout (and
 * never names the database's address); a full disk is `507 STORAGE_FULL`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { ApiError, ERROR_STATUS, paths } from '@buildfleet/protocol';
import { toApiError } from '../../src/http/errors.js';
import { REDACT_PATHS } from '../../src/app.js';
import { API_TOKEN, startHarness, type Harness } from './harness.js';

describe('toApiError', () => {
  it('classifies protocol errors, client errors, full disks, unreachable databases and bugs', () => {
    expect(toApiError(new ApiError('LEASE_LOST', 'x')).kind).toBe('refused');
    expect(toApiError(Object.assign(new Error('too big'), { statusCode: 413 })).error.code).toBe('PAYLOAD_TOO_LARGE');
    expect(toApiError(Object.assign(new Error('no space left on device'), { code: 'ENOSPC' })).error.code).toBe('STORAGE_FULL');
    expect(toApiError(Object.assign(new Error('could not extend file'), { code: '53100' })).error.status).toBe(507);
    expect(toApiError(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' })).error.code).toBe('STORAGE_FULL');
    const down = toApiError(Object.assign(new Error('connect ECONNREFUSED 10.1.2.3:5432'), { code: 'ECONNREFUSED' }));
    expect(down.error.code).toBe('UNAVAILABLE');
    expect(down.error.message).not.toContain('10.1.2.3');
    const bug = toApiError(new TypeError("Cannot read properties of undefined (reading 'x')"), { newId: () => 'id-1' });
    expect(bug).toMatchObject({ kind: 'internal', errorId: 'id-1' });
    expect(bug.error.toBody()).toEqual({ error: { code: 'INTERNAL', message: expect.stringContaining('id-1'), id: 'id-1' } });
    expect(toApiError(new Error('aborted'), { clientGone: true }).kind).toBe('client-gone');
  });

  it('the protocol table has INTERNAL 500, STORAGE_FULL 507 and NOT_FOUND 404; UNAVAILABLE is the only 503', () => {
    expect(ERROR_STATUS.INTERNAL).toBe(500);
    expect(ERROR_STATUS.STORAGE_FULL).toBe(507);
    expect(ERROR_STATUS.NOT_FOUND).toBe(404);
    expect(Object.entries(ERROR_STATUS).filter(([, s]) => s === 503)).toEqual([['UNAVAILABLE', 503]]);
  });
});

describe('unexpected errors over HTTP', () => {
  let h: Harness;
  const lines: string[] = [];
  beforeAll(async () => {
    const logger = pino({ level: 'info', redact: { paths: REDACT_PATHS, censor: '[redacted]' } }, { write: (l: string) => void lines.push(l) });
    h = await startHarness({}, { logger: logger as never });
  });
  afterAll(async () => {
    await h?.close();
  });

  /** Replaces `store[method]` with one that throws `err` for the duration of `fn`. */
  async function failing<T>(method: 'getBuild' | 'listBuilds', err: unknown, fn: () => Promise<T>): Promise<T> {
    const store = h.ctl.store as unknown as Record<string, unknown>;
    const saved = store[method];
    store[method] = async () => {
      throw err;
    };
    try {
      return await fn();
    } finally {
      store[method] = saved;
    }
  }

  it('a bug answers 500 INTERNAL whose error id is in the log line with the stack', async () => {
    const res = await failing('getBuild', new TypeError('secret detail: undefined is not a function'), () =>
      h.req('GET', paths.build('b1'), { token: API_TOKEN }),
    );
    expect(res.status).toBe(500);
    const body = (await res.json()) as { error: { code: string; message: string; id: string } };
    expect(body.error.code).toBe('INTERNAL');
    expect(body.error.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(body.error.message).toContain(body.error.id);
    expect(body.error.message).not.toContain('secret detail');
    const logged = lines.map((l) => JSON.parse(l) as { level: number; errorId?: string; err?: { stack?: string } }).find((l) => l.errorId === body.error.id);
    expect(logged?.level).toBe(50);
    expect(logged?.err?.stack).toContain('secret detail');
    expect(res.headers.get('retry-after')).toBeNull();
  });

  it('an unreachable database answers 503 UNAVAILABLE without its address', async () => {
    for (const err of [
      new ApiError('UNAVAILABLE', 'database unavailable: connect ECONNREFUSED 10.9.8.7:5432'),
      Object.assign(new Error('connect ECONNREFUSED 10.9.8.7:5432'), { code: 'ECONNREFUSED' }),
    ]) {
      const res = await failing('listBuilds', err, () => h.req('GET', paths.builds(), { token: API_TOKEN }));
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toMatch(/^\d+$/);
      const text = await res.text();
      expect(JSON.parse(text).error.code).toBe('UNAVAILABLE');
      expect(text).not.toContain('10.9.8.7');
    }
  });

  it('a full disk answers 507 STORAGE_FULL', async () => {
    const res = await failing('listBuilds', Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' }), () =>
      h.req('GET', paths.builds(), { token: API_TOKEN }),
    );
    expect(res.status).toBe(507);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('STORAGE_FULL');
  });
});
