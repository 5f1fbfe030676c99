// The published SyncKit SDK (0.1.1) against synchub: two clients edit one document.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WebSocket } from 'ws';
import { startHub, until } from './hub.mjs';

// Node 20 has no global WebSocket; the SDK expects one.
globalThis.WebSocket = WebSocket;
// The SDK logs every step; keep the test output readable.
const quiet = process.env.SYNCKIT_VERBOSE ? null : console.log;
if (quiet) console.log = () => {};
const { SyncKit } = await import('@synckit-js/sdk');

let hub;
const clients = [];

before(async () => {
  hub = await startHub();
});

after(async () => {
  for (const c of clients) c.dispose();
  await hub?.stop();
  if (quiet) console.log = quiet;
});

async function client(id) {
  const sk = new SyncKit({ serverUrl: hub.url, storage: 'memory', clientId: id });
  await sk.init();
  clients.push(sk);
  return sk;
}

test('one SDK client sets fields, another receives them', async () => {
  const alice = await client('client-alice');
  const bob = await client('client-bob');
  const docA = alice.document('todo-1');
  const docB = bob.document('todo-1');
  await docA.init();
  await docB.init();
  await until(() => alice.getSyncState('todo-1')?.state === 'synced', 'alice subscribed');
  await until(() => bob.getSyncState('todo-1')?.state === 'synced', 'bob subscribed');

  // `set` resolves once synchub has acked the delta (the SDK waits up to 5 s for the ack).
  await docA.set('title', 'Buy milk');
  await docA.set('done', false);
  await until(() => docB.get().title === 'Buy milk' && docB.get().done === false, 'bob to see alice');

  await docB.set('done', true);
  await until(() => docA.get().done === true, 'alice to see bob');
  assert.equal(docA.get().title, 'Buy milk');
  assert.equal(docB.get().done, true);
  // No delta waits for an ack that never came.
  assert.equal(alice.getSyncState('todo-1')?.pendingOperations ?? 0, 0);
  assert.equal(bob.getSyncState('todo-1')?.pendingOperations ?? 0, 0);
});

test('the hub keeps what the SDK wrote', async () => {
  const res = await fetch(`${hub.http}/stats/rooms/synckit/todo-1`);
  assert.equal(res.status, 200);
  const room = await res.json();
  assert.equal(room.namespace, 'synckit');
  assert.ok(room.seq >= 3, `seq ${room.seq}`);
  assert.equal(room.records, 2);
});

// What the hub holds for a field, read the way a client reads it (sync_request over JSON).
async function hubValue(documentId, field) {
  const ws = new WebSocket(hub.url);
  await new Promise((ok, fail) => { ws.once('open', ok); ws.once('error', fail); });
  const reply = new Promise((ok) => ws.on('message', (m) => {
    const msg = JSON.parse(m.toString());
    if (msg.type === 'sync_response') ok(msg);
  }));
  ws.send(JSON.stringify({ type: 'sync_request', id: 'probe', documentId, timestamp: Date.now() }));
  const msg = await reply;
  ws.close();
  return msg.state[field];
}

test('clients whose ids sort after "server" converge on the hub\'s value', async () => {
  // The SDK breaks ties between its own write and the hub's by client id; ids above "server"
  // once kept their own value for ever.
  const alice = await client('zz-alice');
  const bob = await client('zz-bob');
  const docA = alice.document('race-1');
  const docB = bob.document('race-1');
  await docA.init();
  await docB.init();
  await until(() => alice.getSyncState('race-1')?.state === 'synced', 'alice subscribed');
  await until(() => bob.getSyncState('race-1')?.state === 'synced', 'bob subscribed');
  for (let round = 0; round < 5; round++) {
    await Promise.all([docA.set('title', `alice ${round}`), docB.set('title', `bob ${round}`)]);
    const expected = await hubValue('race-1', 'title');
    assert.ok(expected === `alice ${round}` || expected === `bob ${round}`, `hub holds ${expected}`);
    await until(
      () => docA.get().title === expected && docB.get().title === expected,
      `both clients to hold the hub's ${expected} (alice ${docA.get().title}, bob ${docB.get().title})`,
    );
  }
});
