// ssegate browser client: one shared connection over SSE, WebSocket, long-poll or snapshot
// polling, with resume (lastEventId), fallback, backoff, a circuit breaker and retained state.
// No dependencies, no build step. Wire contract: API.md.

const ALL = ['sse', 'ws', 'long-poll', 'poll'];
const isObj = (v) => v && typeof v == 'object' && !Array.isArray(v);
const clone = (v) => (v === undefined ? v : globalThis.structuredClone ? structuredClone(v) : JSON.parse(JSON.stringify(v)));
const fail = (m) => { throw Error(m) };
// Plain assignment would treat a "__proto__" key as the prototype.
const put = (o, k, value) => Object.defineProperty(o, k, { value, enumerable: 1, writable: 1, configurable: 1 });
// Flags may come as booleans or as the strings/numbers the query form uses.
const flag = (v) => v === true || v === 1 || v === '1' || v === 'true' || v === '';

/** Newer-than for ids `<ms>-<seq>` (numeric); ids of another shape count as new when different. */
const newer = (a, b) => {
  if (!b) return true;
  const [x, y] = [a, b].map((s) => /^(\d+)-(\d+)$/.exec(s));
  return x && y ? (x[1] - y[1] || x[2] - y[2]) > 0 : a != b;
};

/** The contract's decision matrix, filtered to what the client supports. */
export function decide(f = {}, transports = ALL) {
  const rt = flag(f.realtime) && flag(f.low_latency);
  const order = flag(f.bidirectional) || (rt && !flag(f.server_push))
    ? ['ws', 'sse', 'long-poll', 'poll']
    : !rt && flag(f.legacy) ? ['long-poll', 'poll'] : ALL;
  return order.filter((t) => transports.includes(t));
}

/** Exponential backoff with full jitter. */
export const backoffDelay = (attempt, { base = 500, max = 15000 } = {}, rnd = Math.random) =>
  rnd() * Math.min(max, base * 2 ** attempt);

/** RFC 7386 JSON Merge Patch; returns a new value, `target` is not modified. */
export function mergePatch(target, patch) {
  if (!isObj(patch)) return clone(patch);
  const out = isObj(target) ? { ...target } : {};
  for (const k in patch) patch[k] === null ? delete out[k] : put(out, k, mergePatch(out[k], patch[k]));
  return out;
}

const equal = (a, b) => {
  if (a === b) return true;
  if (!a || !b || typeof a != 'object' || typeof b != 'object' || Array.isArray(a) != Array.isArray(b)) return false;
  const k = Object.keys(a);
  return k.length == Object.keys(b).length && k.every((i) => Object.hasOwn(b, i) && equal(a[i], b[i]));
};

/** RFC 6902 JSON Patch. Atomic: works on a copy and throws (leaving `doc` alone) on any failure. */
export function applyJsonPatch(doc, ops) {
  let root = clone(doc);
  const keys = (p) =>
    p === '' ? [] : p?.[0] == '/' ? p.slice(1).split('/').map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~')) : fail('bad path ' + p);
  // Resolves an index or key of container `o`; `end` allows the position just past an array.
  const idx = (o, k, end) =>
    Array.isArray(o)
      ? (k == '-' && end) || (/^(0|[1-9]\d*)$/.test(k) && +k < o.length + !!end) ? (k == '-' ? o.length : +k) : fail('bad index ' + k)
      : isObj(o) && (end || Object.hasOwn(o, k)) ? k : fail('no ' + k);
  const walk = (ks) => ks.reduce((o, k) => o[idx(o, k)], root);
  const get = (p) => walk(keys(p));
  const add = (p, v) => {
    const ks = keys(p), k = ks.pop();
    if (k === undefined) return (root = v);
    const o = walk(ks), i = idx(o, k, 1);
    Array.isArray(o) ? o.splice(i, 0, v) : put(o, i, v);
  };
  const remove = (p) => {
    const ks = keys(p), k = ks.pop();
    if (k === undefined) fail('cannot remove the root');
    const o = walk(ks), i = idx(o, k), v = o[i];
    Array.isArray(o) ? o.splice(i, 1) : delete o[i];
    return v;
  };
  for (const { op, path, from, value } of clone(ops)) {
    if (op == 'add') add(path, value);
    else if (op == 'remove') remove(path);
    else if (op == 'replace') get(path), path ? (remove(path), add(path, value)) : (root = value);
    else if (op == 'move') get(from), path.startsWith(from + '/') ? fail('move into itself') : from != path && add(path, remove(from));
    else if (op == 'copy') add(path, clone(get(from)));
    else if (op == 'test') equal(get(path), value) || fail('test failed at ' + path);
    else fail('bad op ' + op);
  }
  return root;
}

