// Real services for the end-to-end worker tests: a private ClickHouse server and the ingest
// server, started by the Rust testkit's `waymark-stack` command, so these tests run the same
// processes on configs from the same builder as the Rust tests, the e2e test and the demo
// (`testkit/src/bin/waymark-stack.rs`). Each runs until its stdin closes, then stops what it
// started: a test process that dies leaves nothing behind.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { REPO, waitFor } from './harness.mjs';

export const STACK_HINT =
  "the testkit's waymark-stack was not found: build it with `cargo build -p waymark-testkit --bin waymark-stack` " +
  '(`cargo xtask test` does) or set WAYMARK_STACK to its path';

export function stackBinary() {
  const bin = process.env.WAYMARK_STACK ?? path.join(REPO, 'target', 'debug', 'waymark-stack');
  if (!existsSync(bin)) throw new Error(`${STACK_HINT} (looked for ${bin})`);
  return bin;
}

/**
 * Runs `waymark-stack ...args` and returns the JSON it prints once its process is up, and
 * `stop()`, which closes its stdin (it stops its process: SIGTERM, so the ingest server flushes)
 * and waits for it to exit.
 */
async function stack(args) {
  const child = spawn(stackBinary(), args, { stdio: ['pipe', 'pipe', 'pipe'] });
  // Closing stdin of a process that has already exited must not crash the test.
  child.stdin.on('error', () => {});
  const exited = new Promise((resolve) => child.once('exit', resolve));
  let gone = false;
  exited.then(() => (gone = true));
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const line = await waitFor(
    `waymark-stack ${args[0]} to start`,
    () => {
      if (gone) throw new Error(`waymark-stack ${args.join(' ')} exited before it was ready:\n${err}`);
      const end = out.indexOf('\n');
      return end >= 0 && out.slice(0, end);
    },
    { timeoutMs: 150_000, everyMs: 50 },
  );
  return {
    info: JSON.parse(line),
    async stop() {
      child.stdin.end();
      await exited;
    },
  };
}

/** Starts a private ClickHouse server in a temporary directory (removed by `stop()`). */
export async function startClickHouse() {
  const { info, stop } = await stack(['clickhouse']);
  const { url, home } = info;
  return {
    url,
    home,
    async query(sql) {
      const res = await fetch(`${url}/`, { method: 'POST', body: sql });
      const text = await res.text();
      if (!res.ok) throw new Error(`ClickHouse answered ${res.status} to ${sql}: ${text}`);
      return text;
    },
    async rows(sql) {
      const text = await this.query(`${sql} FORMAT JSONEachRow`);
      return text
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l));
    },
    stop,
  };
}

/**
 * Starts the real ingest server with an [edge] secret and one site (`shop`, any origin), on
 * `port` (one the kernel picks when not given) with its config, spool and log in `dir`;
 * `start()` again after `stop()` resumes on the same port and spool, like a restarted server.
 */
export async function startIngest({ clickhouse, database, secret, writeKey, port = 0, dir }) {
  dir ??= mkdtempSync(path.join(os.tmpdir(), 'waymark-edge-ingest-'));
  const ingest = {
    port,
    dir,
    url: null,
    running: null,
    async start() {
      const { info, stop } = await stack([
        'ingest',
        '--clickhouse', clickhouse.url,
        '--database', database,
        '--dir', dir,
        '--port', String(this.port),
        '--edge-secret', secret,
        '--site', 'shop',
        '--write-key', writeKey,
        '--origin', '*',
        '--spool-max', '256MiB',
        '--writer-max-age', '200ms',
      ]);
      this.url = info.url;
      this.port = Number(new URL(info.url).port);
      this.running = stop;
    },
    async stop() {
      const stop = this.running;
      this.running = null;
      if (stop) await stop();
    },
    async dispose() {
      await this.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await ingest.start();
  return ingest;
}
