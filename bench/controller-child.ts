/**
 * Child-process entry: one real controller (the exported `startController`)
 * with the driver counters installed, so its RSS, CPU and statements are its
 * own and not the load generator's. Started by `controller.ts`; talks over
 * IPC: it sends `{type: 'ready', url}`, answers `{type: 'counts', reset}`
 * with the counts so far, `{type: 'profile', file}` by starting the CPU
 * profiler (no file) or stopping it and writing the `.cpuprofile` there,
 * and closes the controller and exits on `{type: 'stop'}`.
 *
 * Configuration comes as JSON in BENCH_CONTROLLER (`databaseUrl`, `dataDir`).
 */
import { writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { installCounters, takeCounts } from './sqlcount.js';

installCounters();
const { loadControllerConfig, startController } = await import('@buildfleet/controller');
const { API_TOKEN, ENROLLMENT_TOKEN } = await import('./wire.js');

const opts = JSON.parse(process.env.BENCH_CONTROLLER ?? '{}') as { databaseUrl?: string; dataDir: string };
const controller = await startController(
  loadControllerConfig(
    {},
    {
      host: '127.0.0.1',
      port: 0,
      dataDir: opts.dataDir,
      apiToken: API_TOKEN,
      enrollmentToken: ENROLLMENT_TOKEN,
      // warn would log every 503 of a saturated pool; errors (500s) still show
      logLevel: 'error',
      // the fleets register thousands of workers with one enrollment token; the abuse limits are not what is measured
      maxRegistrationsPerMinute: 0,
      maxAuthFailuresPerMinute: 0,
      ...(opts.databaseUrl ? { databaseUrl: opts.databaseUrl } : {}),
    },
  ),
);
takeCounts(true);

let profiler: Session | undefined;
async function profile(file: string | undefined): Promise<void> {
  if (!file) {
    profiler = new Session();
    profiler.connect();
    await profiler.post('Profiler.enable');
    await profiler.post('Profiler.setSamplingInterval', { interval: 500 }); // µs
    await profiler.post('Profiler.start');
    return;
  }
  const { profile: p } = await profiler!.post('Profiler.stop');
  profiler!.disconnect();
  profiler = undefined;
  await writeFile(file, JSON.stringify(p));
}

process.on('message', (m: { type: string; reset?: boolean; seq?: number; file?: string }) => {
  if (m.type === 'counts') {
    process.send!({ type: 'counts', seq: m.seq, counts: takeCounts(m.reset === true) });
  } else if (m.type === 'profile') {
    void profile(m.file).then(
      () => process.send!({ type: 'profile', seq: m.seq }),
      (err) => process.send!({ type: 'profile', seq: m.seq, error: String(err) }),
    );
  } else if (m.type === 'stop') {
    void controller.close().finally(() => process.exit(0));
  }
});
process.on('disconnect', () => void controller.close().finally(() => process.exit(0)));
process.send!({ type: 'ready', url: controller.url });
