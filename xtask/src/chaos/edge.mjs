// The edge worker in workerd (Miniflare), with its queue, for scenario (f) of `cargo xtask
// chaos` (xtask/src/chaos/edge.rs drives it). It forwards to the real ingest server at
// WAYMARK_CHAOS_INGEST_URL, signed with WAYMARK_CHAOS_SECRET; the queue's clock is the test
// harness's fake one, advanced on request, so hours of retry delays take seconds.
//
// Commands come one JSON object a line on stdin; every answer is one line on stdout starting
// with "@@chaos " (the worker's own console lines are echoed there too, without the marker):
//   {"op":"post","body":"..."}     a tag batch through the edge -> {"status","json"}
//   {"op":"advance","ms":N}        the queue's clock -> {"elapsedMs"}
//   {"op":"failed"}                forwards the worker logged as failed -> {"count"}
//   {"op":"quit"}                  stops workerd and exits
import readline from 'node:readline';

import { postBatch, queueClock, startWorker } from '../../../edge-worker/workerd-tests/harness.mjs';

const say = (v) => process.stdout.write(`@@chaos ${JSON.stringify(v)}\n`);

const ingestUrl = process.env.WAYMARK_CHAOS_INGEST_URL;
const secret = process.env.WAYMARK_CHAOS_SECRET;
if (!ingestUrl || !secret) {
  say({ error: 'WAYMARK_CHAOS_INGEST_URL and WAYMARK_CHAOS_SECRET must be set' });
  process.exit(2);
}

let mf;
try {
  mf = await startWorker({ ingestUrl, secret, queue: true });
} catch (e) {
  say({ error: `starting the worker: ${e.stack ?? e}` });
  process.exit(1);
}
const clock = await queueClock(mf);
await clock.start();
say({ ready: true });

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    say({ error: `not JSON: ${line}` });
    continue;
  }
  try {
    switch (cmd.op) {
      case 'post': {
        const r = await postBatch(mf, cmd.body);
        say({ status: r.status, json: r.json, text: r.json ? undefined : r.text });
        break;
      }
      case 'advance':
        await clock.advance(cmd.ms);
        say({ elapsedMs: clock.elapsedMs });
        break;
      case 'failed':
        say({ count: mf.logs.filter((l) => l.includes('forward failed for') && l.includes(ingestUrl)).length });
        break;
      case 'quit':
        await mf.dispose();
        say({ bye: true });
        process.exit(0);
        break;
      default:
        say({ error: `unknown op ${cmd.op}` });
    }
  } catch (e) {
    say({ error: `${cmd.op}: ${e.stack ?? e}` });
  }
}
await mf.dispose();
