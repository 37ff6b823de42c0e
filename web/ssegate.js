// ssegate browser client: one shared connection over SSE, WebSocket, long-poll or snapshot
// polling, with resume (lastEventId), fallback, backoff, a circuit breaker and retained state.
// No dependencies, no build step. Wire contract: API.md. Types and option docs: ssegate.d.ts.
//
// Layout of this file:
// - small helpers, then the pure parts (each exported and unit-tested): topicMatches(), decide()
//   (which transports, in which order), backoffDelay(), mergePatch(), applyJsonPatch() and
//   StateStore (retained state per topic);
// - connect(), which runs the connection. Its life cycle:
//   1. start(): ask GET /negotiate for an order of transports, or use decide() locally.
//   2. openTransport(): open the transport at transportIndex in that order. Every attempt gets a
//      generation number; a callback of an older attempt (a socket that closes late, a poll answer
//      that arrives after close()) sees that it is stale and does nothing.
//   3. An attempt that fails before it opened moves on to the next transport at once (fallback);
//      a connection that drops after it opened is reopened, same transport, after a backoff delay.
//      When every transport has failed, it starts over at the first after a backoff delay.
//   4. After `circuit.failures` consecutive failed attempts the circuit opens: nothing is tried
//      for `circuit.cooldown` ms, then it negotiates again from step 1.
//   Every reconnect resumes from client.lastEventId, the newest event id (or long-poll cursor)
//   received, so nothing is missed and nothing is delivered twice across reconnects and
//   transport switches: the gateway replays what came after it from its history.
// - in a browser, the tabs of an origin share that connection: one tab leads (a Web Lock, or an
//   agreement over the BroadcastChannel without Web Locks), connects with every tab's topics and
//   relays the events; see "Shared" at the end of connect().

const ALL_TRANSPORTS = ['sse', 'ws', 'long-poll', 'poll'];
const CONNECT_TIMEOUT_MS = 10000; // an attempt that has not opened by then has failed
const REQUEST_TIMEOUT_MS = 10000; // plain requests: /negotiate, /snapshot
const LONG_POLL_WAIT_S = 25; // how long the gateway holds a long poll open
const LONG_POLL_ABORT_MS = 35000; // a long poll unanswered by then is presumed half-open
const DEFAULT_POLL_INTERVAL_MS = 2000; // snapshot polling, unless X-Poll-Interval says otherwise
const RENEW_BEFORE_MS = 30000; // a renewable token is renewed this long before it expires
const MAX_TIMER_MS = 2 ** 31 - 1; // setTimeout's longest delay

/**
 * When a JWT expires (its `exp` claim, in ms), or undefined when it does not say or is not a JWT.
 * The token is only read here, never verified: the gateway verifies it.
 * @param {string} [jwt]
 * @returns {number | undefined}
 */
