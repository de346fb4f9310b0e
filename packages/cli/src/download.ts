/**
 * Downloading a build's artifacts (docs/protocol.md `GET /builds/{id}/artifacts`)
 * and checking each file's SHA-256 against the listing and the
 * `X-Checksum-SHA256` header before it is kept.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { chmod, mkdir, open, rename, rm } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { artifactNameProblem, CHECKSUM_HEADER, paths, type Artifact } from '@buildfleet/protocol';
import type { ApiClient } from './client.js';
import { CliError, EXIT } from './errors.js';

export interface DownloadedArtifact extends Artifact {
  /** Absolute path of the downloaded file. */
  path: string;
}

/**
 * Downloads every artifact of build `id` into `outDir` (names keep their
 * relative paths). Each file is written to `<name>.part`, hashed while it
 * streams, and renamed only when its SHA-256 and size match; otherwise the
 * part file is removed and CliError names the artifact. When the build had
 * artifacts but retention removed them all, CliError (exit 3).
 */
export async function downloadArtifacts(
  client: ApiClient,
  id: string,
  outDir: string,
  onFile?: (a: DownloadedArtifact) => void,
): Promise<DownloadedArtifact[]> {
  const all = await client.artifacts(id);
  // Retention removed these (their download answers 410 GONE); say so instead of failing.
  for (const a of all.filter((x) => x.expiredAt)) process.stderr.write(`artifact ${a.name} expired at ${a.expiredAt} (retention); not downloaded\n`);
  const list = all.filter((x) => !x.expiredAt);
  // Nothing left to fetch is a failure a script must see, exit code 3 like a build that is gone (404).
  if (all.length > 0 && list.length === 0) throw new CliError(`every artifact of build ${id} has expired (retention); nothing was downloaded`);
  const root = resolve(outDir);
  const done: DownloadedArtifact[] = [];
  for (const a of list) {
    const problem = artifactNameProblem(a.name);
    if (problem) throw new CliError(`refusing artifact "${a.name}": ${problem}`);
    const dest = resolve(root, ...a.name.split('/'));
    if (!dest.startsWith(root + sep)) throw new CliError(`refusing artifact "${a.name}": it leaves ${root}`);
    await makeDirectory(dirname(dest), outDir);
    const res = await client.request(paths.artifact(id, a.name));
    const header = res.headers.get(CHECKSUM_HEADER);
    if (header && header.toLowerCase() !== a.sha256.toLowerCase())
      throw new CliError(`artifact ${a.name}: the listing says SHA-256 ${a.sha256} but the download header says ${header}`, EXIT.checksumMismatch);
    if (!res.body) throw new CliError(`artifact ${a.name}: empty answer`);
    const hash = createHash('sha256');
    let size = 0;
    const part = `${dest}.part`;
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        size += chunk.length;
        cb(null, chunk);
      },
    });
    try {
      await pipeline(Readable.fromWeb(res.body as WebReadableStream<Uint8Array>), tap, createWriteStream(part, { mode: 0o644 }));
    } catch (err) {
      await rm(part, { force: true });
      throw new CliError(`artifact ${a.name}: download interrupted: ${(err as Error).message}`);
    }
    const sha256 = hash.digest('hex');
    if (sha256 !== a.sha256.toLowerCase() || size !== a.size) {
      await rm(part, { force: true });
      throw new CliError(
        `artifact ${a.name}: checksum mismatch (expected ${a.sha256}, ${a.size} bytes; got ${sha256}, ${size} bytes)`,
        EXIT.checksumMismatch,
      );
    }
    // The protocol carries no file mode; programs (ELF or #!) are made executable so `./out/app` runs.
    if (await looksExecutable(part)) await chmod(part, 0o755);
    await rename(part, dest);
    const got = { ...a, path: dest };
    done.push(got);
    onFile?.(got);
  }
  return done;
}

/** Creates `dir` (and its parents); a place that cannot hold it (a file, no permission) is a CliError naming `--out`. */
async function makeDirectory(dir: string, outDir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOTDIR' || e.code === 'EEXIST' ? 'a file is in the way' : e.code === 'EACCES' || e.code === 'EPERM' || e.code === 'EROFS' ? 'not allowed' : e.message;
    throw new CliError(`cannot create the directory ${dir} for --out ${outDir}: ${why} (${e.code ?? 'error'})`);
  }
}

/** True when the file starts with an ELF header or a `#!` line. */
async function looksExecutable(file: string): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await fh.read(head, 0, 4, 0);
    if (bytesRead >= 4 && head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return true;
    return bytesRead >= 2 && head[0] === 0x23 && head[1] === 0x21;
  } finally {
    await fh.close();
  }
}

/** Default download directory for a build: `./artifacts/<id>`. */
export function defaultOutDir(id: string): string {
  return join('artifacts', id);
}
