/**
 * Runs one `buildfleet` command line. Expected errors print one line and give
 * exit code 3 (or the code the error carries); only bugs print a stack trace.
 */
import { CommanderError } from 'commander';
import { describeExpectedError, EXIT } from './errors.js';
import { buildProgram } from './program.js';

/**
 * Ends the process quietly when `stream` (stdout) loses its reader
 * (`buildfleet logs <id> | head -1`): exit 0, as cat and git do for EPIPE.
 * Any other write error is one line and exit 3.
 */
export function endOnBrokenPipe(stream: NodeJS.EventEmitter, exit: (code: number) => void): void {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') return exit(0);
    process.stderr.write(`buildfleet: cannot write the output: ${err.message}\n`);
    exit(EXIT.error);
  });
}

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

/** Worker errors whose message already says what is wrong and how to fix it. */
const WORKER_STOPS = new Set(['SessionFatalError', 'IdentityPermissionError', 'IdentityLockedError', 'IdentityCorruptError']);

/**
 * Expected failures of the services: ConfigError (controller or worker) names
 * the bad option; SessionFatalError is a worker that cannot register at all
 * (bad enrollment token, identity held by a newer instance); the identity
 * errors name the data directory or file (another worker holds it, others
 * may read it, it is corrupt).
 */
function configErrorLine(err: unknown): string | undefined {
  if (err instanceof Error && (err.name === 'ConfigError' || err.name === 'CaFileError')) return `configuration: ${err.message}`;
  if (err instanceof Error && WORKER_STOPS.has(err.name)) return `worker stopped: ${err.message}`;
  return undefined;
}

