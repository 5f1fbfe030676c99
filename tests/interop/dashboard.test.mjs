// The dashboard in headless Chromium against a hub with live traffic in all three dialects.
// Writes screenshots to target/dashboard.png (or $DASHBOARD_SCREENSHOT) and, of a cluster,
// dashboard-cluster.png beside it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { chromium } from 'playwright-core';
import { startHub, startRedis, until } from './hub.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const TOKEN = 'dashboard-test-admin-token';
const SHOT = process.env.DASHBOARD_SCREENSHOT ?? join(root, 'target', 'dashboard.png');
// Seconds of traffic before the screenshot, so that its charts have something to show (the
// README's picture is taken with 150).
const WARMUP_S = Number(process.env.DASHBOARD_WARMUP_S ?? 0);

let hub;
let browser;
let nodeId;
const sockets = [];
const timers = [];

function open(url) {
  return new Promise((ok, fail) => {
    const ws = new WebSocket(url);
    ws.once('open', () => ok(ws));
    ws.once('error', fail);
    sockets.push(ws);
  });
}

// Sends `message(i)` every `ms` for as long as the test runs.
function every(ws, ms, message) {
  let i = 0;
  timers.push(setInterval(() => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message(i++)));
  }, ms));
}

before(async () => {
  hub = await startHub({ SYNCHUB_AUTH_ADMIN_TOKEN: TOKEN });
  nodeId = (await (await fetch(`${hub.http}/health`)).json()).node_id;
  const ws = hub.http.replace('http', 'ws');

  // Pocket: one writer and one reader (a pull subscribes it) in room `orders`.
  const writer = await open(`${ws}/sync?room=orders`);
  const reader = await open(`${ws}/sync?room=orders`);
  reader.send(JSON.stringify({ type: 'pull', id: 'r1', timestamp: Date.now(), collections: ['todos'],
    checkpoint: { global: 0 } }));
  every(writer, 120, (i) => ({ type: 'push', id: `p${i}`, timestamp: Date.now(), collection: 'todos',
    changes: [{ operation: 'update', documentId: `d${i % 5}`, document: { n: i }, timestamp: Date.now(),
      sequence: 0 }], checkpoint: {} }));

  // SyncKit (JSON framing): a document `doc-1`.
  const kit = await open(`${ws}/ws`);
  kit.send(JSON.stringify({ type: 'subscribe', id: 's1', timestamp: Date.now(), documentId: 'doc-1' }));
  every(kit, 150, (i) => ({ type: 'delta', id: `m${i}`, timestamp: Date.now(), documentId: 'doc-1',
    delta: { count: i } }));

  // Relay: channel `board`.
  const relay = await open(`${ws}/relay?channel=board`);
  every(relay, 150, (i) => ({ type: 'update', changes: [['cells', `r${i % 3}`, 'v', i, i + 1, 1, 'site-a', 1, 0]] }));

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  for (const t of timers) clearInterval(t);
  for (const ws of sockets) ws.terminate();
  await browser?.close();
  await hub?.stop();
});

const text = (page, selector) => page.locator(selector).first().innerText();
const number = (s) => Number(String(s).replace(/[^0-9.]/g, ''));

async function waitFor(page, check, what, ms = 15000) {
  await until(async () => {
    try {
      return await check();
    } catch {
      return false;
    }
  }, what, ms);
  return page;
}

