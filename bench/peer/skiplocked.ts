/**
 * The floor under any PostgreSQL queue: 4 connections each claiming one row
 * at a time with a single `UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP
 * LOCKED LIMIT 1) RETURNING id` (design rule 3), on a fresh database of the
 * same server. Rows claimed per second.
 */
import pg from 'pg';
import { createDatabase } from '../pgdb.js';
import { round } from '../stats.js';

const CLAIM = `UPDATE bench_queue SET claimed_at = now()
  WHERE id = (SELECT id FROM bench_queue WHERE claimed_at IS NULL ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
  RETURNING id`;

export async function skipLocked(rows: number, connections = 4): Promise<{ rows: number; connections: number; rowsPerSecond: number }> {
  const db = await createDatabase();
  const clients = Array.from({ length: connections }, () => new pg.Client({ connectionString: db.url }));
  try {
    await Promise.all(clients.map((c) => c.connect()));
    const c0 = clients[0]!;
    await c0.query('CREATE TABLE bench_queue (id bigserial PRIMARY KEY, priority int NOT NULL DEFAULT 0, claimed_at timestamptz)');
    await c0.query('CREATE INDEX ON bench_queue (priority DESC, id) WHERE claimed_at IS NULL');
    await c0.query('INSERT INTO bench_queue (priority) SELECT 0 FROM generate_series(1, $1)', [rows]);
    await c0.query('ANALYZE bench_queue');
    let claimed = 0;
    const t0 = performance.now();
    await Promise.all(
      clients.map(async (c) => {
        while ((await c.query(CLAIM)).rowCount) claimed++;
      }),
    );
    const ms = performance.now() - t0;
    return { rows: claimed, connections, rowsPerSecond: round((claimed / ms) * 1000, 1) };
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
    await db.drop();
  }
}
