/**
 * Runs one `buildfleet` command line. Expected errors print one line and give
 * exit code 3 (or the code the error carries); only bugs print a stack trace.
 */
import { CommanderError } from 'commander';
import { describeExpectedError, EXIT } from './errors.js';
import { buildProgram } from './program.js';

/** Parses `argv` and runs the command; resolves with the exit code. */
export async function run(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and --version end through exitOverride too.
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      return EXIT.error;
    }
    const line = describeExpectedError(err) ?? configErrorLine(err);
    if (line !== undefined) {
      process.stderr.write(`buildfleet: ${line}\n`);
      return (err as { exitCode?: number }).exitCode ?? EXIT.error;
    }
    process.stderr.write(`buildfleet: unexpected error: ${(err as Error)?.stack ?? String(err)}\n`);
    return EXIT.error;
  }
}

/**
 * Expected failures of the services: ConfigError (controller or worker) names
 * the bad option; SessionFatalError is a worker that cannot register at all
 * (bad enrollment token, identity held by a newer instance).
 */
function configErrorLine(err: unknown): string | undefined {
  if (err instanceof Error && (err.name === 'ConfigError' || err.name === 'CaFileError')) return `configuration: ${err.message}`;
  if (err instanceof Error && (err.name === 'SessionFatalError' || err.name === 'IdentityPermissionError')) return `worker stopped: ${err.message}`;
  return undefined;
}

