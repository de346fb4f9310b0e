/**
 * One durable atomic file write for every package that keeps a small file
 * that must survive a crash whole (the worker's identity, the controller's
 * credentials.json): `write-file-atomic` writes a temporary file, fsyncs it
 * and renames it over the target, so a crash leaves the old file or the new
 * one, never a torn one; the directory is then fsynced too, so the rename
 * itself survives a power loss (rename(2) changes the directory, which
 * fsync of the file does not cover).
 *
 * Node only: import it from `@buildfleet/protocol/node`.
 */
import { open } from 'node:fs/promises';
import path from 'node:path';
import writeFileAtomicLib from 'write-file-atomic';

/**
 * Replaces `file` with `content` atomically and durably, with permission
 * `mode` (e.g. 0o600) whatever the umask. Throws the file system's error
 * (ENOENT when the directory does not exist: create it first).
 */
export async function writeFileDurable(file: string, content: string | Buffer, mode: number): Promise<void> {
  await writeFileAtomicLib(file, content, { mode, fsync: true });
  const dir = await open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
