/**
 * `fetch` for the controller's clients (worker, CLI) that trusts one more
 * CA besides the system's: `BUILDFLEET_CA_FILE`, for a controller serving
 * HTTPS with a private CA or a self-signed certificate (issue 9). Node's
 * `NODE_EXTRA_CA_CERTS` does the same but is read only when the process
 * starts; this reads the file when a client is made, and the error names
 * the setting.
 *
 * The global `fetch` is kept; only its connection pool (an undici `Agent`
 * passed as `dispatcher`) carries the extra CA.
 */
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { rootCertificates } from 'node:tls';
import { Agent } from 'undici';

/** A `fetch`-compatible function. */
export type FetchLike = (url: string | URL, init?: RequestInit) => Promise<Response>;

/** BUILDFLEET_CA_FILE cannot be used; `message` names the file and why. */
export class CaFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CaFileError';
  }
}

/**
 * Reads a PEM file of one or more CA certificates. Throws CaFileError when
 * it cannot be read or holds no certificate.
 */
export function readCaFile(file: string): string {
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    throw new CaFileError(`BUILDFLEET_CA_FILE: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no "BEGIN CERTIFICATE" block');
    new X509Certificate(pem);
  } catch (err) {
    throw new CaFileError(`BUILDFLEET_CA_FILE: ${file} is not a PEM certificate (${(err as Error).message})`);
  }
  return pem;
}

/**
 * The global `fetch` when `caFile` is undefined; otherwise a `fetch` whose
 * TLS connections trust the system's CAs and those in `caFile`. Throws
 * CaFileError (see `readCaFile`).
 */
export function controllerFetch(caFile: string | undefined): FetchLike {
  if (!caFile) return (url, init) => fetch(url, init);
  const agent = new Agent({ connect: { ca: [...rootCertificates, readCaFile(caFile)] } });
  return (url, init) => fetch(url, { ...init, dispatcher: agent } as unknown as RequestInit);
}
