/**
 * What runs a build's script (spec `shell`, issue 13), for every executor:
 * the arguments of `/bin/sh` that merge stderr into stdout (one pipe, the
 * order the script wrote in) and then hand the script to its shell.
 *
 * - `sh` (default): `sh -c <script>`;
 * - `bash`: `bash -c <script>` (found on PATH, so a sandbox's own bash), so
 *   `set -o pipefail` and the rest of bash work;
 * - an absolute path: that interpreter, started with no argument, reads
 *   its program from standard input (`printf %s <script> | /usr/bin/python3`),
 *   as python3, node, perl, ruby and the shells do when stdin is not a
 *   terminal: no file to write into the workspace, and the same in a
 *   sandbox. (`/dev/stdin` as an argument is not used: node resolves it to
 *   a pipe it cannot open.) Its exit status is the build's.
 *
 * The script is always an argument (`$1`), never pasted into command text.
 */

/** `/bin/sh` arguments (after `/bin/sh` itself) that run `script` with `shell`. */
export function scriptArgs(script: string, shell: string | undefined): string[] {
  const s = shell ?? 'sh';
  if (s === 'sh') return ['-c', 'exec 2>&1; exec /bin/sh -c "$1"', 'buildfleet-build', script];
  if (s === 'bash') return ['-c', 'exec 2>&1; exec bash -c "$1"', 'buildfleet-build', script];
  if (!s.startsWith('/')) throw new Error(`shell must be sh, bash or an absolute path, got ${JSON.stringify(s)}`);
  return ['-c', `exec 2>&1; printf '%s' "$1" | "$2"`, 'buildfleet-build', script, s];
}