/** Retained state per topic: `{version, state}`, fed snapshot and patch events in version order. */
export class StateStore {
  constructor(onGap, onChange) {
    this.topics = new Map();
    this.onGap = onGap;
    this.onChange = onChange;
  }
  get(topic) {
    return this.topics.get(topic);
  }
  /** Returns 'snapshot' | 'patch' (applied), 'stale' (ignored), 'gap' (snapshot needed), or undefined. */
  apply(ev, force) {
    const d = ev.data || {}, t = d.topic ?? ev.topic, cur = this.topics.get(t), v = d.version;
    let r = 'stale', state;
    if (ev.event == 'snapshot') {
      if (force || !cur || v > cur.version) (r = ev.event), (state = d.state);
    } else if (ev.event == 'patch') {
      if (!cur || v > cur.version + 1) r = 'gap';
      else if (v == cur.version + 1)
        try {
          state = 'json_patch' in d ? applyJsonPatch(cur.state, d.json_patch) : mergePatch(cur.state, d.patch);
          r = ev.event;
        } catch {
          r = 'gap'; // our copy disagrees with the server's: reload it
        }
    } else return;
    if (r == 'gap') this.onGap?.(t);
    else if (r != 'stale') this.topics.set(t, { version: v, state }), this.onChange?.(t, state, v);
    return r;
  }
}

