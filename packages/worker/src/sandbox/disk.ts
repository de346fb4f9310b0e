/**
 * Disk space a build uses: what `du` counts (allocated 512-byte blocks, a
 * hard-linked file once, symlinks not followed) over its workspace and /tmp.
 * Walking is the portable way (no quota support needed); the watcher spaces
 * the walks by how long the last one took.
 */
import fs from 'node:fs/promises';
import path from 'node:path';

/**
 * Bytes allocated under `dirs`. Stops early, returning what it counted so
 * far, once that exceeds `stopAboveBytes`. Files that vanish or cannot be
 * read while it walks are skipped.
 */
export async function diskUsage(dirs: readonly string[], stopAboveBytes = Infinity): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const stack = [...dirs];
  while (stack.length > 0 && total <= stopAboveBytes) {
    const dir = stack.pop()!;
    let entries: string[];
    try {
      entries = await fs.readdir(dir);
    } catch {
      continue;
    }
    for (const name of entries) {
      const full = path.join(dir, name);
      let st: import('node:fs').BigIntStats;
      try {
        st = await fs.lstat(full, { bigint: true });
      } catch {
        continue;
      }
      if (st.nlink > 1n) {
        const id = `${st.dev}:${st.ino}`;
        if (seen.has(id)) continue;
        seen.add(id);
      }
      total += Number(st.blocks) * 512;
      if (st.isDirectory()) stack.push(full);
    }
  }
  return total;
}

/**
 * Removes a tree the build owned, also where the build took its own write
 * permission away (`chmod 000 dir`), which stops `rm -rf` for a worker that
 * is not root. Never follows symlinks.
 */
export async function removeTree(dir: string): Promise<void> {
  try {
    await fs.rm(dir, { recursive: true, force: true });
    return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') throw err;
  }
  const fix = async (d: string) => {
    await fs.chmod(d, 0o700).catch(() => undefined);
    let entries: import('node:fs').Dirent[] = [];
    try {
      entries = await fs.readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory()) await fix(path.join(d, e.name));
  };
  await fix(dir);
  await fs.rm(dir, { recursive: true, force: true });
}
