// Wire frames (docs/protocol.md §5) and the SDK's public types.

/** A user in a room, as listed by `welcome.presence` and `presence` frames. */
export interface PresenceUser {
  user: string;
  /** The token's `info` claim (`{}` when it had none). */
  info: unknown;
}

/** First frame on every connection. */
export interface WelcomeFrame {
  type: "welcome";
  room: string;
  /** This connection's id; `from.conn` of the messages it publishes. */
  conn: string;
  /** The token's `sub`. */
  user: string;
  /** Identifies the room's log; changes only if the room's storage was lost. */
  epoch: string;
  /** The room's last `seq` when this connection was accepted. */
  seq: number;
  resume: { requested: boolean; recovered: boolean; replayed: number };
  presence: { count: number; users: PresenceUser[] };
  /**
   * Set by servers that want `received` receipts from this client (contract v1.1 §C, slow
   * consumers); the client sends them only then, since older servers would answer the
   * frame with `unknown_type`.
   */
  receipts?: boolean;
}

/** A durable message fanned out by the room: stored, sequenced, replayed on resume. */
export interface MessageFrame<T = unknown> {
  type: "message";
  /** Per-room sequence: 1, 2, 3, … without gaps. */
  seq: number;
  /** The publisher's event id (stable across its retries). */
  id: string;
  event: string;
  data: T;
  /** `null` for messages published by a backend through the HTTP API. */
  from: { user: string; conn: string } | null;
  /** Server time of acceptance, milliseconds since the epoch. */
  ts: number;
  ephemeral?: false;
}

/**
 * An ephemeral message (contract v1.1 §B, `signal`): fanned out, never stored, sequenced or
 * replayed. It has no `seq`, so it never counts in resume or gap detection, and a socket
 * that falls behind may get only the latest one per sender, event and key.
 */
export interface EphemeralMessageFrame<T = unknown> {
  type: "message";
  ephemeral: true;
  /** Present only when the publisher gave one. */
  id?: string;
  event: string;
  data: T;
  from: { user: string; conn: string } | null;
  ts: number;
}

/** What the `message` event delivers: durable messages, and ephemeral ones (`ephemeral: true`). */
export type RoomMessage<T = unknown> = MessageFrame<T> | EphemeralMessageFrame<T>;

export interface AckFrame {
  type: "ack";
  id: string;
  seq: number;
  duplicate: boolean;
  ephemeral?: false;
}

/** The answer to an ephemeral publish that carried an id: no `seq`, no `duplicate`. */
export interface EphemeralAckFrame {
  type: "ack";
  id: string;
  ephemeral: true;
}

export interface ErrorFrame {
  type: "error";
  id?: string | null;
  code: string;
  message: string;
  retry_after_ms?: number;
  /** On `disconnected` (docs/protocol.md §14): the close code that follows. */
  close?: number;
}

export interface PresenceFrame {
  type: "presence";
  op: "join" | "leave";
  user: string;
  info: unknown;
}

export type ServerFrame = WelcomeFrame | MessageFrame | EphemeralMessageFrame | AckFrame | EphemeralAckFrame | ErrorFrame | PresenceFrame;

/**
 * `connecting`: first attempt under way. `open`: `welcome` received, publishes flow.
 * `reconnecting`: the connection was lost (or an attempt failed) and another is scheduled
 * or under way. `closed`: terminal, after `close()` or a terminal close code.
 */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** Second argument of the `state` event. */
export interface StateDetail {
  state: ConnectionState;
  previous: ConnectionState;
  /** The transport in use, or the one the next attempt will use (see `room.transport`). */
  transport: TransportName;
  /** Consecutive failed attempts so far (0 once a connection has been stable). */
  attempt: number;
  /** For `reconnecting`: how long until the next attempt. */
  delayMs?: number;
  /** The close code that ended the previous connection, when there was one. */
  code?: number;
  /** Why the previous connection ended or the attempt failed. */
  reason?: string;
  /** The error that made the client stop (`closed` after a terminal condition). */
  error?: Error;
}

