/**
 * Where the CLI finds its controller and API token (PROTOCOL.md
 * "Configuration names"): BUILDFLEET_CONTROLLER_URL, BUILDFLEET_API_TOKEN, and
 * when the token is unset, `<BUILDFLEET_DATA_DIR or ./.buildfleet>/credentials.json`
 * written by the controller on its first start.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { DEFAULTS, ENV } from '@buildfleet/protocol';
import { CliError } from './errors.js';

/** What a client command needs; frozen once, then passed down. */
export interface ClientSettings {
  readonly controllerUrl: string;
  readonly apiToken: string | undefined;
  /** Where the token came from, named in authentication errors. */
  readonly tokenSource: string;
  /** BUILDFLEET_CA_FILE: a PEM CA trusted besides the system's (a controller with a private certificate). */
  readonly caFile?: string | undefined;
}

/** The file the controller writes on its first start (mode 0600). */
export interface CredentialsFile {
  apiToken?: string;
  enrollmentToken?: string;
  url?: string;
}

/** `<dataDir>/credentials.json`, resolved against `cwd`. */
export function credentialsPath(env: NodeJS.ProcessEnv, cwd = process.cwd()): string {
  return resolve(cwd, env[ENV.dataDir] || DEFAULTS.dataDir, 'credentials.json');
}

/** Reads a credentials file; undefined when it does not exist. Throws CliError when it is unreadable JSON. */
export function readCredentials(path: string): CredentialsFile | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CliError(`cannot read ${path}: ${(err as Error).message}`);
  }
  try {
    const parsed: unknown = JSON.parse(text);
    return typeof parsed === 'object' && parsed !== null ? (parsed as CredentialsFile) : {};
  } catch {
    throw new CliError(`${path} is not valid JSON`);
  }
}

/**
 * Resolves the controller URL and API token. `urlFlag` (the global `--url`)
 * wins over the environment. The URL of the credentials file is used only
 * when neither a flag nor BUILDFLEET_CONTROLLER_URL names one.
 */
export function resolveClientSettings(
  env: NodeJS.ProcessEnv,
  flags: { url?: string; token?: string } = {},
  cwd = process.cwd(),
): ClientSettings {
  let controllerUrl = flags.url || env[ENV.controllerUrl]?.split(',')[0]?.trim() || '';
  let apiToken = flags.token || env[ENV.apiToken] || undefined;
  let tokenSource = flags.token ? '--token' : ENV.apiToken;
  if (!apiToken || !controllerUrl) {
    const path = credentialsPath(env, cwd);
    const creds = readCredentials(path);
    if (!apiToken && creds?.apiToken) {
      apiToken = creds.apiToken;
      tokenSource = path;
    }
    if (!controllerUrl && creds?.url) controllerUrl = creds.url;
  }
  if (!controllerUrl) controllerUrl = DEFAULTS.controllerUrl;
  try {
    new URL(controllerUrl);
  } catch {
    throw new CliError(`invalid controller URL "${controllerUrl}" (set ${ENV.controllerUrl} to e.g. http://127.0.0.1:7700)`);
  }
  const caFile = env[ENV.caFile] ? resolve(cwd, env[ENV.caFile]!) : undefined;
  return Object.freeze({ controllerUrl: controllerUrl.replace(/\/+$/, ''), apiToken, tokenSource, caFile });
}
