// The synchub dashboard. Everything shown comes from the hub's admin endpoints; text from the
// hub is only ever set as textContent, never parsed as markup.
'use strict';

const TOKEN_KEY = 'synchub.admin-token';
const KEEP = 600;
const KINDS = ['session', 'room', 'directory', 'durability'];
const COLOURS = ['#4fa3ff', '#f5a524', '#3ecf8e', '#e5484d', '#a78bfa'];

const $ = (id) => document.getElementById(id);
const state = {
  // The dialects the hub speaks, by the names its figures are keyed by (`dialects` in
  // /stats and /stats/history): a hub with another dialect needs no other page.
  dialects: [],
  samples: [],
  sort: { key: 'writes_per_s', down: true },
  rooms: [],
  room: null,
  roomTimer: null,
  stream: null,
};

// The token: from the URL fragment (`#token=…`, never sent to any server), else this tab's
// storage. The fragment is taken out of the address bar once read.
function takeToken() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function headers() {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { Authorization: `Bearer ${t}` } : {};
}

class Unauthorized extends Error {}

async function api(path, init = {}) {
  const res = await fetch(path, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
  if (res.status === 401) throw new Unauthorized();
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `${res.status}`);
  return body;
}

// ---- formatting ----

function num(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function rate(n) {
  if (!n) return '0';
  return n >= 100 ? num(n) : num(n, 1);
}

function bytes(n) {
  if (!n) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${num(n, i ? 1 : 0)} ${units[i]}`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  const s = Math.floor(ms / 1000);
  if (s < 1) return `${ms} ms`;
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function fillBody(table, rows) {
  table.querySelector('tbody').replaceChildren(...rows);
}

function cell(text, cls) {
  return el('td', cls ? { class: cls } : {}, text);
}

function facts(dl, pairs) {
  const items = [];
  for (const [k, v] of pairs) items.push(el('dt', {}, k), el('dd', {}, v));
  dl.replaceChildren(...items);
}

// ---- charts: inline SVG, one polyline per series ----

const SVG = 'http://www.w3.org/2000/svg';
const chartList = (dialects) => [
  { id: 'sessions', title: 'Sessions', series: dialects.map((d) => [d, (s) => s.sessions[d]]) },
  { id: 'changes', title: 'Changes/s', series: dialects.map((d) => [d, (s) => s.changes_per_s[d]]) },
  { id: 'connects', title: 'Connects and disconnects/s', series: [
    ['connects', (s) => s.connects_per_s], ['disconnects', (s) => s.disconnects_per_s]] },
  { id: 'frames', title: 'Frames/s', series: [
    ['in', (s) => s.frames_in_per_s], ['out', (s) => s.frames_out_per_s]] },
  { id: 'messages', title: 'Actor messages/s', series: KINDS.map((k) => [k, (s) => s.messages_per_s[k]]) },
  { id: 'backlog', title: 'Mailbox backlog', series: KINDS.map((k) => [k, (s) => s.backlog[k]]) },
  { id: 'flush', title: 'Flush latency (ms)', series: [['mean', (s) => s.flush_latency_ms_mean]] },
  { id: 'batch', title: 'Commits per flush', series: [['mean', (s) => s.flush_batch_mean]] },
];
let CHARTS = chartList(state.dialects);

// Takes the hub's list of dialects; the charts with a line per dialect are drawn anew when it
// differs from the one they have.
function useDialects(names) {
  if (!Array.isArray(names) || names.join() === state.dialects.join()) return;
  state.dialects = names;
  CHARTS = chartList(names);
  buildCharts();
  drawCharts();
}

function buildCharts() {
  const root = $('charts');
  root.replaceChildren();
  for (const c of CHARTS) {
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', `0 0 ${KEEP} 100`);
    svg.setAttribute('preserveAspectRatio', 'none');
    c.lines = c.series.map((_, i) => {
      const line = document.createElementNS(SVG, 'polyline');
      line.setAttribute('stroke', COLOURS[i % COLOURS.length]);
      line.setAttribute('fill', 'none');
      line.setAttribute('stroke-width', '1.5');
      line.setAttribute('vector-effect', 'non-scaling-stroke');
      svg.append(line);
      return line;
    });
    c.max = el('span', { class: 'muted' });
    const legend = el('div', { class: 'legend' }, ...c.series.map(([name], i) => {
      const dot = el('i');
      dot.style.background = COLOURS[i % COLOURS.length];
      return el('span', {}, dot, name);
    }));
    root.append(el('figure', { 'data-chart': c.id },
      el('figcaption', {}, c.title, ' ', c.max), svg, legend));
  }
}

function drawCharts() {
  const samples = state.samples;
  for (const c of CHARTS) {
    let max = 0;
    const values = c.series.map(([, pick]) => samples.map((s) => {
      const v = Number(pick(s)) || 0;
      if (v > max) max = v;
      return v;
    }));
    const top = max > 0 ? max * 1.1 : 1;
    const offset = KEEP - samples.length;
    values.forEach((vs, i) => {
      const pts = vs.map((v, x) => `${x + offset},${(100 - (v / top) * 100).toFixed(2)}`);
      c.lines[i].setAttribute('points', pts.join(' '));
    });
    c.max.textContent = `max ${rate(max)}`;
  }
}

function addSample(s) {
  if (!s) return;
  const last = state.samples[state.samples.length - 1];
  if (last && last.t >= s.t) return;
  state.samples.push(s);
  if (state.samples.length > KEEP) state.samples.splice(0, state.samples.length - KEEP);
  drawCharts();
}

// ---- the figures ----

function card(id, label, value, detail) {
  return el('div', { class: 'card', id: `card-${id}` },
    el('div', { class: 'label' }, label),
    el('div', { class: 'value', 'data-value': id }, value),
    el('div', { class: 'detail' }, detail || ''));
}

function render(f) {
  useDialects(f.dialects);
  const dialects = state.dialects;
  const r = f.rates;
  $('node').textContent = `node ${f.node_id} · v${f.version} · up ${duration(f.uptime_s * 1000)}`;
  const storageOk = f.health.storage === 'ok';
  const clusterOk = f.health.cluster === null || f.health.cluster === 'ok';
  const health = $('health');
  health.textContent = storageOk && clusterOk ? 'healthy'
    : `degraded: storage ${f.health.storage}, cluster ${f.health.cluster}`;
  health.className = `pill ${storageOk && clusterOk ? 'good' : 'bad'}`;

  const limitsTotal = r ? Object.values(r.limits_per_s).reduce((a, b) => a + b, 0) : 0;
  const changes = r ? dialects.reduce((a, d) => a + (r.changes_per_s[d] || 0), 0) : 0;
  $('cards').replaceChildren(
    card('sessions', 'Sessions', num(f.sessions.total),
      dialects.map((d) => `${d} ${num(f.sessions[d])}`).join(' · ')),
    card('connects', 'Connects/s', rate(r && r.connects_per_s),
      `disconnects/s ${rate(r && r.disconnects_per_s)}`),
    card('changes', 'Changes/s', rate(changes),
      r ? dialects.map((d) => `${d} ${rate(r.changes_per_s[d])}`).join(' · ') : ''),
    card('rooms', 'Live rooms', num(f.rooms.active),
      dialects.map((d) => `${d} ${num(f.rooms.by_namespace[d] || 0)}`).join(' · ')),
    card('frames', 'Frames in/s', rate(r && r.frames_in_per_s), `out/s ${rate(r && r.frames_out_per_s)}`),
    card('limits', 'Limits hit/s', rate(limitsTotal),
      `${num(Object.values(f.limits).reduce((a, b) => a + b, 0))} in all`),
    card('flush', 'Flush latency', `${num(r ? r.flush_latency_ms_mean : 0, 2)} ms`,
      `${num(r ? r.flush_batch_mean : 0, 1)} commits per flush`),
  );

  state.rooms = f.rooms.list.map((x) => ({ ...x, name: `${x.namespace}/${x.room}` }));
  $('rooms-count').textContent = `(${num(f.rooms.active)} live)`;
  drawRooms();

  fillBody($('actors'), KINDS.map((k) => {
    const a = f.actors[k];
    return el('tr', { 'data-kind': k }, cell(k), cell(num(a.count), 'num'),
      cell(rate(a.message_rate), 'num'), cell(num(a.mailbox_backlog), 'num'));
  }));

  const s = f.storage;
  facts($('storage'), [
    ['durability', s.durability],
    ['flushes', `${num(s.flushes)} (${rate(r && r.flushes_per_s)}/s)`],
    ['commits per flush', `${num(r ? r.flush_batch_mean : 0, 1)} now · ${num(s.batch_size_mean, 1)} overall`],
    ['changes per flush', num(s.changes_per_flush_mean, 1)],
    ['flush latency', `${num(r ? r.flush_latency_ms_mean : 0, 2)} ms now · ${num(s.flush_latency_ms_mean, 2)} ms overall`],
    ['flush errors', num(s.flush_errors)],
    ['on disk', bytes(s.size_on_disk_bytes)],
  ]);

  fillBody($('limits'), Object.entries(f.limits).map(([k, n]) => el('tr', n ? { class: 'hot' } : {},
    cell(k), cell(num(n), 'num'), cell(rate(r && r.limits_per_s[k]), 'num'))));

  drawCluster(f.cluster);
  addSample(r);
}

function drawRooms() {
  const { key, down } = state.sort;
  const rows = [...state.rooms].sort((a, b) => {
    const x = a[key] ?? -1;
    const y = b[key] ?? -1;
    const c = typeof x === 'string' ? x.localeCompare(y) : x - y;
    return down ? -c : c;
  });
  for (const th of document.querySelectorAll('#rooms th')) {
    th.classList.toggle('sorted', th.dataset.key === key);
    th.classList.toggle('down', th.dataset.key === key && down);
  }
  fillBody($('rooms'), rows.map((x) => el('tr', {
    'data-room': x.name,
    class: state.room === x.name ? 'open' : '',
    onclick: () => openRoom(x.namespace, x.room),
  }, cell(x.name), cell(num(x.sessions), 'num'), cell(rate(x.writes_per_s), 'num'),
  cell(num(x.seq), 'num'), cell(`${duration(x.idle_ms)} ago`, 'num'), cell(num(x.durable_lag), 'num'))));
}

function drawCluster(c) {
  const root = $('cluster');
  if (!c) {
    root.replaceChildren(el('p', { class: 'muted' }, 'Single node: no cluster configured.'));
    return;
  }
  const dl = el('dl', { class: 'facts' });
  facts(dl, [
    ['Redis', c.redis],
    ['epoch', c.epoch || '–'],
    ['bridge', c.healthy ? 'ok' : 'stuck'],
    ['last echo', c.last_echo_ms_ago === null ? '–' : `${duration(c.last_echo_ms_ago)} ago`],
    ['gaps repaired', num(c.gaps_repaired)],
    ['catch-ups', num(c.catch_ups)],
    ['Redis round trips per change', num(c.redis_round_trips_per_change, 2)],
  ]);
  const peers = el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'peer'), el('th', {}, 'url'),
    el('th', { class: 'num' }, 'last heard'))), el('tbody', {}, ...c.peers.map((p) => el('tr', {},
    cell(p.node_id), cell(p.url), cell(`${duration(p.last_heard_ms_ago)} ago`, 'num')))));
  const behind = c.rooms.filter((x) => x.lag);
  const lag = el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'room'),
    el('th', { class: 'num' }, 'sequence'), el('th', { class: 'num' }, 'in Redis'),
    el('th', { class: 'num' }, 'lag'))), el('tbody', {}, ...c.rooms.slice(0, 50).map((x) => el('tr',
    x.lag ? { class: 'hot' } : {}, cell(x.room), cell(num(x.seq), 'num'), cell(num(x.redis_seq), 'num'),
    cell(num(x.lag), 'num')))));
  root.replaceChildren(dl, el('h3', {}, `Peers (${c.peers.length})`), peers,
    el('h3', {}, `Replication lag (${behind.length} rooms behind)`), lag);
}

// ---- a room's detail ----

async function openRoom(ns, room) {
  state.room = `${ns}/${room}`;
  $('room').hidden = false;
  $('room-name').textContent = state.room;
  drawRooms();
  clearInterval(state.roomTimer);
  await loadRoom();
  state.roomTimer = setInterval(loadRoom, 3000);
}

async function loadRoom() {
  if (!state.room) return;
  const name = state.room;
  let d;
  try {
    d = await api(`/stats/rooms/${name}?detail=true&nodes=true`);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin();
    facts($('room-facts'), [['error', e.message]]);
    return;
  }
  if (state.room !== name) return;
  facts($('room-facts'), [
    ['sequence', num(d.seq)],
    ['durable', num(d.durable_seq)],
    ['digest', d.digest],
    ['records', num(d.records)],
    ['log entries', num(d.log_len)],
    ['sessions', num(d.sessions)],
    ['writes/s', rate(d.writes_per_s)],
    ['live', d.live ? 'yes' : 'no (at rest)'],
  ]);
  const here = { node_id: `${d.node_id || 'this node'}`, seq: d.seq, durable_seq: d.durable_seq,
    digest: d.digest, sessions: d.sessions };
  const nodes = [here, ...(d.nodes || [])];
  const redis = d.cluster && d.cluster.redis_seq !== undefined
    ? [el('tr', { class: 'muted' }, cell('Redis counter'), cell(num(d.cluster.redis_seq), 'num'),
      cell(''), cell(''), cell(''))] : [];
  fillBody($('room-nodes'), [...nodes.map((n) => el('tr', {}, cell(n.node_id),
    cell(n.error ? n.error : num(n.seq), 'num'), cell(num(n.durable_seq), 'num'),
    cell(n.digest || '–', 'mono'), cell(num(n.sessions), 'num'))), ...redis]);
  fillBody($('room-members'), (d.members || []).map((m) => el('tr', {}, cell(m.id, 'num'),
    cell(m.dialect), cell(m.user || '–'), cell(bytes(m.bytes_in), 'num'), cell(bytes(m.bytes_out), 'num'),
    cell(bytes(m.bytes_queued), 'num'), cell(duration(m.lag_ms), 'num'))));
  const recent = Array.isArray(d.recent) ? d.recent : [];
  fillBody($('room-recent'), [...recent].reverse().map((c) => {
    const text = JSON.stringify(c.change);
    return el('tr', {}, cell(num(c.seq), 'num'), cell(c.stream || '–'), cell(c.key),
      cell(text.length > 160 ? `${text.slice(0, 160)}…` : text, 'mono'));
  }));
}

function closeRoom() {
  state.room = null;
  clearInterval(state.roomTimer);
  $('room').hidden = true;
  drawRooms();
}

// ---- sessions (admin actions) ----

// Lists the sessions; answers the list, or nothing when it could not be read.
async function loadSessions() {
  let body;
  try {
    body = await api('/admin/sessions');
  } catch (e) {
    if (e instanceof Unauthorized) showLogin();
    return undefined;
  }
  $('sessions').hidden = false;
  $('sessions-at').textContent = `(${body.sessions.length} as of ${new Date().toLocaleTimeString()})`;
  fillBody($('sessions'), body.sessions.map((s) => el('tr', { 'data-session': s.id },
    cell(s.id, 'num'), cell(s.dialect), cell(s.user || '–'), cell(s.rooms.join(', ')),
    cell(bytes(s.bytes_in), 'num'), cell(bytes(s.bytes_out), 'num'), cell(bytes(s.bytes_queued), 'num'),
    cell(duration(s.lag_ms), 'num'),
    el('td', {}, el('button', { type: 'button', onclick: () => closeSession(s.id) }, 'close')))));
  return body.sessions;
}

async function closeSession(id) {
  if (!confirm(`Close session ${id}? Its client will reconnect.`)) return;
  try {
    await api(`/admin/sessions/${id}`, { method: 'DELETE' });
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin();
  }
  // The hub answers once the close is under way; the session leaves the list a moment later,
  // when its close frame is out. List again until it has, so the page does not show it open.
  for (let tries = 0; tries < 50; tries++) {
    const sessions = await loadSessions();
    if (!sessions || !sessions.some((s) => s.id === id)) return;
    await new Promise((ok) => setTimeout(ok, 100));
  }
}

// ---- the live feed: /stats/stream read with fetch, so the token goes in a header ----

async function follow() {
  const ctrl = new AbortController();
  state.stream = ctrl;
  for (;;) {
    try {
      const res = await fetch('/stats/stream', { headers: headers(), signal: ctrl.signal });
      if (res.status === 401) return showLogin();
      if (!res.ok || !res.body) throw new Error(`${res.status}`);
      $('feed').textContent = 'live';
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const event = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = event.split('\n').filter((l) => l.startsWith('data: '))
            .map((l) => l.slice(6)).join('\n');
          if (data) render(JSON.parse(data));
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
    }
    $('feed').textContent = 'reconnecting…';
    await new Promise((ok) => setTimeout(ok, 2000));
    if (ctrl.signal.aborted) return;
  }
}

// ---- login ----

function showLogin(message) {
  if (state.stream) state.stream.abort();
  state.stream = null;
  closeRoom();
  $('main').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('node').textContent = '';
  $('health').textContent = '';
  $('health').className = 'pill';
  $('feed').textContent = '';
  $('login-error').textContent = message
    || (sessionStorage.getItem(TOKEN_KEY) ? 'That token was not accepted.' : '');
}

async function start() {
  if (state.stream) state.stream.abort();
  state.stream = null;
  let history;
  try {
    history = await api('/stats/history');
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin();
    return showLogin(`The hub did not answer: ${e.message}`);
  }
  $('login').hidden = true;
  $('main').hidden = false;
  $('logout').hidden = !sessionStorage.getItem(TOKEN_KEY);
  state.samples = history.samples.slice(-KEEP);
  useDialects(history.dialects);
  drawCharts();
  follow();
}

function init() {
  takeToken();
  buildCharts();
  for (const th of document.querySelectorAll('#rooms th')) {
    th.addEventListener('click', () => {
      const key = th.dataset.key;
      state.sort = { key, down: state.sort.key === key ? !state.sort.down : key !== 'name' };
      drawRooms();
    });
  }
  $('room-close').addEventListener('click', closeRoom);
  $('sessions-load').addEventListener('click', loadSessions);
  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('');
  });
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    $('token').value = '';
    start();
  });
  window.addEventListener('hashchange', () => {
    if (/token=/.test(location.hash)) {
      takeToken();
      start();
    }
  });
  start();
}

init();
