// Drives `autohealctl ui` in Debian's chromium. Run by tests/tests/ui.rs, which owns the fleet:
// this script prints `need <step>` when it wants the test to change the world, and waits for a
// line on stdin before it looks again. Every other line it prints is `ok <what>` or a failure.
//
//   UI_URL          the page (http://127.0.0.1:PORT/)
//   ESCALATED       the instance the test makes escalate
//   SKIPPED         the instance an operator skips
//   DEPENDENCY      the shared dependency the test makes fail
//   SCREENSHOT      where to write the screenshot
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const { UI_URL, ESCALATED, SKIPPED, DEPENDENCY, SCREENSHOT } = process.env;
const STEP_MS = Number(process.env.STEP_MS || 25000);

const lines = createInterface({ input: process.stdin });
const waiting = [];
lines.on('line', (l) => { const w = waiting.shift(); if (w) w(l); });
function need(step) {
  console.log(`need ${step}`);
  return new Promise((resolve) => waiting.push(resolve));
}

// A fresh profile each run; playwright passes it to chromium as --user-data-dir.
const profile = mkdtempSync(join(tmpdir(), 'autoheal-ui-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run'],
});
let failed = false;
try {
  const page = browser.pages()[0] || await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(UI_URL);
  // A page that reloads loses this; every later step checks it is still there.
  await page.evaluate(() => { window.__sameDocument = true; });

  // The fleet appears: three connected, healthy instances.
  await page.waitForFunction(() => {
    const rows = document.querySelectorAll('#instances tbody tr[data-instance]');
    return rows.length >= 3 && [...rows].every((r) => r.dataset.state === 'healthy');
  }, null, { timeout: STEP_MS });
  console.log('ok fleet');

  // Read-only: the server refuses writes and has no steering routes.
  const codes = await page.evaluate(async () => Promise.all([
    fetch('/api/status', { method: 'POST' }).then((r) => r.status),
    fetch('/api/pause').then((r) => r.status),
    fetch('/api/instance/x/drain', { method: 'POST' }).then((r) => r.status),
  ]));
  if (codes.join() !== '405,404,404') throw new Error(`writes not refused: ${codes}`);
  console.log('ok read-only');
  // Certificate expiry comes from EnrollmentAdmin, which a viewer may read; this coordinator has
  // no [enroll], and the page says so instead of failing.
  const enrollments = await page.evaluate(() => fetch('/api/enrollments').then((r) => r.json()));
  if (enrollments.available !== false) throw new Error(`enrollments: ${JSON.stringify(enrollments)}`);

  await need('escalate');
  await page.waitForSelector(`#remediations tbody tr[data-instance="${ESCALATED}"]`, { timeout: STEP_MS });
  const rung = await page.textContent(`#remediations tbody tr[data-instance="${ESCALATED}"] .ladder .now, `
    + `#remediations tbody tr[data-instance="${ESCALATED}"] .ladder .held`).catch(() => '');
  if (!(await page.evaluate(() => window.__sameDocument))) throw new Error('the page reloaded');
  console.log(`ok remediation ${rung}`);

  // Its incident timeline: fleet events and journal entries, each with its reason.
  await page.click(`#instances tbody tr[data-instance="${ESCALATED}"]`);
  await page.waitForFunction(() => {
    const items = [...document.querySelectorAll('#detail .timeline li')].map((li) => li.textContent);
    return items.some((t) => t.includes('escalated')) && items.some((t) => t.includes('journal: deregister'));
  }, null, { timeout: STEP_MS });
  const version = await page.textContent('#detail dl');
  if (!version.includes('sim')) throw new Error(`no agent version in ${version}`);
  const cert = await page.textContent('#detail dd.cert');
  if (!/enroll/.test(cert)) throw new Error(`certificate expiry says: ${cert}`);
  console.log('ok timeline');

  await need('outage');
  await page.waitForFunction((dep) => [...document.querySelectorAll('#brakes li[data-kind="dependency_brake"]')]
    .some((li) => li.textContent.includes(dep)), DEPENDENCY, { timeout: STEP_MS });
  const reason = await page.textContent('#brakes li[data-kind="dependency_brake"]');
  if (!(await page.evaluate(() => window.__sameDocument))) throw new Error('the page reloaded');
  console.log(`ok brake ${reason.trim()}`);
  // Pause and a skip, each with who and why.
  await need('pause');
  await page.waitForFunction((id) => {
    const paused = document.querySelector('#brakes li[data-kind="paused"]');
    const skipped = document.querySelector(`#brakes li[data-kind="skipped"][data-instance="${id}"]`);
    return paused && paused.textContent.includes('operator/admin') && paused.textContent.includes('change freeze')
      && skipped && skipped.textContent.includes('operator/admin') && skipped.textContent.includes('kernel debugging');
  }, SKIPPED, { timeout: STEP_MS });
  if (!(await page.evaluate(() => window.__sameDocument))) throw new Error('the page reloaded');
  console.log('ok pause and skip');

  // Let the bars and ages settle into one frame for the picture.
  await page.waitForTimeout(300);
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log('ok screenshot');

  // A coordinator that hangs (SIGSTOP) closes nothing: the health check notices.
  await need('freeze');
  await page.waitForSelector('#banner:not([hidden])', { timeout: STEP_MS });
  const frozen = await page.textContent('#banner');
  if (!/stopped answering|unreachable/i.test(frozen)) throw new Error(`banner says: ${frozen}`);
  console.log(`ok frozen ${frozen.trim()}`);
  await need('thaw');
  await page.waitForSelector('#banner[hidden]', { state: 'attached', timeout: STEP_MS });
  console.log('ok thawed');

  await need('stop');
  await page.waitForSelector('#banner:not([hidden])', { timeout: STEP_MS });
  const banner = await page.textContent('#banner');
  if (!/unreachable/i.test(banner)) throw new Error(`banner says: ${banner}`);
  console.log(`ok banner ${banner.trim()}`);

  // The same coordinator, started again: the view finds it by itself, without a reload.
  const connects = () => document.querySelectorAll('#events li[data-kind="agent-connected"]').length;
  const before = await page.evaluate(connects);
  await need('restart');
  await page.waitForSelector('#banner[hidden]', { state: 'attached', timeout: STEP_MS });
  // Its agents connect again, and those events arrive on the same page.
  await page.waitForFunction((n) => document.querySelectorAll('#events li[data-kind="agent-connected"]').length > n,
    before, { timeout: STEP_MS });
  await page.waitForFunction(() => document.querySelectorAll('#instances tbody tr[data-instance]').length >= 3,
    null, { timeout: STEP_MS });
  if (!(await page.evaluate(() => window.__sameDocument))) throw new Error('the page reloaded');
  console.log(`ok reconnected (agent-connected events: ${before} before, ${await page.evaluate(connects)} now)`);
  if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
} catch (e) {
  failed = true;
  console.log(`fail ${e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : e}`);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
  lines.close();
}
process.exit(failed ? 1 : 0);
