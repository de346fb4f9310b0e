/**
 * `buildfleet doctor`: checks what a controller or worker on this host needs
 * and says how to fix each problem (issue 14, "Operator tools"). Nothing
 * here changes anything: it reads the environment, the database and the
 * file system, binds the port for a moment and runs `bwrap` once.
 *
 * Every check is a function of `DoctorDeps`, so tests can give it another
 * PATH, a full file system (`statfs`) or a skewed clock.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, readFile, stat, statfs } from 'node:fs/promises';
import { createServer } from 'node:net';
import { delimiter, dirname, join, resolve } from 'node:path';
import { DEFAULTS, ENV, systemClock } from '@buildfleet/protocol';
import { controllerFetch } from '@buildfleet/protocol/node';
import { loadControllerModule } from './services.js';
import { resolveClientSettings } from './settings.js';

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface CheckResult {
  /** Short name: `database`, `disk`, `sandbox`, ... */
  name: string;
  status: CheckStatus;
  /** What was found. */
  detail: string;
  /** What to do about a `warn` or `fail`. */
  fix?: string;
}

export type DoctorRole = 'controller' | 'worker' | 'all';

/** What the checks touch; `defaultDoctorDeps()` is the real machine. */
export interface DoctorDeps {
  env: NodeJS.ProcessEnv;
  /** Free and total bytes of the file system holding `path`. */
  diskSpace(path: string): Promise<{ freeBytes: number; totalBytes: number }>;
  /** Runs a program; never rejects (a spawn error is `code: null` and its message in stderr). */
  run(file: string, args: string[], timeoutMs?: number): Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** File contents, or undefined when it cannot be read. */
  readText(path: string): Promise<string | undefined>;
  isExecutable(path: string): Promise<boolean>;
  exists(path: string): Promise<boolean>;
  /** Whether `host:port` can be bound now (it is released at once). */
  portFree(host: string, port: number): Promise<boolean>;
  /** Epoch ms. */
  now(): number;
  fetch: typeof fetch;
}

