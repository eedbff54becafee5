/*
 * The sluice dashboard: polls GET /stats every 2 s and draws it. /stats gives cumulative
 * counters and histograms only; this page keeps the last 5 minutes of polls in a ring and
 * computes every rate, ratio and percentile from differences of two polls. Gateway data is
 * written with textContent only, never parsed as HTML.
 */
'use strict';

const POLL_MS = 2000;
const TIMEOUT_MS = 4000;
const RING_MS = 5 * 60 * 1000;
const TABLE_WINDOW_MS = 60 * 1000;
const TOKEN_KEY = 'sluice.admin.token';
const CAUSES = [
  ['connectivity', 'network and backend reachability'],
  ['routing', 'routing errors'],
  ['auth', 'authentication and authorization'],
  ['rate_limit', 'rate limits and traffic spikes'],
  ['latency', 'timeouts and latency'],
  ['resources', 'crash and resource exhaustion'],
];
const SEV_RANK = { critical: 0, warning: 1, info: 2 };
/* Line colours, each at least 4.5:1 on white. */
const ERR_SERIES = [
  ['connectivity', '#b3261e'], ['routing', '#6a1b9a'], ['auth', '#0b57d0'], ['rate_limit', '#8a5300'],
  ['latency', '#00695c'], ['resources', '#37474f'], ['upstream_5xx', '#c2185b'], ['other', '#5d4037'],
];

const $ = (id) => document.getElementById(id);
const ring = []; /* {t, pid, requests, errors, by_cause, buckets, routes, upstreams} per poll */
let bounds = [];
let token = sessionStorage.getItem(TOKEN_KEY) || '';
let lastOk = 0;
let downSince = 0;
let timer = 0;

/* ---- small helpers ---------------------------------------------------------------------- */

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function fmtNum(x, unit) {
  if (x === null || x === undefined || !isFinite(x)) return '—';
  const d = Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2;
  return x.toFixed(d) + (unit || '');
}

function fmtPct(part, whole) {
  if (!whole) return '—';
  return fmtNum((100 * part) / whole, '%');
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return '—';
  return ms >= 1000 ? fmtNum(ms / 1000, ' s') : fmtNum(ms, ' ms');
}

