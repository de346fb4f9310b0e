/**
 * `buildfleet submit`: reads the spec, packs the source to a temp file and
 * streams both to `POST /builds` as multipart (`spec` first, then `source`,
 * docs/protocol.md "For users"), reporting upload progress.
 */
import { randomBytes } from 'node:crypto';
import { open, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { paths, type Build, type BuildSpecInput } from '@buildfleet/protocol';
import type { ApiClient } from './client.js';
import { CliError } from './errors.js';
import { packSource } from './pack.js';

/** Flag values of `submit`; each one set overrides the same field of `buildfleet.json`. */
export interface SpecOverrides {
  script?: string;
  labels?: string[];
  artifacts?: string[];
  env?: Record<string, string>;
  timeoutSeconds?: number;
  priority?: number;
  maxAttempts?: number;
  name?: string;
  /** Merged under the file's `metadata` (the file wins): e.g. what `gitMetadata` found. */
  metadata?: Record<string, unknown>;
}

/**
 * The spec for `dir`: `dir/buildfleet.json` when present, with `overrides`
 * applied (`env` is merged, every other field replaced). Throws CliError when
 * the file is not a JSON object or no script is given.
 */
export async function loadSpec(dir: string, overrides: SpecOverrides): Promise<BuildSpecInput> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new CliError(`${dir} is not a directory`);
  const file = join(dir, 'buildfleet.json');
  let base: Record<string, unknown> = {};
  let text: string | undefined;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new CliError(`cannot read ${file}: ${(err as Error).message}`);
  }
  if (text !== undefined) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new CliError(`${file} is not valid JSON: ${(err as Error).message}`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new CliError(`${file} must hold a JSON object`);
    base = parsed as Record<string, unknown>;
  }
  const spec: Record<string, unknown> = { ...base };
  if (overrides.script !== undefined) spec.script = overrides.script;
  if (overrides.labels !== undefined) spec.labels = overrides.labels;
  if (overrides.artifacts !== undefined) spec.artifacts = overrides.artifacts;
  if (overrides.env !== undefined) spec.env = { ...((base.env as Record<string, string>) ?? {}), ...overrides.env };
  if (overrides.timeoutSeconds !== undefined) spec.timeoutSeconds = overrides.timeoutSeconds;
  if (overrides.priority !== undefined) spec.priority = overrides.priority;
  if (overrides.maxAttempts !== undefined) spec.maxAttempts = overrides.maxAttempts;
  if (overrides.name !== undefined) spec.name = overrides.name;
  if (overrides.metadata !== undefined) {
    const own = typeof base.metadata === 'object' && base.metadata !== null ? (base.metadata as Record<string, unknown>) : {};
    spec.metadata = { ...overrides.metadata, ...own };
  }
  if (typeof spec.script !== 'string' || spec.script.trim() === '')
    throw new CliError(`no build script: add "script" to ${file} or pass --script`);
  return spec as BuildSpecInput;
}

/** Called as upload bytes leave; `total` is the whole request body in bytes. */
export type ProgressFn = (sent: number, total: number) => void;

/**
 * Packs `dir` and submits it with `spec`. The tarball goes through a temp file
 * (removed afterwards), so memory stays flat for any project size.
 * Resolves with the created build; throws ApiError/CliError.
 */
export async function submitDirectory(
  client: ApiClient,
  dir: string,
  spec: BuildSpecInput,
  opts: { onPacked?: (files: number, bytes: number) => void; onProgress?: ProgressFn } = {},
): Promise<Build> {
  const root = resolve(dir);
  const tmp = await mkdtemp(join(tmpdir(), 'buildfleet-submit-'));
  try {
    const tarball = join(tmp, 'source.tar.gz');
    const { files, bytes } = await packSource(root, tarball);
    opts.onPacked?.(files, bytes);
    const boundary = `----buildfleet${randomBytes(12).toString('hex')}`;
    const head = Buffer.from(
      // A plain text field: some multipart parsers turn an application/json part into an object.
      `--${boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n` +
        `${JSON.stringify(spec)}\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="source"; filename="source.tar.gz"\r\n` +
        `Content-Type: application/gzip\r\n\r\n`,
    );
    const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
    const total = head.length + bytes + tail.length;
    const fh = await open(tarball, 'r');
    let sent = 0;
    let stage: 'head' | 'file' | 'tail' | 'done' = 'head';
    const chunk = Buffer.alloc(256 * 1024);
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        let piece: Uint8Array;
        if (stage === 'head') {
          piece = head;
          stage = 'file';
        } else if (stage === 'file') {
          const { bytesRead } = await fh.read(chunk, 0, chunk.length, null);
          if (bytesRead === 0) {
            stage = 'tail';
            piece = tail;
            stage = 'done';
          } else piece = Buffer.from(chunk.subarray(0, bytesRead));
        } else {
          controller.close();
          return;
        }
        sent += piece.length;
        opts.onProgress?.(sent, total);
        controller.enqueue(piece);
      },
    });
    try {
      const res = await client.json<{ build: Build }>(paths.builds(), {
        method: 'POST',
        body,
        headers: { 'content-type': `multipart/form-data; boundary=${boundary}`, 'content-length': String(total) },
      });
      return res.build;
    } finally {
      await fh.close();
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Parses `K=V` (`--env`); throws CliError naming the bad value. */
export function parseEnvPair(pair: string, into: Record<string, string> = {}): Record<string, string> {
  const i = pair.indexOf('=');
  if (i <= 0) throw new CliError(`--env expects KEY=VALUE, got "${pair}"`);
  into[pair.slice(0, i)] = pair.slice(i + 1);
  return into;
}

/** Human-readable byte count (`1.4 MB`). */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}
