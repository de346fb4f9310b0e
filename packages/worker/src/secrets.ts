/**
 * Secrets on the worker (issue 13): what a build receives from
 * `GET /builds/{id}/secrets` (with its build token, after `start`) becomes
 * environment variables, or files named by environment variables, for the
 * script; and every value goes to the build's log masker before the script
 * can print it.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { SecretRef } from '@buildfleet/protocol';
import type { HandedSecret } from './client/controller-client.js';
import type { SecretFilesLocation } from './executor/types.js';

export type { HandedSecret };

export interface SecretFilesDir extends SecretFilesLocation {
  /** Gives a written file to the build's user (a root worker runs builds as another user). */
  chown?: (file: string) => Promise<void>;
}

/**
 * The environment variables a build gets for its secrets: `as: "env"` puts
 * the value in `ref.env`; `as: "file"` writes it to `<dir>/<name>` (mode
 * 0400) and puts the file's path, as the build sees it, in `ref.env`.
 * Throws when the controller did not hand out a value the spec asks for
 * (the controller fails such a build before answering, so this is a bug).
 */
export async function secretEnvironment(
  refs: readonly SecretRef[],
  handed: readonly HandedSecret[],
  dir: SecretFilesDir,
): Promise<Record<string, string>> {
  const values = new Map(handed.map((s) => [s.name, s.value]));
  const env: Record<string, string> = {};
  for (const ref of refs) {
    const value = values.get(ref.name);
    if (value === undefined) throw new Error(`the controller did not hand out secret ${ref.name}`);
    if (ref.as === 'env') {
      env[ref.env] = value;
      continue;
    }
    await fs.mkdir(dir.host, { recursive: true, mode: 0o700 });
    const file = path.join(dir.host, ref.name);
    await fs.writeFile(file, value, { mode: 0o400, flag: 'wx' });
    await dir.chown?.(file);
    env[ref.env] = path.posix.join(dir.build, ref.name);
  }
  if (Object.keys(env).length > 0 && refs.some((r) => r.as === 'file') && dir.chown) await dir.chown(dir.host);
  return env;
}

/** Removes an attempt's secret files (never throws). */
export async function removeSecretFiles(dir: SecretFilesLocation): Promise<void> {
  await fs.rm(dir.host, { recursive: true, force: true }).catch(() => undefined);
}
