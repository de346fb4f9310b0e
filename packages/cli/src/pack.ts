/**
 * Packs a project directory into a `.tar.gz` file on disk (never in memory),
 * honouring the project's `.gitignore` files (the root one and nested ones,
 * each relative to its own directory) and always leaving out `.git`.
 */
import { lstat, readdir, readFile, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import ignore, { type Ignore } from 'ignore';
import { create as tarCreate } from 'tar';
import { CliError } from './errors.js';

interface Rules {
  /** Directory the rules are relative to, `/`-separated, relative to the root ('' = root). */
  base: string;
  ig: Ignore;
}

function isIgnored(rules: Rules[], rel: string, isDir: boolean): boolean {
  for (const r of rules) {
    const sub = r.base === '' ? rel : rel.slice(r.base.length + 1);
    if (r.ig.ignores(isDir ? `${sub}/` : sub)) return true;
  }
  return false;
}

async function loadRules(dirAbs: string, base: string): Promise<Rules | undefined> {
  try {
    const text = await readFile(join(dirAbs, '.gitignore'), 'utf8');
    return { base, ig: ignore().add(text) };
  } catch {
    return undefined;
  }
}

/**
 * Lists the files (and symlinks) under `root` that git would not ignore, as
 * `/`-separated relative paths in a stable order. Throws CliError when `root`
 * is not a directory.
 */
export async function listSourceFiles(root: string): Promise<string[]> {
  const st = await stat(root).catch(() => undefined);
  if (!st?.isDirectory()) throw new CliError(`${root} is not a directory`);
  const out: string[] = [];
  async function walk(dirAbs: string, rel: string, inherited: Rules[]): Promise<void> {
    const own = await loadRules(dirAbs, rel);
    const rules = own ? [...inherited, own] : inherited;
    const entries = await readdir(dirAbs, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.name === '.git') continue;
      const childRel = rel === '' ? e.name : `${rel}/${e.name}`;
      const isDir = e.isDirectory();
      if (isIgnored(rules, childRel, isDir)) continue;
      if (isDir) await walk(join(dirAbs, e.name), childRel, rules);
      else if (e.isFile() || e.isSymbolicLink()) out.push(childRel);
    }
  }
  await walk(root, '', []);
  return out;
}

/**
 * Writes `root`'s source files to `outFile` as a gzip'd tar (portable
 * headers: no uid/gid/mtime noise). Returns the number of files and the
 * tarball's size in bytes.
 */
export async function packSource(root: string, outFile: string): Promise<{ files: number; bytes: number }> {
  const files = await listSourceFiles(root);
  if (files.length === 0) {
    // A build may need only its script. An archive of just the root directory
    // entry, because some tar readers refuse an archive without entries.
    await tarCreate({ gzip: true, cwd: root, file: outFile, portable: true, noDirRecurse: true }, ['.']);
  } else {
    await tarCreate({ gzip: true, cwd: root, file: outFile, portable: true, noDirRecurse: true }, files);
  }
  const { size } = await lstat(outFile);
  return { files: files.length, bytes: size };
}

/** The path of `p` relative to the current directory, for messages. */
export function shown(p: string): string {
  const r = relative(process.cwd(), p);
  return r === '' ? '.' : r.startsWith('..') ? p : r;
}
