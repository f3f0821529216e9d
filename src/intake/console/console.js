// certhook's console: three views over the admin listener's JSON API (README "Console"). No
// framework, no build step; every value goes into the page as text, never as HTML.
'use strict';
performance.mark('console-script'); // (tests/bench/console.lua)

const REFRESH_MS = 5000;
const DAY = 86400;
const state = { token: sessionStorage.getItem('certhook.token') || '', timer: 0, busy: false,
  seen: { status: new Set(), provider: new Set() } };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

class Unauthorized extends Error {}

// first: the request the server preloads (Link: </api/certificates>; rel=preload; as=fetch;
// crossorigin, on / when no admin_token is configured): the browser hands its answer to a
// fetch that matches it — same URL, mode, credentials and cache mode, hence these options.
async function api(path, method, first) {
  const headers = { Accept: 'application/json' };
  if (state.token) headers.Authorization = 'Bearer ' + state.token;
  const r = await fetch(path, first ? { headers, credentials: 'same-origin' }
    : { method: method || 'GET', headers, credentials: 'omit', cache: 'no-store' });
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (r.status === 401) throw new Unauthorized((body && body.message) || 'a token is needed');
  if (!r.ok) throw new Error((body && body.message) || ('HTTP ' + r.status));
  return body;
}

// The page's first request, asked as soon as the script runs (not after the DOM is ready, nor
// after the view is known): /api/certificates, which the server preloads when it needs no
// token. The first render takes it whatever the view (the certificates view uses it; a 401
// asks for the token before any view asks again), so the preload is never left unused.
// Settles to the data or the error.
let early = state.token ? null : api('/api/certificates', 'GET', true).catch((e) => e);

// ---- the URL: #view?filters -----------------------------------------------------------------

function route() {
  const h = location.hash.slice(1) || 'certificates';
  const q = h.indexOf('?');
  const name = q < 0 ? h : h.slice(0, q);
  return { name, params: new URLSearchParams(q < 0 ? '' : h.slice(q + 1)) };
}

function go(name, params) {
  const s = params && params.toString();
  location.hash = name + (s ? '?' + s : '');
}

function query(params, keys) {
  const out = new URLSearchParams();
  for (const k of keys) if (params.get(k)) out.set(k, params.get(k));
  return out.toString();
}

// ---- formatting ---------------------------------------------------------------------------------

const iso = (t) => (t ? new Date(t * 1000).toISOString().replace('.000Z', 'Z') : '');
const isoDate = (t) => (t ? new Date(t * 1000).toISOString().slice(0, 10) : '');

function age(t, now) {
  if (!t) return '';
  const s = Math.max(0, now - t);
  if (s < 90) return Math.round(s) + ' s ago';
  if (s < 5400) return Math.round(s / 60) + ' min ago';
  if (s < 2 * DAY) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / DAY) + ' days ago';
}

function pretty(text) {
  if (text === null || text === undefined) return '';
  if (typeof text !== 'string') return JSON.stringify(text, null, 2);
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return text; }
}

