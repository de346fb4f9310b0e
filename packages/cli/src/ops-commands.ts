/**
 * Operator commands (issue 14): `doctor`, `backup`, `restore`. They work on
 * this host's data directory and database, not through the API, so they
 * run with or without a controller.
 */
import { resolve } from 'node:path';
import { Command, Option } from 'commander';
import { DEFAULTS, ENV, WEBHOOK_EVENTS, systemClock, webhookPaths, type Build, type Webhook, type WebhookDelivery } from '@buildfleet/protocol';
import type { ApiClient } from './client.js';
import { formatDoctor, runDoctor, type DoctorRole } from './doctor.js';
import { CliError } from './errors.js';
import { formatBytes } from './submit.js';
import { loadControllerModule } from './services.js';

const out = (line: string): void => void process.stdout.write(`${line}\n`);
const err = (line: string): void => void process.stderr.write(`${line}\n`);

function dataDir(flag: string | undefined): string {
  return resolve(flag ?? (process.env[ENV.dataDir] || DEFAULTS.dataDir));
}

export function addOpsCommands(program: Command): void {
  program
    .command('doctor')
    .description("check this host's setup (database, disk, clock, sandbox, port, tokens) and say how to fix each problem")
    .addOption(new Option('--role <role>', 'what runs here').choices(['controller', 'worker', 'all']).default('all'))
    .option('--json', 'print the checks as JSON')
    .action(async (o: { role: DoctorRole; json?: boolean }) => {
      const results = await runDoctor(o.role);
      out(o.json ? JSON.stringify({ checks: results }, null, 2) : formatDoctor(results));
      process.exitCode = results.some((r) => r.status === 'fail') ? 1 : 0;
    });

  program
    .command('backup')
    .description('copy the embedded store (SQLite and blobs) into FILE while the controller runs (.gz/.tgz compresses)')
    .argument('<file>', 'backup file to write (replaced atomically)')
    .option('--data-dir <dir>', `the controller's data directory (env ${ENV.dataDir}, default ${DEFAULTS.dataDir})`)
    .action(async (file: string, o: { dataDir?: string }) => {
      if (process.env[ENV.databaseUrl]) {
        throw new CliError('DATABASE_URL is set: back up PostgreSQL with pg_dump (README "Backups"); `buildfleet backup` copies the embedded store');
      }
      const { backupEmbedded, BackupError, markCollectedInSnapshot } = await loadControllerModule();
      try {
        const m = await backupEmbedded({
          dataDir: dataDir(o.dataDir),
          file: resolve(file),
          now: () => systemClock.now(),
          onMissingBlobs: (snapshot, keys) => markCollectedInSnapshot(snapshot, keys, systemClock.now()),
        });
        out(resolve(file));
        err(`backup of ${m.builds} builds and ${m.blobs} blobs (${formatBytes(m.blobBytes)}) taken at ${m.createdAt}`);
        if (m.missingBlobs.length) err(`${m.missingBlobs.length} blob(s) were collected by retention during the backup and are marked so in it`);
      } catch (e) {
        if (e instanceof BackupError) throw new CliError(e.message);
        throw e;
      }
    });

  program
    .command('restore')
    .description('restore a backup into the data directory (stop the controller first)')
    .argument('<file>', 'backup file written by `buildfleet backup`')
    .option('--data-dir <dir>', `data directory to restore into (env ${ENV.dataDir}, default ${DEFAULTS.dataDir})`)
    .option('--force', 'move an existing store aside (to <data dir>/replaced-<time>/) instead of refusing')
    .action(async (file: string, o: { dataDir?: string; force?: boolean }) => {
      const { restoreEmbedded, BackupError, SchemaTooNewError, assertSchemaNotNewer, knownMigrations } = await loadControllerModule();
      const known = await knownMigrations('sqlite');
      try {
        const r = await restoreEmbedded({
          file: resolve(file),
          dataDir: dataDir(o.dataDir),
          force: Boolean(o.force),
          now: () => systemClock.now(),
          checkMigrations: (names) => assertSchemaNotNewer(names, known),
        });
        if (r.movedAside) err(`the store that was there is now in ${r.movedAside}`);
        out(`restored ${r.manifest.builds} builds and ${r.manifest.blobs} blobs from the backup of ${r.manifest.createdAt} into ${dataDir(o.dataDir)}`);
      } catch (e) {
        if (e instanceof BackupError || e instanceof SchemaTooNewError) throw new CliError(e.message);
        throw e;
      }
    });
}

