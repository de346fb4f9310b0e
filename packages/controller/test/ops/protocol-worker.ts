/**
 * A worker played by the test over real HTTP (docs/protocol.md calls only): it
 * registers, claims, starts, writes logs and artifacts and finishes builds
 * exactly when the test says, so a test can hold builds `running` while it
 * does something else.
 */
import { paths, type AssignedBuild, type PollResponse } from '@buildfleet/protocol';
import { sha256, type Harness } from '../http/harness.js';

export class ProtocolWorker {
  private seq = new Map<string, { seq: number; offset: number }>();
  readonly held = new Map<string, AssignedBuild>();
  private constructor(
    private readonly h: Harness,
    readonly workerId: string,
    private readonly accessToken: string,
  ) {}

  static async register(h: Harness, maxConcurrentBuilds = 100, labels: string[] = []): Promise<ProtocolWorker> {
    const reg = await h.registerOk({ maxConcurrentBuilds, labels });
    return new ProtocolWorker(h, reg.workerId, reg.accessToken);
  }

  private async ok(res: Response, what: string): Promise<unknown> {
    const text = await res.text();
    if (!res.ok) throw new Error(`${what}: ${res.status} ${text}`);
    return text ? (JSON.parse(text) as unknown) : undefined;
  }

  /** Claims up to `n` builds (one poll, waiting at most `waitMs`). */
  async claim(n: number, waitMs = 1_000): Promise<AssignedBuild[]> {
    const res = await this.h.req('POST', paths.poll(this.workerId, waitMs), {
      token: this.accessToken,
      json: { freeSlots: n, activeBuildIds: [...this.held.keys()] },
    });
    if (res.status === 204) return [];
    const { builds } = (await this.ok(res, 'poll')) as PollResponse;
    for (const b of builds) this.held.set(b.id, b);
    return builds;
  }

  private token(id: string): AssignedBuild {
    const b = this.held.get(id);
    if (!b) throw new Error(`build ${id} is not held by this worker`);
    return b;
  }

  async start(id: string): Promise<void> {
    const b = this.token(id);
    await this.ok(await this.h.req('POST', paths.start(id), { token: b.buildToken, json: { attempt: b.attempt } }), `start ${id}`);
  }

  /** Appends `text` to the build's log; resolves with the controller's answer. */
  async log(id: string, text: string | Buffer): Promise<{ offset: number; truncated?: boolean }> {
    const b = this.token(id);
    const s = this.seq.get(id) ?? { seq: 0, offset: 0 };
    const data = Buffer.isBuffer(text) ? text : Buffer.from(text);
    const answer = (await this.ok(
      await this.h.req('POST', paths.logs(id), {
        token: b.buildToken,
        json: { attempt: b.attempt, seq: s.seq, offset: s.offset, data: data.toString('base64'), encoding: 'base64' },
      }),
      `log ${id}`,
    )) as { offset: number; truncated?: boolean };
    this.seq.set(id, { seq: s.seq + 1, offset: s.offset + data.length });
    return answer;
  }

  async artifact(id: string, name: string, bytes: Uint8Array): Promise<void> {
    const b = this.token(id);
    await this.ok(
      await this.h.req('PUT', paths.artifact(id, name), {
        token: b.buildToken,
        body: bytes,
        headers: { 'content-type': 'application/octet-stream', 'x-checksum-sha256': sha256(bytes) },
      }),
      `artifact ${id}/${name}`,
    );
  }

  async finish(id: string, outcome: 'succeeded' | 'failed' = 'succeeded'): Promise<void> {
    const b = this.token(id);
    await this.ok(
      await this.h.req('POST', paths.finish(id), {
        token: b.buildToken,
        json: { attempt: b.attempt, outcome, exitCode: outcome === 'succeeded' ? 0 : 1, message: null },
      }),
      `finish ${id}`,
    );
    this.held.delete(id);
  }
}
