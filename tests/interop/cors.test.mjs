// A browser app on another origin calling the hub with `fetch` (Pocket's HTTP transport and
// SyncKit's auth endpoints: JSON bodies and a bearer token, so every call is preflighted), in
// headless Chromium: it works from an origin in server.allowed_origins and is blocked from any
// other.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { chromium } from 'playwright-core';
import { startHub } from './hub.mjs';

let hub;
let browser;
const pages = [];

// A server of one blank page: the app's origin.
function appServer() {
  return new Promise((ok) => {
    const srv = http.createServer((_, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<!doctype html><title>app</title>');
    });
    srv.listen(0, '127.0.0.1', () => {
      pages.push(srv);
      ok(`http://127.0.0.1:${srv.address().port}`);
    });
  });
}

let allowed;
let foreign;

before(async () => {
  allowed = await appServer();
  foreign = await appServer();
  hub = await startHub({
    SYNCHUB_AUTH_REQUIRED: 'true',
    SYNCHUB_AUTH_JWT_SECRET: 'cors-test-secret-of-at-least-32-bytes',
    SYNCHUB_AUTH_DEV_LOGIN: 'true',
    SYNCHUB_SERVER_ALLOWED_ORIGINS: allowed,
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  await browser?.close();
  await hub?.stop();
  for (const srv of pages) srv.close();
});

// What an app does: log in, ask who it is, push a document, pull it back, refresh its tokens.
// Runs in the page; every step reports its status and body, or the error `fetch` threw.
async function appSession(hubUrl) {
  const call = async (path, init) => {
    try {
      const res = await fetch(hubUrl + path, init);
      return { status: res.status, body: await res.json() };
    } catch (e) {
      return { error: String(e) };
    }
  };
  const json = (body, token) => ({
    method: 'POST',
    headers: {
      'Content-Type': 'application/json',
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify(body),
  });
  const login = await call('/auth/login', json({ email: 'ada@app.test', password: 'x' }));
  const token = login.body?.accessToken;
  const me = await call('/auth/me', { headers: { Authorization: `Bearer ${token}` } });
  const push = await call('/sync/push', json({
    type: 'push', id: 'push-1', timestamp: Date.now(), collection: 'todos',
    changes: [{ operation: 'insert', documentId: 'from-the-page', document: { title: 'hi' },
      timestamp: Date.now(), sequence: 0 }],
    checkpoint: {},
  }, token));
  const pull = await call('/sync/pull', json({
    type: 'pull', id: 'pull-1', timestamp: Date.now(), collections: ['todos'],
    checkpoint: { global: 0 },
  }, token));
  const refresh = await call('/auth/refresh', json({ refreshToken: login.body?.refreshToken }));
  return { login, me, push, pull, refresh };
}

async function runFrom(origin) {
  const page = await browser.newPage();
  const failures = [];
  page.on('console', (m) => { if (m.type() === 'error') failures.push(m.text()); });
  await page.goto(origin);
  const result = await page.evaluate(appSession, hub.http);
  await page.close();
  return { result, failures };
}

test('a page of an allowed origin logs in, syncs and refreshes over fetch', async () => {
  const { result, failures } = await runFrom(allowed);
  assert.equal(result.login.status, 200, JSON.stringify(result.login));
  assert.equal(result.me.status, 200, JSON.stringify(result.me));
  assert.equal(result.me.body.userId, 'ada@app.test');
  assert.equal(result.push.status, 200, JSON.stringify(result.push));
  assert.equal(result.push.body.type, 'push-response');
  assert.equal(result.pull.status, 200, JSON.stringify(result.pull));
  const ids = result.pull.body.changes.todos.map((c) => c.documentId);
  assert.deepEqual(ids, ['from-the-page']);
  assert.equal(result.refresh.status, 200, JSON.stringify(result.refresh));
  assert.ok(result.refresh.body.accessToken);
  assert.deepEqual(failures, []);
});

test('a page of another origin is blocked by the browser and writes nothing', async () => {
  const { result, failures } = await runFrom(foreign);
  for (const step of ['login', 'me', 'push', 'pull', 'refresh']) {
    assert.match(result[step].error ?? '', /Failed to fetch/, `${step}: ${JSON.stringify(result[step])}`);
  }
  assert.ok(failures.some((f) => /CORS/.test(f)), failures.join('\n'));
  // The hub holds only what the allowed page wrote (asked without a browser: no Origin).
  const login = await (await fetch(`${hub.http}/auth/login`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email: 'probe@app.test', password: 'x' }),
  })).json();
  const pull = await (await fetch(`${hub.http}/sync/pull`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${login.accessToken}` },
    body: JSON.stringify({ type: 'pull', id: 'probe', timestamp: Date.now(), collections: ['todos'],
      checkpoint: { global: 0 } }),
  })).json();
  assert.equal(pull.changes.todos.length, 1);
});
