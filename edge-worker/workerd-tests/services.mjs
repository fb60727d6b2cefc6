// Real services for the end-to-end worker tests: a private ClickHouse server and the ingest
// server, each started on free loopback ports and stopped with the test. Both run under a small
// shell wrapper that stops them when our end of their stdin closes, so a test process that dies
// leaves nothing behind (the same scheme as the Rust testkit).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { REPO, freePort, waitFor } from './harness.mjs';

const WRAPPER = `
"$@" &
pid=$!
cat >/dev/null
kill -TERM "$pid" 2>/dev/null
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0
`;

function onPath(name) {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, name);
    if (dir && existsSync(p)) return p;
  }
  return null;
}

/** Spawns `cmd args` under the wrapper; `stop()` closes its stdin and waits for it to exit. */
function guarded(cmd, args, { cwd, stdout = 'ignore', stderrFile }) {
  const err = stderrFile ? openSync(stderrFile, 'a') : 'ignore';
  const child = spawn('sh', ['-c', WRAPPER, 'wrapper', cmd, ...args], { cwd, stdio: ['pipe', stdout, err] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  return {
    child,
    exited,
    async stop() {
      child.stdin.end();
      await exited;
    },
  };
}

export const CLICKHOUSE_HINT =
  'clickhouse-server was not found on PATH. Install it with `sudo apt-get update && sudo apt-get ' +
  'install -y clickhouse-server clickhouse-client` (or run `cargo xtask test`, which installs it), or set ' +
  'WAYMARK_CLICKHOUSE_SERVER to its path.';

/** Starts a private ClickHouse server in a temporary directory. */
export async function startClickHouse() {
  const bin = process.env.WAYMARK_CLICKHOUSE_SERVER ?? onPath('clickhouse-server');
  if (!bin) throw new Error(CLICKHOUSE_HINT);
  const home = mkdtempSync(path.join(os.tmpdir(), 'waymark-edge-ch-'));
  for (const d of ['data', 'tmp', 'log', 'user_files', 'format_schemas']) mkdirSync(path.join(home, d));
  const httpPort = await freePort();
  const tcpPort = await freePort();
  writeFileSync(
    path.join(home, 'config.xml'),
    `<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>${home}/log/server.log</log><errorlog>${home}/log/err.log</errorlog><size>10M</size><count>2</count></logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>${httpPort}</http_port>
    <tcp_port>${tcpPort}</tcp_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>${home}/data/</path>
    <tmp_path>${home}/tmp/</tmp_path>
    <user_files_path>${home}/user_files/</user_files_path>
    <format_schema_path>${home}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
`,
  );
  writeFileSync(
    path.join(home, 'users.xml'),
    `<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`,
  );
  const proc = guarded(bin, [`--config-file=${path.join(home, 'config.xml')}`], {
    cwd: home,
    stderrFile: path.join(home, 'log', 'stderr.log'),
  });
  const url = `http://127.0.0.1:${httpPort}`;
  const logTail = () =>
    ['err.log', 'stderr.log']
      .map((f) => {
        try {
          return `--- ${f}\n` + readFileSync(path.join(home, 'log', f), 'utf8').split('\n').slice(-20).join('\n');
        } catch {
          return '';
        }
      })
      .join('\n');
  let exited = false;
  proc.exited.then(() => (exited = true));
  try {
    await waitFor(
      `ClickHouse at ${url}/ping`,
      async () => {
        if (exited) throw new Error(`clickhouse-server exited before answering /ping:\n${logTail()}`);
        try {
          return (await (await fetch(`${url}/ping`)).text()).trim() === 'Ok.';
        } catch {
          return false;
        }
      },
      { timeoutMs: 60_000, everyMs: 100 },
    );
  } catch (e) {
    await proc.stop();
    throw new Error(`${e.message}\n${logTail()}`);
  }
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
    async stop() {
      await proc.stop();
      rmSync(home, { recursive: true, force: true });
    },
  };
}

export const INGEST_HINT =
  'the ingest server binary was not found: build it with `cargo build -p waymark-ingest --bin ingest-server` ' +
  '(`cargo xtask test` does) or set WAYMARK_INGEST_SERVER to its path';

export function ingestBinary() {
  const bin = process.env.WAYMARK_INGEST_SERVER ?? path.join(REPO, 'target', 'debug', 'ingest-server');
  if (!existsSync(bin)) throw new Error(`${INGEST_HINT} (looked for ${bin})`);
  return bin;
}

/**
 * Starts the real ingest server with an [edge] secret and one site, on `port` (a free one when
 * not given) with its spool in `dir`; `start()` again after `stop()` resumes on the same port and
 * spool, like a restarted server.
 */
export async function startIngest({ clickhouse, database, secret, writeKey, port, dir }) {
  const bin = ingestBinary();
  port ??= await freePort();
  dir ??= mkdtempSync(path.join(os.tmpdir(), 'waymark-edge-ingest-'));
  const config = path.join(dir, 'ingest.toml');
  writeFileSync(
    config,
    `listen = "127.0.0.1:${port}"

[clickhouse]
url = "${clickhouse.url}"
database = "${database}"

[spool]
dir = "${path.join(dir, 'spool')}"
max_bytes = "256MiB"

[writer]
max_age = "200ms"

[edge]
secret = "${secret}"
replay_window = "5m"

[[sites]]
id = "shop"
write_keys = ["${writeKey}"]
allowed_origins = ["*"]
ip = "truncate"
`,
  );
  const ingest = {
    port,
    dir,
    url: `http://127.0.0.1:${port}`,
    proc: null,
    async start() {
      const proc = guarded(bin, ['--config', config], {
        cwd: dir,
        stdout: 'pipe',
        stderrFile: path.join(dir, 'stderr.log'),
      });
      let out = '';
      let exited = false;
      proc.exited.then(() => (exited = true));
      proc.child.stdout.on('data', (d) => (out += d));
      await waitFor(
        'the ingest server to print "listening on"',
        () => {
          if (exited) {
            let log = '';
            try {
              log = readFileSync(path.join(dir, 'stderr.log'), 'utf8').split('\n').slice(-20).join('\n');
            } catch {
              // no log yet
            }
            throw new Error(`ingest-server exited before listening:\n${log}`);
          }
          return out.includes(`listening on 127.0.0.1:${port}`);
        },
        { timeoutMs: 60_000, everyMs: 50 },
      );
      this.proc = proc;
    },
    async stop() {
      const p = this.proc;
      this.proc = null;
      if (p) await p.stop();
    },
    async dispose() {
      await this.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await ingest.start();
  return ingest;
}
