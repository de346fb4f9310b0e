/**
 * A worker played by the test over the real protocol (raw HTTP calls, no
 * agent): register, claim a build with one poll, then start / log / finish
 * it step by step. For tests that need a build in an exact state on a real
 * controller (a follower that must see attempt 1 lost and attempt 2 finish).
 */
import { paths, type AssignedBuild, type BuildOutcome, type PollResponse, type RegisterResponse } from '@buildfleet/protocol';
import type { UserApi } from './controller.js';

export class ScriptedWorker {
  private offsets = new Map<string, { seq: number; offset: number }>();
  private constructor(
    private readonly api: UserApi,
    readonly reg: RegisterResponse,
  ) {}

  static async register(api: UserApi, body: Record<string, unknown> = {}): Promise<ScriptedWorker> {
    return new ScriptedWorker(api, await api.registerOk(body));
  }

  get id(): string {
    return this.reg.workerId;
  }

  /** One poll; the builds it hands out (throws on anything but 200/204). */
  async poll(freeSlots = 1, waitMs = 2_000): Promise<AssignedBuild[]> {
    const res = await this.api.req('POST', paths.poll(this.id, waitMs), { token: this.reg.accessToken, json: { freeSlots, activeBuildIds: [] } });
    if (res.status === 204) return [];
    if (res.status !== 200) throw new Error(`poll answered ${res.status}: ${await res.text()}`);
    return ((await res.json()) as PollResponse).builds;
  }

  /** Polls until a build is handed out. */
  async claim(): Promise<AssignedBuild> {
    for (let i = 0; i < 20; i++) {
      const [b] = await this.poll();
      if (b) return b;
    }
    throw new Error('no build was handed out');
  }

  async start(b: AssignedBuild): Promise<void> {
    await this.api.ok('POST', paths.start(b.id), { token: b.buildToken, json: { attempt: b.attempt } });
  }

  async log(b: AssignedBuild, text: string): Promise<void> {
    const key = `${b.id}#${b.attempt}`;
    const at = this.offsets.get(key) ?? { seq: 0, offset: 0 };
    await this.api.ok('POST', paths.logs(b.id), { token: b.buildToken, json: { attempt: b.attempt, seq: at.seq, offset: at.offset, data: text } });
    this.offsets.set(key, { seq: at.seq + 1, offset: at.offset + Buffer.byteLength(text) });
  }

  async finish(b: AssignedBuild, outcome: BuildOutcome, exitCode: number | null = outcome === 'succeeded' ? 0 : 1): Promise<void> {
    await this.api.ok('POST', paths.finish(b.id), { token: b.buildToken, json: { attempt: b.attempt, outcome, exitCode, message: null } });
  }
}
