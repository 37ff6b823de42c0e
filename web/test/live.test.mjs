// The client against the real gateway binary on loopback, in Node: long-poll and snapshot polling
// natively, SSE through a small test-only EventSource (Node 20 has none), and WebSocket in a
// child Node with --experimental-websocket where this Node has that flag.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createHmac } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { connect, decide } from '../ssegate.js';

const BIN = process.env.SSEGATE_BIN || fileURLToPath(new URL('../../target/release/ssegate', import.meta.url));
const LIMIT = 10_000; // every wait is bounded by this (ms)

// ---------------------------------------------------------------------------------------------
// Helpers

const gateways = new Set();

/** Starts the gateway; resolves with {proc, base} once it prints its address. */
function gateway(args = [], listen = '127.0.0.1:0') {
  const proc = spawn(BIN, ['serve', '--listen', listen, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const gw = { proc, base: null };
  gateways.add(gw);
  let err = '';
  proc.stderr.on('data', (c) => (err += c));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the gateway did not start: ' + err)), LIMIT);
    let out = '';
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/listening on (http:\/\/\S+)/);
      if (m) clearTimeout(timer), (gw.base = m[1]), resolve(gw);
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      gateways.delete(gw);
      reject(new Error(`the gateway exited with ${code}: ${err}`));
    });
  });
}

/** Stops a gateway this file started, by its PID, and waits until it has exited. */
function stop(gw) {
  if (gw.proc.exitCode !== null || gw.proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => gw.proc.kill('SIGKILL'), 5000);
    gw.proc.once('exit', () => (clearTimeout(t), gateways.delete(gw), resolve()));
    gw.proc.kill('SIGTERM');
  });
}

