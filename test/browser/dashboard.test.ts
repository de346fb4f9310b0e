/**
 * The dashboard in a real browser (Debian's Chromium driven by
 * playwright-core) against a real controller and worker: the token prompt,
 * the builds and workers tables, a live log followed while the build runs,
 * and the artifact list. Skips loudly without Chromium, fails under CI=true.
 */
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser } from 'playwright-core';
import { startWorker, type RunningWorker } from '@buildfleet/worker';
import { API_TOKEN, startCtl, type Ctl } from '../../packages/worker/test/integration/harness.js';
import { testConfig } from '../../packages/worker/test/support/harness.js';
import { tarGz } from '../../packages/worker/test/support/tarball.js';
import { silentLogger } from '../../packages/worker/src/logger.js';

const CHROMIUM = process.env.BUILDFLEET_CHROMIUM ?? '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);

if (!haveChromium && process.env.CI !== 'true') {
  console.warn(`\n${'!'.repeat(72)}\n!!! ${CHROMIUM} not found: dashboard browser tests SKIPPED (apt-get install -y chromium)\n${'!'.repeat(72)}\n`);
}

const suite = haveChromium || process.env.CI === 'true' ? describe : describe.skip;

suite('dashboard in Chromium', () => {
  let ctl: Ctl;
  let worker: RunningWorker;
  let browser: Browser;
  let dir: string;

  beforeAll(async () => {
    if (!haveChromium) throw new Error(`Chromium is required in CI (${CHROMIUM} missing)`);
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-dash-'));
    ctl = await startCtl();
    worker = await startWorker(testConfig(ctl, dir), { logger: silentLogger });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });

  afterAll(async () => {
    await browser?.close();
    await worker?.stop().catch(() => undefined);
    await ctl?.close();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('asks for the token, lists the build and worker, follows the live log to the end and lists artifacts', async () => {
    const gate = path.join(dir, 'gate');
    const build = await ctl.submit(
      {
        // The build waits for the test to open the gate, so the page sees it running.
        script: `echo first-line; while [ ! -f '${gate}' ]; do sleep 0.05; done; echo second-line; mkdir -p out; echo artifact > out/result.txt`,
        artifacts: ['out/*.txt'],
      },
      tarGz([{ path: 'README', data: 'dashboard test\n' }]),
    );

    const page = await browser.newPage();
    const pageErrors: string[] = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    await page.goto(`${ctl.url}/`);

    await page.locator('#tokenInput').fill(API_TOKEN);
    await page.locator('#tokenInput').press('Enter');

    const row = page.locator(`tr.build[data-id="${build.id}"]`);
    await row.waitFor({ timeout: 20_000 });
    const workerRow = page.locator('#workers tr', { hasText: 'test-worker' });
    await expect.poll(() => workerRow.textContent(), { timeout: 20_000 }).toContain('connected');

    await row.click();
    const log = page.locator('#log');
    await expect.poll(() => log.textContent(), { timeout: 20_000 }).toContain('first-line');
    expect(await log.textContent()).not.toContain('second-line');

    await fs.writeFile(gate, '');
    await expect.poll(() => log.textContent(), { timeout: 20_000 }).toContain('second-line');
    await expect.poll(() => page.locator('#artifacts').textContent(), { timeout: 20_000 }).toContain('out/result.txt');
    await expect.poll(() => page.locator('#kv').textContent(), { timeout: 20_000 }).toContain('succeeded');
    expect(pageErrors).toEqual([]);
    await page.close();
  });
});
