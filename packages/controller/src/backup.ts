/**
 * Online backup and restore of the embedded store (SQLite plus the blob
 * files under `<dataDir>/blobs`), for `buildfleet backup FILE` and
 * `buildfleet restore FILE`. PostgreSQL mode is backed up with the
 * database's own tools (README "Backups").
 *
 * Backup, while the controller runs:
 * 1. SQLite's online backup API copies the database from a second
 *    connection: a consistent snapshot, whatever the controller writes
 *    meanwhile (a write from another connection restarts the copy, so it
 *    copies in as few steps as possible).
 * 2. Every blob the snapshot refers to is hard-linked (copied across file
 *    systems) into a staging directory at once. Blob files are only ever
 *    replaced by rename, so a link is the exact bytes the snapshot names,
 *    even if the key is replaced or collected a moment later.
 * 3. A blob that is gone by then was collected after the snapshot (retention
 *    marks the rows first, then deletes the files): `onMissingBlobs` marks it
 *    so in the copy, as if the snapshot had been taken a moment later.
 * 4. The staging directory becomes one tar file (gzip when FILE ends in
 *    `.gz`/`.tgz`), written beside FILE and renamed over it, mode 0600
 *    (it holds credentials.json, webhook secrets and the generated
 *    secrets.key that opens the stored secrets).
 *
 * Restore unpacks into a staging directory inside the data directory,
 * checks the manifest and the database (`PRAGMA integrity_check`, schema not
 * newer than this version's), then moves it into place. The controller must
 * be stopped; an existing store is refused unless `force`, which moves it
 * aside to `<dataDir>/replaced-<time>/` instead of deleting it.
 */
import { constants } from 'node:fs';
import { chmod, copyFile, link, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import * as tar from 'tar';

/** Name of the SQLite file inside a data directory. */
export const SQLITE_FILE = 'buildfleet.db';
const MANIFEST = 'manifest.json';
/** The secrets key a controller on SQLite generates in its data directory (secrets/cipher.ts). */
const SECRETS_KEY_FILE = 'secrets.key';
const FORMAT = 'buildfleet-backup';
const FORMAT_VERSION = 1;

export interface BackupManifest {
  format: typeof FORMAT;
  formatVersion: number;
  /** ISO time the snapshot was taken. */
  createdAt: string;
  /** Migrations applied to the copied database, in order. */
  migrations: string[];
  builds: number;
  blobs: number;
  /** Bytes of blob files in the backup. */
  blobBytes: number;
  /** Blobs the snapshot named that were collected before they could be linked. */
  missingBlobs: string[];
  credentials: boolean;
  /** The generated `secrets.key` is in the backup (without it the stored secrets cannot be opened). Absent in older backups. */
  secretsKey?: boolean;
}

export interface BackupOptions {
  dataDir: string;
  /** Output file; `.gz`/`.tgz` compresses. Replaced atomically. */
  file: string;
  /** Epoch ms, for the manifest. */
  now: () => number;
  /**
   * Marks blobs that were collected between the snapshot and the linking as
   * collected in the copied database (retention owns what "collected" means).
   */
  onMissingBlobs?: (snapshot: Database.Database, keys: string[]) => void;
  /** Keys of the blobs the snapshot refers to; default every source and artifact row. */
  referencedBlobs?: (snapshot: Database.Database) => string[];
}

export class BackupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BackupError';
  }
}

/** Every blob key the database refers to (sources shared by retried builds appear once). */
export function allReferencedBlobs(db: Database.Database): string[] {
  const rows = db
    .prepare(`select source_key as k from builds union select blob_key as k from artifacts`)
    .all() as Array<{ k: string }>;
  return rows.map((r) => r.k);
}