/** Resolves once pred() is truthy; fails after `ms`. */
async function until(pred, what, ms = LIMIT) {
  const end = Date.now() + ms;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(10);
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function publish(base, body) {
  const r = await fetch(`${base}/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(LIMIT) });
  const text = await r.text();
  assert.equal(r.status, 200, text);
  return JSON.parse(text).ids;
}

/** Records what a client delivers. */
function record(c) {
  const rec = { all: [], ids: [], statuses: [], states: [] };
  c.on('*', (ev) => {
    rec.all.push(ev);
    if (ev.id && ev.event != 'snapshot' && ev.event != 'reset') rec.ids.push(ev.id);
  });
  c.onStatus((s) => rec.statuses.push(s));
  return rec;
}
const once = (ids) => assert.equal(new Set(ids).size, ids.length, 'an event was delivered twice: ' + ids);
const ofTopic = (rec, topic, event = 'message') => rec.all.filter((e) => e.topic == topic && e.event == event);

/**
 * A minimal EventSource for Node (tests only): fetch + the text/event-stream parser of the HTML
 * spec (fields data/event/id, comments, blank line dispatches). Like a browser's, it fires
 * `error` when the connection fails or ends; it never reconnects by itself (the client closes it).
 */
class TestEventSource extends EventTarget {
  static urls = [];
  constructor(url) {
    super();
    TestEventSource.urls.push(url);
    this.url = url;
    this.readyState = 0;
    this.ac = new AbortController();
    this.run();
  }
  async run() {
    try {
      const r = await fetch(this.url, { headers: { accept: 'text/event-stream' }, signal: this.ac.signal });
      if (!r.ok || !r.headers.get('content-type')?.startsWith('text/event-stream')) throw new Error('status ' + r.status);
      this.readyState = 1;
      const dec = new TextDecoder();
      let buf = '', data = [], event = '', last = '';
      for await (const chunk of r.body) {
        buf += dec.decode(chunk, { stream: true });
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).replace(/\r$/, '');
          buf = buf.slice(i + 1);
          if (line === '') {
            if (data.length && this.readyState == 1)
              this.dispatchEvent(new MessageEvent(event || 'message', { data: data.join('\n'), lastEventId: last }));
            (data = []), (event = '');
          } else if (line[0] != ':') {
            const c = line.indexOf(':');
            const field = c < 0 ? line : line.slice(0, c);
            const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
            if (field == 'data') data.push(value);
            else if (field == 'event') event = value;
            else if (field == 'id') last = value;
          }
        }
      }
      throw new Error('stream ended');
    } catch {
      if (this.readyState == 2) return;
      this.readyState = 0;
      const e = new Event('error');
      this.dispatchEvent(e);
      this.onerror?.(e);
    }
  }
  close() {
    this.readyState = 2;
    this.ac.abort();
  }
}

// ---------------------------------------------------------------------------------------------

let gw;
before(async () => {
  assert.ok(existsSync(BIN), `no gateway binary at ${BIN} (build it with cargo build --release, or set SSEGATE_BIN)`);
  gw = await gateway(['--poll-interval-ms', '200']);
});
after(async () => {
  delete globalThis.EventSource;
  await Promise.all([...gateways].map(stop));
});

test('decide() agrees with the gateway /negotiate for every row of the matrix', async () => {
  const rows = [
    { bidirectional: true },
    { realtime: true, low_latency: true, server_push: false },
    { realtime: true, low_latency: true },
    { realtime: true, low_latency: true, server_push: true },
    { realtime: true, low_latency: true, legacy: true },
    { legacy: true },
    {},
    { bidirectional: true, legacy: true },
  ];
  for (const transports of [['sse', 'ws', 'long-poll', 'poll'], ['long-poll', 'poll', 'sse']]) {
    for (const flags of rows) {
      const q = new URLSearchParams({ ...flags, transports: transports.join() });
      const r = await fetch(`${gw.base}/negotiate?${q}`, { signal: AbortSignal.timeout(LIMIT) });
      const j = await r.json();
      assert.deepEqual([j.transport, ...j.fallbacks], decide(flags, transports), JSON.stringify(flags));
    }
  }
});

/** An HS256 JWT with `claims`, signed with `secret` (the gateway's --jwt-key). */
function jwt(secret, claims) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const signed = part({ alg: 'HS256', typ: 'JWT' }) + '.' + part(claims);
  return signed + '.' + createHmac('sha256', secret).update(signed).digest('base64url');
}

test('token: long-poll and SSE with a short-lived JWT, renewed before it expires, nothing lost or twice', async () => {
  const secret = 'live-test-secret';
  const key = 'live-backend-key';
  const jgw = await gateway(['--jwt-key', secret, '--api-key', key, '--demo', 'false']);
  const send = async (data) => {
    const r = await fetch(`${jgw.base}/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + key },
      body: JSON.stringify({ topic: 'tok/a', event: 'm', data }),
    });
    assert.equal(r.status, 200, await r.text());
  };
  // Without a token the gateway refuses the subscription.
  assert.equal((await fetch(`${jgw.base}/poll?topic=tok/a`)).status, 401);
  globalThis.EventSource = TestEventSource;
  try {
    for (const transport of ['long-poll', 'sse']) {
      TestEventSource.urls = [];
      let issued = 0;
      // Each token lives 3 s: the client renews it about every second and reconnects with it.
      const token = async () => (issued++, jwt(secret, { exp: Math.floor(Date.now() / 1000) + 3, ssegate: { subscribe: ['tok/**'] } }));
      const c = connect({ url: jgw.base, topics: ['tok/a'], transports: [transport], negotiate: false, token, backoff: { base: 50, max: 200 } });
      const got = [];
      c.on('m', (d, ev) => got.push([d, ev.id]));
      try {
        await until(() => c.status == 'open', `${transport} open with a token`);
        await send(1);
        await until(() => got.length == 1, 'the first event');
        await until(() => issued >= 3, 'two renewals', 8000);
        await send(2);
        await until(() => issued >= 4, 'one more renewal', 8000);
        await send(3);
        await until(() => got.length == 3, 'every event, across renewals');
        assert.deepEqual(got.map(([d]) => d), [1, 2, 3]);
        once(got.map(([, id]) => id));
        if (transport == 'sse') assert.match(TestEventSource.urls.at(-1), /access_token=/);
      } finally {
        c.close();
      }
    }
  } finally {
    delete globalThis.EventSource;
    await stop(jgw);
  }
});

