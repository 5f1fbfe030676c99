// Many readers of one large room: how much memory the hub takes to serve them.
//
// Starts its own hub (the release binary, or $SYNCHUB), writes a Pocket room of DOCS documents
// of DOC_BYTES each, then lets READERS clients pull all of it ROUNDS times at once (each pull
// `{"limit":1000}`, following `hasMore`), sampling the hub's RSS every 50 ms. Prints the RSS
// before, the peak while reading, and the bytes read.
//
// Usage: node scripts/readers.mjs   (after `cd tests/interop && npm ci` once, for `ws`)
// Environment: SYNCHUB, READERS (30), DOCS (200), DOC_BYTES (200000), ROUNDS (2).

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(new URL("../tests/interop/package.json", import.meta.url));
const WebSocket = require("ws");

const bin = process.env.SYNCHUB ?? new URL("../target/release/synchub", import.meta.url).pathname;
const readers = Number(process.env.READERS ?? 30);
const docs = Number(process.env.DOCS ?? 200);
const docBytes = Number(process.env.DOC_BYTES ?? 200_000);
const rounds = Number(process.env.ROUNDS ?? 2);

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

const rssMb = (pid) => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((l) => l.startsWith("VmRSS:"));
  return Number(line.split(/\s+/)[1]) / 1024;
};

const open = (url) =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { maxPayload: 1 << 30 });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });

// Sends `msg` and resolves with the first reply of `type` with the same id.
const ask = (ws, msg, type) =>
  new Promise((resolve, reject) => {
    const on = (data) => {
      const m = JSON.parse(data.toString());
      if (m.type === "error") {
        ws.off("message", on);
        reject(new Error(JSON.stringify(m)));
      } else if (m.type === type && m.id === msg.id) {
        ws.off("message", on);
        resolve({ m, bytes: data.length });
      }
    };
    ws.on("message", on);
    ws.send(JSON.stringify(msg));
  });

// What `synchub bench` gives a hub it starts itself: the per-client limits lifted.
const benchEnv = Object.fromEntries(
  readFileSync(new URL("../bench/hub.env", import.meta.url), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"))
    .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
);

const port = await freePort();
const data = mkdtempSync(join(tmpdir(), "synchub-readers-"));
const hub = spawn(bin, ["serve"], {
  env: {
    ...process.env,
    ...benchEnv,
    SYNCHUB_STORAGE_PATH: data,
    SYNCHUB_SERVER_BIND: `127.0.0.1:${port}`,
    RUST_LOG: "warn",
  },
  stdio: ["ignore", "ignore", "inherit"],
});
try {
  const base = `ws://127.0.0.1:${port}/sync?room=large`;
  let writer;
  for (let i = 0; ; i++) {
    try {
      writer = await open(base);
      break;
    } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const body = "x".repeat(docBytes);
  for (let i = 0; i < docs; i++) {
    const id = `doc-${i}`;
    const { m } = await ask(
      writer,
      {
        type: "push",
        id: `w${i}`,
        collection: "docs",
        changes: [{ operation: "insert", documentId: id, document: { _id: id, body } }],
        checkpoint: { sequences: {}, global: 0 },
      },
      "push-response",
    );
    if (!m.success) throw new Error(JSON.stringify(m));
  }
  writer.close();
  await new Promise((r) => setTimeout(r, 2000));
  const before = rssMb(hub.pid);
  let peak = before;
  const sampler = setInterval(() => {
    peak = Math.max(peak, rssMb(hub.pid));
  }, 50);
  const started = Date.now();
  let read = 0;
  await Promise.all(
    Array.from({ length: readers }, async (_, r) => {
      const ws = await open(base);
      for (let round = 0; round < rounds; round++) {
        let checkpoint = { global: 0 };
        for (let page = 0; ; page++) {
          const { m, bytes } = await ask(
            ws,
            { type: "pull", id: `r${r}-${round}-${page}`, collections: ["docs"], checkpoint, limit: 1000 },
            "pull-response",
          );
          read += bytes;
          checkpoint = m.checkpoint;
          if (!m.hasMore) break;
        }
      }
      ws.close();
    }),
  );
  clearInterval(sampler);
  const seconds = (Date.now() - started) / 1000;
  console.log(
    `${readers} readers x ${rounds} rounds of ${docs} x ${docBytes} B: RSS ${before.toFixed(0)} MB before, ` +
      `peak ${peak.toFixed(0)} MB (+${(peak - before).toFixed(0)} MB); ` +
      `${(read / 1e6).toFixed(0)} MB read in ${seconds.toFixed(1)} s`,
  );
} finally {
  hub.kill("SIGTERM");
  await new Promise((r) => hub.once("exit", r));
  rmSync(data, { recursive: true, force: true });
}