function migrationsOf(db: Database.Database): string[] {
  const has = db.prepare(`select 1 from sqlite_master where type = 'table' and name = 'kysely_migration'`).get();
  if (!has) return [];
  return (db.prepare('select name from kysely_migration order by name').all() as Array<{ name: string }>).map((r) => r.name);
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** Hard link, or copy when `to` is on another file system. False when `from` is gone. */
async function linkOrCopy(from: string, to: string): Promise<boolean> {
  await mkdir(dirname(to), { recursive: true });
  try {
    await link(from, to);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return false;
    if (code !== 'EXDEV' && code !== 'EPERM') throw err;
  }
  try {
    await copyFile(from, to, constants.COPYFILE_FICLONE);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/**
 * Takes the backup described above. Throws BackupError when the data
 * directory has no embedded store. Resolves with the manifest written.
 */
export async function backupEmbedded(opts: BackupOptions): Promise<BackupManifest & { file: string }> {
  const dbPath = join(opts.dataDir, SQLITE_FILE);
  if (!(await exists(dbPath))) {
    throw new BackupError(
      `no embedded store at ${dbPath}: point BUILDFLEET_DATA_DIR at the controller's data directory (with DATABASE_URL, back up PostgreSQL with pg_dump: README "Backups")`,
    );
  }
  const staging = await mkdtemp(join(opts.dataDir, '.backup-'));
  try {
    const snapshotPath = join(staging, SQLITE_FILE);
    const source = new Database(dbPath, { fileMustExist: true });
    const createdAt = opts.now();
    try {
      source.pragma('busy_timeout = 5000');
      // Everything in one step after the first: a write by the controller
      // between steps would restart the copy.
      await source.backup(snapshotPath, { progress: () => 1 << 30 });
    } finally {
      source.close();
    }

    const snapshot = new Database(snapshotPath);
    let manifest: BackupManifest;
    try {
      const keys = (opts.referencedBlobs ?? allReferencedBlobs)(snapshot);
      const missing: string[] = [];
      let blobBytes = 0;
      for (const key of keys) {
        const to = join(staging, 'blobs', key);
        if (await linkOrCopy(join(opts.dataDir, 'blobs', key), to)) blobBytes += (await stat(to)).size;
        else missing.push(key);
      }
      if (missing.length > 0) opts.onMissingBlobs?.(snapshot, missing);
      // One self-contained file in the archive, no -wal beside it.
      snapshot.pragma('journal_mode = DELETE');
      const credentials = await linkOrCopy(join(opts.dataDir, 'credentials.json'), join(staging, 'credentials.json'));
      const secretsKey = await linkOrCopy(join(opts.dataDir, SECRETS_KEY_FILE), join(staging, SECRETS_KEY_FILE));
      manifest = {
        format: FORMAT,
        formatVersion: FORMAT_VERSION,
        createdAt: new Date(createdAt).toISOString(),
        migrations: migrationsOf(snapshot),
        builds: (snapshot.prepare('select count(*) as n from builds').get() as { n: number }).n,
        blobs: keys.length - missing.length,
        blobBytes,
        missingBlobs: missing,
        credentials,
        secretsKey,
      };
    } finally {
      snapshot.close();
    }
    await writeFile(join(staging, MANIFEST), JSON.stringify(manifest, null, 2) + '\n');

    const entries = [MANIFEST, SQLITE_FILE, ...((await exists(join(staging, 'blobs'))) ? ['blobs'] : []), ...(manifest.credentials ? ['credentials.json'] : []), ...(manifest.secretsKey ? [SECRETS_KEY_FILE] : [])];
    const tmp = `${opts.file}.${process.pid}.tmp`;
    try {
      await tar.c({ file: tmp, cwd: staging, gzip: /\.(t?gz)$/i.test(opts.file), portable: true }, entries);
      await chmod(tmp, 0o600);
      await rename(tmp, opts.file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return { ...manifest, file: opts.file };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

export interface RestoreOptions {
  file: string;
  dataDir: string;
  /** Move an existing store aside instead of refusing. */
  force?: boolean;
  /** Epoch ms, for the name of the directory an existing store is moved to. */
  now: () => number;
  /**
   * Throws when the backup's migrations are not all known to this version
   * (it was taken from a newer buildfleet).
   */
  checkMigrations?: (names: string[]) => void;
}

export interface RestoreResult {
  manifest: BackupManifest;
  /** Where an existing store was moved (with `force`). */
  movedAside?: string;
}

/**
 * Restores a backup into `dataDir` (see the module comment). Throws
 * BackupError for an existing store without `force`, a file that is not a
 * buildfleet backup, or a database that fails its integrity check.
 */
export async function restoreEmbedded(opts: RestoreOptions): Promise<RestoreResult> {
  await mkdir(opts.dataDir, { recursive: true });
  const target = join(opts.dataDir, SQLITE_FILE);
  const occupied = await exists(target);
  if (occupied && !opts.force) {
    throw new BackupError(`${target} exists: stop the controller, then restore with --force (the current store is moved aside, not deleted)`);
  }
  if (!(await exists(opts.file))) throw new BackupError(`no backup file at ${opts.file}`);
  const staging = await mkdtemp(join(opts.dataDir, '.restore-'));
  try {
    try {
      await tar.x({ file: opts.file, cwd: staging, strict: true });
    } catch (err) {
      throw new BackupError(`${opts.file} is not a readable backup: ${(err as Error).message}`);
    }
    let manifest: BackupManifest;
    try {
      manifest = JSON.parse(await readFile(join(staging, MANIFEST), 'utf8')) as BackupManifest;
    } catch {
      throw new BackupError(`${opts.file} has no ${MANIFEST}: not a buildfleet backup`);
    }
    if (manifest.format !== FORMAT) throw new BackupError(`${opts.file} is not a buildfleet backup`);
    if (manifest.formatVersion > FORMAT_VERSION) {
      throw new BackupError(`${opts.file} was written by a newer buildfleet (backup format ${manifest.formatVersion}); restore it with that version`);
    }
    const db = new Database(join(staging, SQLITE_FILE), { fileMustExist: true });
    try {
      const check = db.pragma('integrity_check', { simple: true });
      if (check !== 'ok') throw new BackupError(`the database in ${opts.file} is damaged: ${String(check)}`);
      opts.checkMigrations?.(migrationsOf(db));
    } finally {
      db.close();
    }

    let movedAside: string | undefined;
    if (occupied) {
      movedAside = join(opts.dataDir, `replaced-${new Date(opts.now()).toISOString().replace(/[:.]/g, '-')}`);
      await mkdir(movedAside);
      for (const name of [SQLITE_FILE, `${SQLITE_FILE}-wal`, `${SQLITE_FILE}-shm`, 'blobs', 'credentials.json', SECRETS_KEY_FILE]) {
        if (await exists(join(opts.dataDir, name))) await rename(join(opts.dataDir, name), join(movedAside, name));
      }
    }
    await rm(join(opts.dataDir, 'blobs'), { recursive: true, force: true });
    if (await exists(join(staging, 'blobs'))) await rename(join(staging, 'blobs'), join(opts.dataDir, 'blobs'));
    if (manifest.credentials) await rename(join(staging, 'credentials.json'), join(opts.dataDir, 'credentials.json'));
    if (manifest.secretsKey) await rename(join(staging, SECRETS_KEY_FILE), join(opts.dataDir, SECRETS_KEY_FILE));
    await rename(join(staging, SQLITE_FILE), target);
    return { manifest, ...(movedAside ? { movedAside } : {}) };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
