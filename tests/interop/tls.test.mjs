// The published SyncKit SDK over wss:// against a hub serving TLS itself (server.tls_cert /
// server.tls_key), with a self-signed certificate this test makes with openssl.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { startHub, until } from './hub.mjs';

let ca;
// The SDK opens `new WebSocket(url)`; its sockets trust the test's certificate through the
// options `ws` takes (node trusts only the system's roots otherwise, and NODE_EXTRA_CA_CERTS is
// read only when a process starts).
globalThis.WebSocket = class extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { ca });
  }
};
const quiet = process.env.SYNCKIT_VERBOSE ? null : console.log;
if (quiet) console.log = () => {};
const { SyncKit } = await import('@synckit-js/sdk');

let hub;
let certDir;
const clients = [];

before(async () => {
  certDir = mkdtempSync(join(tmpdir(), 'synchub-tls-'));
  const cert = join(certDir, 'cert.pem');
  const key = join(certDir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
    '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    // A certificate marked as a CA is refused as a server's own by rustls clients (the bench).
    '-addext', 'basicConstraints=critical,CA:FALSE'], { stdio: 'ignore' });
  hub = await startHub({ SYNCHUB_SERVER_TLS_CERT: cert, SYNCHUB_SERVER_TLS_KEY: key });
  ca = hub.ca;
});

after(async () => {
  for (const c of clients) c.dispose();
  await hub?.stop();
  if (certDir) rmSync(certDir, { recursive: true, force: true });
  if (quiet) console.log = quiet;
});

async function client(id) {
  const sk = new SyncKit({ serverUrl: hub.url, storage: 'memory', clientId: id });
  await sk.init();
  clients.push(sk);
  return sk;
}

test('two SDK clients sync a document over wss://', async () => {
  assert.match(hub.url, /^wss:\/\//);
  const alice = await client('tls-alice');
  const bob = await client('tls-bob');
  const docA = alice.document('tls-doc');
  const docB = bob.document('tls-doc');
  await docA.init();
  await docB.init();
  await until(() => alice.getSyncState('tls-doc')?.state === 'synced', 'alice subscribed');
  await until(() => bob.getSyncState('tls-doc')?.state === 'synced', 'bob subscribed');
  await docA.set('title', 'sealed');
  await until(() => docB.get().title === 'sealed', 'bob to see alice');
  await docB.set('done', true);
  await until(() => docA.get().done === true, 'alice to see bob');
  assert.equal(alice.getSyncState('tls-doc')?.pendingOperations ?? 0, 0);
});

test('the same port answers https:// and refuses a client that does not trust it', async () => {
  const get = (options) => new Promise((ok) => {
    const req = https.get(`${hub.https}/stats/rooms/synckit/tls-doc`, options, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => ok({ status: res.statusCode, body }));
    });
    req.once('error', (e) => ok({ error: e.code }));
  });
  const trusted = await get({ ca });
  assert.equal(trusted.status, 200);
  assert.equal(JSON.parse(trusted.body).records, 2);
  const untrusted = await get({});
  assert.equal(untrusted.error, 'DEPTH_ZERO_SELF_SIGNED_CERT');
});