/** `presence` event: a snapshot on every (re)connect, then joins and leaves. */
export type PresenceEvent =
  | { op: "sync"; count: number; users: PresenceUser[] }
  | { op: "join" | "leave"; user: string; info: unknown };

/**
 * `resync` event: the client can no longer guarantee it saw every message since the last
 * one it delivered; reload state from your own source of truth (or the history API).
 */
export interface ResyncEvent {
  /**
   * `epoch_changed`: the room's storage was lost; `not_recovered`: too far behind to
   * replay; `gap`: a live message skipped sequence numbers (e.g. a backend publish with
   * `exclude_conn` naming this connection).
   */
  reason: "epoch_changed" | "not_recovered" | "gap";
  /** The epoch and seq the client continues from. */
  epoch: string;
  seq: number;
  /** What the client had seen before. */
  previousEpoch: string | null;
  previousSeq: number;
  /** For `gap`: the sequence numbers that were never received. */
  missed?: { from: number; to: number };
}

/** What a publish resolves with. */
export interface PublishResult {
  id: string;
  seq: number;
  /**
   * The server's answer: `true` when this id had already been accepted (it was then not
   * delivered again). After a connection loss this can mean an earlier attempt of this
   * very publish got through before the acknowledgement was lost.
   */
  duplicate: boolean;
}

export interface PublishOptions {
  /** Event id, `[A-Za-z0-9_.:-]{1,128}`; `crypto.randomUUID()` when omitted. */
  id?: string;
  /** Whether this client also receives the message (defaults to the client's `echo`). */
  echo?: boolean;
}

/** Options of `signal` (ephemeral messages). */
export interface SignalOptions {
  /**
   * Conflation key, 1–64 characters. A room that is behind keeps only the latest signal per
   * sender, event and key (e.g. one per shape being dragged); without a key, the latest per
   * sender and event.
   */
  key?: string;
  /** Whether this client also receives the signal (defaults to the client's `echo`). */
  echo?: boolean;
}

/** Passed to a token provider on every connection attempt. */
export interface TokenContext {
  room: string;
  /**
   * `connect`: first attempt; `reconnect`: after a connection loss; `expired`: the server
   * said the token expired or refused it (close 4001 or HTTP 401): do not return a cached
   * token. If the token returned then is refused as well, the client stops with a fatal
   * error instead of asking again.
   */
  reason: "connect" | "reconnect" | "expired";
  /** Consecutive failed attempts so far. */
  attempt: number;
}

export type TokenProvider = (ctx: TokenContext) => string | Promise<string>;
export type UrlProvider = () => string | URL | Promise<string | URL>;

/** The part of the WHATWG WebSocket the client uses (browsers, `ws`, Deno, Workers, undici). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/**
 * How the client talks to the room (contract v1.1 §D): a WebSocket, Server-Sent Events
 * (`GET …/events`) or long-polling (`GET …/poll`). On `sse` and `longpoll` publishes and
 * signals go over `POST …/publish`.
 */
export type TransportName = "websocket" | "sse" | "longpoll";

/** The `transport` option: one transport, or `auto` (WebSocket → SSE → long-poll). */
export type TransportOption = "auto" | TransportName;

/** The part of the WHATWG EventSource the client uses (browsers, the npm `eventsource`). */
export interface EventSourceLike {
  /** 0 connecting, 1 open, 2 closed. */
  readonly readyState: number;
  close(): void;
  addEventListener(type: string, listener: (event: any) => void): void;
}

export type EventSourceConstructor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;

/** The part of a fetch `Response` the client reads. */
export interface ResponseLike {
  readonly status: number;
  readonly ok: boolean;
  text(): Promise<string>;
  readonly headers?: { get(name: string): string | null };
}

