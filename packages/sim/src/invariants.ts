/**
 * What must hold after every run (issue 5), checked from the answers the
 * controller gave (Observer) and from the database and blob store at the end
 * (checkInvariants):
 * 1. every build reached exactly one terminal state, and nothing else;
 * 2. no build had two attempts accepted at once: once the controller accepted
 *    a write of attempt k+1, it never accepts one of attempt k again, and
 *    after a finish it accepts no other start, log chunk or artifact;
 * 3. no worker identity (a data dir that kept its identity file) got two
 *    worker records;
 * 4. each attempt's stored log has no gap and no duplicate, and is what the
 *    simulated process wrote (a prefix of its lines, all of them when it ran
 *    to its end) followed only by the worker's `[buildfleet]` notes;
 * 5. every stored artifact matches its checksum, and a succeeded build has
 *    exactly the artifacts its process wrote;
 * 6. (simulate.ts) nothing stays non-terminal longer than a bound after the
 *    last fault.
 */
import { createHash } from 'node:crypto';
import Database from 'better-sqlite3';
import { isTerminal, TERMINAL_STATES, type BuildState } from '@buildfleet/protocol';
import type { BlobStore } from '@buildfleet/controller';
import type { Exchange } from './network.js';
import { artifactBytes, outputLine, parsePlan } from './runner.js';
import type { Trace } from './trace.js';

const BUILD_WRITE = /^\/api\/v1\/builds\/([^/?]+)\/(start|finish|logs|artifacts\/[^?]+)$/;

interface BuildWatch {
  maxAttempt: number;
  finish?: { attempt: number; outcome: string };
  logSeqs: Set<string>;
  artifacts: Set<string>;
}

/** Watches every answer the controller produced, in the order produced. */
export class Observer {
  readonly problems: string[] = [];
  private readonly builds = new Map<string, BuildWatch>();
  private readonly lineages = new Map<number, Set<string>>();
  readonly known = new Set<string>();
  readonly canceledAt = new Map<string, number>();

  constructor(private readonly trace: Trace) {}

  submitted(id: string): void {
    this.known.add(id);
  }
  canceled(id: string, at: number): void {
    if (!this.canceledAt.has(id)) this.canceledAt.set(id, at);
  }

  /** Worker ids an admin deleted: their identity may register anew (docs/protocol.md "POST /api/v1/workers/register"). */
  private readonly deleted = new Set<string>();
  private readonly current = new Map<number, string>();

  workerDeleted(workerId: string): void {
    this.deleted.add(workerId);
  }
  wasDeleted(workerId: string): boolean {
    return this.deleted.has(workerId);
  }

  /** A worker process of identity `lineage` is registered as `workerId`. */
  registered(lineage: number, workerId: string, actor: string): void {
    let s = this.lineages.get(lineage);
    if (!s) this.lineages.set(lineage, (s = new Set()));
    const cur = this.current.get(lineage);
    if (cur !== undefined && cur !== workerId && !this.deleted.has(cur)) {
      this.problem(`identity L${lineage} got a second worker record ${workerId} (${actor}; it is ${cur})`);
    }
    this.current.set(lineage, workerId);
    s.add(workerId);
  }

  private problem(text: string): void {
    this.problems.push(text);
    this.trace.add('checker', `VIOLATION ${text}`);
  }

  finishOf(buildId: string): { attempt: number; outcome: string } | undefined {
    return this.builds.get(buildId)?.finish;
  }

  exchange(e: Exchange): void {
    if (e.status < 200 || e.status >= 300) return;
    const m = BUILD_WRITE.exec(e.path);
    if (!m || e.method === 'GET') return;
    const buildId = decodeURIComponent(m[1]!);
    const kind = m[2]!;
    const body = (e.body ?? {}) as { attempt?: number; seq?: number; outcome?: string };
    // Artifacts carry the attempt in their build token: bfb_<buildId>.<attempt>.<mac>.
    const attempt = kind.startsWith('artifacts/') ? Number(/^bfb_.*\.(\d+)\.[^.]+$/.exec(e.token ?? '')?.[1]) : Number(body.attempt);
    let w = this.builds.get(buildId);
    if (!w) this.builds.set(buildId, (w = { maxAttempt: 0, logSeqs: new Set(), artifacts: new Set() }));
    const what = `${kind.startsWith('artifacts/') ? 'artifact' : kind} of attempt ${attempt} of ${buildId}`;
    if (attempt < w.maxAttempt) this.problem(`accepted ${what} after a write of attempt ${w.maxAttempt} was accepted`);
    w.maxAttempt = Math.max(w.maxAttempt, attempt);
    if (kind === 'finish') {
      if (w.finish && (w.finish.attempt !== attempt || w.finish.outcome !== body.outcome)) {
        this.problem(`two finishes accepted for ${buildId}: attempt ${w.finish.attempt} ${w.finish.outcome}, then attempt ${attempt} ${body.outcome}`);
      }
      w.finish ??= { attempt, outcome: String(body.outcome) };
      return;
    }
    const key = kind === 'logs' ? `${attempt}/${body.seq}` : `${attempt}/${kind}`;
    const seen = kind === 'logs' ? w.logSeqs : w.artifacts;
    const repeat = seen.has(key);
    seen.add(key);
    if (w.finish && !(repeat || (kind === 'start' && attempt === w.finish.attempt))) {
      this.problem(`accepted ${what} after the build's finish was accepted`);
    }
  }

