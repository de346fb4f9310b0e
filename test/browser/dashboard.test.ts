/**
 * The dashboard in a real browser (Debian's Chromium driven by
 * playwright-core) against a real controller (SQLite) and a real worker
 * running real build scripts. Each test drives the pages as a person would
 * and saves screenshots under `test-output/browser/`. Every page also has
 * to: log no console error (a CSP violation is one), request nothing from
 * another origin, give every control an accessible name (Chromium's own
 * accessibility tree), and at 390×844 not scroll sideways.
 *
 * The page runs under the Content-Security-Policy the controller sends
 * (`default-src 'self'`); when a controller answers without one, the test
 * adds it, so the app is held to it either way.
 *
 * Skips loudly without Chromium; fails under CI=true. Needs the built app
 * (`npm run build`).
 */
import { existsSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser, type Page } from 'playwright-core';
import { loadDashboard } from '@buildfleet/dashboard';
import { startWorker, type RunningWorker } from '@buildfleet/worker';
import { API_TOKEN } from '../support/controller.js';
import { startCtl, type Ctl } from '../../packages/worker/test/integration/harness.js';
import { testConfig } from '../../packages/worker/test/support/harness.js';
import { tarGz } from '../../packages/worker/test/support/tarball.js';
import { silentLogger } from '../../packages/worker/src/logger.js';

const CHROMIUM = process.env.BUILDFLEET_CHROMIUM ?? '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
const OUT = path.resolve(import.meta.dirname, '../../test-output/browser');
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

if (!haveChromium && process.env.CI !== 'true') {
  console.warn(`\n${'!'.repeat(72)}\n!!! ${CHROMIUM} not found: dashboard browser tests SKIPPED (apt-get install -y chromium)\n${'!'.repeat(72)}\n`);
}

const suite = haveChromium || process.env.CI === 'true' ? describe : describe.skip;
const SOURCE = tarGz([{ path: 'README', data: 'dashboard test\n' }]);
const WORKER_NAME = 'browser-test-worker';

/** What a page did that it must not: console errors, page errors, other origins. */
interface Watch {
  problems: string[];
}

