/**
 * Certificates made at test time with `openssl`: a private CA and a server
 * certificate it signed for 127.0.0.1 and localhost (what a controller with
 * BUILDFLEET_TLS_CERT serves, and what BUILDFLEET_CA_FILE trusts). Nothing is
 * checked in; each call makes new keys.
 *
 * Without openssl the TLS tests skip with a loud message, and fail in CI
 * (`CI=true`), like the PostgreSQL suites.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'vitest';

export interface TestCertificates {
  /** The CA's certificate (PEM): what BUILDFLEET_CA_FILE names. */
  caFile: string;
  /** The server's certificate and key (PEM): BUILDFLEET_TLS_CERT and BUILDFLEET_TLS_KEY. */
  certFile: string;
  keyFile: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** True when the `openssl` command runs. */
export function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes a CA (`<prefix>ca.pem`) and a server certificate it signed
 * (`<prefix>cert.pem`, `<prefix>key.pem`) in `dir`, valid for a day, for
 * `hosts` (IP addresses and DNS names; default 127.0.0.1 and localhost).
 */
export function makeCertificates(dir: string, opts: { prefix?: string; hosts?: string[] } = {}): TestCertificates {
  const p = opts.prefix ?? '';
  const hosts = opts.hosts ?? ['127.0.0.1', 'localhost'];
  const san = hosts.map((h) => (/^[\d.]+$|:/.test(h) ? `IP:${h}` : `DNS:${h}`)).join(',');
  const f = (name: string) => join(dir, `${p}${name}`);
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '1', '-subj', '/CN=buildfleet test CA'], dir);
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('key.pem'), '-out', f('cert.csr'), '-subj', `/CN=${hosts[0]}`], dir);
  writeFileSync(f('ext.cnf'), `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n`);
  openssl(['x509', '-req', '-in', f('cert.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('cert.pem'), '-days', '1', '-extfile', f('ext.cnf')], dir);
  return { caFile: f('ca.pem'), certFile: f('cert.pem'), keyFile: f('key.pem') };
}

/** `describe` for suites that need openssl: skipped loudly without it, failing in CI. */
export function describeWithOpenssl(name: string, fn: () => void): void {
  if (hasOpenssl()) {
    describe(name, fn);
    return;
  }
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('needs openssl', () => {
        throw new Error('openssl is required in CI to make the TLS test certificates');
      });
    });
    return;
  }
  console.warn(`\n*** SKIPPED "${name}": openssl is not installed (apt-get install openssl) ***\n`);
  describe.skip(name, fn);
}