function fmtBytes(b) {
  if (b === null || b === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return fmtNum(b, ' ' + units[i]);
}

function fmtUptime(s) {
  if (s < 120) return s + ' s';
  if (s < 7200) return Math.floor(s / 60) + ' min';
  if (s < 172800) return Math.floor(s / 3600) + ' h';
  return Math.floor(s / 86400) + ' d';
}

/* The q-quantile of per-bucket counts with upper bounds `bounds` (null = +Inf), as Prometheus'
 * histogram_quantile: linear inside the bucket holding the rank. null when empty. */
function quantile(buckets, q) {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const finite = bounds.filter((b) => b !== null);
  const rank = q * total;
  let cum = 0;
  for (let i = 0; i < buckets.length; i++) {
    const before = cum;
    cum += buckets[i];
    if (buckets[i] > 0 && cum >= rank) {
      if (bounds[i] === null) return finite[finite.length - 1];
      const lo = i > 0 ? bounds[i - 1] : 0;
      return lo + (bounds[i] - lo) * ((rank - before) / buckets[i]);
    }
  }
  return finite[finite.length - 1];
}

function subBuckets(a, b) {
  return a.map((v, i) => Math.max(0, v - ((b && b[i]) || 0)));
}

/* The oldest poll no older than `ms` before the newest one (the base of a window). */
function baseOf(ms) {
  const now = ring[ring.length - 1];
  for (const s of ring) if (now.t - s.t <= ms) return s === now ? null : s;
  return null;
}

/* ---- charts: a few lines on a canvas, x = the last 5 minutes ------------------------------ */

function drawChart(canvas, series, opts) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300;
  const h = canvas.clientHeight || 150;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const padL = 46, padR = 8, padT = 8, padB = 20;
  /* The x axis grows with the history kept, from 1 minute up to the ring's 5. */
  const now = ring.length ? ring[ring.length - 1].t : Date.now();
  const span = Math.min(RING_MS, Math.max(60000, ring.length ? now - ring[0].t : 0));
  const x0 = now - span;
  let max = opts.min || 0;
  let points = 0;
  for (const s of series) for (const p of s.points) if (p.v !== null) { max = Math.max(max, p.v); points++; }
  max = niceMax(max);
  const X = (t) => padL + ((t - x0) / span) * (w - padL - padR);
  const Y = (v) => padT + (1 - v / max) * (h - padT - padB);
  g.font = '11px system-ui, sans-serif';
  g.fillStyle = '#4f5965';
  g.strokeStyle = '#e3e7ec';
  g.lineWidth = 1;
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  for (let i = 0; i <= 3; i++) {
    const v = (max * i) / 3;
    const y = Math.round(Y(v)) + 0.5;
    g.beginPath(); g.moveTo(padL, y); g.lineTo(w - padR, y); g.stroke();
    g.fillText(opts.fmt(v), padL - 4, y);
  }
  g.textAlign = 'center';
  g.textBaseline = 'alphabetic';
  const ago = (ms) => '-' + (ms >= 60000 ? +(ms / 60000).toFixed(1) + ' min' : Math.round(ms / 1000) + ' s');
  [[ago(span), x0], [ago(span / 2), x0 + span / 2], ['now', now]].forEach(([label, t], i) => {
    g.textAlign = i === 0 ? 'left' : i === 2 ? 'right' : 'center';
    g.fillText(label, X(t), h - 5);
  });
  g.lineWidth = 2;
  g.lineJoin = 'round';
  for (const s of series) {
    g.strokeStyle = s.color;
    g.beginPath();
    let pen = false;
    for (const p of s.points) {
      if (p.v === null || p.t < x0) { pen = false; continue; }
      if (pen) g.lineTo(X(p.t), Y(p.v)); else g.moveTo(X(p.t), Y(p.v));
      pen = true;
    }
    g.stroke();
    /* A point with no drawn neighbour would be invisible as a line: a dot. */
    g.fillStyle = s.color;
    s.points.forEach((p, i) => {
      const alone = (q) => !q || q.v === null || q.t < x0;
      if (p.v !== null && p.t >= x0 && alone(s.points[i - 1]) && alone(s.points[i + 1]))
        g.fillRect(X(p.t) - 2, Y(p.v) - 2, 4, 4);
    });
  }
  canvas.dataset.points = String(points);
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 1.5, 2, 3, 5, 7.5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function legend(ul, series) {
  ul.replaceChildren(...series.map((s) => {
    const sw = el('span', { class: 'swatch' });
    sw.style.background = s.color;
    return el('li', {}, sw, s.name);
  }));
}

/* One point per pair of successive polls. */
function pointsOf(f) {
  const out = [];
  for (let i = 1; i < ring.length; i++) out.push({ t: ring[i].t, v: f(ring[i], ring[i - 1]) });
  return out;
}

function drawCharts() {
  const rps = pointsOf((a, b) => (a.requests - b.requests) / ((a.t - b.t) / 1000));
  drawChart($('chart-rps'), [{ color: '#0b57d0', points: rps }], { fmt: (v) => fmtNum(v) });
  const last = rps.length ? rps[rps.length - 1].v : null;
  $('now-rps').textContent = 'Now: ' + fmtNum(last, ' req/s');

  const errSeries = ERR_SERIES.map(([name, color]) => ({
    name, color,
    points: pointsOf((a, b) => {
      const n = a.requests - b.requests;
      return n > 0 ? (100 * ((a.by_cause[name] || 0) - (b.by_cause[name] || 0))) / n : null;
    }),
  }));
  drawChart($('chart-err'), errSeries, { fmt: (v) => fmtNum(v, '%'), min: 1 });
  legend($('legend-err'), errSeries);
  const nowErr = errSeries
    .map((s) => [s.name, s.points.length ? s.points[s.points.length - 1].v : null])
    .filter(([, v]) => v);
  $('now-err').textContent = 'Now: ' + (nowErr.length
    ? nowErr.map(([n, v]) => n + ' ' + fmtNum(v, '%')).join(', ')
    : (last ? 'no errors' : 'no requests'));

  const lat = [0.5, 0.99].map((q, i) => ({
    name: q === 0.5 ? 'p50' : 'p99',
    color: i ? '#b3261e' : '#0b57d0',
    points: pointsOf((a, b) => quantile(subBuckets(a.buckets, b.buckets), q)),
  }));
  drawChart($('chart-lat'), lat, { fmt: (v) => fmtMs(v).replace(' ', ''), min: 1 });
  legend($('legend-lat'), lat);
  const lp = (s) => (s.points.length ? s.points[s.points.length - 1].v : null);
  $('now-lat').textContent = 'Now: p50 ' + fmtMs(lp(lat[0])) + ', p99 ' + fmtMs(lp(lat[1]));
}

/* ---- sections --------------------------------------------------------------------------- */

function whereText(w) {
  return Object.entries(w || {}).map(([k, v]) => k + ' ' + v).join(' · ');
}

function renderDoctor(doc) {
  const findings = (doc && doc.findings) || [];
  $('causes').replaceChildren(...CAUSES.map(([name, what]) => {
    const mine = findings.filter((f) => f.cause === name);
    const worst = mine.reduce((w, f) => (w === null || SEV_RANK[f.severity] < SEV_RANK[w] ? f.severity : w), null);
    const state = worst ? mine.length + ' finding' + (mine.length > 1 ? 's' : '') + ' · ' + worst : 'ok';
    return el('li', { class: worst ? 'sev-' + worst : 'ok', 'data-cause': name, title: what },
      el('span', { class: 'name', text: name }), el('span', { class: 'state', text: state }));
  }));
  if (!findings.length) {
    $('findings').replaceChildren(el('li', { class: 'none', text: 'No findings: the doctor sees nothing wrong.' }));
    return;
  }
  $('findings').replaceChildren(...findings.map((f) => el('li',
    { class: 'finding sev-' + f.severity, 'data-cause': f.cause, 'data-severity': f.severity },
    el('div', { class: 'head' },
      el('span', { class: 'badge sev-' + f.severity, text: f.severity }),
      el('span', { class: 'badge cause', text: f.cause }),
      el('span', { class: 'sub', text: 'since ' + clock(Date.parse(f.since)) })),
    el('p', { class: 'summary', text: f.summary }),
    whereText(f.where) ? el('p', { class: 'where', text: 'Where: ' + whereText(f.where) }) : '',
    el('p', { class: 'action', text: 'Do: ' + f.action }))));
}

function matchText(r) {
  const parts = [];
  if (r.hosts && r.hosts.length) parts.push(r.hosts.join(', '));
  parts.push(r.path);
  if (r.methods && r.methods.length) parts.push(r.methods.join(' '));
  if (r.headers && r.headers.length) parts.push(r.headers.join(', '));
  return parts.join(' · ');
}

function renderRoutes(st, base) {
  const dt = base ? (st.time_ms - base.t) / 1000 : 0;
  const rows = st.routes.map((r) => {
    const b = base && base.routes[r.name];
    const n = b ? r.requests - b.requests : 0;
    const errs = b ? r.errors - b.errors : 0;
    let p99 = null;
    if (r.latency && b && b.latency) p99 = quantile(subBuckets(r.latency.buckets, b.latency.buckets), 0.99);
    const limited = r.filters.some((f) => /^(rate_limit|quota)/.test(f)) || r.rate_limited > 0;
    const rl = limited && b && r.rate_limited !== null ? fmtPct(r.rate_limited - b.rate_limited, n) : '—';
    let cache = '—';
    if (r.cache && b && b.cache) {
      const hits = (r.cache.hit || 0) - (b.cache.hit || 0);
      const all = Object.keys(r.cache).reduce((a, k) => a + r.cache[k] - (b.cache[k] || 0), 0);
      cache = fmtPct(hits, all);
    }
    return el('tr', { 'data-route': r.name },
      el('td', { class: 'num', text: r.order }),
      el('th', { scope: 'row', text: r.name }),
      el('td', { class: 'wrap', text: matchText(r) }),
      el('td', { text: r.action }),
      el('td', { class: 'wrap', text: r.filters.length ? r.filters.join(', ') : '—' }),
      el('td', { class: 'num', text: dt > 0 ? fmtNum(n / dt) : '—' }),
      el('td', { class: 'num', text: b ? errs + ' (' + fmtPct(errs, n) + ')' : String(r.errors) }),
      el('td', { class: 'num', text: fmtMs(p99) }),
      el('td', { class: 'num', text: rl }),
      el('td', { class: 'num', text: cache }));
  });
  /* Requests that matched no route belong to no row above; they are still traffic. */
  const u = st.unrouted, ub = base && base.unrouted;
  if (u.requests > 0) {
    const n = ub ? u.requests - ub.requests : 0, errs = ub ? u.errors - ub.errors : 0;
    rows.push(el('tr', { 'data-route': '' },
      el('td', { class: 'num', text: '—' }), el('th', { scope: 'row', text: '(no route)' }),
      el('td', { class: 'wrap', text: 'requests that matched no route, or were refused before routing' }),
      el('td', { text: '—' }), el('td', { text: '—' }),
      el('td', { class: 'num', text: dt > 0 ? fmtNum(n / dt) : '—' }),
      el('td', { class: 'num', text: ub ? errs + ' (' + fmtPct(errs, n) + ')' : String(u.errors) }),
      el('td', { class: 'num', text: '—' }), el('td', { class: 'num', text: '—' }), el('td', { class: 'num', text: '—' })));
  }
  if (!st.routes.length) rows.unshift(el('tr', {}, el('td', { colspan: '10', text: 'No routes configured.' })));
  $('routes').tBodies[0].replaceChildren(...rows);
}

function healthBadge(t) {
  const cls = t.health === 'healthy' ? 'ok' : t.health === 'unchecked' ? 'muted' : 'bad';
  const out = [el('span', { class: 'badge ' + cls, text: t.health })];
  if (t.ejected) out.push(' ', el('span', { class: 'badge bad', text: 'ejected' }));
  if (!t.available && t.health === 'healthy' && !t.ejected) out.push(' ', el('span', { class: 'badge warn', text: 'unavailable' }));
  return out;
}

function renderUpstreams(st, base) {
  const dt = base ? (st.time_ms - base.t) / 1000 : 0;
  const blocks = st.upstreams.map((u) => {
    const b = base && base.upstreams[u.upstream];
    const tries = b ? u.tries - b.tries : 0;
    const errs = b ? u.errors - b.errors : 0;
    const p99 = b ? quantile(subBuckets(u.ttfb.buckets, b.ttfb.buckets), 0.99) : null;
    const id = 'up-' + u.upstream.replace(/[^A-Za-z0-9_-]/g, '_');
    const rows = u.targets.map((t) => {
      const circuitCls = t.circuit === 'closed' ? 'ok' : t.circuit === 'open' ? 'bad' : 'warn';
      const check = t.last_check ? clock(Date.parse(t.last_check.time)) + ' · ' + t.last_check.result : 'none';
      return el('tr', { 'data-target': t.address, 'data-health': t.health, 'data-circuit': t.circuit },
        el('th', { scope: 'row', text: t.address }),
        el('td', {}, ...healthBadge(t)),
        el('td', {}, el('span', { class: 'badge ' + circuitCls, text: t.circuit.replace('_', '-') })),
        el('td', { class: 'num', text: t.inflight }),
        el('td', { class: 'num', text: t.ewma_ms === null ? '—' : fmtMs(t.ewma_ms) }),
        el('td', { text: check }),
        el('td', { class: 'num', text: t.requests_1m === undefined ? '—' : t.requests_1m }),
        el('td', { class: 'num', text: t.errors_1m === undefined ? '—' : t.errors_1m + ' (' + fmtPct(t.errors_1m, t.requests_1m) + ')' }));
    });
    const head = el('tr', {}, ...['Target', 'Health', 'Circuit', 'In flight', 'EWMA', 'Last check', 'Tries 1 min', 'Failed 1 min']
      .map((h, i) => el('th', { scope: 'col', class: i >= 3 && i !== 5 ? 'num' : '', text: h })));
    return el('div', { class: 'upstream', 'data-upstream': u.upstream },
      el('h3', { id, text: u.upstream + ' ' }, el('span', { class: 'sub', text: u.balance })),
      el('p', { class: 'stats', text: 'Tries/s ' + (dt > 0 ? fmtNum(tries / dt) : '—') + ' · failed ' +
        fmtPct(errs, tries) + ' · p99 time to first byte ' + fmtMs(p99) + ' (last minute)' }),
      el('div', { class: 'scroll', role: 'region', 'aria-labelledby': id, tabindex: '0' },
        el('table', {}, el('caption', { text: 'Targets of ' + u.upstream }), el('thead', {}, head), el('tbody', {}, ...rows))));
  });
  if (!blocks.length) blocks.push(el('p', { text: 'No upstreams configured.' }));
  $('upstreams').replaceChildren(...blocks);
}

function gaugeRow(name, now, limit, fmt) {
  const cells = [el('th', { scope: 'row', text: name }), el('td', { class: 'num', text: fmt(now) }),
    el('td', { class: 'num', text: limit ? fmt(limit) : '—' })];
  if (limit) {
    const m = el('meter', { min: '0', max: String(limit), value: String(now), high: String(limit * 0.8),
      optimum: '0', 'aria-label': name + ' use', title: fmtPct(now, limit) });
    cells.push(el('td', {}, m, ' ' + fmtPct(now, limit)));
  } else {
    cells.push(el('td', { text: '—' }));
  }
  return el('tr', {}, ...cells);
}

function renderResources(st) {
  const c = st.connections, r = st.resources;
  const int = (v) => String(v);
  $('resources').tBodies[0].replaceChildren(
    gaugeRow('Connections', c.active + c.idle, c.max, int),
    gaugeRow('Open files', r.fds_open, r.fds_limit, int),
    gaugeRow('Memory (RSS)', r.rss_bytes, null, fmtBytes),
    gaugeRow('Workers', st.workers, null, int),
    gaugeRow('Connections accepted', c.accepted_total, null, int));
}

function renderConfig(st) {
  const c = st.config, lr = c.last_reload;
  const facts = [['File', c.path], ['Generation', String(c.generation)]];
  if (!lr) facts.push(['Last reload', 'none since start']);
  else facts.push(['Last reload', lr.result + ' at ' + new Date(Date.parse(lr.time)).toLocaleString()]);
  const dl = $('config');
  dl.replaceChildren();
  for (const [k, v] of facts) dl.append(el('dt', { text: k }), el('dd', { text: v }));
  if (lr && lr.errors && lr.errors.length) {
    dl.append(el('dt', { text: 'Reload errors' }), el('dd', {}, el('ul', {},
      ...lr.errors.map((e) => el('li', { text: (e.line ? e.file + ':' + e.line + ':' + e.col + ': ' : '') + e.message })))));
  }
}

/* ---- polling ---------------------------------------------------------------------------- */

function remember(st) {
  const routes = {}, upstreams = {};
  for (const r of st.routes) routes[r.name] = { requests: r.requests, errors: r.errors, rate_limited: r.rate_limited, cache: r.cache, latency: r.latency };
  for (const u of st.upstreams) upstreams[u.upstream] = { tries: u.tries, errors: u.errors, ttfb: u.ttfb };
  const prev = ring[ring.length - 1];
  /* A restarted gateway starts its counters again: old polls no longer subtract. */
  if (prev && (prev.pid !== st.pid || st.totals.requests < prev.requests)) ring.length = 0;
  ring.push({ t: st.time_ms, pid: st.pid, requests: st.totals.requests, errors: st.totals.errors,
    by_cause: st.totals.errors_by_cause, buckets: (st.totals.latency || st.totals.ttfb).buckets, routes, upstreams,
    unrouted: st.unrouted });
  while (ring.length > 2 && st.time_ms - ring[0].t > RING_MS + POLL_MS) ring.shift();
}

function render(st) {
  bounds = st.latency_buckets_ms;
  /* Whole-request latency when /stats has it (totals.latency), else the upstreams' TTFB. */
  $('lat-what').textContent = st.totals.latency ? '(whole request)' : '(upstream time to first byte)';
  remember(st);
  const base = baseOf(TABLE_WINDOW_MS);
  $('meta').textContent = 'v' + st.version + ' · pid ' + st.pid + ' · ' + st.workers + ' workers · up ' +
    fmtUptime(st.uptime_seconds) + ' · updated ' + clock(Date.now());
  renderDoctor(st.doctor);
  drawCharts();
  renderRoutes(st, base);
  renderUpstreams(st, base);
  renderResources(st);
  renderConfig(st);
}

function setDown(reason) {
  if (!downSince) downSince = Date.now();
  const b = $('banner');
  b.dataset.state = 'down';
  b.textContent = 'The gateway is not answering (' + reason + ') since ' + clock(downSince) + '. ' +
    (lastOk ? 'Showing the last data, received at ' + clock(lastOk) + '. ' : '') + 'Retrying every 2 s.';
  b.hidden = false;
  document.body.classList.add('stale');
}

function setUp() {
  downSince = 0;
  $('banner').hidden = true;
  $('banner').dataset.state = 'up';
  document.body.classList.remove('stale');
}

function askToken(message) {
  $('login').hidden = false;
  $('main').hidden = true;
  $('login-error').textContent = message || '';
  $('meta').textContent = 'Waiting for the admin token.';
  $('token').focus();
}

async function poll() {
  clearTimeout(timer);
  try {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    const res = await fetch('/stats', { headers: token ? { Authorization: 'Bearer ' + token } : {},
      cache: 'no-store', signal: ctl.signal });
    clearTimeout(t);
    if (res.status === 401) {
      const had = token !== '';
      token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      setUp();
      askToken(had ? 'That token was refused.' : '');
      return; /* polling resumes when a token is given */
    }
    if (!res.ok) throw new Error('HTTP ' + res.status);
    const st = await res.json();
    $('login').hidden = true;
    $('main').hidden = false;
    lastOk = Date.now();
    setUp();
    render(st);
  } catch (e) {
    setDown(e.name === 'AbortError' ? 'no answer within ' + TIMEOUT_MS / 1000 + ' s' : (e.message || 'network error'));
  }
  timer = setTimeout(poll, POLL_MS);
}

$('login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  token = $('token').value.trim();
  $('token').value = '';
  sessionStorage.setItem(TOKEN_KEY, token);
  poll();
});
window.addEventListener('resize', () => { if (ring.length) drawCharts(); });
poll();
