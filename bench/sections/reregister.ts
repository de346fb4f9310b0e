/**
 * Re-registration latency (docs/protocol.md "POST /api/v1/workers/register")
 * while `parked` workers sit in long polls: each sample re-registers one of
 * the parked workers with its secret; its parked poll then answers 401 and
 * it polls again with the new token, as a real worker does.
 */
import type { ControllerHandle } from '../controller.js';
import { startLoops } from '../fleet.js';
import { latency, sleep, type Latency } from '../stats.js';
import { registerFleet } from '../wire.js';

export async function reregister(ctl: ControllerHandle, parked: number, samples: number): Promise<Latency> {
  const fleet = await registerFleet(ctl.url, parked, 'rereg', 32);
  const loops = startLoops(fleet, 30_000);
  const ms: number[] = [];
  try {
    await loops.allPolling();
    await sleep(100);
    for (let i = 0; i < samples; i++) {
      const w = fleet[i % parked]!;
      const t0 = performance.now();
      await w.reRegister();
      ms.push(performance.now() - t0);
      if (loops.state.error) throw loops.state.error;
    }
  } finally {
    await loops.stop();
  }
  return latency(ms);
}