suite('dashboard in Chromium', () => {
  let ctl: Ctl;
  let worker: RunningWorker;
  let browser: Browser;
  let dir: string;
  const watches: Watch[] = [];

  beforeAll(async () => {
    if (!haveChromium) throw new Error(`Chromium is required in CI (${CHROMIUM} missing)`);
    if (!loadDashboard().built) throw new Error('the dashboard is not built: run `npm run build` first');
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'bf-dash-'));
    // Builds wait on gate files here: a root worker runs them as nobody.
    await fs.chmod(dir, 0o711);
    await fs.mkdir(OUT, { recursive: true });
    ctl = await startCtl();
    worker = await startWorker(testConfig(ctl, dir, { name: WORKER_NAME, labels: ['linux'], maxConcurrentBuilds: 2 }), { logger: silentLogger });
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
    // Every page of every test: nothing went wrong in the browser.
    expect(watches.flatMap((w) => w.problems)).toEqual([]);
  });

  /** A new tab, watched, under the CSP; `phone`: 390×844 like a small phone. */
  async function openPage(phone = false): Promise<Page> {
    const page = await browser.newPage({ viewport: phone ? { width: 390, height: 844 } : { width: 1280, height: 900 }, ...(phone ? { isMobile: true, hasTouch: true, deviceScaleFactor: 1 } : {}) });
    const watch: Watch = { problems: [] };
    watches.push(watch);
    const origin = new URL(ctl.url).origin;
    page.on('console', (m) => {
      if (m.type() === 'error') watch.problems.push(`console error on ${page.url()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => watch.problems.push(`page error on ${page.url()}: ${String(e)}`));
    page.on('request', (r) => {
      const url = new URL(r.url());
      if (url.protocol !== 'blob:' && url.protocol !== 'data:' && url.origin !== origin) watch.problems.push(`request to another origin: ${r.url()}`);
      // Tokens travel in headers only: a URL ends up in logs, history and Referer.
      if (r.url().includes(API_TOKEN) || /bf[aeswbh]_[A-Za-z0-9_-]{8}/.test(r.url())) watch.problems.push(`a token in a URL: ${r.url().slice(0, 120)}`);
    });
    // The app's pages under the CSP (the API's streams are not routed: fulfilling buffers them).
    await page.route(
      (url) => url.origin === origin && !url.pathname.startsWith('/api/'),
      async (route) => {
        const res = await route.fetch();
        const headers = res.headers();
        if (!headers['content-security-policy']) headers['content-security-policy'] = CSP;
        await route.fulfill({ response: res, headers });
      },
    );
    return page;
  }

  async function signIn(page: Page, at = '/builds'): Promise<void> {
    await page.goto(`${ctl.url}${at}`);
    await page.getByLabel('API token').fill(API_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('navigation', { name: 'Main' }).waitFor();
    // Kept for the tab's session only.
    expect(await page.evaluate(() => [sessionStorage.length, localStorage.length])).toEqual([1, 0]);
  }

  async function shot(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: path.join(OUT, `${name}.png`), fullPage: true });
  }

  /** Every button, link, field and menu on the page has a name in Chromium's accessibility tree. */
  async function expectAccessibleNames(page: Page): Promise<void> {
    const cdp = await page.context().newCDPSession(page);
    const { nodes } = (await cdp.send('Accessibility.getFullAXTree')) as {
      nodes: Array<{ ignored: boolean; role?: { value: string }; name?: { value: string } }>;
    };
    const controls = new Set(['button', 'link', 'textbox', 'searchbox', 'combobox', 'checkbox', 'spinbutton', 'menuitem', 'tab']);
    const unnamed = nodes.filter((n) => !n.ignored && controls.has(n.role?.value ?? '') && !(n.name?.value ?? '').trim());
    expect(unnamed.map((n) => n.role?.value), `unnamed controls on ${page.url()}`).toEqual([]);
    await cdp.detach();
  }

  async function noSidewaysScroll(page: Page): Promise<void> {
    const [scroll, client] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    expect(scroll, `${page.url()} scrolls sideways at ${client}px`).toBeLessThanOrEqual(client!);
  }

  async function gatedBuild(spec: Record<string, unknown> = {}) {
    const gate = path.join(dir, `gate-${Math.random().toString(36).slice(2)}`);
    const build = await ctl.submit(
      { script: `echo started; while [ ! -f '${gate}' ]; do sleep 0.05; done; echo gate-open`, labels: ['linux'], ...spec },
      SOURCE,
    );
    return { build, open: () => fs.writeFile(gate, '') };
  }

  async function stateOf(id: string): Promise<string> {
    return (await ctl.build(id)).state;
  }

  it('signs in once per tab and shows a build opened by its address, with its ANSI colours', async () => {
    const build = await ctl.submit(
      {
        name: 'colours',
        script: "printf 'plain line\\n\\033[32mgreen PASS\\033[0m then plain\\n\\033[1;31mbold red FAIL\\033[0m\\n'; mkdir -p out; echo artifact > out/result.txt",
        artifacts: ['out/*.txt'],
        labels: ['linux'],
        metadata: { repo: 'https://example.invalid/acme/widgets.git', branch: 'main', commit: '0123456789abcdef0123456789abcdef01234567' },
      },
      SOURCE,
    );
    await expect.poll(() => stateOf(build.id), { timeout: 20_000 }).toBe('succeeded');

    const page = await openPage();
    await page.goto(`${ctl.url}/builds/${build.id}`);
    await shot(page, 'sign-in');
    await expectAccessibleNames(page);
    // A refused token says so and keeps the form; the browser logs the 401 it got, expected here.
    await page.getByLabel('API token').fill(`bfa_${'x'.repeat(43)}`);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'The controller refused this token.' }).waitFor();
    expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
    const watch = watches.at(-1)!;
    watch.problems = watch.problems.filter((p) => !/status of 401/.test(p));
    await page.getByLabel('API token').fill(API_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();

    // The address was kept through sign-in: the build's own page.
    await page.getByRole('heading', { name: 'colours' }).waitFor();
    const green = page.locator('.log-row', { hasText: 'green PASS' }).locator('span.ansi-green-fg', { hasText: 'green PASS' });
    await green.waitFor();
    expect(await green.evaluate((el) => getComputedStyle(el).color)).not.toBe(await page.locator('.log-row', { hasText: 'plain line' }).locator('.lt').evaluate((el) => getComputedStyle(el).color));
    await page.locator('.log-row', { hasText: 'bold red FAIL' }).locator('span.ansi-red-fg.ansi-bold').waitFor();
    expect(await page.locator('.log-row', { hasText: 'then plain' }).locator('.lt').textContent()).toBe('green PASS then plain');
    await expect.poll(() => page.locator('.status').textContent()).toContain('Passed');
    await page.getByRole('table').getByText('out/result.txt').waitFor();

    // Reload keeps both the page and the session; a line anchor selects its line.
    await page.locator('.log-row', { hasText: 'plain line' }).getByRole('link', { name: 'Line 1' }).click();
    expect(page.url()).toMatch(/#L1$/);
    await page.reload();
    await page.getByRole('heading', { name: 'colours' }).waitFor();
    await page.locator('.log-row.selected', { hasText: 'plain line' }).waitFor();
    await expectAccessibleNames(page);
    await shot(page, 'build-passed');
    await page.close();
  });

  it('pages back to the first of 150 builds, and back/forward retrace the pages', async () => {
    // 150 builds no worker can take (they stay queued): submitted in parallel batches.
    const ids: string[] = [];
    for (let i = 0; i < 150; i += 25) {
      const batch = await Promise.all(
        Array.from({ length: 25 }, (_, k) => ctl.submit({ name: `paging ${i + k + 1}`, script: 'true', labels: ['paging'] }, SOURCE)),
      );
      ids.push(...batch.map((b) => b.id));
    }
    const first = (await Promise.all(ids.map((id) => ctl.build(id)))).sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id))[0]!;

    const page = await openPage();
    await signIn(page, '/builds?label=paging');
    await page.locator('tbody tr').first().waitFor();
    expect(await page.locator('tbody tr').count()).toBe(50);
    const pages: string[] = [page.url()];
    while (!(await page.getByText('First build reached').isVisible())) {
      await page.getByRole('link', { name: 'Older builds' }).click();
      await page.waitForURL((u) => u.toString() !== pages[pages.length - 1]);
      await page.locator('tbody tr').first().waitFor();
      pages.push(page.url());
      expect(pages.length).toBeLessThan(10);
    }
    expect(pages.length).toBe(3);
    await page.locator(`tr[data-build-id="${first.id}"]`).waitFor();
    await shot(page, 'builds-last-page');

    await page.goBack();
    await page.waitForURL(pages[1]!);
    await expect.poll(() => page.locator(`tr[data-build-id="${first.id}"]`).count()).toBe(0);
    await page.getByRole('link', { name: 'Newer builds' }).click();
    await page.waitForURL((u) => u.searchParams.has('before'));
    await expect.poll(() => page.locator('tbody tr').count()).toBe(50);
    await page.getByRole('link', { name: 'Newest' }).click();
    await page.waitForURL((u) => !u.searchParams.has('before') && !u.searchParams.has('cursor'));
    await page.locator(`tr[data-build-id="${ids[0]}"], tr[data-build-id="${ids[ids.length - 1]}"]`).first().waitFor();
    await page.close();
  });

  it('shows a build submitted through the API as it appears and until it succeeds, without a reload', async () => {
    const page = await openPage();
    await signIn(page);
    await page.getByText('Live', { exact: true }).waitFor();
    await page.evaluate(() => ((window as unknown as { notReloaded: boolean }).notReloaded = true));

    const { build, open } = await gatedBuild({ name: 'watch me' });
    const row = page.locator(`tr[data-build-id="${build.id}"]`);
    await row.waitFor({ timeout: 20_000 });
    await row.locator('[data-state="running"]').waitFor({ timeout: 20_000 });
    expect(await row.textContent()).toContain(WORKER_NAME);
    await shot(page, 'builds-running');
    await open();
    await row.locator('[data-state="succeeded"]').waitFor({ timeout: 20_000 });
    expect(await page.evaluate(() => (window as unknown as { notReloaded?: boolean }).notReloaded)).toBe(true);
    await expectAccessibleNames(page);
    await page.close();
  });

  it('follows a running build live and cancels it from its page', async () => {
    const { build } = await gatedBuild({ name: 'cancel me' });
    await expect.poll(() => stateOf(build.id), { timeout: 20_000 }).toBe('running');
    const page = await openPage();
    await signIn(page, `/builds/${build.id}`);
    await page.locator('.log-row', { hasText: 'started' }).waitFor();
    await page.getByRole('button', { name: 'Cancel' }).click();
    const dialog = page.getByRole('dialog', { name: 'Cancel this build?' });
    await dialog.waitFor();
    await shot(page, 'build-cancel-confirm');
    await dialog.getByRole('button', { name: 'Cancel build' }).click();
    await page.locator('.status [data-state="canceled"]').waitFor({ timeout: 20_000 });
    expect(await page.locator('.outcome').textContent()).toBe('Canceled by a user while running');
    expect(await stateOf(build.id)).toBe('canceled');
    await shot(page, 'build-canceled');
    await page.close();
  });

  it('drains and resumes a worker from its page', async () => {
    const page = await openPage();
    await signIn(page, '/workers');
    await page.getByRole('link', { name: WORKER_NAME }).click();
    await page.getByRole('heading', { name: WORKER_NAME }).waitFor();
    await page.getByRole('button', { name: 'Drain' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Drain worker' }).click();
    await page.locator('.details [data-state="draining"]').waitFor();
    await shot(page, 'worker-draining');
    await page.getByRole('button', { name: 'Resume' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Resume worker' }).click();
    await page.locator('.details [data-state="idle"], .details [data-state="building"]').first().waitFor();
    // Resumed for real: it takes a build again.
    const build = await ctl.submit({ script: 'echo after resume', labels: ['linux'] }, SOURCE);
    await expect.poll(() => stateOf(build.id), { timeout: 20_000 }).toBe('succeeded');
    await expectAccessibleNames(page);
    await page.close();
  });

  it('says why a build waits when no worker has its labels', async () => {
    const build = await ctl.submit({ name: 'needs a gpu', script: 'true', labels: ['gpu', 'linux'] }, SOURCE);
    const page = await openPage();
    await signIn(page, `/builds/${build.id}`);
    const waiting = page.locator('.waiting');
    await waiting.waitFor();
    expect(await waiting.getAttribute('data-reason')).toBe('no_matching_worker');
    expect(await waiting.textContent()).toContain('gpu, linux');
    await shot(page, 'build-waiting');
    await page.goto(`${ctl.url}/queue`);
    await page.getByText('No connected worker serves').waitFor();
    await page.locator('.chart canvas').first().waitFor();
    await expectAccessibleNames(page);
    await shot(page, 'queue');
    await page.close();
  });

  it('keeps a 200,000-line log smooth: only the visible lines are in the page, search and jump to end work', async () => {
    const build = await ctl.submit({ name: 'long log', script: 'seq 1 200000', labels: ['linux'] }, SOURCE);
    await expect.poll(() => stateOf(build.id), { timeout: 60_000 }).toBe('succeeded');
    const page = await openPage();
    await signIn(page, `/builds/${build.id}#L150000`);
    // 200,000 lines of the script and the worker's closing line(s).
    await page.locator('.log-meta', { hasText: /^200,00\d lines/ }).waitFor({ timeout: 30_000 });
    // The anchor's line is on screen and selected.
    await page.locator('.log-row.selected[data-line="150000"]').waitFor();
    expect(await page.locator('.log-row').count()).toBeLessThan(200);
    await page.getByRole('searchbox', { name: 'Search the log' }).fill('123456');
    await page.getByRole('searchbox', { name: 'Search the log' }).press('Enter');
    await page.locator('.log-row.current[data-line="123456"]').waitFor();
    await page.getByRole('button', { name: 'Jump to end' }).click();
    await page.locator('.log-row', { hasText: /^200000200000$/ }).waitFor();
    expect(await page.locator('.log-row').count()).toBeLessThan(200);
    await shot(page, 'build-long-log');
    await page.close();
  });

  it('adds a webhook, shows its secret once and its delivery log, and deletes it', async () => {
    const received: string[] = [];
    const receiver = http.createServer((req, res) => {
      received.push(String(req.headers['x-buildfleet-event-id']));
      req.resume().on('end', () => res.writeHead(200).end());
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const target = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
    try {
      const page = await openPage();
      await signIn(page, '/webhooks');
      await page.getByLabel('URL').fill(target);
      await page.getByLabel('Description').fill('browser test receiver');
      await page.getByRole('button', { name: 'Add webhook' }).click();
      expect(await page.getByTestId('webhook-secret').textContent()).toMatch(/^bfh_/);
      await expectAccessibleNames(page);
      await shot(page, 'webhooks');
      const build = await ctl.submit({ name: 'webhook build', script: 'true', labels: ['linux'] }, SOURCE);
      await expect.poll(() => stateOf(build.id), { timeout: 20_000 }).toBe('succeeded');
      await page.getByRole('link', { name: target }).click();
      await page.getByRole('heading', { name: 'browser test receiver' }).waitFor();
      // build.finished of that build, delivered (the page re-reads as builds change; Refresh forces it).
      const row = page.locator('.deliveries-table tr', { hasText: 'build.finished' }).filter({ hasText: 'delivered' });
      await expect.poll(async () => {
        await page.getByRole('button', { name: 'Refresh' }).click();
        return row.count();
      }, { timeout: 20_000 }).toBe(1);
      expect(await row.textContent()).toContain('HTTP 200');
      expect(received.length).toBeGreaterThanOrEqual(1);
      await expectAccessibleNames(page);
      await shot(page, 'webhook-deliveries');
      await page.getByRole('button', { name: /^Delete the webhook/ }).click();
      await page.getByRole('dialog').getByRole('button', { name: 'Delete webhook' }).click();
      await page.getByRole('heading', { name: 'Webhooks' }).waitFor();
      expect(((await (await ctl.api('GET', '/api/v1/webhooks')).json()) as { webhooks: unknown[] }).webhooks).toEqual([]);
      await page.close();
    } finally {
      await new Promise((resolve) => receiver.close(resolve));
    }
  });

  it('opens a huge log at its end, and loads all of it on request', async () => {
    // About 5.4 MB: past the dashboard's 4 MiB threshold.
    const build = await ctl.submit({ name: 'huge log', script: 'seq 1 800000', labels: ['linux'] }, SOURCE);
    await expect.poll(() => stateOf(build.id), { timeout: 60_000 }).toBe('succeeded');
    const page = await openPage();
    await signIn(page, `/builds/${build.id}`);
    await page.locator('.log-tail', { hasText: /Showing the last 1\.0 MiB of a 5\.\d MiB log/ }).waitFor({ timeout: 30_000 });
    // Loaded once the last line is there: the last 1 MiB holds about 150,000 of the lines.
    await page.locator('.log-row', { hasText: /^\d+800000$/ }).waitFor();
    const meta = await page.locator('.log-meta').textContent();
    const shown = Number(/([\d,]+) lines/.exec(meta ?? '')![1]!.replace(/,/g, ''));
    expect(shown).toBeGreaterThan(100_000);
    expect(shown).toBeLessThan(200_000);
    await shot(page, 'build-huge-log-tail');
    await page.getByRole('button', { name: 'Show the whole log' }).click();
    await page.locator('.log-meta', { hasText: /^800,00\d lines/ }).waitFor({ timeout: 30_000 });
    expect(await page.locator('.log-tail').count()).toBe(0);
    await page.close();
  });

  it('fits a 390×844 phone: no page scrolls sideways', async () => {
    const { build } = await gatedBuild({ name: 'a build with a rather long name to see how it wraps on a phone', metadata: { branch: 'feature/very-long-branch-name-for-wrapping' } });
    await expect.poll(() => stateOf(build.id), { timeout: 20_000 }).toBe('running');
    const page = await openPage(true);
    await page.goto(`${ctl.url}/builds`);
    await noSidewaysScroll(page);
    await shot(page, 'phone-sign-in');
    await signIn(page);
    const workerId = worker.workerId;
    for (const [name, at] of [
      ['builds', '/builds'],
      ['build', `/builds/${build.id}`],
      ['workers', '/workers'],
      ['worker', `/workers/${workerId}`],
      ['queue', '/queue'],
      ['webhooks', '/webhooks'],
      ['tokens', '/tokens'],
    ] as const) {
      await page.goto(`${ctl.url}${at}`);
      await page.locator('.page-header h1').waitFor();
      await page.locator('.empty', { hasText: 'Loading' }).waitFor({ state: 'detached' });
      await noSidewaysScroll(page);
      await shot(page, `phone-${name}`);
    }
    // A new enrollment token with its worker command line, on the phone too.
    await page.getByRole('button', { name: 'Create token' }).click();
    const command = page.getByTestId('worker-command');
    await command.waitFor();
    expect(await command.textContent()).toMatch(/BUILDFLEET_ENROLLMENT_TOKEN=bfe_\S+ .*buildfleet worker$/);
    await noSidewaysScroll(page);
    await expectAccessibleNames(page);
    await shot(page, 'phone-token-created');
    await ctl.api('POST', `/api/v1/builds/${build.id}/cancel`);
    await page.close();
  });
});
