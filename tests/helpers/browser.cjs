// Drives Chromium (Debian's, through npm's playwright-core) for the console's specs
// (tests/e2e/console_browser_spec.lua, helpers/browser.lua): node browser.cjs <origin> <steps as
// JSON>. Runs the steps in one page and prints {results, requests, errors} as JSON: every URL the
// page asked for, every console error or warning and uncaught exception (a CSP violation is
// one). Exits 1 with the step that failed on stderr.
'use strict';
const path = require('path');

const core = process.env.PLAYWRIGHT_CORE ||
  path.join(__dirname, '..', '..', 'build', 'node', 'node_modules', 'playwright-core');
const { chromium } = require(core);

async function main() {
  const [origin, json] = process.argv.slice(2);
  const steps = JSON.parse(json);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-default-apps', '--disable-sync'],
  });
  const out = { results: {}, requests: [], errors: [] };
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.setDefaultTimeout(10000);
    page.on('request', (r) => out.requests.push(r.method() + ' ' + r.url()));
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') out.errors.push(m.type() + ': ' + m.text());
    });
    page.on('pageerror', (e) => out.errors.push('exception: ' + e.message));
    for (const s of steps) {
      try {
        await step(page, origin, s, out.results);
      } catch (e) {
        throw new Error('step ' + JSON.stringify(s) + ': ' + e.message + '\nerrors in the page: ' +
          JSON.stringify(out.errors) + '\nrequests: ' + JSON.stringify(out.requests));
      }
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

const texts = (page, sel) => page.$$eval(sel, (els) => els.map((e) => e.textContent.trim()));

async function step(page, origin, s, results) {
  if (s.goto !== undefined) await page.goto(origin + s.goto, { waitUntil: 'load' });
  else if (s.viewport) await page.setViewportSize({ width: s.viewport[0], height: s.viewport[1] });
  else if (s.wait) await page.waitForSelector(s.wait, { state: s.state || 'visible' });
  else if (s.wait_text) { // [selector, text]: the element holds text
    await page.waitForFunction(([sel, t]) => {
      const e = document.querySelector(sel);
      return e && e.textContent.includes(t);
    }, s.wait_text);
  } else if (s.wait_count) { // [selector, n]
    await page.waitForFunction(([sel, n]) => document.querySelectorAll(sel).length === n, s.wait_count);
  } else if (s.wait_url) await page.waitForFunction((t) => location.href.includes(t), s.wait_url);
  else if (s.wait_route) { // the console shows the view of the current URL
    await page.waitForFunction(() => {
      const v = document.getElementById('view');
      return v && v.dataset.route === location.hash;
    });
  }
  else if (s.click) await page.click(s.click);
  else if (s.fill) await page.fill(s.fill[0], s.fill[1]);
  else if (s.select) await page.selectOption(s.select[0], s.select[1]);
  else if (s.press) await page.press(s.press[0], s.press[1]);
  else if (s.texts) results[s.as] = await texts(page, s.texts);
  else if (s.attrs) results[s.as] = await page.$$eval(s.attrs[0], (els, a) => els.map((e) => e.getAttribute(a)), s.attrs[1]);
  else if (s.visible) results[s.as] = await page.isVisible(s.visible);
  else if (s.eval) results[s.as] = await page.evaluate(s.eval);
  else if (s.url) results[s.as] = page.url();
  else if (s.sleep) await page.waitForTimeout(s.sleep);
  else if (s.screenshot) await page.screenshot({ path: s.screenshot, fullPage: !!s.full });
  else throw new Error('unknown step');
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e) + '\n');
  process.exit(1);
});
