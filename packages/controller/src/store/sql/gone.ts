/**
 * The 410 GONE answers for data retention removed (docs/protocol.md "Error
 * codes"): the message says what, when and why, and how to keep a build.
 */
import { ApiError } from '@buildfleet/protocol';

/**
 * `what` is the thing named to the user (`artifact "out/app" of build B`),
 * `at` epoch ms, `reason` `retention` | `blob_cap`, `variable` the setting
 * whose age applied (`BUILDFLEET_RETAIN_ARTIFACTS`).
 */
export function gone(what: string, at: number, reason: string | null, variable: string): ApiError {
  const when = new Date(at).toISOString();
  if (reason === 'blob_cap') {
    return new ApiError('GONE', `${what} was removed at ${when} to keep stored blobs under BUILDFLEET_BLOB_MAX_MB (oldest first); "buildfleet keep" exempts a build`);
  }
  return new ApiError('GONE', `${what} expired: removed at ${when} by retention (${variable} after the build ended); "buildfleet keep" exempts a build`);
}
