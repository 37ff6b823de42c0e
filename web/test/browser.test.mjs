// The demo page and the browser client in a real headless Chromium (Debian's), driven by
// playwright-core, against the real gateway binary on loopback.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { X509Certificate, createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { mkdtempSync, rmSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.SSEGATE_BIN || join(here, '..', '..', 'target', 'release', 'ssegate');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PATIENCE = 20_000;

/** Starts the gateway; resolves with its base URL once it prints it. */
function gateway(args = [], listen = '127.0.0.1:0') {
  const proc = spawn(BIN, ['serve', '--listen', listen, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the gateway did not start')), PATIENCE);
    let out = '';
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/listening on (https?:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, base: m[1] });
      }
    });
    proc.on('exit', (code) => reject(new Error(`the gateway exited with ${code}`)));
  });
}

/** Stops a gateway we started, by its PID, and waits for it to exit. */
function stop(gw) {
  if (gw.proc.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    gw.proc.once('exit', resolve);
    gw.proc.kill('SIGTERM');
  });
}

async function publish(base, body) {
  const res = await fetch(`${base}/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  assert.equal(res.status, 200, text);
  return JSON.parse(text).ids;
}

let browser;
const gateways = [];

const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await Promise.all(gateways.map(stop));
});

async function start(args, listen) {
  const gw = await gateway(args, listen);
  gateways.push(gw);
  return gw;
}

/** What each page logged as an error (uncaught exceptions, console errors, failed loads). */
const errors = new WeakMap();

async function open(url, context) {
  const page = await (context || browser).newPage(context ? undefined : { viewport: { width: 1000, height: 900 } });
  const logged = [];
  errors.set(page, logged);
  page.on('pageerror', (e) => {
    console.error('page error:', e);
    logged.push(`page error: ${e}`);
  });
  page.on('console', (m) => {
    if (m.type() === 'error') logged.push(`console error: ${m.text()} (${m.location().url})`);
  });
  await page.goto(url);
  await page.waitForFunction(() => window.demo?.client?.status === 'open', null, { timeout: PATIENCE });
  return page;
}

test('the demo page connects, and its counters and chart follow published events', async () => {
  const gw = await start([]);
  const page = await open(gw.base + '/');
  await page.waitForFunction(() => window.demo.seen.counters !== null, null, { timeout: PATIENCE });
  // The demo publisher patches the same counters every second, and the page renders once per
  // animation frame: a demo patch landing in the same frame hides ours. Publish again until the
  // page shows it (each try waits 3 s).
  for (let attempt = 1; ; attempt++) {
    await publish(gw.base, { topic: 'demo/counters', patch: { orders: 987654 } });
    try {
      await page.waitForFunction(() => document.getElementById('orders').textContent === '987654', null, { timeout: 3000 });
      break;
    } catch (e) {
      if (attempt >= 5) throw e;
    }
  }
  const before = await page.evaluate(() => window.demo.seen.points);
  await publish(gw.base, { topic: 'demo/series', event: 'point', data: { t: Date.now(), value: 42 } });
  await page.waitForFunction((n) => window.demo.seen.points > n, before, { timeout: PATIENCE });
  const clientId = await page.evaluate(() => window.demo.client.clientId);
  assert.match(await page.textContent('#client-id'), new RegExp(clientId));
  assert.equal(await page.textContent('#status'), 'open');
  assert.equal(await page.textContent('#transport'), 'sse');
  // Let the demo publisher draw a few points, then keep a picture for the README.
  await page.waitForFunction(() => window.demo.seen.points >= 6, null, { timeout: PATIENCE });
  await page.screenshot({ path: join(here, '..', 'demo.png'), fullPage: true });
  assert.deepEqual(errors.get(page), [], 'the demo page logs no error');
  await page.close();
});

test('the refresh button reaches only this page, or every page', async () => {
  const gw = await start([]);
  const a = await open(gw.base + '/');
  const b = await open(gw.base + '/');
  await a.click('#refresh'); // "this client only" is the default
  await a.waitForFunction(() => window.demo.seen.refreshes.length === 1, null, { timeout: PATIENCE });
  await a.check('input[value=all]');
  await a.click('#refresh');
  await a.waitForFunction(() => window.demo.seen.refreshes.length === 2, null, { timeout: PATIENCE });
  await b.waitForFunction(() => window.demo.seen.refreshes.length === 1, null, { timeout: PATIENCE });
  // The broadcast came after the targeted refresh: had B got that one, it would have it first.
  const [bOnly] = await b.evaluate(() => window.demo.seen.refreshes);
  const aSeen = await a.evaluate(() => window.demo.seen.refreshes);
  assert.equal(bOnly, aSeen[1], 'B received the broadcast and not the targeted refresh');
  assert.match(await a.textContent('#refreshed'), /all clients/);
  await a.close();
  await b.close();
});

for (const [enabled, expected] of [['ws,long-poll,poll', 'ws'], ['long-poll,poll', 'long-poll']]) {
  test(`with only ${enabled} enabled the page uses ${expected} and events still arrive`, async () => {
    const gw = await start(['--transports', enabled]);
    const page = await open(gw.base + '/');
    assert.equal(await page.evaluate(() => window.demo.client.transport), expected);
    await publish(gw.base, { topic: 'demo/counters', patch: { customers: 4242 } });
    await page.waitForFunction(() => document.getElementById('customers').textContent === '4242', null, { timeout: PATIENCE });
    await page.close();
  });
}

test('after a restart with history kept the page shows every event exactly once', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ssegate-browser-'));
  const args = ['--demo', 'false', '--state-file', join(dir, 'state.json')];
  const first = await start(args);
  const page = await open(first.base + '/');
  for (let n = 0; n < 5; n++) await publish(first.base, { topic: 'demo/series', event: 'point', data: { t: n, value: n, n } });
  await page.waitForFunction(() => window.demo.seen.points === 5, null, { timeout: PATIENCE });
  await stop(first);
  const second = await start(args, first.base.replace('http://', ''));
  for (let n = 5; n < 10; n++) await publish(second.base, { topic: 'demo/series', event: 'point', data: { t: n, value: n, n } });
  await page.waitForFunction(() => window.demo.seen.points >= 10, null, { timeout: PATIENCE });
  const { ids, points } = await page.evaluate(() => ({ ids: window.demo.seen.ids, points: window.demo.seen.points }));
  assert.equal(points, 10, 'every point once');
  assert.equal(new Set(ids).size, ids.length, 'no event id twice');
  const ns = await page.evaluate(() => [...document.querySelectorAll('#log li span:nth-child(4)')].map((s) => JSON.parse(s.textContent).n).filter((n) => n !== undefined).reverse());
  assert.deepEqual(ns, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  await page.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a page on another origin cannot publish to a keyless gateway on loopback', async () => {
  const gw = await start(['--demo', 'false']);
  // The attacker's page, on another origin of the same machine (another port).
  const evil = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end('<!doctype html><title>a page the developer opened</title><iframe name="sink"></iframe>');
  });
  await new Promise((resolve) => evil.listen(0, '127.0.0.1', resolve));
  const first = await (await fetch(`${gw.base}/poll?topic=t`)).json();
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${evil.address().port}/`);
  const outcomes = await page.evaluate(async (base) => {
    const body = JSON.stringify({ topic: 't', event: 'attack', data: 1 });
    const settle = (p) => p.then((r) => (r.type == 'opaque' ? 'sent' : 'answered ' + r.status), (e) => 'blocked ' + e);
    // A "simple" request: no preflight, the answer unreadable, but it reaches the gateway.
    const simple = await settle(fetch(base + '/publish', { method: 'POST', mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body }));
    // A classic form post, text/plain, into an iframe.
    const form = Object.assign(document.createElement('form'), { action: base + '/publish', method: 'POST', enctype: 'text/plain', target: 'sink' });
    form.append(Object.assign(document.createElement('input'), { name: '{"topic":"t","event":"attack","data":1,"x":"', value: '"}' }));
    document.body.append(form);
    const loaded = new Promise((resolve) => (document.querySelector('iframe').onload = resolve));
    form.submit();
    await loaded;
    // Reading the clients, and publishing with JSON (a preflighted request).
    const read = await settle(fetch(base + '/clients'));
    const json = await settle(fetch(base + '/publish', { method: 'POST', headers: { 'content-type': 'application/json' }, body }));
    return { simple, read, json };
  }, gw.base);
  assert.equal(outcomes.simple, 'sent');
  assert.equal(outcomes.read, 'answered 403', 'the request reached the gateway and was refused');
  assert.equal(outcomes.json, 'answered 403');
  const query = new URLSearchParams({ topic: 't', client_id: first.client_id, session: first.session, cursor: first.cursor, timeout: '0' });
  const after = await (await fetch(`${gw.base}/poll?${query}`)).json();
  assert.deepEqual(after.events, [], 'nothing was published');
  // The same request from a backend on this machine is a publish.
  await publish(gw.base, { topic: 't', event: 'legit', data: 2 });
  await page.close();
  await new Promise((resolve) => evil.close(resolve));
});