// Text for HTML built as a string (a table's rows: one innerHTML, not thousands of nodes).
const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const esc = (v) => (v === null || v === undefined ? '' : String(v).replace(/[&<>"']/g, (ch) => ESC[ch]));

const badge = (s) => el('span', { class: 'status ' + (s || ''), text: s || 'none' });

function notice(msg) {
  const n = document.getElementById('notice');
  n.hidden = !msg;
  n.textContent = msg || '';
}

// ---- Certificates ---------------------------------------------------------------------------------

// The days left as a bar (HTML): its colour from watchdog.before, its width from data-pct
// (sizeBars: the CSP allows no style attribute).
function daysBar(c, ctx) {
  if (!c.expires_at) return '<span class="muted">unknown</span>';
  const days = (c.expires_at - ctx.now) / DAY;
  const cls = days <= 0 ? 'expired' : days <= ctx.small ? 'crit' : days <= ctx.big ? 'warn' : 'ok';
  const pct = Math.max(2, Math.min(100, (days / ctx.top) * 100));
  const label = days <= 0 ? 'expired' : Math.floor(days) + (Math.floor(days) === 1 ? ' day' : ' days');
  return '<div class="bar ' + cls + '" role="img" aria-label="' + label + '" title="' + label + '"><span' +
    (days <= 0 ? '' : ' data-pct="' + pct.toFixed(0) + '"') + '></span><i>' + label + '</i></div>';
}

// The certificates table, one entry a column: its header, and its cell as HTML from the
// certificate c (every value through esc) and ctx (now, the thresholds). A column is one line.
const CERT_COLUMNS = [
  ['Hostname', (c) => esc(c.hostname || c.name || c.key) + (c.names ? '<span class="muted"> +' + esc(c.names) + '</span>' : '')],
  ['Provider', (c) => esc(c.provider)],
  ['Status', (c) => esc(c.status)],
  ['State', (c) => esc(c.state)],
  // what the status was before its last change, else the state; the state too when it says more
  ['Previous status', (c) => esc(c.previous_status || c.previous_state) +
    (c.previous_status && c.previous_state && c.previous_state !== c.previous_status.toLowerCase() ? '<span class="muted"> (' + esc(c.previous_state) + ')</span>' : '')],
  ['Expires', (c) => '<time datetime="' + iso(c.expires_at) + '">' + isoDate(c.expires_at) + (c.expires_at_approximate ? ' ≈' : '') + '</time>'],
  ['Days left', daysBar],
  ['Last event', (c, ctx) => (c.last_event ? '<a href="#event?id=' + esc(encodeURIComponent(c.last_event)) + '">' + esc(c.last_type || c.last_event) + '</a>' : esc(c.last_type)) +
    (c.last_occurred_at ? '<span class="muted"> ' + age(c.last_occurred_at, ctx.now) + '</span>' : '')],
];

const certRow = (c, ctx) => '<tr>' + CERT_COLUMNS.map(([label, cell]) => '<td data-label="' + label + '">' + cell(c, ctx) + '</td>').join('') + '</tr>';

async function certificates(params, first) {
  const qs = query(params, ['status', 'provider', 'tile', 'limit']);
  const data = first && !qs ? first : await api('/api/certificates' + (qs ? '?' + qs : ''));
  data.certificates.forEach((c) => { if (c.status) state.seen.status.add(c.status); if (c.provider) state.seen.provider.add(c.provider); });
  const tile = params.get('tile') || '';
  const setTile = (t) => { const p = new URLSearchParams(params); if (t && t !== tile) p.set('tile', t); else p.delete('tile'); p.delete('limit'); go('certificates', p); };
  const tileButton = (key, label, n) => el('button', { type: 'button', 'aria-pressed': String(tile === key),
    'data-tile': key, onclick: () => setTile(key) }, el('b', { text: n }), label);
  const tiles = el('div', { class: 'tiles', role: 'group', 'aria-label': 'Certificate counts (each filters the table)' },
    tileButton('', 'Total', data.total),
    data.thresholds.map((d, i) => tileButton(String(d), 'Expiring within ' + d + (d === 1 ? ' day' : ' days'), data.within[i])),
    tileButton('expired', 'Expired', data.expired),
    tileButton('overdue', 'Renewal overdue', data.overdue));
  const select = (name, label, values) => el('label', {}, label,
    el('select', { name, onchange: (e) => { const p = new URLSearchParams(params); if (e.target.value) p.set(name, e.target.value); else p.delete(name); go('certificates', p); } },
      el('option', { value: '', text: 'any' }),
      [...new Set([...values, params.get(name) || ''])].filter(Boolean).sort().map((v) => el('option', { value: v, selected: v === params.get(name), text: v }))));
  const filters = el('form', { class: 'filters', 'aria-label': 'Filters', onsubmit: (e) => e.preventDefault() },
    select('status', 'Status', state.seen.status), select('provider', 'Provider', state.seen.provider));
  const th = data.thresholds;
  const ctx = { now: data.now, top: Math.max(90, ...th), small: th.length ? Math.min(...th) : 7, big: th.length ? Math.max(...th) : 30 };
  const tbody = el('tbody');
  tbody.innerHTML = data.certificates.map((c) => certRow(c, ctx)).join('');
  const table = el('table', { class: 'responsive', id: 'certificates' },
    el('caption', { class: 'muted', text: data.matched + ' certificates' + (tile ? ' (tile: ' + tile + ')' : '') + ', soonest expiry first' }),
    el('thead', {}, el('tr', {}, CERT_COLUMNS.map(([h]) => el('th', { scope: 'col', text: h })))),
    tbody);
  const more = data.matched > data.certificates.length
    ? el('div', { class: 'pager' }, el('button', { type: 'button', onclick: () => { const p = new URLSearchParams(params); p.set('limit', String(Math.min(5000, data.certificates.length + 500))); go('certificates', p); } }, 'Show more (' + (data.matched - data.certificates.length) + ' not shown)'))
    : null;
  return [el('h2', { text: 'Certificates' }), tiles, filters, table, more];
}

// bars: widths from data-pct (no inline style attribute is needed by the CSP either way)
function sizeBars(root) {
  for (const s of root.querySelectorAll('.bar span[data-pct]')) s.style.width = s.dataset.pct + '%';
}

// ---- Events ---------------------------------------------------------------------------------------

function eventFilters(name, params, keys) {
  const field = (k, label, attrs) => el('label', {}, label, el('input', Object.assign({ name: k, value: params.get(k) || '' }, attrs)));
  const statusSel = el('label', {}, 'Status', el('select', { name: 'status' }, ['', 'pending', 'running', 'retrying', 'done', 'dead']
    .map((s) => el('option', { value: s, selected: s === (params.get('status') || ''), text: s || 'any' }))));
  const form = el('form', { class: 'filters', 'aria-label': 'Filters', onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) p.set(k, v);
    go(name, p);
  } },
  keys.includes('status') ? statusSel : null,
  field('provider', 'Provider', { type: 'text', size: 12 }),
  field('type', 'Type pattern', { type: 'text', size: 22, placeholder: 'certificate.*' }),
  keys.includes('handler') ? field('handler', 'Handler', { type: 'text', size: 18 }) : null,
  field('since', 'From', { type: 'date' }), field('until', 'Until', { type: 'date' }),
  el('button', { type: 'submit' }, 'Apply'));
  return form;
}

function apiFilters(params, extra) {
  const p = new URLSearchParams();
  for (const k of ['status', 'provider', 'type', 'handler', 'cursor', 'limit']) if (params.get(k)) p.set(k, params.get(k));
  if (params.get('since')) p.set('since', params.get('since'));
  if (params.get('until')) p.set('until', new Date(Date.parse(params.get('until')) + DAY * 1000).toISOString().slice(0, 10));
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return p.toString();
}

async function events(params) {
  const data = await api('/api/events?' + apiFilters(params));
  const rows = data.events.map((e) => {
    const link = '#event?id=' + encodeURIComponent(e.id);
    const errors = e.deliveries.filter((d) => d.error).map((d) => d.error);
    return el('tr', { 'data-id': e.id },
      el('td', { 'data-label': 'Received' }, el('time', { datetime: iso(e.received_at), text: iso(e.received_at) })),
      el('td', { 'data-label': 'Provider', text: e.provider || e.source }),
      el('td', { 'data-label': 'Type' }, el('a', { href: link, text: e.type })),
      el('td', { 'data-label': 'Hostname', text: e.hostname || '' }),
      el('td', { 'data-label': 'Deliveries' }, e.deliveries.length ? e.deliveries.map((d) => el('div', {}, badge(d.status), ' ', d.handler)) : el('span', { class: 'muted', text: e.state === 2 ? 'finished' : 'none yet' })),
      el('td', { 'data-label': 'Attempts', class: 'num', text: e.deliveries.reduce((n, d) => n + d.attempts, 0) }),
      el('td', { 'data-label': 'Last error', class: 'error', text: errors.length ? errors[errors.length - 1] : '' }));
  });
  const table = el('table', { class: 'responsive', id: 'events' },
    el('caption', { class: 'muted', text: 'Newest first' }),
    el('thead', {}, el('tr', {}, ['Received', 'Provider', 'Type', 'Hostname', 'Deliveries', 'Attempts', 'Last error'].map((h) => el('th', { scope: 'col', text: h })))),
    el('tbody', {}, rows));
  const pager = el('div', { class: 'pager' },
    params.get('cursor') ? el('button', { type: 'button', onclick: () => { const p = new URLSearchParams(params); p.delete('cursor'); go('events', p); } }, 'Newest') : null,
    data.next_cursor ? el('button', { type: 'button', onclick: () => { const p = new URLSearchParams(params); p.set('cursor', data.next_cursor); go('events', p); } }, 'Older') : null);
  return [el('h2', { text: 'Events' }), eventFilters('events', params, ['status']), table, pager];
}

// ---- one event ------------------------------------------------------------------------------------

async function replayOne(id, handler, out) {
  out.textContent = 'Asking…';
  try {
    const r = await api('/api/events/' + encodeURIComponent(id) + '/replay' + (handler ? '?handler=' + encodeURIComponent(handler) : ''), 'POST');
    out.textContent = 'Replay requested: ' + r.deliveries + (r.deliveries === 1 ? ' delivery' : ' deliveries') + ' will run again.';
    out.className = '';
  } catch (e) {
    if (e instanceof Unauthorized) return signIn(e.message);
    out.textContent = 'Replay refused: ' + e.message;
    out.className = 'error';
  }
}

async function eventView(params) {
  const id = params.get('id') || '';
  const e = await api('/api/events/' + encodeURIComponent(id));
  const out = el('p', { role: 'status', id: 'replay-result' });
  const deliveries = el('table', { class: 'responsive', id: 'deliveries' },
    el('thead', {}, el('tr', {}, ['Handler', 'Status', 'Attempts', 'Next attempt', 'Error', ''].map((h) => el('th', { scope: 'col', text: h })))),
    el('tbody', {}, e.deliveries.map((d) => el('tr', {},
      el('td', { 'data-label': 'Handler', text: d.handler }),
      el('td', { 'data-label': 'Status' }, badge(d.status)),
      el('td', { 'data-label': 'Attempts', class: 'num', text: d.attempts }),
      el('td', { 'data-label': 'Next attempt', text: iso(d.next_at) }),
      el('td', { 'data-label': 'Error' }, d.error ? el('div', { class: 'error', text: d.error }) : null,
        d.traceback ? el('details', {}, el('summary', {}, 'Traceback'), el('pre', { text: d.traceback })) : null),
      el('td', {}, el('button', { type: 'button', 'aria-label': 'Replay ' + d.handler, onclick: () => replayOne(e.id, d.handler, out) }, 'Replay'))))));
  const facts = el('dl', {}, ...[['Id', e.id], ['Source', e.source], ['Provider', e.provider], ['Type', e.type],
    ['Provider type', e.provider_type], ['Hostname', e.hostname], ['Received', iso(e.received_at)], ['Occurred', iso(e.occurred_at)]]
    .filter(([, v]) => v).flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
  const ctx = e.context || {};
  const context = el('dl', {}, el('dt', { text: 'Previous' }), el('dd', { text: ctx.previous ? (ctx.previous.status || '') + (ctx.previous.expires_at ? ', expires ' + isoDate(ctx.previous.expires_at) : '') : 'none (first event of this certificate)' }),
    el('dt', { text: 'Stale' }), el('dd', { text: ctx.stale ? 'yes' : 'no' }),
    el('dt', { text: 'Repeats' }), el('dd', { text: ctx.repeats || 1 }));
  return [el('p', {}, el('a', { href: '#events', text: '← Events' })),
    el('h2', { text: e.type + (e.hostname ? ' — ' + e.hostname : '') }), facts,
    el('h3', { text: 'Deliveries' }), e.deliveries.length ? deliveries : el('p', { class: 'muted', text: 'No delivery recorded.' }),
    el('button', { type: 'button', onclick: () => replayOne(e.id, null, out) }, 'Replay failed deliveries'), out,
    el('h3', { text: 'Context' }), context, el('pre', { id: 'context', text: pretty(e.context) }),
    el('h3', { text: 'Canonical event' }), el('pre', { id: 'canonical', text: pretty(e.event) }),
    el('h3', { text: 'Provider body' }), el('pre', { id: 'body', text: pretty(e.body) })];
}

// ---- Dead letters -----------------------------------------------------------------------------------

async function dead(params) {
  const data = await api('/api/events?' + apiFilters(params, { status: 'dead', limit: '500' }));
  const groups = new Map();
  for (const e of data.events) {
    for (const d of e.deliveries) {
      if (d.status !== 'dead' || (params.get('handler') && d.handler !== params.get('handler'))) continue;
      const key = d.handler + '\u0000' + (d.error || '');
      if (!groups.has(key)) groups.set(key, { handler: d.handler, error: d.error || '', rows: [] });
      groups.get(key).rows.push({ e, d });
    }
  }
  const out = el('p', { role: 'status', id: 'replay-result' });
  const confirm = el('div', { class: 'confirm', hidden: true, role: 'region', 'aria-label': 'Confirm replay all' });
  const replayAll = el('button', { type: 'button', id: 'replay-all', onclick: async () => {
    const qs = apiFilters(params, {});
    try {
      const n = await api('/api/replay?' + qs + (qs ? '&' : '') + 'dry_run=1', 'POST');
      confirm.replaceChildren(el('p', { id: 'replay-count', text: 'Replay all will run ' + n.deliveries + (n.deliveries === 1 ? ' dead delivery' : ' dead deliveries') + ' again.' }),
        el('button', { type: 'button', id: 'replay-confirm', onclick: async () => {
          confirm.hidden = true;
          try {
            const r = await api('/api/replay' + (qs ? '?' + qs : ''), 'POST');
            out.textContent = 'Replay requested: ' + r.deliveries + ' deliveries will run again.';
            out.className = '';
          } catch (e) {
            if (e instanceof Unauthorized) return signIn(e.message);
            out.textContent = 'Replay refused: ' + e.message; out.className = 'error';
          }
          resume();
        } }, 'Replay ' + n.deliveries),
        ' ', el('button', { type: 'button', onclick: () => { confirm.hidden = true; resume(); } }, 'Cancel'));
      confirm.hidden = false;
      state.busy = true; // no refresh while the question is open
    } catch (e) {
      if (e instanceof Unauthorized) return signIn(e.message);
      out.textContent = 'Replay refused: ' + e.message; out.className = 'error';
    }
  } }, 'Replay all');
  const sections = [...groups.values()].sort((a, b) => b.rows.length - a.rows.length).map((g, i) => el('section', { 'aria-labelledby': 'g' + i },
    el('h3', { id: 'g' + i }, g.handler, el('span', { class: 'muted', text: ' — ' + g.rows.length + ' dead' })),
    el('p', { class: 'error', text: g.error }),
    el('table', { class: 'responsive dead' },
      el('thead', {}, el('tr', {}, ['Received', 'Type', 'Hostname', 'Attempts', ''].map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, g.rows.map(({ e, d }) => el('tr', { 'data-id': e.id },
        el('td', { 'data-label': 'Received', text: iso(e.received_at) }),
        el('td', { 'data-label': 'Type' }, el('a', { href: '#event?id=' + encodeURIComponent(e.id), text: e.type })),
        el('td', { 'data-label': 'Hostname', text: e.hostname || '' }),
        el('td', { 'data-label': 'Attempts', class: 'num', text: d.attempts }),
        el('td', {}, el('button', { type: 'button', 'aria-label': 'Replay ' + e.id + ' to ' + d.handler, onclick: () => replayOne(e.id, d.handler, out) }, 'Replay'))))))));
  return [el('h2', { text: 'Dead letters' }), eventFilters('dead', params, ['handler']),
    el('p', {}, replayAll, ' ', el('span', { class: 'muted', text: 'runs again every dead delivery the filters match' })), confirm, out,
    sections.length ? sections : el('p', { class: 'muted', id: 'no-dead', text: 'No dead delivery.' })];
}

// ---- the page -------------------------------------------------------------------------------------

const views = { certificates, events, dead, event: eventView };

function resume() { state.busy = false; }

function signIn(message) {
  clearTimeout(state.timer);
  document.getElementById('view').replaceChildren();
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = state.token ? message : '';
  document.getElementById('token').focus();
}

async function render(refresh) {
  clearTimeout(state.timer);
  const { name, params } = route();
  const view = views[name] ? name : 'certificates';
  for (const a of document.querySelectorAll('nav a')) {
    if (a.id === 'nav-' + (view === 'event' ? 'events' : view)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!(refresh && state.busy)) {
    try {
      const first = early && await early;
      early = null;
      if (first instanceof Unauthorized) throw first; // the token, before any view asks again
      const content = await views[view](params, first instanceof Error ? null : first);
      const root = document.getElementById('view');
      const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest('form.filters');
      if (!(refresh && focused)) { // never redraw under a filter being typed in
        root.replaceChildren(...[content].flat(3).filter(Boolean));
        sizeBars(root);
        root.dataset.route = location.hash; // what it shows (the browser specs wait for it)
        if (!refresh) performance.mark('console-drawn'); // (tests/bench/console.lua)
      }
      document.getElementById('login').hidden = true;
      document.getElementById('signout').hidden = !state.token;
      notice('');
      document.getElementById('updated').textContent = 'Updated ' + new Date().toLocaleTimeString();
    } catch (e) {
      if (e instanceof Unauthorized) return signIn(e.message);
      notice(e.message);
    }
  }
  if (view !== 'event') state.timer = setTimeout(() => render(true), REFRESH_MS);
}

// The script is deferred: the DOM is there when it runs.
{
  document.getElementById('login').addEventListener('submit', (e) => {
    e.preventDefault();
    state.token = document.getElementById('token').value.trim();
    sessionStorage.setItem('certhook.token', state.token);
    document.getElementById('token').value = '';
    render(false);
  });
  document.getElementById('signout').addEventListener('click', () => {
    state.token = '';
    sessionStorage.removeItem('certhook.token');
    signIn('');
  });
  window.addEventListener('hashchange', () => { state.busy = false; render(false); });
  render(false);
}
