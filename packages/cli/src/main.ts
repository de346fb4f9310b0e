/**
 * Entry point of the `buildfleet` command (bin/buildfleet.js imports the
 * compiled copy); the work is in run.ts.
 */
import { endOnBrokenPipe, run } from './run.js';

endOnBrokenPipe(process.stdout, (code) => process.exit(code));

process.exitCode = await run(process.argv);
