/**
 * The `buildfleet` command line: client commands talk to a controller over
 * docs/protocol.md's user API; `up`, `controller` and `worker` run the services
 * (src/serve.ts). Exit codes: 0 succeeded, 1 failed, 2 canceled/timed out,
 * 3 usage or connection error, 4 an artifact failed its checksum (src/errors.ts).
 */
import { pipeline } from 'node:stream/promises';
import { Readable, Writable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { Command, InvalidArgumentError, Option } from 'commander';
import { BUILD_STATES, isTerminal, paths, systemClock, type Build } from '@buildfleet/protocol';
import { ApiClient } from './client.js';
import { defaultOutDir, downloadArtifacts } from './download.js';
import { exitCodeForState } from './errors.js';
import { followBuild, waitForBuild } from './follow.js';
import { buildRows, formatBuild, outcome, workerRows } from './format.js';
import { shown } from './pack.js';
import { resolveClientSettings } from './settings.js';
import { gitMetadata } from './git.js';
import { fromNextLine } from './line-start.js';
import { formatBytes, loadSpec, parseEnvPair, submitDirectory, type SpecOverrides } from './submit.js';
import { addServiceCommands } from './serve.js';
import { addApiOpsCommands, addOpsCommands } from './ops-commands.js';
import { addSecretCommands } from './secrets.js';

export const CLI_VERSION = '0.1.0';

function intArg(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}`);
    return n;
  };
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

const err = (line: string) => process.stderr.write(`${line}\n`);
const out = (line: string) => process.stdout.write(`${line}\n`);

export function clientFor(cmd: Command): ApiClient {
  const g = cmd.optsWithGlobals<{ url?: string; token?: string }>();
  return new ApiClient(resolveClientSettings(process.env, { url: g.url, token: g.token }));
}

/** Upload progress on stderr: a live line on a terminal, a line per quarter otherwise. */
function progressReporter(): (sent: number, total: number) => void {
  const tty = process.stderr.isTTY;
  let lastQuarter = -1;
  let lastDraw = 0;
  return (sent, total) => {
    const pct = total > 0 ? Math.floor((sent / total) * 100) : 100;
    const text = `upload ${String(pct).padStart(3)}%  ${formatBytes(sent)} / ${formatBytes(total)}`;
    if (tty) {
      const now = performance.now();
      if (sent < total && now - lastDraw < 100) return;
      lastDraw = now;
      process.stderr.write(`\r${text}${sent >= total ? '\n' : ''}`);
    } else {
      const q = Math.floor(pct / 25);
      if (q !== lastQuarter) {
        lastQuarter = q;
        err(text);
      }
    }
  };
}

/** Stdout writes that respect backpressure well enough for a log follower. */
function writeStdout(chunk: Buffer): void {
  process.stdout.write(chunk);
}

/** Ends a `--follow`/wait: prints the outcome and sets the exit code from the state. */
function finishWith(build: Build, json: boolean): void {
  if (json) out(JSON.stringify(build, null, 2));
  err(`build ${build.id} ${outcome(build)}`);
  process.exitCode = exitCodeForState(build.state);
}

/** Builds the program; `main.ts` parses process.argv with it. */
export function buildProgram(): Command {
  const program = new Command('buildfleet')
    .description('Self-hosted build farm: a controller queues builds, workers run them.')
    .version(CLI_VERSION)
    .option('--url <url>', 'controller URL (env BUILDFLEET_CONTROLLER_URL, default http://127.0.0.1:7700)')
    .option('--token <token>', 'API token (env BUILDFLEET_API_TOKEN, else <data dir>/credentials.json)')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  addServiceCommands(program);
  addOpsCommands(program);
  addApiOpsCommands(program, clientFor);

  program
    .command('submit')
    .description('pack DIR (honouring .gitignore) and submit it as a build; the spec comes from DIR/buildfleet.json, flags override')
    .argument('<dir>', 'project directory')
    .option('--script <script>', 'shell script to run in the workspace')
    .option('--label <label>', 'required worker label (repeatable)', collect)
    .option('--artifact <glob>', 'artifact glob, relative to the workspace (repeatable)', collect)
    .option('--env <KEY=VALUE>', 'environment variable for the build (repeatable)', collect)
    .option('--timeout <seconds>', 'build timeout in seconds', intArg('--timeout', 1))
    .option('--priority <n>', 'higher runs first', intArg('--priority', -1000, 1000))
    .option('--max-attempts <n>', 'attempts when a worker is lost', intArg('--max-attempts', 1, 10))
    .option('--name <name>', 'what lists and the dashboard call the build (default: from metadata or the script)')
    .option('--no-git', 'do not record the git checkout (repo, branch, commit, dirty) in the metadata')
    .option('-f, --follow', 'stream the log until the build ends; exit code follows the outcome')
    .option('--download <outdir>', 'wait for the build, then download its artifacts into OUTDIR (SHA-256 checked)')
    .option('--json', 'print the build as JSON instead of its id')
    .action(async (dir: string, o: Record<string, unknown>, cmd: Command) => {
      const overrides: SpecOverrides = {};
      if (o.script !== undefined) overrides.script = o.script as string;
      if (o.label) overrides.labels = o.label as string[];
      if (o.artifact) overrides.artifacts = o.artifact as string[];
      if (o.env) {
        const env: Record<string, string> = {};
        for (const pair of o.env as string[]) parseEnvPair(pair, env);
        overrides.env = env;
      }
      if (o.timeout !== undefined) overrides.timeoutSeconds = o.timeout as number;
      if (o.priority !== undefined) overrides.priority = o.priority as number;
      if (o.maxAttempts !== undefined) overrides.maxAttempts = o.maxAttempts as number;
      if (o.name !== undefined) overrides.name = o.name as string;
      if (o.git !== false) {
        const git = await gitMetadata(dir);
        if (git) overrides.metadata = { ...git };
      }
      const spec = await loadSpec(dir, overrides);
      const client = clientFor(cmd);
      const json = Boolean(o.json);
      const build = await submitDirectory(client, dir, spec, {
        onPacked: (files, bytes) => err(`packed ${files} files (${formatBytes(bytes)}) from ${shown(dir)}`),
        onProgress: progressReporter(),
      });
      if (build.waiting?.reason === 'no_matching_worker') {
        const labels = build.spec.labels.length ? `labels ${build.spec.labels.join(', ')}` : 'no labels';
        err(`warning: no connected worker has ${labels}; the build waits until one registers ("buildfleet workers" lists them)`);
      }
      if (!o.follow && !o.download) {
        out(json ? JSON.stringify(build, null, 2) : build.id);
        err(`build ${build.id} ${build.state}; see "buildfleet status ${build.id}" or "buildfleet logs -f ${build.id}"`);
        return;
      }
      if (!json) out(build.id);
      let final: Build;
      if (o.follow) {
        err(`following build ${build.id} (Ctrl-C stops following; the build keeps running)`);
        final = await followBuild(client, build.id, json ? (c) => process.stderr.write(c) : writeStdout, {
          clock: systemClock,
          onAttempt: (a) => err(`--- attempt ${a} ---`),
        });
      } else {
        final = await waitForBuild(client, build.id, { clock: systemClock });
      }
      if (o.download) {
        const files = await downloadArtifacts(client, build.id, o.download as string, (a) =>
          err(`downloaded ${shown(a.path)} (${formatBytes(a.size)}, sha256 ${a.sha256}, verified)`),
        );
        if (files.length === 0) err(`build ${build.id} has no artifacts`);
      }
      finishWith(final, json);
    });

  program
    .command('status')
    .description("show one build's state")
    .argument('<id>', 'build id')
    .option('--json', 'print the build object as JSON')
    .action(async (id: string, o: { json?: boolean }, cmd: Command) => {
      const build = await clientFor(cmd).getBuild(id);
      out(o.json ? JSON.stringify(build, null, 2) : formatBuild(build));
    });

  program
    .command('list')
    .description('list builds, newest first')
    .addOption(new Option('--state <state>', 'only builds in this state').choices([...BUILD_STATES]))
    .option('--label <label>', 'only builds requiring this label')
    .option('--limit <n>', 'builds per page', intArg('--limit', 1, 500))
    .option('--all', 'follow nextCursor through every page')
    .option('--json', 'print JSON')
    .action(async (o: { state?: string; label?: string; limit?: number; all?: boolean; json?: boolean }, cmd: Command) => {
      const client = clientFor(cmd);
      const builds: Build[] = [];
      let cursor: string | undefined;
      do {
        const page = await client.listBuilds({ state: o.state, label: o.label, limit: o.limit, cursor });
        builds.push(...page.builds);
        cursor = page.nextCursor ?? undefined;
      } while (o.all && cursor);
      if (o.json) out(JSON.stringify({ builds, nextCursor: o.all ? null : (cursor ?? null) }, null, 2));
      else {
        out(builds.length ? buildRows(builds) : 'no builds');
        if (!o.all && cursor) err('more builds: use --all or a larger --limit');
      }
    });

  program
    .command('logs')
    .description("print a build's log")
    .argument('<id>', 'build id')
    .option('-f, --follow', 'keep printing until the build ends; exit code follows the outcome')
    .option('--attempt <n>', 'attempt number (default: the current one)', intArg('--attempt', 1))
    .option('--full', `print the whole log even when it is longer than ${TAIL_BYTES / 1024 / 1024} MiB (default: its end)`)
    .action(async (id: string, o: { follow?: boolean; attempt?: number; full?: boolean }, cmd: Command) => {
      const client = clientFor(cmd);
      if (o.follow) {
        const build = await followBuild(client, id, writeStdout, {
          clock: systemClock,
          ...(o.attempt !== undefined ? { attempt: o.attempt } : {}),
          onAttempt: (a) => err(`--- attempt ${a} ---`),
        });
        finishWith(build, false);
        return;
      }
      const offset = o.full ? 0 : await tailOffset(client, id, o.attempt);
      // A tail starts at a whole line: one byte earlier, up to the first newline, is dropped.
      const from = offset > 0 ? offset - 1 : 0;
      const res = await client.request(paths.logs(id), { query: { attempt: o.attempt, offset: from || undefined }, headers: { accept: 'text/plain' } });
      const body = res.body && Readable.fromWeb(res.body as WebReadableStream<Uint8Array>);
      if (body) await (offset > 0 ? pipeline(body, fromNextLine(), stdoutSink()) : pipeline(body, stdoutSink()));
    });

  program
    .command('download')
    .description("download a build's artifacts and verify their SHA-256")
    .argument('<id>', 'build id')
    .option('--out <dir>', 'output directory (default ./artifacts/<id>)')
    .action(async (id: string, o: { out?: string }, cmd: Command) => {
      const client = clientFor(cmd);
      const outDir = o.out ?? defaultOutDir(id);
      const files = await downloadArtifacts(client, id, outDir, (a) =>
        out(`${shown(a.path)}  ${formatBytes(a.size)}  sha256 ${a.sha256}  verified`),
      );
      if (files.length === 0) {
        const build = await client.getBuild(id);
        err(isTerminal(build.state) ? `build ${id} has no artifacts` : `build ${id} is ${build.state}: artifacts appear when it ends`);
      }
    });

  program
    .command('cancel')
    .description('cancel a build (a running one stops when its worker hears of it)')
    .argument('<id>', 'build id')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      const build = await clientFor(cmd).cancel(id);
      out(`build ${build.id} ${outcome(build)}`);
    });

  program
    .command('retry')
    .description('submit a new build with the same source and spec')
    .argument('<id>', 'build id')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      const build = await clientFor(cmd).retry(id);
      out(build.id);
      err(`new build ${build.id} (${build.state}) retries ${id}`);
    });

  program
    .command('workers')
    .description('list workers')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const workers = await clientFor(cmd).workers();
      out(o.json ? JSON.stringify({ workers }, null, 2) : workers.length ? workerRows(workers) : 'no workers');
    });

  program
    .command('drain')
    .description('stop giving builds to a worker; its running builds finish')
    .argument('<worker-id>', 'worker id')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      await clientFor(cmd).drain(id);
      out(`worker ${id} draining`);
    });

  program
    .command('resume')
    .description('undo a drain: the worker takes new builds again')
    .argument('<worker-id>', 'worker id')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      await clientFor(cmd).resume(id);
      out(`worker ${id} resumed`);
    });
  addSecretCommands(program, clientFor);

  return program;
}

/** A log longer than this prints only its end unless `--full` (a huge log's end is where the error is). */
export const TAIL_BYTES = 1024 * 1024;

/**
 * Where `logs` starts for a huge log (before moving on to a whole line, see line-start.ts): `TAIL_BYTES` before its end (the
 * attempt's `logBytes` in the build object), else 0. Says so on stderr.
 */
async function tailOffset(client: ApiClient, id: string, attempt: number | undefined): Promise<number> {
  const build = await client.getBuild(id);
  const a = build.attempts.find((x) => x.attempt === (attempt ?? build.attempt));
  const size = a?.logBytes ?? 0;
  if (size <= TAIL_BYTES) return 0;
  err(`log is ${formatBytes(size)}${a?.logTruncated ? ' (truncated at the cap)' : ''}: showing its last ${formatBytes(TAIL_BYTES)}; --full prints all of it`);
  return size - TAIL_BYTES;
}

/** Stdout as a sink that does not close the process's stdout at the end. */
function stdoutSink(): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (process.stdout.write(chunk)) cb();
      else process.stdout.once('drain', () => cb());
    },
  });
}
