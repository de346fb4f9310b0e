/**
 * The controller serves HTTPS when given a certificate and its key
 * (BUILDFLEET_TLS_CERT, BUILDFLEET_TLS_KEY; issue 9), made at test time by a
 * private CA: a bad pair stops the start with the setting named, and
 * `reloadTls` (SIGHUP in the CLI) serves a renewed certificate to new
 * connections. Clients: test/e2e/tls.test.ts.
 */
import { X509Certificate } from 'node:crypto';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect } from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { controllerFetch } from '@buildfleet/protocol/node';
import { ConfigError, loadControllerConfig } from '../../src/config.js';
import { startController } from '../../src/server.js';
import { startTestController, type TestController } from '../../../../test/support/controller.js';
import { describeWithOpenssl, makeCertificates, type TestCertificates } from '../../../../test/support/tls.js';

/** SHA-256 fingerprint of the certificate a fresh TLS connection to `url` is shown. */
function servedFingerprint(url: string, ca: string[]): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: u.hostname, port: Number(u.port), ca, servername: 'localhost' }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.end();
    });
    socket.on('error', reject);
  });
}

const fingerprint = (file: string) => new X509Certificate(readFileSync(file)).fingerprint256;

describeWithOpenssl('controller over HTTPS', () => {
  let dir: string;
  let a: TestCertificates;
  let b: TestCertificates;
  let served: { certFile: string; keyFile: string };
  let t: TestController;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'bf-tls-'));
    a = makeCertificates(dir, { prefix: 'a-' });
    b = makeCertificates(dir, { prefix: 'b-' });
    served = { certFile: path.join(dir, 'served-cert.pem'), keyFile: path.join(dir, 'served-key.pem') };
    await copyFile(a.certFile, served.certFile);
    await copyFile(a.keyFile, served.keyFile);
    t = await startTestController({ config: { tlsCertFile: served.certFile, tlsKeyFile: served.keyFile }, caFile: a.caFile });
  });
  afterAll(async () => {
    await t?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('listens on https:// with the given certificate; a client trusting its CA gets answers, others are refused', async () => {
    expect(t.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(await servedFingerprint(t.url, [readFileSync(a.caFile, 'utf8')])).toBe(fingerprint(a.certFile));
    const ok = await controllerFetch(a.caFile)(`${t.url}/healthz`);
    expect(ok.status).toBe(200);
    expect(((await t.api.ok<{ builds: unknown[] }>('GET', '/api/v1/builds')).builds)).toEqual([]);
    // The system's CAs alone do not know the private CA.
    const untrusted = (await fetch(`${t.url}/healthz`).catch((e: unknown) => e)) as { cause?: { code?: string } };
    expect(untrusted.cause?.code).toMatch(/UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|UNABLE_TO_GET_ISSUER/);
    // No plain HTTP on the same port.
    const plain = await fetch(t.url.replace('https:', 'http:') + '/healthz').then(
      (r) => r.status,
      () => 'refused',
    );
    expect(plain).not.toBe(200);
  });

  it('reloadTls serves a renewed certificate to new connections; an unreadable one keeps the old', async () => {
    const cas = [readFileSync(a.caFile, 'utf8'), readFileSync(b.caFile, 'utf8')];
    await copyFile(b.certFile, served.certFile);
    await copyFile(b.keyFile, served.keyFile);
    await t.ctl!.reloadTls();
    expect(await servedFingerprint(t.url, cas)).toBe(fingerprint(b.certFile));
    expect((await controllerFetch(b.caFile)(`${t.url}/healthz`)).status).toBe(200);

    await writeFile(served.certFile, 'not a certificate');
    await expect(t.ctl!.reloadTls()).rejects.toThrow(/BUILDFLEET_TLS_CERT: .* is not a PEM certificate/);
    expect(await servedFingerprint(t.url, cas)).toBe(fingerprint(b.certFile));
  });

  it('refuses to start with half a pair, a key of another certificate, or a missing file, naming the setting', async () => {
    expect(() => loadControllerConfig({ BUILDFLEET_TLS_CERT: a.certFile })).toThrow(ConfigError);
    expect(() => loadControllerConfig({ BUILDFLEET_TLS_KEY: a.keyFile })).toThrow(/BUILDFLEET_TLS_CERT and BUILDFLEET_TLS_KEY go together/);
    let n = 0;
    const start = (tls: { cert: string; key: string }) =>
      startController(
        loadControllerConfig(
          { BUILDFLEET_TLS_CERT: tls.cert, BUILDFLEET_TLS_KEY: tls.key },
          { host: '127.0.0.1', port: 0, dataDir: path.join(dir, `ctl-${n++}`), logLevel: 'silent' },
        ),
        { reaper: false, collector: false, webhooks: false },
      );
    await expect(start({ cert: a.certFile, key: b.keyFile })).rejects.toThrow(/BUILDFLEET_TLS_KEY: .* is not the key of the certificate/);
    await expect(start({ cert: path.join(dir, 'missing.pem'), key: a.keyFile })).rejects.toThrow(/BUILDFLEET_TLS_CERT: cannot read .*missing\.pem \(ENOENT\)/);
  });
});
