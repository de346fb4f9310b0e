/**
 * Operator commands (issue 14): `doctor`, `backup`, `restore`. They work on
 * this host's data directory and database, not through the API, so they
 * run with or without a controller.
 */
import { resolve } from 'node:path';
import { Command, Option } from 'commander';
import { DEFAULTS, ENV } from '@buildfleet/protocol';
import { formatDoctor, runDoctor, type DoctorRole } from './doctor.js';
import { CliError } from './errors.js';
import { formatBytes } from './submit.js';
import { loadControllerModule } from './services.js';

const out = (line: string) => process.stdout.write(`${line}\n`);
const err = (line: string) => process.stderr.write(`${line}\n`);

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
      const { backupEmbedded, BackupError } = await loadControllerModule();
      try {
        const m = await backupEmbedded({ dataDir: dataDir(o.dataDir), file: resolve(file), now: () => Date.now() });
        out(resolve(file));
        err(`backup of ${m.builds} builds and ${m.blobs} blobs (${formatBytes(m.blobBytes)}) taken at ${m.createdAt}`);
        if (m.missingBlobs.length) err(`${m.missingBlobs.length} blob(s) were collected by retention during the backup and are missing from it`);
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
          now: () => Date.now(),
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