test('long-poll: events exactly once and in order, typed handlers, retained state, topic changes', async () => {
  const base = gw.base;
  await publish(base, { topic: 'lp/dash', retain: true, data: { orders: 1, customers: 5 } });
  const c = connect({ url: base, topics: ['lp/a', 'lp/dash'], transports: ['long-poll'], flags: { legacy: true }, backoff: { base: 50, max: 200 } });
  const rec = record(c);
  const metrics = [];
  c.on('metrics', (data, ev) => metrics.push([data, ev]));
  const states = [];
  const unwatch = c.state('lp/dash', (state, version, topic) => states.push({ state, version, topic }));
  try {
    await until(() => c.status == 'open', 'open');
    assert.equal(c.transport, 'long-poll');
    assert.match(c.clientId, /^[0-9a-f-]{36}$/);
    await until(() => states.length, 'the first state');
    assert.deepEqual(states.at(-1), { state: { orders: 1, customers: 5 }, version: 1, topic: 'lp/dash' });

    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(...(await publish(base, { topic: 'lp/a', event: 'metrics', data: { i } })));
    await publish(base, { topic: 'lp/dash', patch: { orders: 2 } });
    await publish(base, { topic: 'lp/dash', json_patch: [{ op: 'test', path: '/orders', value: 2 }, { op: 'replace', path: '/customers', value: 6 }] });
    await until(() => metrics.length == 5 && states.at(-1).version == 3, 'events and patches');
    assert.deepEqual(metrics.map(([, ev]) => ev.id), ids);
    assert.deepEqual(metrics.map(([d]) => d), [0, 1, 2, 3, 4].map((i) => ({ i })));
    const ev = metrics[0][1];
    assert.equal(ev.topic, 'lp/a');
    assert.equal(ev.event, 'metrics');
    assert.equal(typeof ev.ts, 'number');
    assert.deepEqual(states.at(-1), { state: { orders: 2, customers: 6 }, version: 3, topic: 'lp/dash' });
    assert.equal(c.lastEventId >= ids.at(-1), true);

    // targeted at this client by its client_id, whatever it subscribes to
    const refresh = [];
    c.on('refresh', (d) => refresh.push(d));
    await publish(base, { clients: [c.clientId], event: 'refresh', data: { why: 'test' } });
    await until(() => refresh.length, 'the targeted event');
    assert.deepEqual(refresh, [{ why: 'test' }]);

    // a new topic joins the same session (same client_id), a removed one stops
    const id = c.clientId;
    c.subscribe('lp/b');
    c.unsubscribe('lp/a');
    await sleep(100);
    await publish(base, { topic: 'lp/a', data: 'gone' });
    const [last] = await publish(base, { topic: 'lp/b', data: 'new' });
    await until(() => rec.ids.includes(last), 'the event on the new topic');
    assert.equal(c.clientId, id);
    assert.deepEqual(ofTopic(rec, 'lp/a').map((e) => e.data), []);
    await sleep(300); // nothing arrives twice, even late
    once(rec.ids);
    assert.equal(ofTopic(rec, 'lp/b').length, 1);

    // the watcher is removed by the function state() returned
    const n = states.length;
    unwatch();
    await publish(base, { topic: 'lp/dash', patch: { orders: 3 } });
    await until(() => c.store.get('lp/dash').version == 4, 'the patch after unwatch');
    await sleep(50);
    assert.equal(states.length, n);
    await assert.rejects(c.rpc('m', {}), /WebSocket/);
  } finally {
    c.close();
  }
  assert.equal(c.status, 'closed');
  assert.equal(rec.statuses.at(-1).status, 'closed');
});

test('long-poll: state watchers are batched per frame', async () => {
  const base = gw.base;
  await publish(base, { topic: 'batch/dash', retain: true, data: { n: 0 } });
  const c = connect({ url: base, topics: ['batch/dash'], transports: ['long-poll'] });
  const states = [];
  c.state('batch/dash', (s, v) => states.push(v));
  try {
    await until(() => states.length, 'the first state');
    // ten patches in one publish request arrive in one poll answer: one notification
    await publish(base, Array.from({ length: 10 }, (_, i) => ({ topic: 'batch/dash', patch: { n: i + 1 } })));
    await until(() => states.at(-1) == 11, 'the last version');
    assert.deepEqual(states, [1, 11]);
    assert.deepEqual(c.store.get('batch/dash').state, { n: 10 });
  } finally {
    c.close();
  }
});

