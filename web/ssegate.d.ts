// Type declarations for ssegate.js, the browser client of the ssegate push gateway.

export type Transport = 'sse' | 'ws' | 'long-poll' | 'poll';

/** Client description sent to `GET /negotiate` and used by `decide()`. */
export interface Flags {
  bidirectional?: boolean;
  realtime?: boolean;
  low_latency?: boolean;
  /** Server push alone suffices; absent means false, so a realtime, low-latency client gets `ws` unless it says so. */
  server_push?: boolean;
  legacy?: boolean;
}

/** An event in the envelope shape, whatever transport delivered it. */
export interface GatewayEvent<T = unknown> {
  /** Absent for snapshots that came without an id (SSE, WebSocket, `/snapshot` polling). */
  id?: string;
  /** Absent (or null) for topic-less events such as `reset` or targeted events. */
  topic?: string | null;
  /** Event type; `message` by default; `snapshot`, `patch` and `reset` come from the gateway. */
  event: string;
  data: T;
  ts?: number;
}

export interface SnapshotData<S = unknown> { topic: string; version: number; state: S }
export interface PatchData {
  topic: string;
  version: number;
  /** RFC 7386 merge patch. */
  patch?: unknown;
  /** RFC 6902 operations. */
  json_patch?: JsonPatchOp[];
}
export interface ResetData { reason: string }

export type JsonPatchOp =
  | { op: 'add' | 'replace' | 'test'; path: string; value: unknown }
  | { op: 'remove'; path: string }
  | { op: 'move' | 'copy'; from: string; path: string };

export type Status = 'connecting' | 'open' | 'reconnecting' | 'circuit-open' | 'closed';

export interface StatusInfo {
  status: Status;
  transport?: Transport;
  clientId?: string;
  /** Consecutive failed attempts since the last successful open. */
  attempt: number;
  error?: unknown;
}

export interface BackoffOptions {
  /** ms, default 500 */
  base?: number;
  /** ms, default 15000 */
  max?: number;
}

export interface ConnectOptions {
  /** Gateway base URL without trailing slash; '' (default) = same origin. */
  url?: string;
  /** Initial subscriptions; patterns (`a/*`, `a/**`, `**`) allowed. */
  topics?: string[];
  /** Transports this client may use (any order); default all four. */
  transports?: Transport[];
  flags?: Flags;
  /** Ask `GET {url}/negotiate` first (default true); on failure `decide()` is used locally. */
  negotiate?: boolean;
  backoff?: BackoffOptions;
  /** Consecutive failed attempts before the circuit opens (default 6), then cool-down ms (default 30000). */
  circuit?: { failures?: number; cooldown?: number };
  /** Sent as `throttle_ms` when > 0. */
  throttleMs?: number;
  /** Resume position for the first connection (an event id / cursor). */
  lastEventId?: string;
  /**
   * A JWT for a gateway with `--jwt-key`: sent as `Authorization: Bearer` where the transport can
   * set headers (long-poll, snapshot polling) and as `access_token` where it cannot (SSE,
   * WebSocket). A function is asked for a token before the first connection, again before the
   * token expires (the connection then reopens with it and resumes), and after a failure once it
   * has expired.
   */
  token?: string | (() => string | Promise<string>);
  /**
   * Share one connection among the tabs of this origin that connect to the same gateway URL
   * (default true where the page has `BroadcastChannel`; elsewhere each tab connects by itself).
   * One tab leads: it holds the connection, with the union of every tab's topics, and relays its
   * events to the others; each tab keeps its own topics and handlers and sees the events of its
   * own topics only. The leading tab is chosen with the Web Locks API (which needs a secure
   * context: HTTPS or localhost), or, without it, by the tabs agreeing over the channel. When the
   * leading tab closes, another takes over and resumes from the last event id it saw. The tabs
   * share one `clientId`, so an event sent to that client reaches every tab; the other tabs'
   * `rpc()` calls go through the leading tab. `false`: this tab has a connection of its own.
   */
  shared?: boolean;
}

export interface Client {
  readonly clientId?: string;
  readonly transport?: Transport;
  /** Id of the last event received (the resume position). */
  readonly lastEventId?: string;
  readonly status: Status;
  /** The retained state the client keeps. */
  readonly store: StateStore;
  /**
   * Typed handler for one event name, or `'*'` for every event (including snapshot, patch and reset).
   * Over SSE, EventSource only reports event names it listens to: those passed to `on()` plus
   * `message`, `snapshot`, `patch` and `reset`; a `'*'` handler sees no other names there.
   */
  on(name: '*', fn: (ev: GatewayEvent) => void): Client;
  on<T = any>(name: string, fn: (data: T, ev: GatewayEvent<T>) => void): Client;
  off(name: string, fn: (...args: any[]) => void): Client;
  /** Adds a topic to the shared connection (WebSocket: a `subscribe` frame; others: reconnect and resume). */
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
  /**
   * Watches a retained topic's state (the topic must be subscribed, directly or by a pattern).
   * Calls are batched per animation frame. Returns a function that removes the watcher.
   */
  state<S = any>(topic: string, fn: (state: S, version: number, topic: string) => void): () => void;
  /** Status changes; returns a function that removes the listener. */
  onStatus(fn: (s: StatusInfo) => void): () => void;
  /**
   * WebSocket only: resolved by `reply`, rejected by `error` (or at once on another transport).
   * In a tab that shares the leading tab's connection, the call goes through that tab.
   */
  rpc<T = any>(method: string, data?: unknown): Promise<T>;
  close(): void;
}

export function connect(options?: ConnectOptions): Client;

/** The contract's decision matrix: transports in order of preference, filtered to `transports`. */
/** When a JWT expires (its `exp`, in ms since the epoch), read without verifying; undefined if it does not say. */
export function tokenExpiry(jwt?: string): number | undefined;

export function decide(flags?: Flags, transports?: Transport[]): Transport[];

/** Whether a subscription pattern (`a/*`, `a/**`, `**`, or a topic) covers `topic`. */
export function topicMatches(pattern: string, topic: string): boolean;

/** Full-jitter exponential backoff: `rnd() * min(max, base * 2 ** attempt)` ms. */
export function backoffDelay(attempt: number, options?: BackoffOptions, rnd?: () => number): number;

/** RFC 7386 JSON Merge Patch; returns a new value and leaves `target` unchanged. */
export function mergePatch(target: unknown, patch: unknown): any;

/** RFC 6902 JSON Patch; returns a new document. Throws on any failure, leaving `doc` unchanged. */
export function applyJsonPatch(doc: unknown, ops: JsonPatchOp[]): any;

export type ApplyResult = 'snapshot' | 'patch' | 'stale' | 'gap';

export interface TopicState<S = unknown> { version: number; state: S }

/** Retained state per topic, fed `snapshot` and `patch` events. */
export class StateStore {
  constructor(
    onGap?: (topic: string) => void,
    onChange?: (topic: string, state: unknown, version: number) => void,
  );
  topics: Map<string, TopicState>;
  /** Called with the topic when a patch cannot be applied in order: fetch a snapshot. */
  onGap?: (topic: string) => void;
  onChange?: (topic: string, state: unknown, version: number) => void;
  get<S = any>(topic: string): TopicState<S> | undefined;
  /**
   * Applies a `snapshot` (replaces when newer, or always with `force`) or a `patch`
   * (applied when it is the next version, `stale` when at or below it, `gap` beyond it or when
   * it does not apply). Returns undefined for other events.
   */
  apply(ev: { event: string; topic?: string | null; data: any }, force?: boolean): ApplyResult | undefined;
}
