/**
 * A worker in its own process (for crash tests): configured from the
 * environment like the real thing; prints `RUNNING <buildId> <pgid>` when a
 * build's script starts so the test can SIGKILL this process mid-build.
 */
import { installSignalHandlers, loadWorkerConfig, silentLogger, startWorker } from '../../../src/index.js';

const worker = await startWorker(loadWorkerConfig(process.env, { requestTimeoutMs: 5_000 }), { logger: silentLogger, retryBaseMs: 10, retryMaxMs: 100 });
installSignalHandlers(worker, silentLogger);
worker.events.on('build:running', (e: { buildId: string; pgid: number }) => process.stdout.write(`RUNNING ${e.buildId} ${e.pgid}\n`));
process.stdout.write(`REGISTERED ${worker.workerId}\n`);
await worker.done;
