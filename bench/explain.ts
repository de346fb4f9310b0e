/**
 * The query plans behind the lifecycle: queues a backlog, runs one build's
 * life (submit, poll, start, log, finish) through a real controller,
 * captures the statements each route ran (at the driver, with their
 * parameters) and explains each one: PostgreSQL `EXPLAIN (ANALYZE, BUFFERS)`
 * inside a rolled-back transaction, SQLite `EXPLAIN QUERY PLAN`. Usage:
 *
 *   npx tsx bench/explain.ts [--backlog 2000] [--stores postgres,sqlite]
 */
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import pg from 'pg';
import { startController, type StoreKind } from './controller.js';
import { kindOf } from './sqlcount.js';
import { pool } from './stats.js';
import { WireWorker, submitBuild } from './wire.js';

const { values } = parseArgs({
  options: {
    backlog: { type: 'string', default: '2000' },
    stores: { type: 'string', default: 'postgres,sqlite' },
    // Fresh statistics first (PostgreSQL ANALYZE, SQLite ANALYZE): a plan chosen on an empty table's stats is not the steady one.
    analyze: { type: 'boolean', default: false },
  },
});
const LIFECYCLE = ['POST /builds', 'POST /workers/:id/poll', 'POST /builds/:id/start', 'POST /builds/:id/logs', 'POST /builds/:id/finish'];

for (const store of values.stores!.split(',') as StoreKind[]) {
  const ctl = await startController(store);
  try {
    const w = new WireWorker(ctl.url, 'explain');
    await w.register();
    await pool(Number(values.backlog), 16, async () => void (await submitBuild(ctl.url)));
    await ctl.counts(true);
    await submitBuild(ctl.url);
    const [b] = await w.poll(1_000);
    await w.run(b!);
    const { texts } = await ctl.counts(true);
    console.log(`\n===== ${store}: ${values.backlog} builds queued; one build's statements, explained =====`);
    const explain = await explainer(store, ctl);
    if (values.analyze) await explain.analyze();
    try {
      for (const route of LIFECYCLE) {
        console.log(`\n--- ${route}`);
        for (const t of texts.filter((x) => x.route === route)) {
          const kind = kindOf(t.sql);
          console.log(`\n[${kind}] ${t.sql.replace(/\s+/g, ' ').slice(0, 400)}`);
          if (['begin', 'commit', 'rollback', 'other'].includes(kind) || t.params.some((p) => typeof p === 'string' && /^<\d+ bytes>$/.test(p))) continue;
          console.log((await explain(t.sql, t.params)).map((l) => `    ${l}`).join('\n'));
        }
      }
    } finally {
      await explain.close();
    }
  } finally {
    await ctl.stop();
  }
}

type Explain = ((sql: string, params: unknown[]) => Promise<string[]>) & { analyze(): Promise<void>; close(): Promise<void> };

async function explainer(store: StoreKind, ctl: Awaited<ReturnType<typeof startController>>): Promise<Explain> {
  if (store === 'postgres') {
    const c = new pg.Client({ connectionString: ctl.db!.url });
    await c.connect();
    const f = async (sql: string, params: unknown[]) => {
      await c.query('BEGIN');
      try {
        const r = await c.query(`EXPLAIN (ANALYZE, BUFFERS) ${sql}`, params);
        return r.rows.map((row: Record<string, string>) => row['QUERY PLAN']!);
      } catch (err) {
        return [`(could not explain: ${(err as Error).message})`];
      } finally {
        await c.query('ROLLBACK');
      }
    };
    return Object.assign(f, { analyze: async () => void (await c.query('ANALYZE')), close: () => c.end() });
  }
  const db = new Database(join(ctl.dataDir, 'buildfleet.db'));
  const f = async (sql: string, params: unknown[]) => {
    try {
      return db
        .prepare(`EXPLAIN QUERY PLAN ${sql}`)
        .all(...params)
        .map((r) => (r as { detail: string }).detail);
    } catch (err) {
      return [`(could not explain: ${(err as Error).message})`];
    }
  };
  return Object.assign(f, { analyze: async () => void db.exec('ANALYZE'), close: async () => void db.close() });
}