test('poll: snapshots with If-None-Match at the suggested interval', async () => {
  const base = gw.base;
  await publish(base, { topic: 'poll/dash', retain: true, data: { n: 1 } });
  const c = connect({ url: base, topics: ['poll/dash', 'poll/none', 'poll/*'], transports: ['poll'] });
  const rec = record(c);
  const states = [];
  c.state('poll/dash', (s, v) => states.push([s, v]));
  try {
    await until(() => c.status == 'open', 'open');
    assert.equal(c.transport, 'poll');
    await until(() => states.length, 'the first state');
    assert.deepEqual(states.at(-1), [{ n: 1 }, 1]);
    await publish(base, { topic: 'poll/dash', patch: { n: 2 } });
    await until(() => states.at(-1)[1] == 2, 'the polled change');
    assert.deepEqual(states.at(-1), [{ n: 2 }, 2]);
    const snaps = ofTopic(rec, 'poll/dash', 'snapshot').length;
    await sleep(700); // several 200 ms rounds, all answered 304
    assert.equal(ofTopic(rec, 'poll/dash', 'snapshot').length, snaps);
    assert.deepEqual(rec.all.at(-1).data, { topic: 'poll/dash', version: 2, state: { n: 2 } });
  } finally {
    c.close();
  }
});

test('fallback: without EventSource, the next transport at once', async () => {
  assert.equal(globalThis.EventSource, undefined);
  const c = connect({ url: gw.base, topics: ['fb/a'], transports: ['sse', 'long-poll', 'poll'] });
  try {
    await until(() => c.status == 'open', 'open');
    assert.equal(c.transport, 'long-poll');
  } finally {
    c.close();
  }
});

test('sse (test EventSource): exactly once across topic changes and a backend disconnect', async () => {
  globalThis.EventSource = TestEventSource;
  TestEventSource.urls = [];
  const base = gw.base;
  await publish(base, { topic: 'sse/dash', retain: true, data: { orders: 1 } });
  const c = connect({ url: base, topics: ['sse/a', 'sse/dash'], transports: ['sse', 'long-poll'], flags: { realtime: true, low_latency: true }, backoff: { base: 50, max: 200 } });
  const rec = record(c);
  const metrics = [];
  c.on('metrics', (d, ev) => metrics.push(ev.id));
  const states = [];
  c.state('sse/dash', (s, v) => states.push([s, v]));
  try {
    await until(() => c.status == 'open', 'open');
    assert.equal(c.transport, 'sse');
    assert.match(TestEventSource.urls[0], /envelope=1/);
    await until(() => states.length, 'the first state');
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(...(await publish(base, { topic: 'sse/a', event: 'metrics', data: { i } })));
    await publish(base, { topic: 'sse/dash', patch: { orders: 2 } });
    await until(() => metrics.length == 3 && states.at(-1)[1] == 2, 'events');
    assert.deepEqual(metrics, ids);
    assert.deepEqual(states.at(-1), [{ orders: 2 }, 2]);

    // an event name registered after the connection opened
    const late = [];
    c.on('late', (d) => late.push(d));
    await publish(base, { topic: 'sse/a', event: 'late', data: 1 });
    await until(() => late.length, 'the late-registered event name');

    // a topic change reconnects, resuming from lastEventId: what was published meanwhile arrives once
    const before = TestEventSource.urls.length;
    c.subscribe('sse/b');
    const during = await publish(base, { topic: 'sse/a', event: 'metrics', data: { i: 3 } });
    await until(() => TestEventSource.urls.length > before && c.status == 'open', 'the reconnect');
    assert.match(TestEventSource.urls.at(-1), /lastEventId=\d+-\d+/);
    assert.match(TestEventSource.urls.at(-1), /topic=sse%2Fb/);
    const [b] = await publish(base, { topic: 'sse/b', data: 'b' });
    await until(() => rec.ids.includes(b) && metrics.includes(during[0]), 'events after the topic change');

    // the backend disconnects the client: it comes back, resumes, and misses nothing
    await fetch(`${base}/clients/${c.clientId}`, { method: 'DELETE', signal: AbortSignal.timeout(LIMIT) });
    const gap = [];
    for (let i = 0; i < 3; i++) gap.push(...(await publish(base, { topic: 'sse/a', event: 'metrics', data: { gap: i } })));
    await publish(base, { topic: 'sse/dash', patch: { orders: 3 } });
    await until(() => gap.every((id) => metrics.includes(id)) && states.at(-1)[1] == 3, 'the events published while away');
    assert.ok(rec.statuses.some((s) => s.status == 'reconnecting'));
    assert.equal(c.status, 'open');
    assert.equal(c.transport, 'sse');
    await sleep(300);
    once(rec.ids);
    assert.deepEqual(states.at(-1), [{ orders: 3 }, 3]);
  } finally {
    c.close();
    delete globalThis.EventSource;
  }
});

