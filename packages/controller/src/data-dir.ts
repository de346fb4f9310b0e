/**
 * The controller's data directory holds what any local user must not read:
 * the SQLite database (token hashes, the build-token HMAC key), the blobs
 * (sources, logs, artifacts) and credentials.json. Whatever the umask, the
 * directory is 0700 and the files the controller writes there 0600; an
 * existing directory or database of an older version is tightened at start.
 */
import { chmod, mkdir, open } from 'node:fs/promises';
import path from 'node:path';

/** Creates `dir` (and parents) and makes it 0700, also when it existed with a wider mode. */
export async function ensurePrivateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
}

/**
 * Makes the SQLite database `file` 0600 before SQLite opens it: created
 * empty when missing (SQLite then creates its -wal and -shm files with the
 * database file's mode), tightened when it exists, with its -wal and -shm.
 */
export async function ensurePrivateDatabaseFile(file: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const fh = await open(file, 'a', 0o600);
  await fh.close();
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    await chmod(f, 0o600).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
}
