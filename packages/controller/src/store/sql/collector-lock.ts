/**
 * One collector at a time per cluster (issue 14): every controller runs the
 * retention collector, and a round first takes this lock, skipping the round
 * when another controller holds it.
 *
 * PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on one
 * connection held for the round; it is released explicitly, and by the
 * server when the controller dies (its session ends), so a crash never
 * leaves the lock behind. The round's batches run on other connections.
 * SQLite: one controller per database file, so a flag in this process.
 */
import { sql, type Kysely } from 'kysely';
import type { DB, Dialect } from '../schema.js';

/** Advisory lock key: "bfgc" in ASCII. */
export const COLLECTOR_LOCK_KEY = 0x62666763;

const held = new WeakMap<object, boolean>();

/**
 * Runs `fn` while holding the collector lock; resolves `{ ran: false }` at
 * once when another holder has it. Errors of `fn` are rethrown after the
 * lock is released.
 */
export async function withCollectorLock<T>(db: Kysely<DB>, dialect: Dialect, fn: () => Promise<T>): Promise<{ ran: true; value: T } | { ran: false }> {
  if (dialect === 'sqlite') {
    if (held.get(db)) return { ran: false };
    held.set(db, true);
    try {
      return { ran: true, value: await fn() };
    } finally {
      held.delete(db);
    }
  }
  return db.connection().execute(async (conn) => {
    const got = await sql<{ ok: boolean }>`select pg_try_advisory_lock(${COLLECTOR_LOCK_KEY}) as ok`.execute(conn);
    if (!got.rows[0]?.ok) return { ran: false as const };
    try {
      return { ran: true as const, value: await fn() };
    } finally {
      await sql`select pg_advisory_unlock(${COLLECTOR_LOCK_KEY})`.execute(conn).catch(() => undefined);
    }
  });
}