test('sse disabled on the gateway (404 transport_disabled): falls back at once', async () => {
  const gw2 = await gateway(['--transports', 'long-poll,poll']);
  globalThis.EventSource = TestEventSource;
  TestEventSource.urls = [];
  const c = connect({ url: gw2.base, topics: ['x'], transports: ['sse', 'long-poll'], negotiate: false });
  try {
    await until(() => c.status == 'open', 'open');
    assert.equal(c.transport, 'long-poll');
    assert.equal(TestEventSource.urls.length, 1); // tried once, then moved on
  } finally {
    c.close();
    delete globalThis.EventSource;
    await stop(gw2);
  }
});

test('circuit: opens after the configured failures, then re-negotiates after the cool-down', async () => {
  const dead = await gateway();
  const url = dead.base;
  await stop(dead); // nothing listens there any more
  const c = connect({ url, topics: ['x'], transports: ['long-poll', 'poll'], backoff: { base: 5, max: 20 }, circuit: { failures: 3, cooldown: 150 } });
  const rec = record(c);
  try {
    await until(() => rec.statuses.filter((s) => s.status == 'circuit-open').length >= 2, 'the circuit to open twice');
    const open = rec.statuses.find((s) => s.status == 'circuit-open');
    assert.equal(open.attempt, 3);
    assert.ok(open.error);
    const i = rec.statuses.indexOf(open);
    // between two openings the client tried again after the cool-down
    assert.ok(rec.statuses.slice(i + 1).some((s) => s.status == 'reconnecting' || s.status == 'circuit-open'));
  } finally {
    c.close();
  }
  const n = rec.statuses.length;
  await sleep(300);
  assert.equal(rec.statuses.length, n, 'no activity after close()');
  assert.equal(rec.statuses.at(-1).status, 'closed');
});

test('gateway restart: the client reconnects and reloads state with fresh versions', async () => {
  const a = await gateway();
  const listen = a.base.replace('http://', '');
  await publish(a.base, { topic: 'rs/dash', retain: true, data: { v: 'old' } });
  await publish(a.base, { topic: 'rs/dash', patch: { n: 1 } });
  await publish(a.base, { topic: 'rs/dash', patch: { n: 2 } });
  const c = connect({ url: a.base, topics: ['rs/dash', 'rs/events'], transports: ['long-poll'], backoff: { base: 20, max: 100 }, circuit: { failures: 1000 } });
  const rec = record(c);
  const states = [];
  c.state('rs/dash', (s, v) => states.push([s, v]));
  let b;
  try {
    await until(() => states.at(-1)?.[1] == 3, 'the state before the restart');
    await stop(a);
    await until(() => c.status == 'reconnecting', 'the drop to be seen');
    b = await gateway([], listen);
    await publish(b.base, { topic: 'rs/dash', retain: true, data: { v: 'new' } });
    await until(() => states.at(-1)?.[0]?.v == 'new', 'the fresh state');
    assert.deepEqual(states.at(-1), [{ v: 'new' }, 1]);
    await until(() => c.status == 'open', 'open again');
    const [id] = await publish(b.base, { topic: 'rs/events', data: 'after' });
    await until(() => rec.ids.includes(id), 'an event from the new gateway');
    await publish(b.base, { topic: 'rs/dash', patch: { n: 9 } });
    await until(() => states.at(-1)[1] == 2, 'a patch on the fresh state');
    assert.deepEqual(states.at(-1), [{ v: 'new', n: 9 }, 2]);
  } finally {
    c.close();
    if (b) await stop(b);
  }
});

