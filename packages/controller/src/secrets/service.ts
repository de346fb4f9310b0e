/**
 * Secrets on the controller (issue 13): sealing on write, the scope check of
 * a build's spec, the hand-out to the current attempt of a running build,
 * and the controller's own masking of log chunks (the second line behind
 * the worker's). Values exist in plain text only in this module's memory
 * and in the one answer that hands them to a build; nothing here logs one.
 */
import { ApiError, SecretMasker, describeScope, type Build, type BuildSpec, type Scope, type Secret } from '@buildfleet/protocol';
import { scopeProblem } from '../domain/scope.js';
import type { AttemptRef, SealedSecret, Store } from '../store/types.js';
import { SecretDecryptError, type SecretCipher, type SecretsKeySource } from './cipher.js';

/** Thrown at startup: this controller was given another key than the one the database's secrets were sealed with. */
export class SecretsKeyMismatchError extends Error {
  constructor(source: SecretsKeySource) {
    super(
      `the secrets key this controller was given (${source === 'env' ? 'BUILDFLEET_SECRETS_KEY' : source === 'file' ? 'BUILDFLEET_SECRETS_KEY_FILE' : 'secrets.key in the data directory'}) is not the one the stored secrets were sealed with: give every controller the same key`,
    );
    this.name = 'SecretsKeyMismatchError';
  }
}

/** Builds whose maskers are kept (a build's log chunks mostly reach the controller that handed its secrets out). */
const MASKER_CACHE_SIZE = 512;

export class SecretsService {
  /** buildId → masker of the values its attempts received (null: it has no secrets). */
  private readonly maskers = new Map<string, SecretMasker | null>();

  private constructor(
    private readonly store: Store,
    private readonly cipher: SecretCipher | undefined,
    private readonly keySource: SecretsKeySource | undefined,
  ) {}

  /**
   * Checks the key against the stored secrets: when there are any, the key
   * must open one of them, else SecretsKeyMismatchError (the controller
   * must not start: it would fail every build that asks for a secret).
   * Without a key, secrets are refused (`SECRETS_KEY_MISSING`) but the
   * controller runs.
   */
  static async open(store: Store, key: { cipher: SecretCipher; source: SecretsKeySource } | undefined): Promise<SecretsService> {
    const service = new SecretsService(store, key?.cipher, key?.source);
    if (key && !(await service.keyOpensStoredSecrets())) throw new SecretsKeyMismatchError(key.source);
    return service;
  }

  /** Whether this controller's key opens a stored secret (true when none is stored). */
  private async keyOpensStoredSecrets(): Promise<boolean> {
    const [first] = await this.store.listSecrets();
    if (!first || !this.cipher) return true;
    const [sealed] = await this.store.sealedSecrets([first.name]);
    if (!sealed) return true;
    try {
      this.cipher.open(sealed.name, sealed.sealed);
      return true;
    } catch (err) {
      if (err instanceof SecretDecryptError) return false;
      throw err;
    }
  }

  private requireCipher(): SecretCipher {
    if (!this.cipher) {
      throw new ApiError(
        'SECRETS_KEY_MISSING',
        'this controller has no secrets key: set BUILDFLEET_SECRETS_KEY or BUILDFLEET_SECRETS_KEY_FILE (with PostgreSQL, the same key on every controller)',
      );
    }
    return this.cipher;
  }

  /**
   * Seals and stores a value; `created` false when it replaced one. Throws
   * SECRETS_KEY_MISSING without a key, or with a key that does not open the
   * secrets stored already (another controller sealed them with another key:
   * mixing keys would make some secrets unreadable to every controller).
   */
  async put(name: string, value: string, scope: Scope, now: number): Promise<{ secret: Secret; created: boolean }> {
    const cipher = this.requireCipher();
    if (!(await this.keyOpensStoredSecrets())) {
      throw new ApiError('SECRETS_KEY_MISSING', new SecretsKeyMismatchError(this.keySource ?? 'env').message);
    }
    const sealed = cipher.seal(name, value);
    const normalized: Scope = {};
    if (scope.labels?.length) normalized.labels = [...new Set(scope.labels)].sort();
    if (scope.metadata && Object.keys(scope.metadata).length) normalized.metadata = scope.metadata;
    return this.store.putSecret({ name, sealed, scope: normalized, now });
  }

