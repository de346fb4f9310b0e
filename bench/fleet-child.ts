/**
 * Child-process entry for large idle fleets (`sections/idle.ts`): registers
 * `count` workers and keeps each in a long poll; a build it is given is run
 * (start, log, finish) and reported as `{type: 'got', id, at}`. Sends
 * `{type: 'parked'}` once every worker has a poll in flight; exits on
 * `{type: 'stop'}`. Configuration: JSON in BENCH_FLEET (`url`, `count`,
 * `prefix`, `waitMs`).
 */
import { startLoops } from './fleet.js';
import { registerFleet } from './wire.js';

const cfg = JSON.parse(process.env.BENCH_FLEET ?? '{}') as { url: string; count: number; prefix: string; waitMs: number };
const fleet = await registerFleet(cfg.url, cfg.count, cfg.prefix, 32);
const loops = startLoops(fleet, cfg.waitMs, { onBuild: (b, at) => process.send!({ type: 'got', id: b.id, at }) });
process.on('message', (m: { type: string }) => {
  if (m.type === 'stop') {
    loops.state.stopped = true;
    process.exit(0);
  }
});
process.on('disconnect', () => process.exit(0));
try {
  await loops.allPolling();
  process.send!({ type: 'parked' });
} catch (err) {
  process.send!({ type: 'error', message: String(err) });
}
