// Starts the built synchub binary on a free port with a fresh data directory.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

function freePort() {
  return new Promise((ok, fail) => {
    const srv = net.createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

// Whether a TLS hub answers /health, trusting `ca` (node's fetch takes no CA of its own).
function httpsHealthy(port, ca) {
  return new Promise((ok) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/health', servername: 'localhost', ca },
      (res) => { res.resume(); ok(res.statusCode === 200); });
    req.once('error', () => ok(false));
  });
}

// With SYNCHUB_SERVER_TLS_CERT / _KEY in `env` the hub serves TLS, and its URLs are wss:// and
// https:// on localhost; `ca` is then what a client must trust (the certificate itself when it
// is self-signed).
export async function startHub(env = {}) {
  const binary = process.env.SYNCHUB_BIN ?? join(root, 'target', 'debug', 'synchub');
  const dir = mkdtempSync(join(tmpdir(), 'synchub-interop-'));
  const port = await freePort();
  const child = spawn(binary, ['serve'], {
    cwd: dir,
    env: {
      // The caller's SYNCHUB_* settings would change what is tested: only ours configure it.
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('SYNCHUB_'))),
      SYNCHUB_SERVER_BIND: `127.0.0.1:${port}`,
      SYNCHUB_STORAGE_PATH: join(dir, 'db'),
      SYNCHUB_AUTH_REQUIRED: 'false',
      RUST_LOG: 'error',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const ca = env.SYNCHUB_SERVER_TLS_CERT ? readFileSync(env.SYNCHUB_SERVER_TLS_CERT) : null;
  const deadline = Date.now() + 15000;
  for (;;) {
    if (ca) {
      if (await httpsHealthy(port, ca)) break;
    } else {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/health`);
        if (res.ok) break;
      } catch {
        // not listening yet
      }
    }
    if (Date.now() > deadline) throw new Error('synchub did not start');
    await new Promise((r) => setTimeout(r, 50));
  }
  const where = ca
    ? { url: `wss://localhost:${port}/ws`, https: `https://localhost:${port}`, ca }
    : { url: `ws://127.0.0.1:${port}/ws`, http: `http://127.0.0.1:${port}` };
  return {
    ...where,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Starts a redis-server without persistence on a free port, for a cluster of hubs.
export async function startRedis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '',
    '--appendonly', 'no'], { stdio: 'ignore' });
  // Redis answers PING: a probe the kernel connected to itself would not.
  await until(() => new Promise((ok) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write('PING\r\n'));
    sock.once('data', (d) => { sock.destroy(); ok(d.toString().startsWith('+PONG')); });
    sock.once('error', () => ok(false));
  }), 'redis-server to answer');
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

export async function until(check, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