/** The part of WHATWG `fetch` the client uses (browsers, Node ≥ 18, Deno, Workers). */
export type FetchLike = (
  url: string,
  init?: { method?: string; headers?: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<ResponseLike>;

/** The answer of `GET /v1/rooms/{room}/poll` (contract v1.1 §D). */
export interface PollAnswer {
  epoch: string;
  last_seq: number;
  recovered: boolean;
  messages: MessageFrame[];
}

/** Timer functions, injectable so tests can drive time. */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: any): void;
}

export interface BackoffOptions {
  /** First retry waits up to this long (full jitter). Default 500. */
  baseMs?: number;
  /** Longest wait. Default 30 000. */
  capMs?: number;
  /** A connection open this long resets the backoff. Default 10 000. */
  stableMs?: number;
}

export interface HeartbeatOptions {
  /** How often to send `ping`. Default 25 000. */
  intervalMs?: number;
  /** How long to wait for `pong` before declaring the connection dead. Default 10 000. */
  timeoutMs?: number;
}

export interface RoomcastOptions {
  /**
   * Base URL of the Worker, e.g. `wss://rooms.example.com` (`http(s)` is turned into
   * `ws(s)`; a path prefix is kept). A function is called on every connection attempt.
   */
  url: string | URL | UrlProvider;
  /** Room name, `[A-Za-z0-9_.:-]{1,128}`. */
  room: string;
  /** A JWT, or a function returning one (sync or async), called on every attempt. */
  token: string | TokenProvider;
  /** Sent as `?tenant=`; must then equal the token's `tenant`. */
  tenant?: string;
  /**
   * Whether to receive presence `join`/`leave` frames (default true). `false` connects
   * with `?presence=off`: the `welcome` snapshot still comes, and others still see this
   * user, but a big room's arrivals and departures cost this client nothing.
   */
  presence?: boolean;
  /**
   * `auto` (default): WebSocket, falling back to Server-Sent Events and then long-polling
   * when a transport cannot open (README "Transports"); or exactly one of them.
   */
  transport?: TransportOption;
  /** WebSocket implementation; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** EventSource implementation for `sse`; defaults to `globalThis.EventSource`. */
  EventSource?: EventSourceConstructor;
  /** fetch implementation for `sse` and `longpoll` (publishes, polls); defaults to `globalThis.fetch`. */
  fetch?: FetchLike;
  /**
   * With `transport: "auto"`: consecutive attempts a transport may fail to open before the
   * next one is tried. Default 2.
   */
  fallbackAfter?: number;
  /** How long the server may hold a long-poll with nothing to send, 1–30 s. Default 25. */
  pollTimeoutSecs?: number;
  /** Whether this client receives its own messages (default false, as on the wire). */
  echo?: boolean;
  /** Start from a known position: the first connection then asks the server to resume. */
  resume?: { epoch: string; seq: number };
  /** Most publishes held (queued or unacknowledged). Default 1000. */
  maxOutbox?: number;
  /**
   * Most publishes sent and not yet answered on one connection. Default 32 (keep it below
   * the server's RATE_LIMIT_BURST). After a `rate_limited` error the client sends one at a
   * time and widens again by one per acknowledgement.
   */
  maxInFlight?: number;
  /** Largest publish frame in UTF-8 bytes (the server's MAX_MESSAGE_BYTES). Default 65 536. */
  maxMessageBytes?: number;
  /** A publish failing with `internal` is retried this many times. Default 5. */
  maxRetries?: number;
  /** Time allowed from creating a socket to receiving `welcome`. Default 15 000. */
  connectTimeoutMs?: number;
  backoff?: BackoffOptions;
  /** `false` disables the heartbeat. */
  heartbeat?: HeartbeatOptions | false;
  timers?: Timers;
  /** Random source in [0, 1) for the jitter. Default `Math.random`. */
  random?: () => number;
  /** Id generator for publishes without an id. Default `crypto.randomUUID()`. */
  generateId?: () => string;
}
