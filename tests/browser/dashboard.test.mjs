/*
 * The dashboard in a real browser (headless Debian chromium through playwright-core). Started by
 * run_dashboard.py, which runs sluice (admin token required) with an upstream of two targets,
 * kills one of them and keeps traffic going. Environment:
 *   DASH_URL      the admin listener's base URL       DASH_TOKEN   the admin token
 *   DEAD_TARGET   the killed target's address         LIVE_TARGET  the other one
 *   GATEWAY_PID   sluice's pid (stopped and continued here to play "not answering")
 *   OUT_DIR       where the screenshots go            CHROMIUM     the browser binary
 * Prints one line per check and "browser: N passed, N failed"; exits 1 on any failure.
 */
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set`);
  return process.env[k];
};
const URL_ = env('DASH_URL');
const TOKEN = env('DASH_TOKEN');
const DEAD = env('DEAD_TARGET');
const LIVE = env('LIVE_TARGET');
const PID = Number(env('GATEWAY_PID'));
const OUT = env('OUT_DIR');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SLOW = process.env.SLUICE_SANITIZED === '1' ? 4 : 1;

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n     ${String(e && e.message ? e.message : e).split('\n').join('\n     ')}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

/* Opens the page in a fresh context (sessionStorage is per tab), answers the token prompt and
 * waits for the first rendered poll. Collects console errors and CSP violations in `problems`. */
async function open(browser, viewport, problems) {
  const ctx = await browser.newContext({ viewport, deviceScaleFactor: 1, isMobile: viewport.width < 600, hasTouch: viewport.width < 600 });
  const page = await ctx.newPage();
  /* A 401 or an aborted poll of /stats is logged by the browser itself: expected here. */
  page.on('console', (m) => {
    if (m.type() === 'error' && !(m.location().url || '').endsWith('/stats')) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => { if (!r.url().endsWith('/stats')) problems.push(`request failed: ${r.url()}`); });
  const res = await page.goto(URL_ + '/', { waitUntil: 'load' });
  assert(res.status() === 200, `GET / answered ${res.status()}`);
  await page.locator('#login').waitFor({ state: 'visible', timeout: 10000 * SLOW });
  assert(await page.locator('#main').isHidden(), 'the dashboard shows while the token is asked for');
  if (viewport.width >= 600) await page.screenshot({ path: path.join(OUT, 'dashboard-token.png') });
  await page.fill('#token', TOKEN);
  await page.press('#token', 'Enter');
  await page.locator('#routes tbody tr').first().waitFor({ timeout: 10000 * SLOW });
  return { ctx, page };
}

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
fs.mkdirSync(OUT, { recursive: true });
const problems = [];
try {
  const { page } = await open(browser, { width: 1280, height: 800 }, problems);

  await check('the token prompt leads to data, and the token stays in this tab only', async () => {
    assert(await page.locator('#login').isHidden(), 'the login form is still shown');
    const kept = await page.evaluate(() => sessionStorage.getItem('sluice.admin.token'));
    assert(kept === TOKEN, 'the token is not in sessionStorage');
    assert(await page.evaluate(() => localStorage.length) === 0, 'something went to localStorage');
  });

  await check(`the doctor's finding names the dead target ${DEAD} (connectivity), coloured by severity`, async () => {
    /* The doctor may call it a warning first (a share of failed tries), then critical (out of
     * rotation): wait for critical, and check the colours of whatever it says. */
    const sel = '#findings li.finding[data-cause="connectivity"]';
    await page.locator(sel, { hasText: DEAD }).first().waitFor({ timeout: 20000 * SLOW });
    await page.locator(sel + '[data-severity="critical"]', { hasText: DEAD }).first()
      .waitFor({ timeout: 10000 * SLOW }).catch(() => {});
    const f = page.locator(sel, { hasText: DEAD }).first();
    const sev = await f.getAttribute('data-severity');
    const colour = { critical: 'rgb(161, 21, 26)', warning: 'rgb(122, 77, 0)', info: 'rgb(11, 79, 138)' };
    assert(sev in colour, `severity ${sev}`);
    const bg = await f.evaluate((e) => getComputedStyle(e).borderLeftColor);
    assert(bg === colour[sev], `${sev} is coloured ${bg}`);
    const causes = await page.locator('#causes li').evaluateAll((l) => l.map((e) => e.dataset.cause));
    assert(causes.join() === 'connectivity,routing,auth,rate_limit,latency,resources', `causes: ${causes}`);
    const conn = await page.locator('#causes li[data-cause="connectivity"]').getAttribute('class');
    assert(/^sev-(critical|warning|info)$/.test(conn), `the connectivity cause shows ${conn}`);
    console.log(`     (severity: ${sev})`);
  });

  await check('the dead target shows unhealthy, the live one healthy', async () => {
    const dead = page.locator(`#upstreams tr[data-target="${DEAD}"]`);
    await page.waitForFunction((a) => {
      const tr = document.querySelector(`#upstreams tr[data-target="${a}"]`);
      return tr && tr.dataset.health === 'unhealthy';
    }, DEAD, { timeout: 20000 * SLOW });
    const shown = await dead.locator('td').first().textContent();
    assert(shown.includes('unhealthy'), `health cell of the dead target: ${shown}`);
    const check_ = await dead.locator('td').nth(4).innerText();
    assert(/refused|failed|timeout|reset/i.test(check_), `last check of the dead target: ${check_}`);
    const live = await page.locator(`#upstreams tr[data-target="${LIVE}"]`).getAttribute('data-health');
    assert(live === 'healthy', `live target: ${live}`);
  });

  await check('the three charts exist, are labelled and have data drawn', async () => {
    await page.waitForFunction(() => ['chart-rps', 'chart-err', 'chart-lat']
      .every((id) => Number(document.getElementById(id).dataset.points || 0) >= 2), null, { timeout: 15000 * SLOW });
    for (const id of ['chart-rps', 'chart-err', 'chart-lat']) {
      const c = page.locator('#' + id);
      assert((await c.getAttribute('role')) === 'img', `${id} has no role=img`);
      const label = await c.evaluate((e) => e.getAttribute('aria-labelledby').split(' ')
        .map((i) => document.getElementById(i).textContent).join(' '));
      assert(/\S/.test(label), `${id} has no accessible name`);
      /* Something other than the white background and the grey grid: a series was drawn. */
      const coloured = await c.evaluate((e) => {
        const d = e.getContext('2d').getImageData(0, 0, e.width, e.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
          const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
          if (d[i + 3] > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) n++;
        }
        return n;
      });
      assert(coloured > 20, `${id}: no series pixels (${coloured})`);
    }
    const rps = await page.locator('#now-rps').innerText();
    assert(/\d/.test(rps) && !rps.includes('—'), `requests/s: ${rps}`);
  });

  await check('routes, resources and config are shown', async () => {
    const row = page.locator('#routes tr[data-route="api"]');
    assert((await row.locator('td').nth(2).innerText()).includes('upstream u'), 'route action');
    const rps = await row.locator('td').nth(4).innerText();
    assert(/^\d/.test(rps), `route req/s: ${rps}`);
    const res = await page.locator('#resources').innerText();
    assert(/Connections/.test(res) && /Open files/.test(res), 'resources table');
    assert((await page.locator('#resources meter').count()) >= 2, 'no meters');
    const cfg = await page.locator('#config').innerText();
    assert(/Generation\s+1/.test(cfg) && /none since start/.test(cfg), `config: ${cfg}`);
  });

  await check('tables have captions and scoped headers; the focus is visible', async () => {
    const bad = await page.evaluate(() => [...document.querySelectorAll('table')].filter((t) => !t.caption).length +
      [...document.querySelectorAll('th')].filter((th) => !th.getAttribute('scope')).length);
    assert(bad === 0, `${bad} tables without caption or th without scope`);
    /* A reload keeps the token (same tab) and starts keyboard navigation from the top. */
    await page.reload({ waitUntil: 'load' });
    await page.locator('#routes tbody tr').first().waitFor({ timeout: 10000 * SLOW });
    assert(await page.locator('#login').isHidden(), 'the token was asked again after a reload');
    await page.keyboard.press('Tab');
    const focus = await page.evaluate(() => {
      const e = document.activeElement;
      const s = getComputedStyle(e);
      return { cls: e.className, outline: s.outlineStyle, left: e.getBoundingClientRect().left };
    });
    assert(focus.cls === 'skip' && focus.outline !== 'none' && focus.left >= 0, `first Tab: ${JSON.stringify(focus)}`);
  });

  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await page.waitForFunction(() => Number(document.getElementById('chart-rps').dataset.points || 0) >= 2,
    null, { timeout: 10000 * SLOW });
  await page.screenshot({ path: path.join(OUT, 'dashboard-desktop.png'), fullPage: true });

  const phone = await open(browser, { width: 390, height: 844 }, problems);
  await check('at phone width nothing overflows the page (wide tables scroll inside)', async () => {
    await phone.page.locator(`#upstreams tr[data-target="${DEAD}"]`).waitFor({ timeout: 10000 * SLOW });
    await phone.page.waitForFunction(() => Number(document.getElementById('chart-rps').dataset.points || 0) >= 1,
      null, { timeout: 10000 * SLOW });
    const w = await phone.page.evaluate(() => ({ doc: document.documentElement.scrollWidth, win: window.innerWidth }));
    assert(w.doc <= w.win + 1, `page is ${w.doc}px wide in a ${w.win}px window`);
    const scrolls = await phone.page.evaluate(() => {
      const s = document.querySelector('#routes').closest('.scroll');
      return s.scrollWidth > s.clientWidth;
    });
    assert(scrolls, 'the routes table does not scroll horizontally');
  });
  await phone.page.screenshot({ path: path.join(OUT, 'dashboard-phone.png'), fullPage: true });
  await phone.ctx.close();

  await check('a gateway that stops answering gives a clear banner, and recovery clears it', async () => {
    process.kill(PID, 'SIGSTOP');
    try {
      const banner = page.locator('#banner[data-state="down"]');
      await banner.waitFor({ state: 'visible', timeout: 15000 * SLOW });
      const text = await banner.innerText();
      assert(/not answering/.test(text) && /last data/.test(text), `banner: ${text}`);
      assert(await page.evaluate(() => document.body.classList.contains('stale')), 'the page is not marked stale');
      await page.screenshot({ path: path.join(OUT, 'dashboard-down.png'), fullPage: false });
    } finally {
      process.kill(PID, 'SIGCONT');
    }
    await page.locator('#banner').waitFor({ state: 'hidden', timeout: 15000 * SLOW });
  });

  await check('no console errors, failed loads or CSP violations', async () => {
    assert(problems.length === 0, problems.join('\n'));
  });
} catch (e) {
  failed++;
  console.log(`FAIL setup: ${e && e.stack ? e.stack : e}`);
} finally {
  await browser.close();
}
console.log(`screenshots: ${OUT}`);
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