/** Retries `check` (an async function that throws until it holds) for up to PATIENCE ms. */
async function eventually(check) {
  const deadline = Date.now() + PATIENCE;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/** The gateway's clients (GET /clients). */
async function clients(base) {
  const res = await fetch(`${base}/clients`);
  assert.equal(res.status, 200);
  return (await res.json()).clients;
}

/** The `n` of every point a demo page has shown, oldest first, and the ids it has seen. */
const shown = (page) =>
  page.evaluate(() => ({
    ns: [...document.querySelectorAll('#log li span:nth-child(4)')].map((s) => JSON.parse(s.textContent).n).filter((n) => n !== undefined).reverse(),
    ids: window.demo.seen.ids,
  }));

// Without Web Locks (a page on plain HTTP that is not localhost), the tabs agree over the channel.
const withoutLocks = () => delete Navigator.prototype.locks;

for (const locks of [true, false]) {
  test(`eight tabs of the demo share one connection, and the tab that leads hands it over without loss or duplicates${locks ? '' : ' (without Web Locks)'}`, async () => {
    const gw = await start(['--demo', 'false']);
    const context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
    if (!locks) await context.addInitScript(withoutLocks);
    await publish(gw.base, { topic: 'demo/counters', data: { orders: 7 }, retain: true });
    const pages = [];
    for (let i = 0; i < 8; i++) pages.push(await open(gw.base + '/', context));
    // Every tab has the retained state, whether it came on the connection or was fetched.
    for (const page of pages) await page.waitForFunction(() => window.demo.seen.counters?.orders === 7, null, { timeout: PATIENCE });
    // One client at the gateway, whose id every tab shows.
    const [only] = await eventually(async () => {
      const list = await clients(gw.base);
      assert.equal(list.length, 1, JSON.stringify(list));
      return list;
    });
    for (const page of pages) assert.equal(await page.evaluate(() => window.demo.client.clientId), only.client_id);
    const point = (n) => publish(gw.base, { topic: 'demo/series', event: 'point', data: { t: n, value: n, n } });
    for (let n = 0; n < 5; n++) await point(n);
    for (const page of pages) await page.waitForFunction(() => window.demo.seen.points === 5, null, { timeout: PATIENCE });
    assert.equal((await clients(gw.base)).length, 1, 'still one client');

    // The first tab leads (it asked for the lock first). Close it, and publish during the hand-over.
    await pages.shift().close();
    for (let n = 5; n < 10; n++) await point(n);
    // The next tab opened a connection of its own (a new client), and is the only client.
    await eventually(async () => {
      const list = await clients(gw.base);
      assert.equal(list.length, 1, JSON.stringify(list));
      assert.notEqual(list[0].client_id, only.client_id, 'the leading tab has gone, so has its connection');
    });
    for (let n = 10; n < 15; n++) await point(n);
    // A last point: once a tab has it, everything before it has arrived, duplicates included.
    await point(15);
    const all = Array.from({ length: 16 }, (_, n) => n);
    for (const page of pages) {
      await page.waitForFunction(() => window.demo.seen.points >= 16, null, { timeout: PATIENCE });
      const { ns, ids } = await shown(page);
      assert.deepEqual(ns, all, 'every point once, in order');
      assert.equal(new Set(ids).size, ids.length, 'no event id twice');
      assert.equal(await page.evaluate(() => window.demo.seen.points), 16);
      assert.deepEqual(errors.get(page), [], 'the page logs no error');
    }
    await context.close();
  });
}

for (const transport of ['sse', 'ws']) {
  test(`tabs with different topics share one connection (${transport}): each sees its own topics, and the union follows the tabs`, async () => {
    const gw = await start(['--demo', 'false']);
    const context = await browser.newContext();
    // Plain pages of the gateway's origin, each with a client of its own topics.
    const tab = async (topics) => {
      const page = await context.newPage();
      await page.goto(gw.base + '/web/ssegate.d.ts');
      await page.evaluate(async ([topics, transport]) => {
        const { connect } = await import('/web/ssegate.js');
        window.got = [];
        window.shared = connect({ topics, transports: [transport] });
        window.shared.on('*', (ev) => ev.id && window.got.push(ev.topic + ' ' + ev.data));
      }, [topics, transport]);
      await page.waitForFunction(() => window.shared.status === 'open', null, { timeout: PATIENCE });
      return page;
    };
    const a = await tab(['t/a']);
    const b = await tab(['t/b', 'u/*']);
    const topicsAtGateway = async (expected) =>
      eventually(async () => {
        const list = await clients(gw.base);
        assert.equal(list.length, 1, JSON.stringify(list));
        assert.deepEqual([...list[0].topics].sort(), expected);
      });
    await topicsAtGateway(['t/a', 't/b', 'u/*']);
    for (const [topic, data] of [['t/a', 1], ['t/b', 2], ['u/x', 3], ['t/c', 4]]) await publish(gw.base, { topic, data });
    await a.waitForFunction(() => window.got.length >= 1, null, { timeout: PATIENCE });
    await b.waitForFunction(() => window.got.length >= 2, null, { timeout: PATIENCE });
    await b.evaluate(() => window.shared.subscribe('t/c'));
    await topicsAtGateway(['t/a', 't/b', 't/c', 'u/*']);
    await publish(gw.base, { topic: 't/c', data: 5 });
    await b.waitForFunction(() => window.got.includes('t/c 5'), null, { timeout: PATIENCE });
    assert.deepEqual(await a.evaluate(() => window.got), ['t/a 1']);
    // A new topic resumes from the connection's position, as a reconnect would: t/c 4 may come too.
    const got = await b.evaluate(() => window.got);
    assert.deepEqual(got.filter((e) => !e.startsWith('t/c')), ['t/b 2', 'u/x 3']);
    assert.equal(new Set(got).size, got.length, 'nothing twice');
    // A tab that closes its client gives up its topics.
    await b.evaluate(() => window.shared.close());
    await topicsAtGateway(['t/a']);
    await context.close();
  });
}

test('a tab that does not lead makes rpc calls through the leading tab', async () => {
  // The backend: answers "sum" with the sum, and anything else with an error of its own.
  const backend = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', () => {
      const { method, data } = JSON.parse(body);
      const [status, answer] = method == 'sum' ? [200, data[0] + data[1]] : [400, { error: { code: 'no_such_method', message: method } }];
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise((resolve) => backend.listen(0, '127.0.0.1', resolve));
  const gw = await start(['--demo', 'false', '--rpc-url', `http://127.0.0.1:${backend.address().port}/`]);
  const context = await browser.newContext();
  const pages = [];
  for (let i = 0; i < 2; i++) {
    const page = await context.newPage();
    await page.goto(gw.base + '/web/ssegate.d.ts');
    await page.evaluate(async () => {
      const { connect } = await import('/web/ssegate.js');
      window.shared = connect({ topics: ['t'], transports: ['ws'] });
    });
    await page.waitForFunction(() => window.shared.status === 'open', null, { timeout: PATIENCE });
    pages.push(page);
  }
  assert.equal((await clients(gw.base)).length, 1);
  const call = (page, method) =>
    page.evaluate((method) => window.shared.rpc(method, [2, 3]).then((data) => ({ data }), (e) => ({ code: e.code, message: e.message })), method);
  assert.deepEqual(await call(pages[1], 'sum'), { data: 5 });
  assert.deepEqual(await call(pages[1], 'nope'), { code: 'no_such_method', message: 'nope' });
  assert.deepEqual(await call(pages[0], 'sum'), { data: 5 });
  await context.close();
  await new Promise((resolve) => backend.close(resolve));
});

test('with shared: false every tab has a connection of its own', async () => {
  const gw = await start(['--demo', 'false']);
  const context = await browser.newContext();
  const pages = [await open(gw.base + '/?shared=0', context), await open(gw.base + '/?shared=0', context)];
  const ids = await Promise.all(pages.map((page) => page.evaluate(() => window.demo.client.clientId)));
  assert.notEqual(ids[0], ids[1]);
  assert.deepEqual((await clients(gw.base)).map((c) => c.client_id).sort(), ids.sort());
  await publish(gw.base, { topic: 'demo/series', event: 'point', data: { t: 1, value: 1, n: 1 } });
  for (const page of pages) await page.waitForFunction(() => window.demo.seen.points === 1, null, { timeout: PATIENCE });
  await context.close();
});

/**
 * A self-signed certificate for localhost and 127.0.0.1 made now (by the `test-cert` example, with
 * rcgen), written to a new directory: its files, and the base64 SHA-256 of its public key (SPKI),
 * which is how Chromium is told to trust it and nothing else.
 */
function testCert() {
  const dir = mkdtempSync(join(tmpdir(), 'ssegate-tls-'));
  const made = join(dirname(BIN), 'examples', 'test-cert');
  if (existsSync(made)) execFileSync(made, [dir], { stdio: 'ignore' });
  else execFileSync('cargo', ['run', '--quiet', '--release', '--example', 'test-cert', '--', dir], { cwd: join(here, '..', '..'), stdio: 'ignore' });
  const cert = join(dir, 'cert.pem');
  const spki = new X509Certificate(readFileSync(cert)).publicKey.export({ type: 'spki', format: 'der' });
  return { dir, cert, key: join(dir, 'key.pem'), spki: createHash('sha256').update(spki).digest('base64') };
}

test('over HTTPS, ten EventSources and the ssegate.js client (SSE and WebSocket) in one page share one HTTP/2 connection', async () => {
  const cert = testCert();
  const gw = await start(['--demo', 'false', '--tls-cert', cert.cert, '--tls-key', cert.key]);
  assert.match(gw.base, /^https:\/\/127\.0\.0\.1:/);
  // The other tests' browser refuses the certificate; a browser of its own accepts it (and no other).
  const refusing = await browser.newPage();
  await assert.rejects(refusing.goto(gw.base + '/healthz'), /ERR_CERT_AUTHORITY_INVALID/);
  await refusing.close();
  const trusting = await chromium.launch({ executablePath: CHROMIUM, args: [...CHROMIUM_ARGS, `--ignore-certificate-errors-spki-list=${cert.spki}`] });
  try {
    const page = await trusting.newPage();
    const logged = [];
    page.on('pageerror', (e) => logged.push(`page error: ${e}`));
    page.on('console', (m) => m.type() === 'error' && logged.push(`console error: ${m.text()}`));
    await page.goto(gw.base + '/web/ssegate.d.ts');
    assert.equal(await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol), 'h2');
    // Over HTTP/1.1 the seventh would wait for one of six connections; over HTTP/2 all ten open.
    await page.evaluate(() => {
      window.opened = 0;
      window.got = Array.from({ length: 10 }, () => []);
      window.sources = window.got.map((got) => {
        const source = new EventSource('/stream?topic=tls/ticks');
        source.addEventListener('welcome', () => window.opened++);
        source.addEventListener('tick', (e) => got.push(JSON.parse(e.data)));
        return source;
      });
    });
    await page.waitForFunction(() => window.opened === 10, null, { timeout: PATIENCE });
    // Everything else comes from the page too, so that the gateway sees the page's connection only.
    const call = (method, path, body) =>
      page.evaluate(async ([method, path, body]) => {
        const res = await fetch(path, { method, headers: body ? { 'content-type': 'application/json' } : {}, body: body && JSON.stringify(body) });
        const text = await res.text();
        // The request's resource timing entry (queued once the body is in), for its protocol.
        const url = new URL(path, location.href).href;
        let entry;
        for (let tries = 0; !entry && tries < 100; tries++) {
          entry = performance.getEntriesByType('resource').findLast((e) => e.name === url);
          if (!entry) await new Promise((resolve) => setTimeout(resolve, 10));
        }
        performance.clearResourceTimings();
        return { status: res.status, text, protocol: entry?.nextHopProtocol };
      }, [method, path, body]);
    const publish = async (body) => {
      const { status, text, protocol } = await call('POST', '/publish', body);
      assert.equal(status, 200, text);
      assert.equal(protocol, 'h2');
    };
    for (let n = 0; n < 3; n++) await publish({ topic: 'tls/ticks', event: 'tick', data: n });
    await page.waitForFunction(() => window.got.every((got) => got.length >= 3), null, { timeout: PATIENCE });
    assert.deepEqual(await page.evaluate(() => window.got), Array.from({ length: 10 }, () => [0, 1, 2]));

    // The browser client over HTTPS, on the same connection: over SSE, and over a WebSocket, which
    // Chromium opens as an HTTP/2 stream (RFC 8441's extended CONNECT).
    await page.evaluate(async () => {
      const { connect } = await import('/web/ssegate.js');
      window.clients = [connect({ topics: ['tls/ticks'] }), connect({ topics: ['tls/ticks'], transports: ['ws'], shared: false })];
      window.clientGot = window.clients.map((client) => {
        const got = [];
        client.on('tick', (data) => got.push(data));
        return got;
      });
    });
    await page.waitForFunction(() => window.clients.every((client) => client.status === 'open'), null, { timeout: PATIENCE });
    assert.deepEqual(await page.evaluate(() => window.clients.map((client) => client.transport)), ['sse', 'ws']);
    await publish({ topic: 'tls/ticks', event: 'tick', data: 3 });
    await page.waitForFunction(() => window.clientGot.every((got) => got.length >= 1) && window.got.every((got) => got.length >= 4), null, { timeout: PATIENCE });
    assert.deepEqual(await page.evaluate(() => window.clientGot), [[3], [3]]);
    const { text: listed } = await call('GET', '/clients');
    assert.equal(JSON.parse(listed).clients.length, 12, listed);

    // One TCP connection: an HTTP/2 one, and no other.
    const gauge = (text, protocol) => Number(text.match(new RegExp(`^ssegate_open_connections\\{protocol="${protocol}"\\} (\\S+)$`, 'm'))?.[1]);
    await eventually(async () => {
      const { status, text, protocol } = await call('GET', '/metrics');
      assert.equal(status, 200);
      assert.equal(protocol, 'h2');
      assert.deepEqual(['h2', 'https/1.1', 'http/1.1'].map((p) => gauge(text, p)), [1, 0, 0], text);
    });
    assert.deepEqual(logged, [], 'the page logs no error');
  } finally {
    await trusting.close();
    rmSync(cert.dir, { recursive: true, force: true });
  }
});

test('chromium and the gateway binary are where the tests expect them', () => {
  assert.ok(existsSync(CHROMIUM), CHROMIUM);
  assert.ok(existsSync(BIN), BIN);
});
