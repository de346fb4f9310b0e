/**
 * The real controller in this process for the worker's unit tests (agent,
 * executor, connection): the shared fixture (test/support/controller.ts) on
 * SQLite, on a fake clock of its own, so nothing expires and no parked poll
 * ends unless a test moves that clock; `Faults` in front of it for what the
 * real controller cannot be made to do (a lost answer, a canned error, a
 * request held at a barrier, a body that stalls).
 */
import { randomUUID } from 'node:crypto';
import type { ControllerConfigOverrides } from '@buildfleet/controller';
import { FakeClock, paths, type AssignedBuild, type Build, type PollResponse, type RegisterResponse } from '@buildfleet/protocol';
import { ENROLLMENT_TOKEN, startTestController, type TestController, type UserApi } from '../../../../test/support/controller.js';
import { Faults } from './faults.js';
import { tarGz } from './tarball.js';

export interface UnitController {
  url: string;
  enrollmentToken: string;
  fixture: TestController;
  api: UserApi;
  /** The controller's clock (not the worker's). */
  clock: FakeClock;
  /** In front of the controller: give `faults.transport` to the worker. */
  faults: Faults;
  /** Submits a build (`POST /builds`); its source is an empty archive unless given. */
  submit(spec: Record<string, unknown>, source?: Uint8Array): Promise<Build>;
  /** The build as the controller has it now. */
  build(id: string): Promise<Build>;
  /** The build's log (current attempt) as the controller stored it. */
  logText(id: string): Promise<string>;
  /**
   * Moves the controller's clock past every ack deadline and lease and runs
   * its reaper once: held builds are lost (a new attempt when one is left,
   * else failed `worker_lost`); their writers then get LEASE_LOST, and a
   * heartbeat listing them `abandon`.
   */
  loseLeases(): Promise<void>;
  /** Answers parked polls: the controller's clock moves by a whole poll wait. */
  endParkedPolls(): Promise<void>;
  /** Every access token issued so far expires (the clock moves past their lifetime). */
  expireTokens(): Promise<void>;
  close(): Promise<void>;
}

const SETTINGS = { heartbeatIntervalMs: 1_000, leaseMs: 6_000, ackTimeoutMs: 6_000, pollWaitMs: 30_000, accessTokenTtlMs: 3_600_000 };

/** Starts the controller (`config` over the defaults: 1 s heartbeats, 6 s leases, 30 s polls). */
export async function startUnitController(config: ControllerConfigOverrides = {}): Promise<UnitController> {
  const clock = new FakeClock(Date.now());
  const settings = { ...SETTINGS, ...config };
  const fixture = await startTestController({ clock, config: settings });
  const { api } = fixture;
  const ctl = fixture.ctl!;
  return {
    url: fixture.url,
    enrollmentToken: ENROLLMENT_TOKEN,
    fixture,
    api,
    clock,
    faults: new Faults(),
    submit: (spec, source) => api.submit(spec, source ?? tarGz([])),
    build: (id) => api.build(id),
    logText: (id) => api.log(id),
    async loseLeases() {
      await clock.advance(Math.max(settings.leaseMs, settings.ackTimeoutMs) + 1);
      await ctl.reaper.reapOnce();
    },
    endParkedPolls: () => clock.advance(settings.pollWaitMs),
    expireTokens: () => clock.advance(settings.accessTokenTtlMs + 1),
    close: () => fixture.close(),
  };
}

/**
 * A registered worker with no agent: tests of the executor take builds with
 * it (`take`) and hand them to `ActiveBuilds` themselves.
 */
export class BareWorker {
  /** Builds taken so far (reported as active, so a poll does not deliver them again). */
  private readonly taken: string[] = [];

  private constructor(
    private readonly ctl: UnitController,
    readonly reg: RegisterResponse,
    /** Its own label: it takes only the builds it submitted, never one another test left queued. */
    private readonly label: string,
  ) {}

  static async register(ctl: UnitController, maxConcurrentBuilds = 8): Promise<BareWorker> {
    const label = `bare-${randomUUID()}`;
    return new BareWorker(ctl, await ctl.api.registerOk({ maxConcurrentBuilds, labels: [label] }), label);
  }

  get id(): string {
    return this.reg.workerId;
  }

  /** Submits a build and takes it with one poll: the assignment a poll answer carries (build token included). */
  async take(spec: Record<string, unknown>, source?: Uint8Array): Promise<{ build: Build; assigned: AssignedBuild }> {
    const build = await this.ctl.submit({ ...spec, labels: [...((spec.labels as string[] | undefined) ?? []), this.label] }, source);
    const assigned = (await this.poll(this.taken)).find((b) => b.id === build.id);
    if (!assigned) throw new Error(`build ${build.id} was not assigned to worker ${this.id}`);
    this.taken.push(build.id);
    return { build, assigned };
  }

  /** One poll for one build that does not wait: the assignments it answers (re-deliveries of builds not in `activeBuildIds` first). */
  async poll(activeBuildIds: string[]): Promise<AssignedBuild[]> {
    const res = await this.ctl.api.req('POST', paths.poll(this.id, 0), { token: this.reg.accessToken, json: { freeSlots: 1, activeBuildIds } });
    if (res.status === 204) return [];
    if (res.status !== 200) throw new Error(`poll answered ${res.status}: ${await res.text()}`);
    return ((await res.json()) as PollResponse).builds;
  }
}