/** Opens one shared connection; see ssegate.d.ts for the options and the returned client. */
export function connect(o = {}) {
  const url = o.url || '', allowed = o.transports || ALL, flags = o.flags || {};
  const { failures = 6, cooldown = 30000 } = o.circuit || {};
  const topics = new Set(o.topics), handlers = new Map(), statusFns = new Set(), watchers = new Map();
  const dirty = new Set(), busy = new Set(), pending = new Map();
  let order = [], idx = 0, attempt = 0, gen = 0, cur, timer, to, raf, ref = 0, restart, cid;
  const throttle = o.throttleMs > 0 ? o.throttleMs : undefined;
  const abs = (p) => new URL(url + p, globalThis.location?.href).href;
  // Plain requests (not the long poll) get a time limit, so a silent server cannot stall them.
  const get = (p, headers) => fetch(abs(p), { headers, signal: AbortSignal.timeout?.(1e4) });
  const qs = (q) => {
    const p = new URLSearchParams();
    for (const k in q) for (const v of [].concat(q[k] ?? [])) p.append(k, v);
    return p;
  };
  // Reports a handler's exception without breaking the connection that delivered the event.
  const safe = (f, ...a) => { try { f(...a) } catch (e) { setTimeout(() => { throw e }) } };
  const later = (f, ms) => (timer = setTimeout(f, ms));

  const c = { status: 'connecting', lastEventId: o.lastEventId };
  const st = (status, error) => {
    c.status = status;
    const s = { status, transport: c.transport, clientId: c.clientId, attempt, error };
    statusFns.forEach((f) => safe(f, s));
  };
  const pos = (id) => id && newer(id, c.lastEventId) && (c.lastEventId = id);

  // Watchers are told once per animation frame, with the state as it is then.
  const flush = () => {
    raf = 0;
    for (const t of dirty) {
      const s = store.get(t);
      s && watchers.get(t)?.forEach((f) => safe(f, s.state, s.version, t));
    }
    dirty.clear();
  };
  const changed = (t) => {
    dirty.add(t);
    raf ||= (globalThis.requestAnimationFrame || ((f) => setTimeout(f, 16)))(flush);
  };
  const snap = async (t, force) => {
    if (busy.has(t)) return;
    busy.add(t);
    try {
      const r = await get('/snapshot?' + qs({ topic: t }));
      r.ok && store.apply({ event: 'snapshot', data: await r.json() }, force);
    } catch {} // the next event or reconnect tries again
    busy.delete(t);
  };
  const store = new StateStore(snap, changed);

  // Every transport delivers here, in the envelope shape {id, topic, event, data, ts}.
  const deliver = (ev) => {
    const e = ev.event;
    // Snapshots and resets carry a position, not a new event: never dropped as duplicates.
    if (ev.id && e != 'snapshot' && e != 'reset' && !newer(ev.id, c.lastEventId)) return;
    pos(ev.id);
    if (e == 'reset') for (const t of watchers.keys()) snap(t, 1);
    // A snapshot on the stream is consistent with the events that follow it, so it replaces even
    // an older version (the gateway restarted with fresh state); fetched ones only when newer.
    store.apply(ev, e == 'snapshot');
    handlers.get(e)?.forEach((f) => safe(f, ev.data, ev));
    handlers.get('*')?.forEach((f) => safe(f, ev));
  };

  const transports = {
    sse(x) {
      const es = new EventSource(abs('/stream?' + qs({ topic: [...topics], envelope: 1, lastEventId: c.lastEventId, throttle_ms: throttle })));
      const names = new Set();
      const listen = (n) => {
        if (names.has(n)) return;
        names.add(n);
        es.addEventListener(n, (m) => {
          let d = m.data;
          try { d = JSON.parse(d) } catch {}
          if (n == 'welcome') pos(m.lastEventId), x.open(d.client_id);
          else if (n == 'snapshot') x.ev({ topic: d.topic, event: n, data: d });
          else if (n == 'reset') x.ev({ id: m.lastEventId, event: n, data: d });
          else x.ev(d); // envelope=1: the whole event
        });
      };
      ['welcome', 'reset', 'snapshot', 'patch', 'message', ...handlers.keys()].forEach(listen);
      // Our own reconnect logic replaces the browser's, so fallback and the circuit work.
      es.onerror = () => x.fail('sse error');
      return { close: () => es.close(), listen };
    },
    ws(x) {
      const w = new WebSocket(abs('/ws?' + qs({ topic: [...topics], lastEventId: c.lastEventId, throttle_ms: throttle })).replace(/^http/, 'ws'));
      const send = (m) => w.readyState == 1 && (w.send(JSON.stringify(m)), 1);
      w.onmessage = (m) => {
        const { type, ...d } = JSON.parse(m.data), p = pending.get(d.ref);
        if (type == 'welcome') x.open(d.client_id);
        else if (type == 'event') x.ev(d);
        else if (type == 'snapshot') x.ev({ topic: d.topic, event: type, data: d });
        else if (type == 'reset') x.ev({ event: type, data: d });
        else if (p) pending.delete(d.ref), type == 'error' ? p[1](Object.assign(Error(d.message), d)) : p[0](d.data);
      };
      w.onclose = (e) => x.fail('ws closed ' + e.code);
      return {
        close: () => w.close(1000),
        send,
        sub: (ts, un) => send({ type: un ? 'unsubscribe' : 'subscribe', topics: ts, ref: '' + ++ref, ...(un ? {} : { last_event_id: c.lastEventId, throttle_ms: throttle }) }),
      };
    },
    'long-poll'(x) {
      let ac, id = c.transport == 'long-poll' ? cid : undefined;
      (async () => {
        for (let first = 1; ; first = 0) {
          ac = new AbortController();
          const t = setTimeout(() => ac.abort(), 35e3); // a silent, half-open request must end
          const j = await fetch(abs('/poll?' + qs({ topic: [...topics], cursor: c.lastEventId, client_id: id, timeout: 25, throttle_ms: throttle })), { signal: ac.signal })
            .then((r) => (r.ok ? r.json() : fail('poll ' + r.status)))
            .finally(() => clearTimeout(t));
          id = j.client_id;
          first && x.open(id);
          j.events.forEach(x.ev);
          if (!x.ev.live()) return;
          pos(j.cursor);
        }
      })().catch((e) => x.fail(e));
      return { close: () => ac.abort() };
    },
    poll(x) {
      const tags = {};
      let t, first = 1;
      const round = async () => {
        let every = 2000;
        await Promise.all([...topics].filter((s) => !s.includes('*')).map(async (s) => {
          const r = await get('/snapshot?' + qs({ topic: s }), tags[s] && { 'If-None-Match': tags[s] });
          every = +r.headers.get('X-Poll-Interval') || every;
          if (r.status == 200) {
            tags[s] = r.headers.get('ETag');
            const { cursor, ...d } = await r.json();
            x.ev({ topic: d.topic, event: 'snapshot', data: d });
          } else if (r.status != 304 && (r.status != 404 || (await r.json()).error?.code != 'unknown_topic')) fail('snapshot ' + r.status);
        }));
        first && x.open(), (first = 0);
        if (x.ev.live()) t = setTimeout(() => round().catch(x.fail), every);
      };
      round().catch(x.fail);
      return { close: () => clearTimeout(t) };
    },
  };

  // Opens order[idx]. A failure before it opened moves on to the next transport at once; a drop
  // after it opened reconnects the same one after a backoff delay.
  const run = () => {
    [timer, to].forEach(clearTimeout);
    const name = order[idx], my = ++gen;
    let opened, h;
    c.transport = name;
    const live = () => my == gen;
    const ev = (e) => live() && deliver(e);
    ev.live = live;
    const x = {
      ev,
      open(id) {
        if (!live()) return;
        clearTimeout(to);
        opened = 1, (attempt = 0), (cid = c.clientId = id);
        st('open');
      },
      fail(err) {
        if (!live()) return;
        gen++;
        clearTimeout(to);
        h?.close();
        drop();
        if (opened) st('reconnecting', err), later(run, backoffDelay(attempt, o.backoff));
        else attempt++, idx++, next(err);
      },
    };
    to = setTimeout(() => x.fail('timeout'), 1e4);
    try {
      h = transports[name](x);
      live() ? (cur = h) : h.close();
    } catch (e) {
      x.fail(e); // e.g. no EventSource / WebSocket in this environment
    }
  };
  const next = (err) => {
    if (attempt >= failures) {
      st('circuit-open', err);
      later(() => ((attempt = 0), st('reconnecting'), start()), cooldown);
    } else if (idx < order.length) run();
    else (idx = 0), st('reconnecting', err), later(run, backoffDelay(attempt, o.backoff));
  };
  const start = async () => {
    order = [];
    if (o.negotiate ?? true)
      try {
        const q = qs({ ...flags, transports: allowed.join() });
        const r = await get('/negotiate?' + q);
        const j = r.ok && (await r.json());
        order = j ? [j.transport, ...(j.fallbacks || [])].filter((t) => allowed.includes(t) && transports[t]) : [];
      } catch {}
    if (c.status == 'closed') return;
    if (!order.length) order = decide(flags, allowed);
    idx = 0;
    order.length ? run() : (attempt = failures, next('no transport'));
  };
  // Topic changes: WebSocket sends frames; the others reconnect (once per tick) and resume.
  // `cur` is the live transport, opened or still connecting (none while waiting to retry).
  const retopic = (t, un) => {
    if (!cur || cur.sub?.([t], un) || restart) return;
    restart = setTimeout(() => {
      restart = 0;
      if (cur) gen++, cur.close(), run();
    });
  };
  const drop = () => {
    cur = null;
    for (const [, p] of pending) p[1](Error('connection lost'));
    pending.clear();
  };

  Object.assign(c, {
    on(name, fn) {
      handlers.has(name) || (handlers.set(name, new Set()), cur?.listen?.(name));
      handlers.get(name).add(fn);
      return c;
    },
    off: (name, fn) => (handlers.get(name)?.delete(fn), c),
    subscribe: (t) => topics.has(t) || (topics.add(t), retopic(t)),
    unsubscribe: (t) => topics.delete(t) && retopic(t, 1),
    state(t, fn) {
      watchers.has(t) || watchers.set(t, new Set());
      watchers.get(t).add(fn);
      store.get(t) && changed(t);
      return () => watchers.get(t)?.delete(fn);
    },
    onStatus: (fn) => (statusFns.add(fn), () => statusFns.delete(fn)),
    rpc: (method, data) =>
      new Promise((res, rej) => {
        const r = '' + ++ref;
        cur?.send?.({ type: 'rpc', method, data, ref: r }) ? pending.set(r, [res, rej]) : rej(Error('rpc needs an open WebSocket'));
      }),
    store,
    close() {
      gen++;
      [timer, to, restart].forEach(clearTimeout);
      cur?.close();
      drop();
      st('closed');
    },
  });
  // Start after the caller has registered its handlers and topics in this tick.
  Promise.resolve().then(() => c.status != 'closed' && (st('connecting'), start()));
  return c;
}