export function defaultDoctorDeps(env: NodeJS.ProcessEnv = process.env): DoctorDeps {
  return {
    env,
    async diskSpace(path) {
      const s = await statfs(path);
      return { freeBytes: Number(s.bavail) * Number(s.bsize), totalBytes: Number(s.blocks) * Number(s.bsize) };
    },
    run(file, args, timeoutMs = 10_000) {
      return new Promise((done) => {
        let stdout = '';
        let stderr = '';
        const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
        child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
        child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
        child.on('error', (err) => done({ code: null, stdout, stderr: err.message }));
        child.on('close', (code) => done({ code, stdout, stderr }));
      });
    },
    readText: (path) => readFile(path, 'utf8').catch(() => undefined),
    isExecutable: (path) => access(path, constants.X_OK).then(() => true, () => false),
    exists: (path) => stat(path).then(() => true, () => false),
    portFree: (host, port) =>
      new Promise((done) => {
        const srv = createServer();
        srv.once('error', () => done(false));
        srv.listen({ host, port, exclusive: true }, () => srv.close(() => done(true)));
      }),
    now: () => systemClock.now(),
    // Trusts BUILDFLEET_CA_FILE like the worker; an unreadable file fails the controller check.
    fetch: ((url: string | URL, init?: RequestInit) => controllerFetch(env[ENV.caFile])(url, init)) as typeof fetch,
  };
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Below these the data directory's file system fails or warns. */
export const DISK_LIMITS = { failBytes: 512 * MiB, failRatio: 0.02, warnBytes: 5 * GiB, warnRatio: 0.1 } as const;

function fmtBytes(n: number): string {
  if (n >= GiB) return `${(n / GiB).toFixed(1)} GiB`;
  if (n >= MiB) return `${(n / MiB).toFixed(1)} MiB`;
  return `${n} B`;
}

function dataDirOf(env: NodeJS.ProcessEnv): string {
  return resolve(env[ENV.dataDir] || DEFAULTS.dataDir);
}

/** The nearest existing directory at or above `dir` (the data dir may not exist before the first start). */
async function existingAncestor(deps: DoctorDeps, dir: string): Promise<string> {
  let d = dir;
  while (!(await deps.exists(d)) && dirname(d) !== d) d = dirname(d);
  return d;
}

export async function checkNode(): Promise<CheckResult> {
  const [maj, min] = process.versions.node.split('.').map(Number) as [number, number];
  const ok = maj > 20 || (maj === 20 && min >= 19);
  return ok
    ? { name: 'node', status: 'ok', detail: `Node.js ${process.versions.node}` }
    : { name: 'node', status: 'fail', detail: `Node.js ${process.versions.node} is too old`, fix: 'install Node.js 20.19 or newer' };
}

export async function checkConfig(deps: DoctorDeps): Promise<CheckResult> {
  const { loadControllerConfig } = await loadControllerModule();
  try {
    loadControllerConfig(deps.env);
    return { name: 'config', status: 'ok', detail: 'controller settings are valid' };
  } catch (err) {
    return { name: 'config', status: 'fail', detail: (err as Error).message, fix: 'correct that variable in the environment (or the unit\'s EnvironmentFile)' };
  }
}

export async function checkDatabase(deps: DoctorDeps): Promise<CheckResult[]> {
  const { inspectDatabase } = await loadControllerModule();
  const databaseUrl = deps.env[ENV.databaseUrl] || undefined;
  let info;
  try {
    info = await inspectDatabase({ databaseUrl, dataDir: dataDirOf(deps.env), localNow: deps.now });
  } catch (err) {
    const where = databaseUrl ? new URL(databaseUrl).host : dataDirOf(deps.env);
    return [
      {
        name: 'database',
        status: 'fail',
        detail: `cannot reach the database at ${where}: ${(err as Error).message}`,
        fix: databaseUrl
          ? 'start PostgreSQL (pg_ctlcluster <version> main start / systemctl start postgresql) and check DATABASE_URL (host, port, user, database name)'
          : `check that ${dataDirOf(deps.env)} is readable by this user`,
      },
    ];
  }
  const out: CheckResult[] = [];
  const known = new Set(info.known);
  const newer = info.applied.filter((n) => !known.has(n));
  const pending = info.known.filter((n) => !info.applied.includes(n));
  if (newer.length > 0) {
    out.push({
      name: 'database',
      status: 'fail',
      detail: `${info.serverVersion}; migrated by a newer buildfleet (${newer.join(', ')})`,
      fix: 'run the newer buildfleet that migrated it, or restore a backup taken before the upgrade',
    });
  } else if (!info.exists) {
    out.push({ name: 'database', status: 'ok', detail: `${info.serverVersion}; the store is created on the first start` });
  } else {
    const major = /PostgreSQL (\d+)/.exec(info.serverVersion)?.[1];
    const old = major !== undefined && Number(major) < 13;
    out.push({
      name: 'database',
      status: old ? 'warn' : 'ok',
      detail: `${info.serverVersion}; schema ${info.applied.at(-1) ?? 'empty'}${pending.length ? ` (${pending.length} migration(s) run on the next start)` : ', up to date'}`,
      ...(old ? { fix: 'buildfleet is tested on PostgreSQL 15; upgrade the server' } : {}),
    });
  }
  if (info.clockSkewMs !== undefined) {
    const skew = Math.abs(info.clockSkewMs);
    const status: CheckStatus = skew > 30_000 ? 'fail' : skew > 1_000 ? 'warn' : 'ok';
    out.push({
      name: 'clock',
      status,
      detail: `this host's clock is ${info.clockSkewMs > 0 ? 'behind' : 'ahead of'} the database's by ${skew} ms`,
      ...(status !== 'ok'
        ? { fix: 'synchronise the clock (chrony or systemd-timesyncd); leases use the database clock, but token lifetimes, logs and webhook timestamps on this host use its own' }
        : {}),
    });
  } else {
    out.push({ name: 'clock', status: 'skip', detail: 'embedded store: the controller and its database share this clock' });
  }
  return out;
}

export async function checkDisk(deps: DoctorDeps): Promise<CheckResult> {
  const dir = dataDirOf(deps.env);
  const at = await existingAncestor(deps, dir);
  let space;
  try {
    space = await deps.diskSpace(at);
  } catch (err) {
    return { name: 'disk', status: 'fail', detail: `cannot read the free space of ${at}: ${(err as Error).message}`, fix: `check that ${at} exists and is readable` };
  }
  const ratio = space.totalBytes > 0 ? space.freeBytes / space.totalBytes : 0;
  const detail = `${fmtBytes(space.freeBytes)} free of ${fmtBytes(space.totalBytes)} (${(ratio * 100).toFixed(1)}%) at ${dir}`;
  const fix =
    `free space on the file system holding ${dir}: lower BUILDFLEET_RETAIN_ARTIFACTS, BUILDFLEET_RETAIN_LOGS and BUILDFLEET_RETAIN_SOURCES, ` +
    `cap blobs with BUILDFLEET_BLOB_MAX_MB, or move BUILDFLEET_DATA_DIR to a larger disk`;
  if (space.freeBytes < DISK_LIMITS.failBytes || ratio < DISK_LIMITS.failRatio) return { name: 'disk', status: 'fail', detail: `disk nearly full: ${detail}`, fix };
  if (space.freeBytes < DISK_LIMITS.warnBytes || ratio < DISK_LIMITS.warnRatio) return { name: 'disk', status: 'warn', detail: `disk space low: ${detail}`, fix };
  return { name: 'disk', status: 'ok', detail };
}

/** `bwrap` on PATH, the way the worker's sandbox finds it. */
async function findOnPath(deps: DoctorDeps, name: string): Promise<string | undefined> {
  for (const dir of (deps.env.PATH ?? '').split(delimiter).filter(Boolean)) {
    const p = join(dir, name);
    if (await deps.isExecutable(p)) return p;
  }
  return undefined;
}

export async function checkSandbox(deps: DoctorDeps): Promise<CheckResult[]> {
  const bwrap = await findOnPath(deps, 'bwrap');
  if (!bwrap) {
    return [
      {
        name: 'sandbox',
        status: 'fail',
        detail: 'bubblewrap (bwrap) is not installed or not on PATH: builds cannot be isolated from the worker',
        fix: 'install bubblewrap: apt-get install bubblewrap (Debian, Ubuntu), dnf install bubblewrap (Fedora), apk add bubblewrap (Alpine)',
      },
    ];
  }
  const version = (await deps.run(bwrap, ['--version'])).stdout.trim() || 'bubblewrap';
  const probe = await deps.run(bwrap, ['--unshare-user', '--unshare-pid', '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', 'true']);
  if (probe.code === 0) return [{ name: 'sandbox', status: 'ok', detail: `${version} at ${bwrap}; user namespaces work` }];
  const why = probe.stderr.trim().split('\n')[0] ?? '';
  const clone = (await deps.readText('/proc/sys/kernel/unprivileged_userns_clone'))?.trim();
  const maxNs = (await deps.readText('/proc/sys/user/max_user_namespaces'))?.trim();
  const apparmor = (await deps.readText('/proc/sys/kernel/apparmor_restrict_unprivileged_userns'))?.trim();
  let fix = 'allow unprivileged user namespaces for the worker\'s user';
  if (clone === '0') fix = 'enable unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 (and put it in /etc/sysctl.d/ to keep it)';
  else if (maxNs === '0') fix = 'allow user namespaces: sysctl -w user.max_user_namespaces=15000 (and put it in /etc/sysctl.d/)';
  else if (apparmor === '1') fix = 'AppArmor restricts unprivileged user namespaces: add an AppArmor profile allowing "userns" for /usr/bin/bwrap, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0';
  else if (/Operation not permitted|setting up uid map/i.test(why)) fix = 'the service manager or container forbids namespaces: in systemd, remove RestrictNamespaces= from the worker unit; in a container, allow user namespaces';
  return [{ name: 'sandbox', status: 'fail', detail: `${version} found, but it cannot create a user namespace: ${why || `exit ${probe.code}`}`, fix }];
}

export async function checkPort(deps: DoctorDeps): Promise<CheckResult> {
  const host = deps.env[ENV.host] || DEFAULTS.host;
  const port = Number(deps.env[ENV.port] || DEFAULTS.port);
  if (port === 0) return { name: 'port', status: 'skip', detail: 'BUILDFLEET_PORT=0 picks a free port at start' };
  if (await deps.portFree(host, port)) return { name: 'port', status: 'ok', detail: `${host}:${port} is free` };
  const shown = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  const health = await deps
    .fetch(`http://${shown}:${port}/healthz`, { signal: AbortSignal.timeout(2_000) })
    .then(async (r) => r.ok && ((await r.json()) as { ok?: boolean }).ok === true)
    .catch(() => false);
  if (health) return { name: 'port', status: 'ok', detail: `a buildfleet controller is already listening on ${host}:${port}` };
  return {
    name: 'port',
    status: 'fail',
    detail: `${host}:${port} is taken by another program`,
    fix: `stop it (ss -ltnp 'sport = :${port}' shows which) or choose another port with BUILDFLEET_PORT`,
  };
}

export async function checkTokens(deps: DoctorDeps, role: DoctorRole): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  const dataDir = dataDirOf(deps.env);
  const credentials = join(dataDir, 'credentials.json');
  if (role !== 'worker') {
    if (deps.env[ENV.apiToken]) out.push({ name: 'tokens', status: 'ok', detail: 'controller: BUILDFLEET_API_TOKEN is set' });
    else if (await deps.exists(credentials)) out.push({ name: 'tokens', status: 'ok', detail: `controller: tokens generated on the first start are in ${credentials}` });
    else
      out.push({
        name: 'tokens',
        status: 'warn',
        detail: 'controller: no BUILDFLEET_API_TOKEN and no credentials.json yet',
        fix: `the first start generates an API and an enrollment token and saves them in ${credentials}; set BUILDFLEET_API_TOKEN and BUILDFLEET_ENROLLMENT_TOKEN (bfa_…, bfe_…) to choose them`,
      });
  }
  if (role !== 'controller') {
    const identity = join(dataDir, 'worker', 'identity.json');
    if (await deps.exists(identity)) out.push({ name: 'tokens', status: 'ok', detail: `worker: registered (identity in ${identity})` });
    else if (deps.env[ENV.enrollmentToken]?.startsWith('bfe_')) out.push({ name: 'tokens', status: 'ok', detail: 'worker: BUILDFLEET_ENROLLMENT_TOKEN is set for the first registration' });
    else
      out.push({
        name: 'tokens',
        status: 'fail',
        detail: 'worker: no enrollment token and no saved identity',
        fix: 'set BUILDFLEET_ENROLLMENT_TOKEN to a bfe_ token (printed on the controller\'s first start, or: POST /api/v1/enrollment-tokens)',
      });
  }
  return out;
}

