/**
 * One large artifact each way through a real controller: a worker uploads
 * it (`PUT /builds/{id}/artifacts/{name}`, streamed, SHA-256 declared), the
 * build finishes, and a user downloads it with the API token. Reports MB/s
 * (10^6 bytes) and the controller's peak RSS growth over its RSS before each
 * transfer (kernel high-water mark, and 10 ms samples where it cannot be reset).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { ControllerHandle } from '../controller.js';
import { peakRssBytes, resetPeak, rssBytes, sampleRss } from '../proc.js';
import { round } from '../stats.js';
import { API_TOKEN, WireError, WireWorker, json, request, submitBuild } from '../wire.js';

const MiB = 1024 * 1024;

export interface Transfer {
  mbPerSecond: number;
  rssGrowthMiB: number;
  seconds: number;
}

export interface ArtifactResult {
  bytes: number;
  upload: Transfer;
  download: Transfer;
}

async function measure(pid: number, run: () => Promise<void>, bytes: number): Promise<Transfer> {
  const reset = resetPeak(pid);
  const before = rssBytes(pid);
  const stopSampling = sampleRss(pid);
  const t0 = performance.now();
  await run();
  const seconds = (performance.now() - t0) / 1000;
  const peak = Math.max(stopSampling(), reset ? peakRssBytes(pid) : 0);
  return { mbPerSecond: round(bytes / 1e6 / seconds, 1), rssGrowthMiB: round(Math.max(0, peak - before) / MiB, 1), seconds: round(seconds, 1) };
}

export async function artifact(ctl: ControllerHandle, bytes: number): Promise<ArtifactResult> {
  const w = new WireWorker(ctl.url, 'artifact');
  await w.register();
  await submitBuild(ctl.url);
  const [b] = await w.poll(5_000);
  if (!b) throw new Error('no build to attach the artifact to');
  const u = `${ctl.url}/api/v1/builds/${b.id}`;
  await json(`${u}/start`, 'POST', b.buildToken, { attempt: b.attempt });

  const chunk = randomBytes(MiB);
  const chunks = Math.ceil(bytes / MiB);
  const hash = createHash('sha256');
  for (let i = 0; i < chunks; i++) hash.update(chunk);
  const sha256 = hash.digest('hex');
  async function* body() {
    for (let i = 0; i < chunks; i++) yield chunk;
  }
  // Heartbeats keep the lease while a slow upload outlives leaseMs.
  const beat = setInterval(() => void w.heartbeat([b.id]).catch(() => {}), 10_000);
  const size = chunks * MiB;
  let upload: Transfer;
  try {
    upload = await measure(
      ctl.pid,
      async () => {
        const r = await request(`${u}/artifacts/big.bin`, {
          method: 'PUT',
          headers: { authorization: `Bearer ${b.buildToken}`, 'content-type': 'application/octet-stream', 'x-checksum-sha256': sha256, 'content-length': size },
          body: body(),
        });
        if (r.status !== 201) throw new WireError('PUT', 'artifact', r.status, r.body.toString('utf8').slice(0, 300));
      },
      size,
    );
  } finally {
    clearInterval(beat);
  }
  await json(`${u}/finish`, 'POST', b.buildToken, { attempt: b.attempt, outcome: 'succeeded', exitCode: 0, message: null });

  let received = 0;
  const download = await measure(
    ctl.pid,
    async () => {
      const r = await request(`${u}/artifacts/big.bin`, {
        method: 'GET',
        headers: { authorization: `Bearer ${API_TOKEN}` },
        sink: (c) => (received += c.length),
      });
      if (r.status !== 200) throw new WireError('GET', 'artifact', r.status, r.body.toString('utf8').slice(0, 300));
    },
    size,
  );
  if (received !== size) throw new Error(`downloaded ${received} bytes, expected ${size}`);
  return { bytes: size, upload, download };
}