// WebSocket: Node 20 has a WebSocket global only behind --experimental-websocket (Node 22 has it
// by default), so this scenario runs in a child Node and reports what it saw as JSON.
const wsFlag = typeof WebSocket == 'function' ? [] : ['--experimental-websocket'];
const wsOk = typeof WebSocket == 'function' || process.allowedNodeEnvironmentFlags.has('--experimental-websocket');

test('ws (child Node): frames for topic changes on one connection, rpc errors, exactly once', { skip: !wsOk && 'this Node has no WebSocket' }, async () => {
  const base = gw.base;
  await publish(base, { topic: 'ws/dash', retain: true, data: { n: 1 } });
  const script = `
    import { connect } from ${JSON.stringify(new URL('../ssegate.js', import.meta.url).href)};
    const base = process.env.BASE;
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const until = async (p) => { for (let i = 0; i < 800 && !p(); i++) await sleep(10); if (!p()) throw new Error('timeout'); };
    const pub = async (b) => (await (await fetch(base + '/publish', { method: 'POST', body: JSON.stringify(b) })).json()).ids;
    const c = connect({ url: base, topics: ['ws/a', 'ws/dash'], transports: ['ws', 'long-poll'], flags: { bidirectional: true } });
    const out = { ids: [], got: [], states: [], statuses: [] };
    c.on('*', (ev) => ev.id && ev.event != 'snapshot' && out.got.push(ev.id));
    c.on('metrics', (d) => out.ids.push(d));
    c.state('ws/dash', (s, v) => out.states.push([s, v]));
    c.onStatus((s) => out.statuses.push(s.status));
    try {
      await until(() => c.status == 'open');
      out.transport = c.transport;
      const id = c.clientId;
      await until(() => out.states.length);
      out.published = [...await pub({ topic: 'ws/a', event: 'metrics', data: 1 })];
      c.subscribe('ws/b');
      c.unsubscribe('ws/a');
      await sleep(100);
      await pub({ topic: 'ws/a', event: 'metrics', data: 'gone' });
      out.published.push(...await pub({ topic: 'ws/b', event: 'metrics', data: 2 }));
      out.published.push(...await pub({ topic: 'ws/dash', patch: { n: 2 } }));
      await until(() => out.ids.length == 2 && out.states.at(-1)[1] == 2);
      out.sameClient = c.clientId == id;
      try { await c.rpc('sum', [1, 2]); out.rpc = 'resolved'; } catch (e) { out.rpc = e.code; }
      await sleep(200);
    } finally { c.close(); }
    console.log(JSON.stringify(out));
  `;
  const stdout = await new Promise((resolve, reject) =>
    execFile(process.execPath, [...wsFlag, '--no-warnings', '--input-type=module', '-e', script], { env: { ...process.env, BASE: base }, timeout: 20_000 }, (err, out, errOut) =>
      err ? reject(new Error(err.message + errOut)) : resolve(out)));
  const out = JSON.parse(stdout.trim().split('\n').at(-1));
  assert.equal(out.transport, 'ws');
  assert.deepEqual(out.ids, [1, 2]);
  assert.deepEqual(out.got, out.published);
  assert.equal(out.sameClient, true); // subscribe/unsubscribe went as frames, no reconnect
  assert.deepEqual(out.statuses.filter((s) => s == 'open'), ['open']);
  assert.deepEqual(out.states.at(-1), [{ n: 2 }, 2]);
  assert.equal(out.rpc, 'rpc_unavailable');
});