/**
 * Whether the controller answers /readyz: each of BUILDFLEET_CONTROLLER_URL's
 * URLs (a worker's list), else the one the other commands would use
 * (`resolveClientSettings`: BUILDFLEET_PORT, the credentials file's url).
 */
export async function checkController(deps: DoctorDeps, cwd = process.cwd()): Promise<CheckResult> {
  let urls: string[];
  const listed = deps.env[ENV.controllerUrl];
  try {
    urls = listed
      ? listed.split(',').map((u) => u.trim().replace(/\/+$/, ''))
      : [resolveClientSettings(deps.env, {}, cwd).controllerUrl];
  } catch (err) {
    return { name: 'controller', status: 'fail', detail: (err as Error).message, fix: 'correct BUILDFLEET_CONTROLLER_URL or the credentials file' };
  }
  const bad: string[] = [];
  for (const url of urls) {
    const ok = await deps
      .fetch(`${url}/readyz`, { signal: AbortSignal.timeout(3_000) })
      .then((r) => r.ok)
      .catch(() => false);
    if (!ok) bad.push(url);
  }
  if (bad.length === 0) return { name: 'controller', status: 'ok', detail: `${urls.join(', ')} ready` };
  return {
    name: 'controller',
    status: bad.length === urls.length ? 'fail' : 'warn',
    detail: `not ready: ${bad.join(', ')}`,
    fix: 'start the controller (systemctl start buildfleet-controller) or correct BUILDFLEET_CONTROLLER_URL; /readyz answers 503 while its database is unreachable',
  };
}