export function tokenExpiry(jwt) {
  try {
    const payload = JSON.parse(atob(jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return typeof payload.exp == 'number' ? payload.exp * 1000 : undefined;
  } catch {}
}

const isPlainObject = (value) => value && typeof value == 'object' && !Array.isArray(value);

const deepCopy = (value) => {
  if (value === undefined) return value;
  return globalThis.structuredClone ? structuredClone(value) : JSON.parse(JSON.stringify(value));
};

const throwError = (message) => {
  throw Error(message);
};

// Plain assignment would treat a "__proto__" key as the prototype; this stores it as data.
const setProperty = (object, key, value) =>
  Object.defineProperty(object, key, { value, enumerable: 1, writable: 1, configurable: 1 });

// Flags may come as booleans or as the strings/numbers the query form uses ('1', 'true', bare).
const isFlagSet = (value) => value === true || value === 1 || value === '1' || value === 'true' || value === '';

const EVENT_ID = /^(\d+)-(\d+)$/;

/**
 * Whether event id `id` comes after `than`. The gateway's ids are `<ms>-<seq>` and compare
 * numerically; ids of another shape (another broker's) count as newer whenever they differ.
 */
function isNewerId(id, than) {
  if (!than) return true;
  const idParts = EVENT_ID.exec(id);
  const thanParts = EVENT_ID.exec(than);
  if (!idParts || !thanParts) return id != than;
  const byMilliseconds = idParts[1] - thanParts[1];
  const bySequence = idParts[2] - thanParts[2];
  return (byMilliseconds || bySequence) > 0;
}

/**
 * Whether subscription `pattern` covers `topic` (API.md: `a/*` one more segment, `a/**` one or
 * more, `**` every topic).
 * @param {string} pattern
 * @param {string} topic
 */
export function topicMatches(pattern, topic) {
  const rest = topic.slice(pattern.length - pattern.endsWith('/**') - 1);
  return (
    pattern == '**' ||
    pattern == topic ||
    (/\/\*\*?$/.test(pattern) && topic.startsWith(pattern.replace(/\*+$/, '')) && !!rest && (pattern.endsWith('**') || !rest.includes('/')))
  );
}

// ---------------------------------------------------------------------------------------------
// Choosing a transport

/**
 * The contract's decision matrix (the same as `GET /negotiate`): the transports in order of
 * preference for a client described by `flags`, filtered to `transports` (what this client can
 * use). Bidirectional, or real-time and low latency without `server_push`: WebSocket first.
 * Legacy (and not real-time): long-poll, then snapshot polling. Otherwise SSE first.
 * @param {import('./ssegate').Flags} [flags]
 * @param {import('./ssegate').Transport[]} [transports]
 * @returns {import('./ssegate').Transport[]}
 */
export function decide(flags = {}, transports = ALL_TRANSPORTS) {
  const realtime = isFlagSet(flags.realtime) && isFlagSet(flags.low_latency);
  let preference;
  if (isFlagSet(flags.bidirectional) || (realtime && !isFlagSet(flags.server_push))) {
    preference = ['ws', 'sse', 'long-poll', 'poll'];
  } else if (!realtime && isFlagSet(flags.legacy)) {
    preference = ['long-poll', 'poll'];
  } else {
    preference = ALL_TRANSPORTS;
  }
  return preference.filter((transport) => transports.includes(transport));
}

/**
 * Exponential backoff with full jitter: a random delay in `[0, min(max, base * 2 ** attempt))`
 * ms, so that many clients dropped at once (a gateway restart) do not all come back at once.
 * @param {number} attempt consecutive failed attempts so far
 * @param {import('./ssegate').BackoffOptions} [options] `base` (default 500) and `max` (default 15000) ms
 * @param {() => number} [random] a source of numbers in [0, 1)
 * @returns {number} ms
 */
export const backoffDelay = (attempt, { base = 500, max = 15000 } = {}, random = Math.random) =>
  random() * Math.min(max, base * 2 ** attempt);

// ---------------------------------------------------------------------------------------------
// Patches

/**
 * RFC 7386 JSON Merge Patch: objects merge key by key, `null` deletes a key, anything else
 * replaces. Returns a new value; `target` and `patch` are not modified.
 * @param {unknown} target
 * @param {unknown} patch
 * @returns {any}
 */
export function mergePatch(target, patch) {
  if (!isPlainObject(patch)) return deepCopy(patch);
  const result = isPlainObject(target) ? { ...target } : {};
  for (const key in patch) {
    if (patch[key] === null) delete result[key];
    else setProperty(result, key, mergePatch(result[key], patch[key]));
  }
  return result;
}

/** Structural equality of JSON values, as RFC 6902's `test` operation defines it. */
function jsonEqual(a, b) {
  if (a === b) return true;
  if (!a || !b || typeof a != 'object' || typeof b != 'object') return false;
  if (Array.isArray(a) != Array.isArray(b)) return false;
  const keys = Object.keys(a);
  if (keys.length != Object.keys(b).length) return false;
  return keys.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]));
}

/**
 * RFC 6902 JSON Patch. Atomic: it works on a copy and throws on any failure, so `doc` is never
 * left half-patched; the retained state then asks for a fresh snapshot instead.
 * @param {unknown} doc
 * @param {import('./ssegate').JsonPatchOp[]} operations
 * @returns {any} the new document
 */
export function applyJsonPatch(doc, operations) {
  let root = deepCopy(doc);

  // A JSON Pointer (RFC 6901) as its reference tokens; '~1' is unescaped before '~0', as the
  // RFC requires, so '~01' becomes '~1' and not '/'.
  const parsePointer = (pointer) => {
    if (pointer === '') return [];
    if (pointer?.[0] != '/') throwError('bad path ' + pointer);
    return pointer
      .slice(1)
      .split('/')
      .map((token) => token.replace(/~1/g, '/').replace(/~0/g, '~'));
  };

  // The array index or object key that `token` names in `container`. `forInsert` also allows
  // the position just past the end of an array ('-' or its length) and a key not there yet.
  const resolveToken = (container, token, forInsert) => {
    if (Array.isArray(container)) {
      if (token == '-' && forInsert) return container.length;
      if (/^(0|[1-9]\d*)$/.test(token) && +token < container.length + !!forInsert) return +token;
      throwError('bad index ' + token);
    }
    if (isPlainObject(container) && (forInsert || Object.hasOwn(container, token))) return token;
    throwError('no ' + token);
  };

  const walk = (tokens) => tokens.reduce((node, token) => node[resolveToken(node, token)], root);
  const getValue = (pointer) => walk(parsePointer(pointer));

  const addValue = (pointer, value) => {
    const tokens = parsePointer(pointer);
    const last = tokens.pop();
    if (last === undefined) return (root = value);
    const parent = walk(tokens);
    const position = resolveToken(parent, last, true);
    if (Array.isArray(parent)) parent.splice(position, 0, value);
    else setProperty(parent, position, value);
  };

  // Removes the value at `pointer` and returns it.
  const removeValue = (pointer) => {
    const tokens = parsePointer(pointer);
    const last = tokens.pop();
    if (last === undefined) throwError('cannot remove the root');
    const parent = walk(tokens);
    const position = resolveToken(parent, last);
    const removed = parent[position];
    if (Array.isArray(parent)) parent.splice(position, 1);
    else delete parent[position];
    return removed;
  };

  // The operations are copied too, so the result never shares a `value` with them.
  for (const { op, path, from, value } of deepCopy(operations)) {
    if (op == 'add') {
      addValue(path, value);
    } else if (op == 'remove') {
      removeValue(path);
    } else if (op == 'replace') {
      getValue(path); // the target must exist
      if (path) removeValue(path), addValue(path, value);
      else root = value;
    } else if (op == 'move') {
      getValue(from);
      if (path.startsWith(from + '/')) throwError('move into itself');
      if (from != path) addValue(path, removeValue(from));
    } else if (op == 'copy') {
      addValue(path, deepCopy(getValue(from)));
    } else if (op == 'test') {
      if (!jsonEqual(getValue(path), value)) throwError('test failed at ' + path);
    } else {
      throwError('bad op ' + op);
    }
  }
  return root;
}