/** `keep` and `webhook …`: through the API with the API token. */
export function addApiOpsCommands(program: Command, clientFor: (cmd: Command) => ApiClient): void {
  program
    .command('keep')
    .description('exempt a build from retention (its source, logs, artifacts and the build itself are kept)')
    .argument('<id>', 'build id')
    .option('--off', 'let retention have the build again')
    .action(async (id: string, o: { off?: boolean }, cmd: Command) => {
      const { build } = await clientFor(cmd).json<{ build: Build }>(webhookPaths.keep(id), { method: 'POST', json: { keep: !o.off } });
      out(`build ${build.id} ${build.keep ? 'kept: retention leaves it alone' : 'no longer kept'}`);
    });

  const webhook = program.command('webhook').description('send build events to other systems (signed HTTP POSTs)');
  webhook
    .command('add')
    .description('subscribe URL to events; prints the signing secret once')
    .argument('<url>', 'http:// or https:// URL to POST events to')
    .option('--events <list>', `comma-separated: ${WEBHOOK_EVENTS.join(', ')}`, 'build.finished')
    .option('--description <text>', 'a note for people')
    .option('--json', 'print the answer as JSON')
    .action(async (url: string, o: { events: string; description?: string; json?: boolean }, cmd: Command) => {
      const events = o.events.split(',').map((e) => e.trim()).filter(Boolean);
      const unknown = events.filter((e) => !(WEBHOOK_EVENTS as readonly string[]).includes(e));
      if (unknown.length) throw new CliError(`unknown event(s) ${unknown.join(', ')}; known: ${WEBHOOK_EVENTS.join(', ')}`);
      const r = await clientFor(cmd).json<{ webhook: Webhook; secret: string }>(webhookPaths.webhooks(), {
        method: 'POST',
        json: { url, events, ...(o.description ? { description: o.description } : {}) },
      });
      if (o.json) return out(JSON.stringify(r, null, 2));
      out(`webhook ${r.webhook.id} -> ${r.webhook.url} (${r.webhook.events.join(', ')})`);
      out(`signing secret: ${r.secret}`);
      err('the secret is shown only now: verify X-Buildfleet-Signature = sha256=HMAC-SHA256(secret, "<X-Buildfleet-Timestamp>.<body>")');
    });
  webhook
    .command('list')
    .description('list webhooks')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }, cmd: Command) => {
      const { webhooks } = await clientFor(cmd).json<{ webhooks: Webhook[] }>(webhookPaths.webhooks());
      if (o.json) return out(JSON.stringify({ webhooks }, null, 2));
      out(webhooks.length ? webhooks.map((w) => `${w.id}  ${w.url}  ${w.events.join(',')}${w.description ? `  ${w.description}` : ''}`).join('\n') : 'no webhooks');
    });
  webhook
    .command('remove')
    .description('remove a webhook and its delivery log')
    .argument('<id>', 'webhook id')
    .action(async (id: string, _o: unknown, cmd: Command) => {
      await clientFor(cmd).request(webhookPaths.webhook(id), { method: 'DELETE' });
      out(`webhook ${id} removed`);
    });
  webhook
    .command('deliveries')
    .description("a webhook's delivery log, newest first")
    .argument('<id>', 'webhook id')
    .option('--state <state>', 'pending, delivered or failed')
    .option('--limit <n>', 'how many', '50')
    .option('--json', 'print JSON')
    .action(async (id: string, o: { state?: string; limit: string; json?: boolean }, cmd: Command) => {
      const { deliveries } = await clientFor(cmd).json<{ deliveries: WebhookDelivery[] }>(webhookPaths.deliveries(id), {
        query: { limit: o.limit, state: o.state },
      });
      if (o.json) return out(JSON.stringify({ deliveries }, null, 2));
      if (deliveries.length === 0) return out('no deliveries');
      for (const d of deliveries) {
        const result = d.lastStatusCode !== null ? `HTTP ${d.lastStatusCode}` : (d.lastError ?? '-');
        const next = d.state === 'pending' && d.nextAttemptAt ? `  next try ${d.nextAttemptAt}` : '';
        out(`${d.createdAt}  ${d.eventType.padEnd(14)}  build ${d.buildId}  ${d.state.padEnd(9)}  ${d.attempts} tries  ${result}${next}`);
      }
    });
}
