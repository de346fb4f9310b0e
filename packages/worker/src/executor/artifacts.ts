/**
 * Finding a build's artifacts in its workspace, for every executor: the
 * regular files matching the spec's globs (docs/protocol.md `artifacts`), never
 * one that resolves outside the workspace (a symlink to /etc), never a name
 * the controller would refuse.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { glob } from 'tinyglobby';
import { artifactNameProblem } from '@buildfleet/protocol';
import type { CollectedArtifacts } from './types.js';

/** Files under `root` matching `patterns`, sorted by name, with notes for the log. */
export async function findArtifacts(root: string, patterns: readonly string[]): Promise<CollectedArtifacts> {
  const out: CollectedArtifacts = { files: [], notes: [] };
  if (patterns.length === 0) return out;
  const real = await fs.realpath(root);
  const globOptions = { cwd: root, onlyFiles: true, dot: true, followSymbolicLinks: false, expandDirectories: false };
  const names = await glob([...patterns], globOptions);
  // Like GitLab Runner: a pattern that matched nothing is worth a line in the log, not silence.
  for (const pattern of patterns) {
    if ((await glob([pattern], globOptions)).length === 0) out.notes.push(`warning: artifact pattern ${JSON.stringify(pattern)} matched no files`);
  }
  for (const rel of [...new Set(names)].sort()) {
    const name = rel.split(path.sep).join('/');
    let resolved: string;
    try {
      resolved = await fs.realpath(path.resolve(root, rel));
    } catch {
      continue;
    }
    const problem = artifactNameProblem(name);
    if (problem || (resolved !== real && !resolved.startsWith(real + path.sep))) {
      out.notes.push(`artifact ${JSON.stringify(name)} skipped: ${problem ?? 'it resolves outside the workspace'}`);
      continue;
    }
    const st = await fs.stat(resolved);
    if (st.isFile()) out.files.push({ name, path: resolved, size: st.size });
  }
  return out;
}

/** SHA-256 of a file, lowercase hex, streamed. */
export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}