/** Runs the checks for `role`, in a fixed order. */
export async function runDoctor(role: DoctorRole, deps: DoctorDeps = defaultDoctorDeps()): Promise<CheckResult[]> {
  const results: CheckResult[] = [await checkNode()];
  if (role !== 'worker') {
    results.push(await checkConfig(deps));
    results.push(...(await checkDatabase(deps)));
    results.push(await checkPort(deps));
  }
  results.push(await checkDisk(deps));
  if (role !== 'controller') {
    results.push(...(await checkSandbox(deps)));
    results.push(await checkController(deps));
  }
  results.push(...(await checkTokens(deps, role)));
  return results;
}

const MARK: Record<CheckStatus, string> = { ok: 'ok  ', warn: 'WARN', fail: 'FAIL', skip: 'skip' };

/** Human-readable report: one line per check, its fix indented below. */
export function formatDoctor(results: readonly CheckResult[]): string {
  const width = Math.max(...results.map((r) => r.name.length));
  const lines: string[] = [];
  for (const r of results) {
    lines.push(`${MARK[r.status]}  ${r.name.padEnd(width)}  ${r.detail}`);
    if (r.fix && (r.status === 'warn' || r.status === 'fail')) lines.push(`${' '.repeat(width + 8)}fix: ${r.fix}`);
  }
  const fails = results.filter((r) => r.status === 'fail').length;
  const warns = results.filter((r) => r.status === 'warn').length;
  lines.push(fails + warns === 0 ? 'all checks passed' : `${fails} problem(s), ${warns} warning(s)`);
  return lines.join('\n');
}
