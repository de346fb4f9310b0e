/**
 * `buildfleet secret set|list|rm|handouts` and `buildfleet cache list|rm`
 * (issue 13). Secret values go to the controller and never come back: the
 * API has no call that returns one.
 */
import { readFile } from 'node:fs/promises';
import { Command, InvalidArgumentError } from 'commander';
import { describeScope, paths, type CacheList, type Scope, type Secret, type SecretHandout } from '@buildfleet/protocol';
import type { ApiClient } from './client.js';
import { CliError } from './errors.js';
import { table } from './format.js';
import { formatBytes } from './submit.js';

const out = (line: string) => process.stdout.write(`${line}\n`);
const err = (line: string) => process.stderr.write(`${line}\n`);

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** `--scope KEY=VALUE` → a metadata pair. */
function scopePair(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError('--scope expects KEY=VALUE (a build metadata pair, e.g. repo=acme/app)');
  return { ...(previous ?? {}), [value.slice(0, eq)]: value.slice(eq + 1) };
}

/**
 * Reads a secret's value: the whole file with `--file` (byte for byte), else
 * standard input without one trailing newline (what `echo` and a terminal
 * add). Throws CliError for an empty value.
 */
export async function readSecretValue(file: string | undefined, stdin: NodeJS.ReadableStream = process.stdin): Promise<string> {
  let value: string;
  if (file !== undefined) {
    value = await readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
      throw new CliError(`cannot read ${file}: ${e.code ?? e.message}`);
    });
  } else {
    if ((stdin as { isTTY?: boolean }).isTTY) err('reading the value from standard input; end it with Ctrl-D');
    const chunks: Buffer[] = [];
    for await (const c of stdin) chunks.push(typeof c === 'string' ? Buffer.from(c) : (c as Buffer));
    value = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
  }
  if (value.length === 0) throw new CliError('the secret value is empty');
  return value;
}

/** Adds `secret` and `cache` to the program; `clientFor` gives the API client of a command. */
export function addSecretCommands(program: Command, clientFor: (cmd: Command) => ApiClient): void {
  const secret = program.command('secret').description('manage secrets builds may ask for (values are write-only)');

  secret
    .command('set')
    .description('create or replace a secret; the value comes from standard input, or from --file')
    .argument('<name>', 'secret name, also the environment variable a build sees ([A-Za-z_][A-Za-z0-9_]*)')
    .option('--file <path>', 'read the value from this file (kept byte for byte)')
    .option('--label <label>', 'only builds with this label may have it (repeatable)', collect)
    .option('--scope <KEY=VALUE>', 'only builds whose metadata has KEY=VALUE may have it (repeatable), e.g. repo=acme/app', scopePair)
    .action(async (name: string, o: { file?: string; label?: string[]; scope?: Record<string, string> }, cmd: Command) => {
      const value = await readSecretValue(o.file);
      const scope: Scope = {};
      if (o.label?.length) scope.labels = o.label;
      if (o.scope) scope.metadata = o.scope;
      const res = await clientFor(cmd).request(paths.secret(name), { method: 'PUT', json: { value, scope } });
      const { secret: s } = (await res.json()) as { secret: Secret };
      out(`secret ${s.name} ${res.status === 201 ? 'created' : 'updated'} (${describeScope(s.scope)})`);
    });

  secret
    .command('list')
    .description('list secrets: names and scopes, never values')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const { secrets } = await clientFor(cmd).json<{ secrets: Secret[] }>(paths.secrets());
      if (o.json) {
        out(JSON.stringify({ secrets }, null, 2));
        return;
      }
      out(secrets.length ? table(['NAME', 'SCOPE', 'UPDATED'], secrets.map((s) => [s.name, describeScope(s.scope), s.updatedAt])) : 'no secrets');
    });

  secret
    .command('rm')
    .description('delete a secret (builds that ask for it afterwards fail before they run)')
    .argument('<name>', 'secret name')
    .action(async (name: string, _o: unknown, cmd: Command) => {
      await clientFor(cmd).request(paths.secret(name), { method: 'DELETE' });
      out(`secret ${name} deleted`);
    });

  secret
    .command('handouts')
    .description('which attempts of which builds received a secret, newest first')
    .argument('<name>', 'secret name')
    .option('--limit <n>', 'how many (default 50)')
    .action(async (name: string, o: { limit?: string }, cmd: Command) => {
      const { handouts } = await clientFor(cmd).json<{ handouts: SecretHandout[] }>(paths.secretHandouts(name), {
        query: { limit: o.limit },
      });
      out(handouts.length ? table(['BUILD', 'ATTEMPT', 'AT'], handouts.map((h) => [h.buildId, String(h.attempt), h.handedOutAt])) : `secret ${name} was never handed out`);
    });

  const cache = program.command('cache').description('look at and delete build cache entries');

  cache
    .command('list')
    .description('list cache entries, most recently used first')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const list = await clientFor(cmd).json<CacheList>(paths.caches());
      if (o.json) {
        out(JSON.stringify(list, null, 2));
        return;
      }
      out(
        list.caches.length
          ? table(
              ['ID', 'SCOPE', 'KEY', 'SIZE', 'LAST USED'],
              list.caches.map((c) => [c.id, c.scope || '-', c.key, formatBytes(c.size), c.lastUsedAt]),
            )
          : 'no cache entries',
      );
      err(`${formatBytes(list.totalBytes)} of ${formatBytes(list.maxBytes)} used`);
    });

  cache
    .command('rm')
    .description('delete a cache entry')
    .argument('<id>', 'cache entry id (from "buildfleet cache list")')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      await clientFor(cmd).request(paths.cache(id), { method: 'DELETE' });
      out(`cache entry ${id} deleted`);
    });
}