  /** Ids of builds (in the database) not yet terminal. */
  nonTerminal(dbFile: string): string[] {
    const db = new Database(dbFile, { readonly: true, fileMustExist: true });
    try {
      const rows = db
        .prepare(`SELECT id, state, attempt FROM builds WHERE state NOT IN (${TERMINAL_STATES.map(() => '?').join(',')})`)
        .all(...TERMINAL_STATES) as Array<{ id: string; state: string; attempt: number }>;
      return rows.map((r) => `${r.id} ${r.state}#${r.attempt}`);
    } finally {
      db.close();
    }
  }

  allTerminal(dbFile: string): boolean {
    return this.nonTerminal(dbFile).length === 0;
  }

  lineageIds(): Map<number, Set<string>> {
    return this.lineages;
  }
}

interface BuildRow {
  id: string;
  state: BuildState;
  attempt: number;
  spec: string;
  exit_code: number | null;
  reason: string | null;
  message: string | null;
  finished_at: number | null;
}

const NOTE = '[buildfleet] ';

/** Checks a log's text: process lines `0..m-1` of the attempt, then only notes. Returns a problem or undefined. */
function checkLogText(buildId: string, attempt: number, text: string, lines: number, complete: boolean): string | undefined {
  let pos = 0;
  let m = 0;
  while (m < lines) {
    const want = outputLine(buildId, attempt, m);
    if (text.startsWith(want, pos)) {
      pos += want.length;
      m++;
    } else break;
  }
  const rest = text.slice(pos);
  if (rest.length > 0) {
    if (!rest.endsWith('\n')) return `log ends with a partial line: ${JSON.stringify(rest.slice(-80))}`;
    for (const line of rest.slice(0, -1).split('\n')) {
      if (!line.startsWith(NOTE)) return `unexpected log text after ${m} process lines: ${JSON.stringify(line.slice(0, 120))}`;
    }
  }
  if (complete && m !== lines) return `log has ${m} of the process's ${lines} lines, but the process ran to its end`;
  return undefined;
}

async function readBlob(blobs: BlobStore, key: string): Promise<Buffer> {
  const s = await blobs.get(key);
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(Buffer.from(c as Buffer));
  return Buffer.concat(parts);
}

export interface CheckInput {
  dbFile: string;
  blobs: BlobStore;
  observer: Observer;
}

