/**
 * Which workers this controller accepts (issue 14, "Backups and upgrades"):
 * workers send their `version` with every registration; one older than
 * `MIN_WORKER_VERSION` is refused with a message naming both, so an operator
 * upgrading the fleet knows which hosts to upgrade first.
 */
import { ApiError } from '@buildfleet/protocol';

/** The version of this controller (and of the protocol package it ships with). */
export const CONTROLLER_VERSION = '0.1.0';
/**
 * The oldest worker release this controller accepts by default: every
 * release speaks protocol v1, whose older workers must keep working
 * (docs/protocol.md). Operators raise it with BUILDFLEET_MIN_WORKER_VERSION
 * to make a fleet upgrade.
 */
export const MIN_WORKER_VERSION = '0.0.0';

/** Throws `Error` unless `v` is `x.y.z` (for the setting). */
export function assertVersion(name: string, v: string): string {
  if (!parse(v)) throw new Error(`${name} must be a version such as 0.1.0, got ${JSON.stringify(v)}`);
  return v.trim();
}

/** `[major, minor, patch]` of a `x.y.z` version (a `-pre` or `+build` suffix ignored); undefined otherwise. */
function parse(v: string): [number, number, number] | undefined {
  const m = /^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

/**
 * Throws `ApiError('VALIDATION_FAILED')` naming both versions when `version`
 * is a release older than `min`. A version that is not `x.y.z` (a
 * development build) is accepted.
 */
export function checkWorkerVersion(version: string, min = MIN_WORKER_VERSION): void {
  const v = parse(version);
  const m = parse(min)!;
  if (!v) return;
  for (let i = 0; i < 3; i++) {
    if (v[i]! > m[i]!) return;
    if (v[i]! < m[i]!) {
      throw new ApiError('VALIDATION_FAILED', `version: worker ${version} is older than ${min}, the oldest this controller (${CONTROLLER_VERSION}) accepts; upgrade the worker`);
    }
  }
}
