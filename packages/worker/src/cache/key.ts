/**
 * Renders cache key templates (issue 13; syntax in the protocol package's
 * `caches.ts`) against a build's workspace and spec, on the worker, where
 * the files `hashFiles` reads are.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { glob } from 'tinyglobby';
import { KeyTemplateError, cacheKeyProblem, parseKeyTemplate } from '@buildfleet/protocol';

/** What a key template may refer to. */
export interface KeyContext {
  /** The build's workspace (absolute path). */
  workspace: string;
  /** `process.platform`, `process.arch` of the worker. */
  os: string;
  arch: string;
  labels: readonly string[];
  env: Readonly<Record<string, string>>;
  metadata: Readonly<Record<string, unknown>>;
}

/** The context of this worker's platform for a build's spec and workspace. */
export function keyContext(workspace: string, spec: { labels: readonly string[]; env: Record<string, string>; metadata: Record<string, unknown> }): KeyContext {
  return { workspace, os: process.platform, arch: process.arch, labels: spec.labels, env: spec.env, metadata: spec.metadata };
}

/**
 * SHA-256 (lowercase hex) over the files of `workspace` that match any of
 * `patterns` (globs relative to it; dot files included; symlinks not
 * followed; files that resolve outside the workspace ignored): the digest
 * of each file's digest in path order, as GitHub's `hashFiles`. Empty text
 * when nothing matched.
 */
export async function hashFiles(workspace: string, patterns: readonly string[]): Promise<string> {
  const root = await fs.realpath(workspace);
  const names = await glob([...patterns], { cwd: workspace, onlyFiles: true, dot: true, followSymbolicLinks: false, expandDirectories: false });
  const files = [...new Set(names.map((n) => n.split(path.sep).join('/')))].sort();
  if (files.length === 0) return '';
  const outer = createHash('sha256');
  let matched = 0;
  for (const rel of files) {
    let real: string;
    try {
      real = await fs.realpath(path.join(workspace, rel));
    } catch {
      continue;
    }
    if (!real.startsWith(root + path.sep)) continue;
    const inner = createHash('sha256');
    for await (const chunk of createReadStream(real)) inner.update(chunk as Buffer);
    outer.update(inner.digest());
    matched++;
  }
  return matched === 0 ? '' : outer.digest('hex');
}

function variable(name: string, ctx: KeyContext): string {
  if (name === 'os') return ctx.os;
  if (name === 'arch') return ctx.arch;
  if (name === 'labels') return [...ctx.labels].sort().join('-');
  if (name.startsWith('env.')) return ctx.env[name.slice(4)] ?? '';
  if (name.startsWith('metadata.')) {
    const v = ctx.metadata[name.slice(9)];
    if (v === undefined || v === null) return '';
    return typeof v === 'string' ? v : JSON.stringify(v);
  }
  throw new KeyTemplateError(`unknown variable ${name}`);
}

/**
 * Renders one key template. Throws KeyTemplateError for a template that does
 * not parse or renders to an unusable key (empty, too long, control
 * characters).
 */
export async function renderKey(template: string, ctx: KeyContext): Promise<string> {
  let out = '';
  for (const part of parseKeyTemplate(template)) {
    if (part.kind === 'text') out += part.text;
    else if (part.kind === 'variable') out += variable(part.name, ctx);
    else out += await hashFiles(ctx.workspace, part.patterns);
  }
  const problem = cacheKeyProblem(out);
  if (problem) throw new KeyTemplateError(`${problem}: ${JSON.stringify(template)} renders to ${JSON.stringify(out.slice(0, 100))}`);
  return out;
}
