// Type declarations for danmaku.js (the danmaku wire protocol v1 client).

/** The subprotocol the client speaks: `danmaku.v1.json`. */
export declare const SUBPROTOCOL: 'danmaku.v1.json';

/** How many comment ids a client remembers to skip repeats (1000). */
export declare const SEEN_IDS: number;

/** Reconnect timing, in milliseconds. See README.md. */
export interface BackoffOptions {
  /** Window of the first retry; doubled per failure in a row. Default 500. */
  baseMs?: number;
  /** Largest window; also the delay window after 1008. Default 10 000. */
  capMs?: number;
  /** Uptime after which a connection counts as stable. Default 10 000. */
  resetAfterMs?: number;
  /** Window after a 1001 (server going away). Default 1 000. */
  goingAwayMs?: number;
  /** Failed attempts in a row before giving up. Default Infinity. */
  maxFailures?: number;
  /** An attempt without `hello` this long is abandoned (1006). Default 10 000. */
  connectTimeoutMs?: number;
}

export declare const DEFAULT_BACKOFF: Readonly<Required<BackoffOptions>>;

/** Full jitter: a random integer in [0, min(capMs, baseMs * 2^failures)). */
export declare function backoffDelay(failures: number, options?: BackoffOptions, random?: () => number): number;

/** 0 if the connection was open for `resetAfterMs` or longer, else `failures`. */
export declare function failuresAfterClose(failures: number, openForMs: number | null, options?: BackoffOptions): number;

export type ReconnectPlan = { reconnect: false } | { reconnect: true; delay: number; failures: number };

/** What the client does after a socket closed with `code`. */
export declare function planReconnect(
  close: { code: number; failures: number; openForMs: number | null; sawErrors?: boolean },
  options?: BackoffOptions,
  random?: () => number,
): ReconnectPlan;

/** The WebSocket URL of `room` on the gateway at `base`. */
export declare function roomUrl(base: string | null | undefined, room: string, options?: { nick?: string; token?: string }): string;

export type Mode = 'scroll' | 'top' | 'bottom';

/** One published comment (PROTOCOL.md §6.2). */
export interface Danmaku {
  type: 'danmaku';
  id: string;
  room: string;
  user: string;
  name?: string;
  text: string;
  color: string;
  mode: Mode;
  ts: number;
}

export interface Limits {
  max_text_chars: number;
  max_frame_bytes: number;
  max_nonce_bytes: number;
  post_rate_count: number;
  post_window_ms: number;
  post_burst: number;
}

export interface Hello {
  type: 'hello';
  room: string;
  user: string;
  name?: string;
  role?: 'viewer' | 'moderator' | 'admin';
  online: number;
  server: string;
  limits: Limits;
  /** Oldest first, without `type`, unfiltered. Also emitted as `danmaku` (unseen ones only). */
  recent: Omit<Danmaku, 'type'>[];
}

export interface Online {
  type: 'online';
  room: string;
  count: number;
}

export interface Delete {
  type: 'delete';
  room: string;
  id: string;
}

/** A server `error` event (PROTOCOL.md §6.7). */
export interface ServerError {
  type: 'error';
  code: string;
  message: string;
  nonce?: string;
}

/** Sent with every `close` event: one socket ended. */
export interface CloseInfo {
  code: number;
  reason: string;
  wasClean: boolean;
  /** Whether this socket had received its `hello`. */
  opened: boolean;
  /** Whether the client will try again. */
  reconnect: boolean;
  /** Milliseconds until the next attempt, or null. */
  delay: number | null;
}

export interface ReconnectingInfo {
  /** Failed attempts in a row, this one included (1 after a stable connection). */
  attempt: number;
  delay: number;
  /** The close code that caused it. */
  code: number;
}

export type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface DanmakuEventMap {
  /** `meta.recent` is true for comments that came in `hello.recent`. */
  danmaku: [comment: Danmaku, meta: { recent: boolean }];
  hello: [hello: Hello];
  online: [online: Online];
  delete: [del: Delete];
  close: [info: CloseInfo];
  error: [error: ServerError];
  pong: [pong: { type: 'pong'; nonce?: string }];
  state: [state: State, previous: State | null];
  connecting: [info: { url: string }];
  open: [hello: Hello];
  reconnecting: [info: ReconnectingInfo];
  closed: [info: undefined];
}

export interface ConnectOptions {
  /** Display name (`nick` query parameter). */
  nick?: string;
  /** JWT (`token` query parameter). */
  token?: string;
  /** A WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  backoff?: BackoffOptions;
}

/** Error codes the client makes up itself, besides the server's reject codes. */
export type LocalErrorCode = 'not_connected' | 'disconnected' | 'too_long';

/** A refused post (the `reject`'s fields), or one that could not be sent. */
export declare class DanmakuError extends Error {
  constructor(code: string, message?: string, retryAfterMs?: number);
  name: 'DanmakuError';
  /** A reject code (PROTOCOL.md §8.1) or a LocalErrorCode. */
  code: string;
  retry_after_ms?: number;
}

export declare class DanmakuClient {
  constructor(url: string | null | undefined, room: string, options?: ConnectOptions);
  readonly room: string;
  readonly state: State;
  /** The latest hello, or null before the first. */
  readonly hello: Hello | null;
  /** This connection's user id, from hello. */
  readonly user: string | null;
  /** The latest viewer count. */
  readonly online: number | null;
  /** Subscribes; returns a function that unsubscribes. */
  on<K extends keyof DanmakuEventMap>(event: K, fn: (...args: DanmakuEventMap[K]) => void): () => void;
  on(event: string, fn: (payload: any) => void): () => void;
  once<K extends keyof DanmakuEventMap>(event: K, fn: (...args: DanmakuEventMap[K]) => void): () => void;
  once(event: string, fn: (payload: any) => void): () => void;
  off<K extends keyof DanmakuEventMap>(event: K, fn: (...args: DanmakuEventMap[K]) => void): void;
  off(event: string, fn: (payload: any) => void): void;
  /** Resolves with the comment id from `ack`; rejects with DanmakuError. */
  post(text: string, options?: { color?: string; mode?: Mode }): Promise<string>;
  /** Resolves with the round trip in milliseconds. */
  ping(): Promise<number>;
  /** Stops for good: state `closed`, no reconnects. */
  close(): void;
}

/** Opens a client for `room` on the gateway at `url` (ws(s):// or http(s)://). */
export declare function connect(url: string | null | undefined, room: string, options?: ConnectOptions): DanmakuClient;