/** Runs checks 1-5 on the final database; returns the violations. */
export async function checkInvariants({ dbFile, blobs, observer }: CheckInput): Promise<string[]> {
  const out = [...observer.problems.filter(() => false)];
  const v = (s: string) => out.push(s);
  const db = new Database(dbFile, { readonly: true, fileMustExist: true });
  try {
    const builds = db.prepare('SELECT id, state, attempt, spec, exit_code, reason, message, finished_at FROM builds').all() as BuildRow[];
    for (const id of observer.known) if (!builds.some((b) => b.id === id)) v(`submitted build ${id} is not in the database`);
    const attemptsOf = db.prepare('SELECT attempt, state, worker_id, log_bytes FROM build_attempts WHERE build_id = ? ORDER BY attempt');
    const chunksOf = db.prepare('SELECT attempt, seq, byte_offset, size, data FROM log_chunks WHERE build_id = ? ORDER BY attempt, seq');
    const artifactsOf = db.prepare('SELECT attempt, name, size, sha256, blob_key FROM artifacts WHERE build_id = ?');
    for (const b of builds) {
      const plan = parsePlan(JSON.parse(b.spec).script as string);
      // 1. exactly one terminal state
      if (!isTerminal(b.state)) {
        v(`${b.id} ended the run ${b.state} (attempt ${b.attempt})`);
        continue;
      }
      if (b.finished_at === null) v(`${b.id} is ${b.state} without finished_at`);
      const attempts = attemptsOf.all(b.id) as Array<{ attempt: number; state: string; worker_id: string | null; log_bytes: number }>;
      for (const a of attempts) {
        if (a.attempt < 1 || a.attempt > b.attempt) v(`${b.id} has an attempt row ${a.attempt} beyond its attempt ${b.attempt}`);
        if (a.state === 'assigned' || a.state === 'running') v(`${b.id} is ${b.state} but its attempt ${a.attempt} is still ${a.state}`);
      }
      const fin = observer.finishOf(b.id);
      if (fin && (fin.outcome !== b.state || fin.attempt !== b.attempt)) {
        v(`${b.id}: finish ${fin.outcome} of attempt ${fin.attempt} was accepted, but the build ended ${b.state} at attempt ${b.attempt}`);
      }
      if (b.state === 'succeeded' && plan.exitCode !== 0) v(`${b.id} succeeded but its script exits ${plan.exitCode}`);
      if (b.state === 'failed' && b.reason === 'exit_code' && b.exit_code !== plan.exitCode) {
        v(`${b.id} failed with exit code ${b.exit_code} (${b.message}), but its script exits ${plan.exitCode}`);
      }
      if (b.state === 'canceled' && !observer.canceledAt.has(b.id)) v(`${b.id} ended canceled but nobody canceled it`);

      // 4. logs
      const chunks = chunksOf.all(b.id) as Array<{ attempt: number; seq: number; byte_offset: number; size: number; data: Buffer }>;
      const byAttempt = new Map<number, typeof chunks>();
      for (const c of chunks) {
        if (!byAttempt.has(c.attempt)) byAttempt.set(c.attempt, []);
        byAttempt.get(c.attempt)!.push(c);
      }
      for (const [attempt, list] of byAttempt) {
        let offset = 0;
        const seqs = new Set<number>();
        for (const c of list) {
          if (seqs.has(c.seq)) v(`${b.id} attempt ${attempt}: log seq ${c.seq} stored twice`);
          seqs.add(c.seq);
          if (c.byte_offset !== offset) v(`${b.id} attempt ${attempt}: log chunk seq ${c.seq} at offset ${c.byte_offset}, expected ${offset} (${c.byte_offset > offset ? 'gap' : 'overlap'})`);
          if (c.data.length !== c.size) v(`${b.id} attempt ${attempt}: log chunk seq ${c.seq} says ${c.size} bytes, holds ${c.data.length}`);
          offset = c.byte_offset + c.data.length;
        }
        const row = attempts.find((a) => a.attempt === attempt);
        if (row && Number(row.log_bytes) !== offset) v(`${b.id} attempt ${attempt}: log_bytes ${row.log_bytes} but chunks hold ${offset} bytes`);
        const text = Buffer.concat(list.map((c) => c.data)).toString('utf8');
        const complete = fin !== undefined && fin.attempt === attempt && (fin.outcome === 'succeeded' || (fin.outcome === 'failed' && b.reason === 'exit_code' && b.exit_code === plan.exitCode));
        const problem = checkLogText(b.id, attempt, text, plan.lines, complete);
        if (problem) v(`${b.id} attempt ${attempt}: ${problem}`);
      }
      if (fin?.outcome === 'succeeded' && plan.lines > 0 && !byAttempt.has(fin.attempt)) v(`${b.id} succeeded without any stored log`);

      // 5. artifacts
      const arts = artifactsOf.all(b.id) as Array<{ attempt: number; name: string; size: number; sha256: string; blob_key: string }>;
      for (const a of arts) {
        let bytes: Buffer;
        try {
          bytes = await readBlob(blobs, a.blob_key);
        } catch (err) {
          v(`${b.id} artifact ${a.name} (attempt ${a.attempt}): blob ${a.blob_key} unreadable: ${(err as Error).message}`);
          continue;
        }
        const sha = createHash('sha256').update(bytes).digest('hex');
        if (sha !== a.sha256 || bytes.length !== Number(a.size)) v(`${b.id} artifact ${a.name}: stored ${bytes.length} bytes with sha256 ${sha}, recorded ${a.size} bytes ${a.sha256}`);
      }
      if (b.state === 'succeeded') {
        const mine = arts.filter((a) => a.attempt === b.attempt);
        const want = plan.artifacts.map((p) => ({ name: p.name, sha: createHash('sha256').update(artifactBytes(b.id, b.attempt, p.name, p.bytes)).digest('hex') }));
        for (const w of want) {
          const got = mine.find((a) => a.name === w.name);
          if (!got) v(`${b.id} succeeded without its artifact ${w.name}`);
          else if (got.sha256 !== w.sha) v(`${b.id} artifact ${w.name}: sha256 ${got.sha256}, the process wrote ${w.sha}`);
        }
        for (const a of mine) if (!want.some((w) => w.name === a.name)) v(`${b.id} has an artifact ${a.name} its process never wrote`);
      }
    }

    // 3. identities
    const workerIds = new Set((db.prepare('SELECT id FROM workers').all() as Array<{ id: string }>).map((r) => r.id));
    for (const [lineage, ids] of observer.lineageIds()) {
      for (const id of ids) if (!workerIds.has(id) && !observer.wasDeleted(id)) v(`identity L${lineage} was registered as ${id}, which is not in the database`);
    }
  } finally {
    db.close();
  }
  return [...observer.problems, ...out];
}
