/**
 * Entry point of the `buildfleet` command (bin/buildfleet.js imports the
 * compiled copy); the work is in run.ts.
 */
import { run } from './run.js';

process.exitCode = await run(process.argv);