  /**
   * Why a build with this spec may not have every secret it asks for (one
   * message naming each missing or out-of-scope secret), or undefined when
   * it may. `sealed` may be passed when already loaded.
   */
  async problem(spec: BuildSpec, sealed?: SealedSecret[]): Promise<string | undefined> {
    const names = (spec.secrets ?? []).map((r) => r.name);
    if (names.length === 0) return undefined;
    const found = new Map((sealed ?? (await this.store.sealedSecrets(names))).map((s) => [s.name, s]));
    const problems: string[] = [];
    for (const name of names) {
      const s = found.get(name);
      if (!s) {
        problems.push(`secret ${name} does not exist`);
        continue;
      }
      const why = scopeProblem(s.scope, spec);
      if (why) problems.push(`secret ${name} is limited to builds with ${describeScope(s.scope)}; this build ${why}`);
    }
    return problems.length ? `${problems.join('; ')}; the build failed before its script ran` : undefined;
  }

  /**
   * The submit-time check: a build that asks for a secret it may not have
   * fails at once (reason `secret_unavailable`), before any worker sees it.
   * Returns the build, failed or as it was.
   */
  async checkSubmitted(build: Build, now: number): Promise<Build> {
    const why = await this.problem(build.spec);
    if (!why) return build;
    return this.store.rejectBuild({ buildId: build.id, attempt: build.attempt }, 'secret_unavailable', why, now);
  }

  /**
   * Hands the secrets of `build`'s spec to its attempt `ref` (the caller has
   * checked the build token names it). Checks scope again (a secret may have
   * been deleted or narrowed since submission): a build that may no longer
   * have one is failed and the call answers INVALID_TRANSITION with why.
   * Records each hand-out, under the check that `ref` is the current,
   * running attempt (LEASE_LOST / INVALID_TRANSITION otherwise).
   */
  async handOut(build: Build, ref: AttemptRef, now: number): Promise<Array<{ name: string; value: string }>> {
    const refs = build.spec.secrets ?? [];
    if (build.attempt !== ref.attempt) {
      throw new ApiError('LEASE_LOST', `attempt ${ref.attempt} of build ${build.id} is no longer current (attempt ${build.attempt} is)`);
    }
    if (build.state !== 'running') throw new ApiError('INVALID_TRANSITION', `build ${build.id} is ${build.state}: secrets go only to a running attempt`);
    if (refs.length === 0) return [];
    const sealed = await this.store.sealedSecrets(refs.map((r) => r.name));
    let why = await this.problem(build.spec, sealed);
    const values: Array<{ name: string; value: string }> = [];
    if (!why) {
      try {
        const cipher = this.cipher;
        if (!cipher) why = 'this controller has no secrets key to open the secrets with (BUILDFLEET_SECRETS_KEY)';
        else {
          const byName = new Map(sealed.map((s) => [s.name, s]));
          for (const ref of refs) {
            const s = byName.get(ref.name)!;
            values.push({ name: s.name, value: cipher.open(s.name, s.sealed) });
          }
        }
      } catch (err) {
        if (!(err instanceof SecretDecryptError)) throw err;
        why = err.message;
      }
    }
    if (why) {
      await this.store.rejectBuild(ref, 'secret_unavailable', why, now);
      throw new ApiError('INVALID_TRANSITION', `build ${build.id} failed: ${why}`);
    }
    await this.store.recordHandouts(ref, refs.map((r) => r.name), now);
    this.remember(build.id, new SecretMasker(values.map((v) => v.value)));
    return values;
  }

  private remember(buildId: string, masker: SecretMasker | null): void {
    this.maskers.delete(buildId);
    this.maskers.set(buildId, masker);
    while (this.maskers.size > MASKER_CACHE_SIZE) this.maskers.delete(this.maskers.keys().next().value!);
  }

  /**
   * Masks a log chunk of `buildId` with the values of the secrets its spec
   * names, keeping its length (the worker's offsets count the bytes it sent).
   * The worker masks first; this catches a worker that did not. A chunk of
   * a build without secrets is returned as it is.
   */
  async maskLog(buildId: string, data: Buffer): Promise<Buffer> {
    let masker = this.maskers.get(buildId);
    if (masker === undefined) {
      masker = await this.loadMasker(buildId);
      this.remember(buildId, masker);
    }
    if (!masker) return data;
    const out = masker.maskKeepingLength(data);
    return out === data ? data : Buffer.from(out.buffer, out.byteOffset, out.length);
  }

  private async loadMasker(buildId: string): Promise<SecretMasker | null> {
    const build = await this.store.getBuild(buildId);
    const names = (build.spec.secrets ?? []).map((r) => r.name);
    if (names.length === 0 || !this.cipher) return null;
    const values: string[] = [];
    for (const s of await this.store.sealedSecrets(names)) {
      try {
        values.push(this.cipher.open(s.name, s.sealed));
      } catch {
        // Not openable here: the worker's masking is the only line for it.
      }
    }
    return values.length ? new SecretMasker(values) : null;
  }
}
