/**
 * Where the CLI finds its controller and API token (docs/protocol.md
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

/** The controller this host's settings describe (BUILDFLEET_PORT set and not 0), or undefined. */
function localControllerUrl(env: NodeJS.ProcessEnv): string | undefined {
  const port = env[ENV.port]?.trim();
  if (!port || port === '0' || !/^\d+$/.test(port)) return undefined;
  return `${env[ENV.tlsCert] ? 'https' : 'http'}://127.0.0.1:${port}`;
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
 * Resolves the controller URL and API token. The URL, first found of: the
 * global `--url`, BUILDFLEET_CONTROLLER_URL (its first URL), a controller on
 * this host at BUILDFLEET_PORT (https when BUILDFLEET_TLS_CERT is set), the
 * credentials file's `url`, `http://127.0.0.1:7700`. Every command and
 * `doctor` resolve it this way.
 */
export function resolveClientSettings(
  env: NodeJS.ProcessEnv,
  flags: { url?: string; token?: string } = {},
  cwd = process.cwd(),
): ClientSettings {
  let controllerUrl = flags.url || env[ENV.controllerUrl]?.split(',')[0]?.trim() || localControllerUrl(env) || '';
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