// ---------------------------------------------------------------------------------------------
// Retained state

/**
 * Retained state per topic: `{version, state}`, fed `snapshot` and `patch` events. A snapshot
 * replaces the state when it is newer; a patch applies only to the version just before it, so a
 * missed or out-of-order patch is noticed (a "gap") and a fresh snapshot is fetched.
 */
export class StateStore {
  /**
   * @param {(topic: string) => void} [onGap] called when a topic needs a fresh snapshot
   * @param {(topic: string, state: unknown, version: number) => void} [onChange] called after every change
   */
  constructor(onGap, onChange) {
    this.topics = new Map();
    this.onGap = onGap;
    this.onChange = onChange;
  }

  /** The `{version, state}` of a topic, or undefined. */
  get(topic) {
    return this.topics.get(topic);
  }

  /**
   * Applies a `snapshot` (when newer, or always with `force`) or a `patch` event.
   * Returns 'snapshot' or 'patch' when applied, 'stale' when ignored as not newer, 'gap' when a
   * snapshot is needed first, or undefined for any other event.
   */
  apply(event, force) {
    const data = event.data || {};
    const topic = data.topic ?? event.topic;
    const current = this.topics.get(topic);
    const version = data.version;
    let result = 'stale';
    let state;
    if (event.event == 'snapshot') {
      if (force || !current || version > current.version) {
        result = 'snapshot';
        state = data.state;
      }
    } else if (event.event == 'patch') {
      if (!current || version > current.version + 1) {
        result = 'gap'; // a patch is missing in between, or we have nothing to patch
      } else if (version == current.version + 1) {
        try {
          state = 'json_patch' in data
            ? applyJsonPatch(current.state, data.json_patch)
            : mergePatch(current.state, data.patch);
          result = 'patch';
        } catch {
          result = 'gap'; // our copy disagrees with the server's: reload it
        }
      }
    } else {
      return;
    }
    if (result == 'gap') {
      this.onGap?.(topic);
    } else if (result != 'stale') {
      this.topics.set(topic, { version, state });
      this.onChange?.(topic, state, version);
    }
    return result;
  }
}

// ---------------------------------------------------------------------------------------------
// The connection

/**
 * Opens one connection that every part of the page shares (topics are added and removed on it),
 * after the current tick, so handlers and topics registered right after this call are in place.
 * @param {import('./ssegate').ConnectOptions} [options]
 * @returns {import('./ssegate').Client}
 */