test('the dashboard shows live rooms, sessions and rates, and drills into a room', async () => {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${hub.http}/dashboard#token=${TOKEN}`);
  await page.locator('#main').waitFor({ state: 'visible' });
  // The token left the address bar once read.
  assert.ok(!page.url().includes(TOKEN), page.url());

  for (const room of ['pocket/orders', 'synckit/doc-1', 'relay/board']) {
    await page.locator(`#rooms tr[data-room="${room}"]`).waitFor({ timeout: 15000 });
  }
  assert.match(await text(page, '#node'), new RegExp(nodeId));
  assert.equal(await text(page, '#health'), 'healthy');
  await waitFor(page, async () => (await text(page, '[data-value=sessions]')) === '4', 'four sessions');
  assert.match(await text(page, '#card-sessions .detail'), /pocket 2 · synckit 1 · relay 1/);

  // Rates appear and the figures move.
  await waitFor(page, async () => number(await text(page, '[data-value=changes]')) > 0, 'changes/s above 0');
  const seqCell = '#rooms tr[data-room="relay/board"] td:nth-child(4)';
  const before = number(await text(page, seqCell));
  await waitFor(page, async () => number(await text(page, seqCell)) > before, 'the relay room to advance');
  await waitFor(page, async () => number(await text(page, '#actors tr[data-kind=room] td:nth-child(3)')) > 0,
    'room actor messages/s');
  const points = await page.locator('figure[data-chart=changes] polyline').first().getAttribute('points');
  assert.ok(points && points.split(' ').length >= 1, 'the changes chart has points');

  // Sorting by sessions puts the Pocket room (two sessions) first.
  await page.locator('#rooms th[data-key=sessions]').click();
  await waitFor(page, async () => (await page.locator('#rooms tbody tr').first().getAttribute('data-room'))
    === 'pocket/orders', 'the busiest room first');

  // A room's drill-down: digest, members with their dialect, latest changes, this node.
  await page.locator('#rooms tr[data-room="relay/board"]').click();
  await page.locator('#room').waitFor({ state: 'visible' });
  await waitFor(page, async () => /[0-9a-f]{32}/.test(await text(page, '#room-facts')), 'the digest');
  await waitFor(page, async () => (await page.locator('#room-members tbody tr').count()) === 1, 'one member');
  assert.match(await text(page, '#room-members tbody tr'), /relay/);
  await waitFor(page, async () => (await page.locator('#room-recent tbody tr').count()) > 0, 'recent changes');
  assert.match(await text(page, '#room-nodes tbody tr'), new RegExp(nodeId));

  // Sessions: listed on request.
  await page.locator('#sessions-load').click();
  await waitFor(page, async () => (await page.locator('#sessions tbody tr').count()) === 4, 'four listed');

  await new Promise((ok) => setTimeout(ok, WARMUP_S * 1000));
  mkdirSync(dirname(SHOT), { recursive: true });
  await page.screenshot({ path: SHOT, fullPage: true });

  // One closed from the page: its client sees the policy close, the page one session less.
  const relaySocket = sockets[3];
  const closed = new Promise((ok) => relaySocket.once('close', (code) => ok(code)));
  page.once('dialog', (d) => d.accept());
  await page.locator('#sessions tbody tr', { hasText: 'relay' }).locator('button').click();
  assert.equal(await closed, 1008);
  await waitFor(page, async () => (await text(page, '[data-value=sessions]')) === '3', 'three sessions');
  await waitFor(page, async () => (await page.locator('#sessions tbody tr').count()) === 3, 'three listed');
  assert.deepEqual(errors, []);
  await page.close();
});

test('a wrong admin token shows nothing but the token form', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${hub.http}/dashboard#token=not-the-token`);
  await page.locator('#login').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#main').isVisible(), false);
  const body = await page.locator('body').innerText();
  for (const secret of ['orders', 'doc-1', 'board', nodeId, 'not-the-token', TOKEN]) {
    assert.ok(!body.includes(secret), `the page shows ${secret}: ${body}`);
  }
  assert.match(await text(page, '#login-error'), /not accepted/);
  // Without any token it asks for one, and the right one opens it.
  await page.evaluate(() => sessionStorage.clear());
  await page.goto(`${hub.http}/dashboard`);
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.locator('#token').fill(TOKEN);
  await page.locator('#login-form button').click();
  await page.locator('#rooms tr[data-room="pocket/orders"]').waitFor({ timeout: 15000 });
  await context.close();
});

test('in a cluster it shows Redis, the peers, and a room on every node', async () => {
  const redis = await startRedis();
  const env = { SYNCHUB_AUTH_ADMIN_TOKEN: TOKEN, SYNCHUB_CLUSTER_REDIS_URL: redis.url };
  const a = await startHub(env);
  const b = await startHub(env);
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  try {
    const idOf = async (hub) => (await (await fetch(`${hub.http}/health`)).json()).node_id;
    const bId = await idOf(b);
    const onA = await open(`${a.http.replace('http', 'ws')}/relay?channel=shared`);
    const onB = await open(`${b.http.replace('http', 'ws')}/relay?channel=shared`);
    for (let i = 0; i < 5; i += 1) {
      onB.send(JSON.stringify({ type: 'update', changes: [['t', `k${i}`, 'v', i, 1, 1, 'b', 1, 0]] }));
    }
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${a.http}/dashboard#token=${TOKEN}`);
    await waitFor(page, async () => (await text(page, '#cluster')).includes(bId), 'the peer listed');
    assert.match(await text(page, '#cluster'), /Redis\s+up/);
    assert.equal(await text(page, '#health'), 'healthy');
    await page.locator('#rooms tr[data-room="relay/shared"]').click();
    // This node, the peer, and the room's counter in Redis, all at the same sequence.
    await waitFor(page, async () => {
      const rows = await page.locator('#room-nodes tbody tr').allInnerTexts();
      return rows.length === 3 && rows[1].includes(bId) && rows.every((r) => /\b5\b/.test(r));
    }, 'the room on both nodes and in Redis');
    await page.screenshot({ path: join(dirname(SHOT), 'dashboard-cluster.png'), fullPage: true });
    assert.deepEqual(errors, []);
    onA.terminate();
    onB.terminate();
  } finally {
    await page.close();
    await a.stop();
    await b.stop();
    await redis.stop();
  }
});
