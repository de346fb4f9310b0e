/**
 * docs/protocol.md is the project's own description of the wire contract.
 * This test keeps it honest against the code: every route a real controller
 * registers, every error code and its status, every build state and reason,
 * every log-stream event and every configuration variable must be there,
 * and nothing the page lists may be missing from the code.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AssignedBuildSchema,
  BUILD_REASONS,
  BUILD_STATES,
  ENV,
  ERROR_STATUS,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
  LOG_STREAM_EVENTS,
  PollRequestSchema,
  PollResponseSchema,
  RegisterRequestSchema,
  RegisterResponseSchema,
  WorkerSettingsSchema,
} from '@buildfleet/protocol';
import { loadControllerConfig, startController, type RunningController } from '@buildfleet/controller';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const DOC = readFileSync(join(ROOT, 'docs/protocol.md'), 'utf8');

/** The rows of the markdown table that follows `heading` (a line starting with it). */
function tableAfter(heading: string): string[][] {
  const lines = DOC.split('\n');
  const start = lines.findIndex((l) => l.startsWith(heading));
  if (start < 0) throw new Error(`docs/protocol.md has no heading "${heading}"`);
  const rows: string[][] = [];
  let inTable = false;
  for (const line of lines.slice(start + 1)) {
    if (line.startsWith('|')) {
      inTable = true;
      const cells = line.split('|').slice(1, -1).map((c) => c.trim());
      if (cells.every((c) => /^-+$/.test(c))) continue;
      rows.push(cells);
    } else if (inTable) break;
    else if (line.startsWith('#')) break;
  }
  return rows.slice(1); // without the header row
}

const unquote = (cell: string) => cell.replace(/`/g, '');

describe('docs/protocol.md matches the code', () => {
  let ctl: RunningController;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'bf-docs-'));
    const config = loadControllerConfig({}, { host: '127.0.0.1', port: 0, dataDir, logLevel: 'silent' });
    ctl = await startController(config, { reaper: false });
  });
  afterAll(async () => {
    await ctl?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('lists every route the controller registers, each with the credential it takes, and no route that does not exist', async () => {
    const rows = tableAfter('## Endpoints at a glance');
    const documented = new Set<string>();
    for (const [method, p, credential] of rows) {
      // A `{name}` at the end may be a wildcard route (artifact names contain `/`).
      const url = unquote(p!).replace(/\{(\w+)\}/g, ':$1');
      const wildcard = url.replace(/:\w+$/, '*');
      expect(credential, `${method} ${p} names its credential`).toMatch(/\S/);
      const has = (u: string) => ctl.app.hasRoute({ method: method as 'GET', url: u });
      expect(has(url) || has(wildcard), `${method} ${p} is documented but not registered`).toBe(true);
      documented.add(`${method} ${unquote(p!)}`);
    }
    const spec = (await (await fetch(`${ctl.url}/openapi.json`)).json()) as { paths: Record<string, Record<string, unknown>> };
    const registered: string[] = [];
    for (const [p, ops] of Object.entries(spec.paths)) {
      // @fastify/swagger writes a wildcard as `{*}`; the page names it.
      const named = p.replace(/\/artifacts\/\{\*\}$/, '/artifacts/{name}');
      for (const method of Object.keys(ops)) if (method !== 'parameters') registered.push(`${method.toUpperCase()} ${named}`);
    }
    expect(registered.length).toBeGreaterThan(20);
    const undocumented = registered.filter((r) => !documented.has(r));
    expect(undocumented, 'routes missing from "Endpoints at a glance"').toEqual([]);
  });

  it('has every error code with its HTTP status, and no other', () => {
    const rows = tableAfter('### Error codes');
    const documented = Object.fromEntries(rows.map(([code, status]) => [unquote(code!), Number(status)]));
    expect(documented).toEqual({ ...ERROR_STATUS });
  });

  it('describes every build state and reason', () => {
    const states = tableAfter('### States').map(([s]) => unquote(s!));
    expect(states).toEqual([...BUILD_STATES]);
    for (const reason of BUILD_REASONS) expect(DOC, `reason ${reason}`).toContain(`\`${reason}\``);
  });

  it('describes every event of the live log stream, and no other', () => {
    const events = tableAfter('### Live log stream').map(([e]) => unquote(e!));
    expect(events.sort()).toEqual([...LOG_STREAM_EVENTS].sort());
  });

  it('names every field of the worker calls (register, poll, heartbeat, settings)', () => {
    // Words inside code spans: `{builds: [{id, attempt}]}` names builds, id and attempt.
    const named = new Set([...DOC.matchAll(/`([^`]+)`/g)].flatMap((m) => m[1]!.match(/\w+/g) ?? []));
    const schemas = {
      RegisterRequestSchema,
      RegisterResponseSchema,
      WorkerSettingsSchema,
      AssignedBuildSchema,
      PollRequestSchema,
      PollResponseSchema,
      HeartbeatRequestSchema,
      HeartbeatResponseSchema,
    };
    const missing = Object.entries(schemas).flatMap(([name, schema]) =>
      Object.keys(schema.properties).filter((field) => !named.has(field)).map((field) => `${name}.${field}`),
    );
    expect(missing).toEqual([]);
  });

  it('names every configuration variable of the protocol package', () => {
    const table = tableAfter('## Configuration variables')
      .map(([names]) => names!)
      .join(' ');
    for (const name of Object.values(ENV)) expect(table, `variable ${name}`).toContain(`\`${name}\``);
    // And every name the configuration loaders read, even one written as a literal instead of through ENV.
    const loaders = ['packages/controller/src/config.ts', 'packages/controller/src/ops/config.ts', 'packages/worker/src/config.ts', 'packages/cli/src/settings.ts'];
    const read = new Set(loaders.flatMap((f) => [...readFileSync(join(ROOT, f), 'utf8').matchAll(/\bBUILDFLEET_[A-Z0-9_]*[A-Z0-9]\b/g)].map((m) => m[0])));
    expect(read.size).toBeGreaterThan(20);
    for (const name of read) expect(table, `variable ${name} (read by a configuration loader)`).toContain(`\`${name}\``);
  });
});