export function connect(options = {}) {
  const baseUrl = options.url || '';
  const allowedTransports = options.transports || ALL_TRANSPORTS;
  const flags = options.flags || {};
  const { failures: circuitFailures = 6, cooldown: circuitCooldownMs = 30000 } = options.circuit || {};
  const throttleMs = options.throttleMs > 0 ? options.throttleMs : undefined;

  const topics = new Set(options.topics);
  const handlersByEvent = new Map(); // event name (or '*') -> Set of handlers
  const statusListeners = new Set();
  const stateWatchers = new Map(); // topic -> Set of watchers
  const changedTopics = new Set(); // topics whose watchers are due at the next frame
  const snapshotsInFlight = new Set(); // topics with a GET /snapshot under way
  const pendingRpcs = new Map(); // ref -> [resolve, reject]

  let transportOrder = []; // from /negotiate or decide()
  let transportIndex = 0; // the transport in transportOrder being tried
  let failedAttempts = 0; // consecutive, since the last successful open
  let generation = 0; // bumped whenever the current attempt ends; see openTransport()
  let currentTransport; // the live transport's handle, opened or connecting; none between attempts
  let retryTimer; // the next attempt, after a backoff delay or the circuit's cool-down
  let connectTimer; // fails the current attempt if it has not opened in time
  let frameRequested; // watchers are due at the next animation frame
  let lastRef = 0; // numbers the `ref` of WebSocket frames
  let restartTimer; // reconnects once for all the topic changes of one tick
  let lastClientId; // the client_id of the last connection that opened
  let pollSession; // {clientId, session}: the long-poll session we own, by its secret
  let token = typeof options.token == 'function' ? undefined : options.token; // the JWT in use
  let renewTimer; // renews a token from options.token() before it expires
  // Sharing one connection among the tabs of this origin (see `shared` below).
  // A page or worker (not a Node process) with BroadcastChannel; elsewhere every client connects
  // by itself. Web Locks (which need a secure context: HTTPS or localhost) choose the leading
  // tab; without them the tabs agree over the channel.
  const shared = (options.shared ?? true) && globalThis.location && globalThis.BroadcastChannel;
  const locks = globalThis.navigator?.locks;
  const tabId = Math.random() + '';
  const otherTabs = new Map(); // tab id -> {topics, names}: what the other tabs want
  let channel; // the BroadcastChannel of this gateway's tabs
  let leading; // this tab holds the lock, and so the connection
  let releaseLock; // lets the lock go
  let leader; // the id of the tab that leads, as far as we know
  let claimTimer; // without Web Locks: this tab leads unless a leading tab speaks up first
  let pingTimer; // without Web Locks: asks now and then whether the leading tab is still there
  let subscribed = new Set(topics); // the topics the connection has (the union over the tabs)

  const absoluteUrl = (pathAndQuery) => new URL(baseUrl + pathAndQuery, globalThis.location?.href).href;

  // The token goes in the Authorization header where the transport can set one (fetch), and as
  // access_token where it cannot (EventSource, WebSocket).
  const withToken = (headers) => (token ? { ...headers, Authorization: 'Bearer ' + token } : headers);

  // Plain requests (not the long poll) get a time limit, so a silent server cannot stall them.
  const request = (pathAndQuery, headers) =>
    fetch(absoluteUrl(pathAndQuery), { headers: withToken(headers), signal: AbortSignal.timeout?.(REQUEST_TIMEOUT_MS) });

  // A renewable token (options.token is a function) is asked for before the first connection,
  // again before it expires (then the connection reopens with it, resuming from lastEventId),
  // and after a failure once it has expired.
  const renewable = typeof options.token == 'function';
  const tokenExpiring = () => renewable && (!token || (tokenExpiry(token) ?? Infinity) - Date.now() < RENEW_BEFORE_MS);
  const fetchToken = async () => {
    try {
      token = await options.token();
    } catch {} // keep the old one; the gateway says whether it still works
    clearTimeout(renewTimer);
    const left = (tokenExpiry(token) ?? Infinity) - Date.now();
    if (renewable && isFinite(left) && client.status != 'closed') {
      renewTimer = setTimeout(renewToken, Math.min(MAX_TIMER_MS, Math.max(1000, Math.min(left - RENEW_BEFORE_MS, left * 0.8))));
    }
  };
  const renewToken = async () => {
    await fetchToken();
    if (currentTransport && client.status != 'closed') {
      generation++; // so closing it is not taken for a failure
      currentTransport.close();
      dropConnection();
      openTransport();
    }
  };
  // Opens the next attempt, with a fresh token first if ours has run out.
  const reopen = () => (tokenExpiring() ? fetchToken().then(openTransport) : openTransport());

  // A query string: arrays become repeated parameters, undefined and null are left out.
  const queryString = (params) => {
    const query = new URLSearchParams();
    for (const name in params) for (const value of [].concat(params[name] ?? [])) query.append(name, value);
    return query;
  };

  // Reports a handler's exception without breaking the connection that delivered the event.
  const callSafely = (fn, ...args) => {
    try {
      fn(...args);
    } catch (error) {
      setTimeout(() => {
        throw error;
      });
    }
  };

  const retryLater = (fn, ms) => (retryTimer = setTimeout(fn, ms));

  const client = { status: 'connecting', lastEventId: options.lastEventId };

  const setStatus = (status, error) => {
    client.status = status;
    postStatus();
    const info = { status, transport: client.transport, clientId: client.clientId, attempt: failedAttempts, error };
    statusListeners.forEach((listener) => callSafely(listener, info));
  };

  // The resume position only moves forward.
  const advancePosition = (id) => id && isNewerId(id, client.lastEventId) && (client.lastEventId = id);

  // Retained state. Watchers are told once per animation frame, with the state as it is then,
  // so a burst of patches costs one render.
  const notifyWatchers = () => {
    frameRequested = 0;
    for (const topic of changedTopics) {
      const entry = store.get(topic);
      if (entry) stateWatchers.get(topic)?.forEach((watcher) => callSafely(watcher, entry.state, entry.version, topic));
    }
    changedTopics.clear();
  };
  const stateChanged = (topic) => {
    changedTopics.add(topic);
    frameRequested ||= (globalThis.requestAnimationFrame || ((fn) => setTimeout(fn, 16)))(notifyWatchers);
  };
  // Fetches a topic's snapshot (after a gap or a reset); one request per topic at a time.
  const fetchSnapshot = async (topic, force) => {
    if (snapshotsInFlight.has(topic)) return;
    snapshotsInFlight.add(topic);
    try {
      const response = await request('/snapshot?' + queryString({ topic }));
      if (response.ok) store.apply({ event: 'snapshot', data: await response.json() }, force);
    } catch {} // the next event or reconnect tries again
    snapshotsInFlight.delete(topic);
  };
  const store = new StateStore(fetchSnapshot, stateChanged);

  // Every transport delivers here, in the envelope shape {id, topic, event, data, ts}.
  const deliver = (event) => {
    const name = event.event;
    // Drop what we already have (a resumed stream may repeat the last event). Snapshots and
    // resets carry a position, not a new event: never dropped as duplicates.
    if (event.id && name != 'snapshot' && name != 'reset' && !isNewerId(event.id, client.lastEventId)) return;
    advancePosition(event.id);
    if (leading) post({ event, from: tabId });
    // The connection carries every tab's topics: this tab sees its own only.
    if (shared && event.topic && ![...topics].some((pattern) => topicMatches(pattern, event.topic))) return;
    // A reset means our position was unknown or too old: what we hold may be out of date.
    if (name == 'reset') for (const topic of stateWatchers.keys()) fetchSnapshot(topic, true);
    // A snapshot on the stream is consistent with the events that follow it, so it replaces even
    // an older version (the gateway restarted with fresh state); fetched ones only when newer.
    store.apply(event, name == 'snapshot');
    handlersByEvent.get(name)?.forEach((handler) => callSafely(handler, event.data, event));
    handlersByEvent.get('*')?.forEach((handler) => callSafely(handler, event));
  };

  // The transports. Each is started with `attempt`, whose functions it calls:
  //   attempt.open(clientId)   the connection is established (once, at the gateway's welcome);
  //   attempt.deliver(event)   an event in the envelope shape;
  //   attempt.fail(error)      the connection failed or ended;
  //   attempt.isCurrent()      false once this attempt is over (stop polling).
  // It returns a handle: close(), and optionally listen(eventName) (SSE), send(frame) and
  // updateTopics(topics, unsubscribe) (WebSocket).
  const transports = {
    // SSE: GET /stream with envelope=1, so every event's data is the whole envelope and events of
    // several topics can be told apart. The gateway's own events (welcome, snapshot, reset) are
    // not enveloped.
    sse(attempt) {
      const query = {
        topic: union(),
        envelope: 1,
        lastEventId: client.lastEventId,
        throttle_ms: throttleMs,
        access_token: token,
      };
      const source = new EventSource(absoluteUrl('/stream?' + queryString(query)));
      // EventSource only reports event names that someone listens to.
      const listening = new Set();
      const listen = (eventName) => {
        if (listening.has(eventName)) return;
        listening.add(eventName);
        source.addEventListener(eventName, (message) => {
          let data = message.data;
          try {
            data = JSON.parse(data);
          } catch {}
          if (eventName == 'welcome') {
            advancePosition(message.lastEventId);
            attempt.open(data.client_id);
          } else if (eventName == 'snapshot') {
            attempt.deliver({ topic: data.topic, event: eventName, data });
          } else if (eventName == 'reset') {
            attempt.deliver({ id: message.lastEventId, event: eventName, data });
          } else {
            attempt.deliver(data); // envelope=1: the whole event
          }
        });
      };
      ['welcome', 'reset', 'snapshot', 'patch', 'message', ...names()].forEach(listen);
      // Our own reconnect logic replaces the browser's, so fallback and the circuit work.
      source.onerror = () => attempt.fail('sse error');
      return { close: () => source.close(), listen };
    },

    // WebSocket: GET /ws, one JSON object with a `type` per frame. Topic changes and rpc calls are
    // frames on the same connection.
    ws(attempt) {
      const query = { topic: union(), lastEventId: client.lastEventId, throttle_ms: throttleMs, access_token: token };
      const socketUrl = absoluteUrl('/ws?' + queryString(query));
      const socket = new WebSocket(socketUrl.replace(/^http/, 'ws'));
      // Returns 1 when the frame was sent, false when the socket is not open (yet).
      const send = (frame) => socket.readyState == 1 && (socket.send(JSON.stringify(frame)), 1);
      socket.onmessage = (message) => {
        const { type, ...frame } = JSON.parse(message.data);
        const rpc = pendingRpcs.get(frame.ref);
        if (type == 'welcome') {
          attempt.open(frame.client_id);
        } else if (type == 'event') {
          attempt.deliver(frame);
        } else if (type == 'snapshot') {
          attempt.deliver({ topic: frame.topic, event: type, data: frame });
        } else if (type == 'reset') {
          attempt.deliver({ event: type, data: frame });
        } else if (rpc) {
          // `reply` or `error` (with its `code`) to one of our rpc calls
          const [resolve, reject] = rpc;
          pendingRpcs.delete(frame.ref);
          if (type == 'error') reject(Object.assign(Error(frame.message), frame));
          else resolve(frame.data);
        }
      };
      socket.onclose = (event) => attempt.fail('ws closed ' + event.code);
      return {
        close: () => socket.close(1000),
        send,
        updateTopics: (changed, unsubscribe) =>
          send({
            type: unsubscribe ? 'unsubscribe' : 'subscribe',
            topics: changed,
            ref: '' + ++lastRef,
            // a new subscription resumes from our position, like a reconnect would
            ...(unsubscribe ? {} : { last_event_id: client.lastEventId, throttle_ms: throttleMs }),
          }),
      };
    },

    // Long-poll: GET /poll in a loop; each answer is {client_id, session, cursor, events}, and
    // the next request asks for what comes after that cursor.
    'long-poll'(attempt) {
      let abortController;
      // Offer the client_id and secret of our last poll session: the gateway rejoins it, or
      // opens one under that id when no connected client holds it, so events targeted at this
      // client keep reaching it. (A client_id without its session secret opens a new session.)
      let clientId = pollSession?.clientId;
      (async () => {
        for (let firstRequest = true; ; firstRequest = false) {
          abortController = new AbortController();
          // A silent, half-open request must end.
          const abortTimer = setTimeout(() => abortController.abort(), LONG_POLL_ABORT_MS);
          const query = {
            topic: union(),
            cursor: client.lastEventId,
            client_id: clientId,
            session: pollSession?.session,
            timeout: LONG_POLL_WAIT_S,
            throttle_ms: throttleMs,
          };
          const init = { headers: withToken(), signal: abortController.signal };
          const answer = await fetch(absoluteUrl('/poll?' + queryString(query)), init)
            .then((response) => (response.ok ? response.json() : throwError('poll ' + response.status)))
            .finally(() => clearTimeout(abortTimer));
          clientId = answer.client_id;
          pollSession = { clientId, session: answer.session };
          if (firstRequest) attempt.open(clientId);
          answer.events.forEach(attempt.deliver);
          if (!attempt.isCurrent()) return;
          advancePosition(answer.cursor);
        }
      })().catch((error) => attempt.fail(error));
      return { close: () => abortController.abort() };
    },

    // Snapshot polling: GET /snapshot for each subscribed topic (patterns cannot be polled), with
    // If-None-Match so an unchanged topic costs a 304, at the interval the gateway suggests.
    poll(attempt) {
      const etags = {};
      let roundTimer;
      let firstRound = true;
      const pollRound = async () => {
        let intervalMs = DEFAULT_POLL_INTERVAL_MS;
        const pollable = union().filter((topic) => !topic.includes('*'));
        await Promise.all(
          pollable.map(async (topic) => {
            const headers = etags[topic] && { 'If-None-Match': etags[topic] };
            const response = await request('/snapshot?' + queryString({ topic }), headers);
            intervalMs = +response.headers.get('X-Poll-Interval') || intervalMs;
            if (response.status == 200) {
              etags[topic] = response.headers.get('ETag');
              const { cursor, ...snapshot } = await response.json();
              attempt.deliver({ topic: snapshot.topic, event: 'snapshot', data: snapshot });
            } else if (response.status != 304) {
              // A topic without retained state (yet) is not an error of the connection.
              const unknownTopic = response.status == 404 && (await response.json()).error?.code == 'unknown_topic';
              if (!unknownTopic) throwError('snapshot ' + response.status);
            }
          }),
        );
        if (firstRound) attempt.open();
        firstRound = false;
        if (attempt.isCurrent()) roundTimer = setTimeout(() => pollRound().catch(attempt.fail), intervalMs);
      };
      pollRound().catch(attempt.fail);
      return { close: () => clearTimeout(roundTimer) };
    },
  };

  // Opens transportOrder[transportIndex] as a new attempt. The attempt's generation number makes
  // its callbacks no-ops once it is over (failed, replaced, or closed).
  const openTransport = () => {
    clearTimeout(retryTimer);
    clearTimeout(connectTimer);
    const name = transportOrder[transportIndex];
    const myGeneration = ++generation;
    let opened;
    let handle;
    client.transport = name;
    const isCurrent = () => myGeneration == generation;
    const attempt = {
      deliver: (event) => isCurrent() && deliver(event),
      isCurrent,
      open(clientId) {
        if (!isCurrent()) return;
        clearTimeout(connectTimer);
        opened = true;
        failedAttempts = 0;
        lastClientId = client.clientId = clientId;
        setStatus('open');
      },
      fail(error) {
        if (!isCurrent()) return;
        generation++;
        clearTimeout(connectTimer);
        handle?.close();
        dropConnection();
        if (opened) {
          // It worked until now: reopen the same transport, after a backoff delay.
          setStatus('reconnecting', error);
          retryLater(reopen, backoffDelay(failedAttempts, options.backoff));
        } else {
          // It never opened: fall back to the next transport.
          failedAttempts++;
          transportIndex++;
          tryNextTransport(error);
        }
      },
    };
    connectTimer = setTimeout(() => attempt.fail('timeout'), CONNECT_TIMEOUT_MS);
    try {
      handle = transports[name](attempt);
      // It may already have failed (synchronously), which started the next attempt.
      if (isCurrent()) currentTransport = handle;
      else handle.close();
    } catch (error) {
      attempt.fail(error); // e.g. no EventSource / WebSocket in this environment
    }
  };

  // After an attempt failed before opening: open the circuit, try the next transport, or start
  // over at the first one after a backoff delay.
  const tryNextTransport = (error) => {
    if (failedAttempts >= circuitFailures) {
      setStatus('circuit-open', error);
      retryLater(() => {
        failedAttempts = 0;
        setStatus('reconnecting');
        start();
      }, circuitCooldownMs);
    } else if (transportIndex < transportOrder.length) {
      openTransport();
    } else {
      transportIndex = 0;
      setStatus('reconnecting', error);
      retryLater(reopen, backoffDelay(failedAttempts, options.backoff));
    }
  };

  // Chooses the transport order, then opens the first. The gateway's /negotiate knows which
  // transports it has enabled; without an answer, decide() gives the same matrix locally.
  const start = async () => {
    transportOrder = [];
    if (options.negotiate ?? true) {
      try {
        const query = queryString({ ...flags, transports: allowedTransports.join() });
        const response = await request('/negotiate?' + query);
        const answer = response.ok && (await response.json());
        const offered = answer ? [answer.transport, ...(answer.fallbacks || [])] : [];
        transportOrder = offered.filter((name) => allowedTransports.includes(name) && transports[name]);
      } catch {}
    }
    if (renewable && tokenExpiring()) await fetchToken();
    if (client.status == 'closed' || (shared && !leading)) return;
    if (!transportOrder.length) transportOrder = decide(flags, allowedTransports);
    transportIndex = 0;
    if (transportOrder.length) {
      openTransport();
    } else {
      failedAttempts = circuitFailures; // nothing to try: straight to the circuit's cool-down
      tryNextTransport('no transport');
    }
  };

  // A topic was added or removed. The WebSocket sends a frame; the other transports (or a
  // WebSocket not open yet) reconnect with the new topics, once per tick, resuming from
  // lastEventId. Between attempts there is nothing to do: the next one uses the new topics.
  const topicsChanged = (topic, unsubscribe) => {
    if (!currentTransport || currentTransport.updateTopics?.([topic], unsubscribe) || restartTimer) return;
    restartTimer = setTimeout(() => {
      restartTimer = 0;
      if (currentTransport) {
        generation++; // so closing it is not taken for a failure
        currentTransport.close();
        openTransport();
      }
    });
  };

  // What the connection needs: the topics and event names of every tab.
  const union = () => [...new Set([...topics, ...[...otherTabs.values()].flatMap((tab) => tab.topics)])];
  const names = () => new Set([...handlersByEvent.keys(), ...[...otherTabs.values()].flatMap((tab) => tab.names)]);
  const post = (message) => channel?.postMessage(message);
  // The leading tab tells the others how the connection is, and its position (a tab that has
  // just come sees events from there on, and resumes from there if it comes to lead).
  const postStatus = () =>
    leading &&
    post({ status: client.status, transport: client.transport, clientId: client.clientId, id: client.lastEventId, from: tabId });
  // Tells the other tabs what this one wants (`announce`), and brings the connection's topics
  // in line with the union, a topic at a time.
  const syncTopics = (announce) => {
    if (announce) post({ tab: tabId, topics: [...topics], names: [...handlersByEvent.keys()] });
    const wanted = new Set(union());
    for (const topic of wanted) if (!subscribed.has(topic)) topicsChanged(topic);
    for (const topic of subscribed) if (!wanted.has(topic)) topicsChanged(topic, true);
    subscribed = wanted;
    for (const name of names()) currentTransport?.listen?.(name);
  };

  // The connection is gone: rpc calls waiting on it will get no answer.
  const dropConnection = () => {
    currentTransport = null;
    for (const [, [, reject]] of pendingRpcs) reject(Error('connection lost'));
    pendingRpcs.clear();
  };

  Object.assign(client, {
    on(name, handler) {
      if (!handlersByEvent.has(name)) {
        handlersByEvent.set(name, new Set());
        currentTransport?.listen?.(name); // SSE has to listen for a new event name
        syncTopics(1);
      }
      handlersByEvent.get(name).add(handler);
      return client;
    },
    off(name, handler) {
      handlersByEvent.get(name)?.delete(handler);
      return client;
    },
    subscribe(topic) {
      if (topics.has(topic)) return;
      topics.add(topic);
      syncTopics(1);
    },
    unsubscribe(topic) {
      if (topics.delete(topic)) syncTopics(1);
    },
    state(topic, watcher) {
      if (!stateWatchers.has(topic)) stateWatchers.set(topic, new Set());
      stateWatchers.get(topic).add(watcher);
      if (store.get(topic)) stateChanged(topic); // a new watcher sees the state we already hold
      else if (shared) fetchSnapshot(topic); // the shared connection may have had it before this tab
      return () => stateWatchers.get(topic)?.delete(watcher);
    },
    onStatus(listener) {
      statusListeners.add(listener);
      return () => statusListeners.delete(listener);
    },
    rpc: (method, data) =>
      new Promise((resolve, reject) => {
        const ref = '' + ++lastRef;
        // A tab that does not lead asks the leading tab, which asks the gateway.
        if (shared && !leading ? post({ rpc: method, data, ref, from: tabId }) || 1 : currentTransport?.send?.({ type: 'rpc', method, data, ref })) {
          pendingRpcs.set(ref, [resolve, reject]);
        } else {
          reject(Error('rpc needs an open WebSocket'));
        }
      }),
    store,
    close() {
      generation++;
      clearTimeout(retryTimer);
      clearTimeout(connectTimer);
      clearTimeout(restartTimer);
      clearTimeout(renewTimer);
      currentTransport?.close();
      dropConnection();
      setStatus('closed');
      leading = 0;
      releaseLock?.();
      clearTimeout(claimTimer);
      clearInterval(pingTimer);
      post({ bye: tabId });
      channel = channel?.close();
    },
  });

  // Start after the caller has registered its handlers and topics in this tick.
  const startConnection = () => {
    if (client.status == 'closed') return;
    setStatus('connecting');
    start();
  };
  if (!shared) {
    Promise.resolve().then(startConnection);
    return client;
  }

  // Shared: the tabs of this origin that connect to this gateway share one connection. The tab
  // holding a Web Lock named after the gateway leads: it connects with the union of every tab's
  // topics and relays every event over a BroadcastChannel; the others take the events of their
  // own topics from there. Every tab keeps the position of the last event it saw, and every tab
  // knows what the others want, so when the leading tab goes (its lock is let go), the next one
  // connects with the same topics and resumes from there: nothing is lost, and the ids drop
  // what comes twice.
  const name = 'ssegate ' + absoluteUrl('');
  const lead = () => {
    if (!leading) (leading = 1), dropConnection(), startConnection(); // rpc calls relayed so far get no answer
  };
  // Without Web Locks: a tab leads when no leading tab answers, or when the leading tab says it
  // goes; should two lead at once (they claimed together), the one with the lower id keeps on.
  const claimSoon = (ms) => {
    clearTimeout(claimTimer);
    claimTimer = setTimeout(lead, ms);
  };
  const stepDown = () => {
    leading = 0;
    generation++; // so closing it is not taken for a failure
    clearTimeout(retryTimer);
    clearTimeout(connectTimer);
    currentTransport?.close();
    dropConnection();
  };
  channel = new BroadcastChannel(name);
  channel.onmessage = ({ data }) => {
    if (data.tab) {
      // A tab that is new to us learns what we want, and how the connection is.
      if (!otherTabs.has(data.tab)) syncTopics(1), postStatus();
      otherTabs.set(data.tab, data);
      syncTopics();
    } else if (data.bye) {
      otherTabs.delete(data.bye);
      syncTopics();
      if (!locks && !leading && data.bye == leader) claimSoon(Math.random() * 200);
    } else if (data.ping) {
      postStatus();
    } else if (data.rpc) {
      // Another tab's rpc call: the leading tab makes it, and posts the answer back.
      const answer = (result) => post({ reply: data.ref, to: data.from, ...result });
      if (leading) client.rpc(data.rpc, data.data).then((data) => answer({ data }), (error) => answer({ error: { ...error, message: error.message } }));
    } else if (data.reply) {
      const rpc = data.to == tabId && pendingRpcs.get(data.reply);
      if (rpc) {
        pendingRpcs.delete(data.reply);
        if (data.error) rpc[1](Object.assign(Error(data.error.message), data.error));
        else rpc[0](data.data);
      }
    } else {
      // From a leading tab. (With Web Locks, one that has just gone: its last events.)
      if (leading && !locks && data.from < tabId) stepDown();
      if (leading) return;
      clearTimeout(claimTimer); // a leading tab is there
      if (leader && leader != data.from) dropConnection(); // rpc calls the tab that led has not answered
      leader = data.from;
      if (data.event) {
        deliver(data.event);
      } else if (data.status != 'closed') {
        advancePosition(data.id);
        client.transport = data.transport;
        client.clientId = data.clientId;
        if (data.status != client.status) setStatus(data.status);
      }
    }
  };
  // A tab that goes lets the others know it no longer wants its topics (its lock goes by itself).
  globalThis.addEventListener?.('pagehide', () => post({ bye: tabId }));
  globalThis.addEventListener?.('pageshow', () => syncTopics(1));
  Promise.resolve().then(() => {
    syncTopics(1);
    if (locks) {
      locks
        .request(name, () => client.status != 'closed' && (lead(), new Promise((resolve) => (releaseLock = resolve))))
        .catch(lead); // no lock to be had here (a sandboxed frame): this tab connects by itself
    } else {
      claimSoon(500); // the leading tab answers our announcement with its status
      pingTimer = setInterval(() => leading || (post({ ping: 1 }), claimSoon(1000 + Math.random() * 500)), 5000);
    }
  });
  return client;
}
