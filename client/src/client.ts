// The Roomcast client: one room, one logical connection that survives reconnects.
//
// * Transports: a WebSocket, Server-Sent Events or long-polling (contract v1.1 §D); `auto`
//   falls back in that order while a transport cannot open, then sticks to the first
//   one that did. On SSE and long-poll, publishes and signals go over HTTP POST.
// * Connection: token in the subprotocol list, heartbeat, close-code policy, backoff.
// * Resume: remembers (epoch, seq), reconnects with ?since&epoch, drops seq it has seen,
//   reports what it cannot recover as `resync`.
// * Outbox: every publish keeps one id until the server answers it; unanswered ones are
//   sent again after a reconnect, and the server's dedup makes that exactly-once.
// * Signals (ephemeral messages): sent at once or dropped, never queued.
// * Refusals: an `error` frame before `welcome` says why the server refused the socket.
// * Receipts: when the server asks, tells it how many messages this client has read.

import { Emitter } from "./emitter.js";
import {
  ID_PATTERN,
  ROOM_PATTERN,
  RETRYABLE_PUBLISH_ERRORS,
  RoomcastError,
  TRANSPORT_ORDER,
  backoffDelay,
  endPolicy,
  httpRefusal,
  randomId,
  receiptDue,
  REFUSAL_CLOSE_CODES,
  utf8Length,
  type CloseAction,
} from "./policy.js";
import type {
  AckFrame,
  ConnectionState,
  EphemeralAckFrame,
  EphemeralMessageFrame,
  ErrorFrame,
  EventSourceConstructor,
  EventSourceLike,
  FetchLike,
  MessageFrame,
  PollAnswer,
  PresenceEvent,
  PresenceFrame,
  PresenceUser,
  PublishOptions,
  PublishResult,
  ResyncEvent,
  RoomMessage,
  RoomcastOptions,
  SignalOptions,
  StateDetail,
  Timers,
  TokenContext,
  TokenProvider,
  TransportName,
  TransportOption,
  UrlProvider,
  WebSocketConstructor,
  WebSocketLike,
  WelcomeFrame,
} from "./types.js";

export interface RoomcastEvents {
  /**
   * A message: durable ones each `seq` at most once and in order; ephemeral ones
   * (`ephemeral: true`, no `seq`) as they come.
   */
  message: (message: RoomMessage) => void;
  /** Presence snapshot on every (re)connect, then joins and leaves. */
  presence: (event: PresenceEvent) => void;
  /** Connection state changes, and every scheduled retry. */
  state: (state: ConnectionState, detail: StateDetail) => void;
  /** Messages may have been missed: reload from your source of truth. */
  resync: (event: ResyncEvent) => void;
  /** Something went wrong; `error.fatal` means the client has stopped. */
  error: (error: RoomcastError) => void;
  /** Every `welcome` frame (connection id, epoch, resume outcome); none on long-poll. */
  welcome: (welcome: WelcomeFrame) => void;
  /**
   * `transport: "auto"` moved on to another transport because `previous` could not open
   * (`reason` says how it failed). Not emitted for reconnects on the same transport.
   */
  transport: (transport: TransportName, detail: { previous: TransportName; reason: string }) => void;
}

const OPEN = 1;
const SUBPROTOCOL = "roomcast.v1";
const MAX_REMEMBERED_CONNS = 64;
/**
 * Signals sent and not yet answered that a connection keeps track of. Every signal is
 * answered (ack or error) in send order, so this is only reached when a server stops
 * answering; the oldest are then forgotten rather than held without bound.
 */
const MAX_UNANSWERED_SIGNALS = 1000;
/** Signals posted over HTTP and not yet answered; more are dropped (`signal` → false). */
const MAX_HTTP_SIGNALS = 4;
/** Ids of own signals sent over HTTP without echo, remembered to drop them if they come back. */
const MAX_OWN_SIGNAL_IDS = 256;

interface Waiter {
  resolve: (r: PublishResult) => void;
  reject: (e: RoomcastError) => void;
}

interface Entry {
  id: string;
  /** The WebSocket frame. */
  frame: string;
  /** The HTTP publish body: the frame without `type`. */
  body: string;
  echo: boolean;
  /** Whether it was ever posted over HTTP (so a message with its id may be its own). */
  viaHttp: boolean;
  /** queued: to send; inflight: sent on the current connection, unanswered. */
  status: "queued" | "inflight";
  waiters: Waiter[];
  /** `internal` errors so far. */
  failures: number;
  /** Its position among the current connection's sends (see `Conn.sends`). */
  sentAt: number;
}

interface Conn {
  transport: TransportName;
  /** `websocket`: the socket. */
  ws?: WebSocketLike;
  /** `sse`: the event stream. */
  es?: EventSourceLike;
  /** `longpoll`: aborts the poll under way. */
  abort?: AbortController;
  /** `sse`: the stream's URL (which carries the token), for the failure probe. */
  url?: string;
  /** The Worker's base URL and the token of this attempt (HTTP publishes use them). */
  base: string;
  token: string;
  /** `longpoll`: whether the first poll asked to resume (an epoch was known). */
  resumed?: boolean;
  welcomed: boolean;
  id?: string;
  /** The reason this attempt's token was asked for with. */
  tokenReason: TokenContext["reason"];
  /**
   * An `error` frame that says why the server is ending this socket: before `welcome` a
   * refusal (§10), after it a backend's disconnect (§14). Reported when the close comes.
   */
  refusal?: { code: string; message: string };
  /** Publishes sent on this connection and not yet answered, in send order. */
  inflight: Entry[];
  /**
   * Publishes and signals sent on this connection so far. The server answers them in send
   * order, so an answer without an id belongs to the oldest unanswered one of either kind.
   */
  sends: number;
  /** Signals sent on this connection and not yet answered, oldest first. */
  signals: { id: string; sentAt: number }[];
  /** Whether the server asked for `received` receipts (`welcome.receipts`). */
  receipts: boolean;
  /** WebSocket messages received on this connection (`pong` excluded). */
  received: number;
  /** `received` and characters received since then, as of the last receipt. */
  receivedAtReceipt: number;
  charsSinceReceipt: number;
  connectTimer?: unknown;
  pingTimer?: unknown;
  pongTimer?: unknown;
  stableTimer?: unknown;
}

/** The HTTP publish under way (one at a time, so a client's publishes keep their order). */
interface HttpPublish {
  entry: Entry;
  abort: AbortController | undefined;
}

const defaultTimers: Timers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (h) => globalThis.clearTimeout(h),
};

export class Roomcast extends Emitter<RoomcastEvents> {
  readonly room: string;

  private readonly WS: WebSocketConstructor | undefined;
  private readonly ES: EventSourceConstructor | undefined;
  private readonly fetchFn: FetchLike | undefined;
  private readonly auto: boolean;
  /** The transports this client may use, in fallback order. */
  private readonly transports: TransportName[];
  private readonly fallbackAfter: number;
  private readonly pollTimeoutSecs: number;
  private readonly token: string | TokenProvider;
  private readonly url: string | URL | UrlProvider;
  private readonly tenant: string | undefined;
  private readonly presenceEvents: boolean;
  private readonly echo: boolean;
  private readonly maxOutbox: number;
  private readonly maxInFlight: number;
  private readonly maxMessageBytes: number;
  private readonly maxRetries: number;
  private readonly connectTimeoutMs: number;
  private readonly baseMs: number;
  private readonly capMs: number;
  private readonly stableMs: number;
  private readonly pingMs: number;
  private readonly pongMs: number;
  private readonly timers: Timers;
  private readonly random: () => number;
  private readonly generateId: () => string;
  /** Makes signal ids unique to this client (a room dedups durable ids, see `signal`). */
  private readonly signalPrefix = randomId().slice(0, 8);
  private signalCount = 0;

  private _state: ConnectionState = "connecting";
  private stopped = false;
  /** Bumped whenever a pending attempt must be abandoned. */
  private generation = 0;
  private conn: Conn | null = null;
  private attempt = 0;
  private retryTimer: unknown = undefined;
  /** Bounds the token and URL providers of the attempt under way. */
  private attemptTimer: unknown = undefined;
  private pauseTimer: unknown = undefined;
  /** Publishes allowed in flight now: maxInFlight, cut to 1 by rate limiting, +1 per ack. */
  private window = 1;
  private tokenReason: TokenContext["reason"] = "connect";

  private _epoch: string | null = null;
  private lastSeq = 0;
  /** Seqs of our own publishes (acknowledged, not echoed) above `lastSeq`. */
  private ownSeqs = new Set<number>();
  /** Our connection ids, to recognise our own messages in a replay. */
  private myConns: string[] = [];
  private _user: string | null = null;
  private readonly members = new Map<string, unknown>();
  private readonly outbox = new Map<string, Entry>();

  /** Index in `transports` of the one in use (or tried next). */
  private transportIndex = 0;
  /** Consecutive attempts the current transport failed to open (`auto`). */
  private openFailures = 0;
  /** Whether any transport has opened: `auto` then stays on it. */
  private proven = false;
  private httpPublish: HttpPublish | null = null;
  /** Consecutive HTTP publishes that failed on the network (for their backoff). */
  private httpFailures = 0;
  private httpSignals = 0;
  private readonly ownSignalIds = new Set<string>();

  constructor(options: RoomcastOptions) {
    super();
    if (!options || typeof options !== "object") throw new TypeError("Roomcast: options are required");
    const { room } = options;
    if (typeof room !== "string" || !ROOM_PATTERN.test(room)) {
      throw new TypeError(`Roomcast: invalid room name ${JSON.stringify(room)}; use [A-Za-z0-9_.:-]{1,128}, or name@user for a personal room`);
    }
    if (typeof options.token !== "string" && typeof options.token !== "function") {
      throw new TypeError("Roomcast: `token` must be a string or a function returning one");
    }
    if (options.url === undefined || options.url === null) throw new TypeError("Roomcast: `url` is required");
    const mode: TransportOption = options.transport ?? "auto";
    if (mode !== "auto" && !(TRANSPORT_ORDER as readonly string[]).includes(mode)) {
      throw new TypeError(`Roomcast: unknown transport ${JSON.stringify(mode)}; use "auto", "websocket", "sse" or "longpoll"`);
    }
    const g = globalThis as { WebSocket?: WebSocketConstructor; EventSource?: EventSourceConstructor; fetch?: FetchLike };
    const WS = options.WebSocket ?? g.WebSocket;
    const ES = options.EventSource ?? g.EventSource;
    // Called as a plain function: a browser's fetch throws when called as another object's method.
    const fetchFn: FetchLike | undefined = options.fetch ?? (typeof g.fetch === "function" ? (url, init) => (globalThis as { fetch: FetchLike }).fetch(url, init) : undefined);
    const usable = (t: TransportName) =>
      t === "websocket" ? typeof WS === "function" : t === "sse" ? typeof ES === "function" && typeof fetchFn === "function" : typeof fetchFn === "function";
    if (mode === "websocket" && !usable("websocket")) {
      throw new TypeError("Roomcast: no global WebSocket here; pass one, e.g. `WebSocket` from the `ws` package");
    }
    if (mode === "sse" && !usable("sse")) {
      throw new TypeError("Roomcast: transport \"sse\" needs an EventSource and fetch; pass `EventSource` (e.g. from the `eventsource` package) and `fetch`");
    }
    if (mode === "longpoll" && !usable("longpoll")) throw new TypeError("Roomcast: transport \"longpoll\" needs fetch; pass `fetch`");
    this.transports = mode === "auto" ? TRANSPORT_ORDER.filter(usable) : [mode];
    if (this.transports.length === 0) {
      throw new TypeError("Roomcast: no WebSocket, EventSource or fetch here; pass `WebSocket` (e.g. from the `ws` package) or `fetch`");
    }
    this.auto = mode === "auto";
    this.room = room;
    this.WS = WS;
    this.ES = ES;
    this.fetchFn = fetchFn;
    this.fallbackAfter = Math.floor(positive(options.fallbackAfter, 2));
    this.pollTimeoutSecs = Math.min(30, Math.max(1, Math.floor(positive(options.pollTimeoutSecs, 25))));
    this.token = options.token;
    this.url = options.url;
    this.tenant = options.tenant;
    this.presenceEvents = options.presence ?? true;
    this.echo = options.echo ?? false;
    this.maxOutbox = positive(options.maxOutbox, 1000);
    this.maxInFlight = positive(options.maxInFlight, 32);
    this.window = this.maxInFlight;
    this.maxMessageBytes = positive(options.maxMessageBytes, 65_536);
    this.maxRetries = options.maxRetries ?? 5;
    this.connectTimeoutMs = positive(options.connectTimeoutMs, 15_000);
    this.baseMs = positive(options.backoff?.baseMs, 500);
    this.capMs = positive(options.backoff?.capMs, 30_000);
    this.stableMs = positive(options.backoff?.stableMs, 10_000);
    const hb = options.heartbeat;
    this.pingMs = hb === false ? 0 : positive(hb?.intervalMs, 25_000);
    this.pongMs = hb === false ? 0 : positive(hb?.timeoutMs, 10_000);
    this.timers = options.timers ?? defaultTimers;
    this.random = options.random ?? Math.random;
    this.generateId = options.generateId ?? randomId;
    if (options.resume) {
      this._epoch = options.resume.epoch;
      this.lastSeq = options.resume.seq;
    }
    // Start on the next microtask, so listeners added right after construction see
    // the first `connecting` state.
    const gen = this.generation;
    void Promise.resolve().then(() => {
      if (gen === this.generation && !this.stopped) void this.attemptConnect();
    });
  }

  /** Current connection state. */
  get state(): ConnectionState {
    return this._state;
  }
  /**
   * The transport in use (`websocket`, `sse` or `longpoll`), or the one being tried while
   * connecting. With `transport: "auto"` it changes only while no transport has opened yet.
   */
  get transport(): TransportName {
    return this.transports[this.transportIndex] ?? "websocket";
  }
  /** The room's epoch as last seen, or null before the first `welcome`. */
  get epoch(): string | null {
    return this._epoch;
  }
  /** Highest seq this client has accounted for (delivered, or published itself). */
  get seq(): number {
    return this.lastSeq;
  }
  /** This client's current connection id (`from.conn` of its messages), when open. */
  get connectionId(): string | null {
    return this.conn?.welcomed ? (this.conn.id ?? null) : null;
  }
  /** The token's `sub`, from the last `welcome`. */
  get user(): string | null {
    return this._user;
  }
  /** Users present, with their `info`, as of the last snapshot plus joins and leaves. */
  get presence(): ReadonlyMap<string, unknown> {
    return this.members;
  }
  /** Publishes not answered yet (queued or in flight). */
  get pending(): number {
    return this.outbox.size;
  }

  /**
   * Publishes `data` as `event`. Resolves once with the room's `seq` (and whether the id
   * had been accepted before), or rejects on a non-retryable error, a full outbox, or
   * `close()`. Offline publishes wait in the outbox; unanswered ones are re-sent with the
   * same id after a reconnect.
   */
  publish<T = unknown>(event: string, data?: T, options: PublishOptions = {}): Promise<PublishResult> {
    if (this.stopped) return Promise.reject(this.closedError());
    const id = options.id ?? this.generateId();
    if (typeof id !== "string" || !ID_PATTERN.test(id)) {
      return Promise.reject(new RoomcastError("invalid_id", `invalid event id ${JSON.stringify(id)}; use [A-Za-z0-9_.:-]{1,128}`, { id: String(id) }));
    }
    if (typeof event !== "string" || event.length < 1 || event.length > 64) {
      return Promise.reject(new RoomcastError("invalid_id", "event must be a string of 1 to 64 characters", { id }));
    }
    const existing = this.outbox.get(id);
    if (existing) {
      // The same id again while the first is pending: one send, one answer for both.
      return new Promise((resolve, reject) => existing.waiters.push({ resolve, reject }));
    }
    if (this.outbox.size >= this.maxOutbox) {
      return Promise.reject(
        new RoomcastError("outbox_full", `outbox full: ${this.outbox.size} publishes are waiting (maxOutbox ${this.maxOutbox}); wait for some to resolve`, { id }),
      );
    }
    const echo = options.echo ?? this.echo;
    let frame: string;
    let body: string;
    try {
      frame = JSON.stringify({ type: "publish", id, event, data: data === undefined ? null : data, echo });
      body = JSON.stringify({ id, event, data: data === undefined ? null : data, echo });
    } catch (err) {
      return Promise.reject(new RoomcastError("bad_data", `data is not JSON-serialisable: ${String(err)}`, { id, cause: err }));
    }
    const bytes = utf8Length(frame);
    if (bytes > this.maxMessageBytes) {
      return Promise.reject(new RoomcastError("too_large", `publish frame is ${bytes} bytes; the limit is ${this.maxMessageBytes}`, { id }));
    }
    return new Promise((resolve, reject) => {
      this.outbox.set(id, { id, frame, body, echo, viaHttp: false, status: "queued", waiters: [{ resolve, reject }], failures: 0, sentAt: 0 });
      this.pump();
    });
  }

  /**
   * Sends an ephemeral message (contract v1.1 §B): fanned out to the room like a publish,
   * but never stored, sequenced or replayed — for cursors, typing indicators and anything
   * else that is worthless a second later. Fire-and-forget: it goes out now or not at all.
   * Returns `true` if it was sent, `false` if it was dropped because the connection is not
   * open (or sending is paused after `rate_limited`); it is never queued.
   *
   * Signals count against the server's per-connection rate limit like publishes do, so
   * throttle them (the demo sends cursors at most ~10 times a second).
   *
   * @throws RoomcastError `invalid_id` (bad event or key), `bad_data` (not JSON) or
   * `too_large` (over `maxMessageBytes`): mistakes in the call, not conditions to wait out.
   */
  signal<T = unknown>(event: string, data?: T, options: SignalOptions = {}): boolean {
    if (typeof event !== "string" || event.length < 1 || event.length > 64) {
      throw new RoomcastError("invalid_id", "event must be a string of 1 to 64 characters");
    }
    const { key } = options;
    if (key !== undefined && (typeof key !== "string" || key.length < 1 || key.length > 64)) {
      throw new RoomcastError("invalid_id", "key must be a string of 1 to 64 characters");
    }
    // An id costs one small ack back to this client, and buys an exact answer to every
    // signal: a refusal (rate_limited, forbidden) is never mistaken for a publish's, and a
    // server without ephemeral messages stores it as a plain publish instead of counting
    // an id-less frame as invalid (ten of which close the socket).
    const id = `sig.${this.signalPrefix}.${++this.signalCount}`;
    const echo = options.echo ?? this.echo;
    let frame: string;
    try {
      frame = JSON.stringify({ type: "publish", ephemeral: true, id, event, data: data === undefined ? null : data, echo, ...(key !== undefined ? { key } : {}) });
    } catch (err) {
      throw new RoomcastError("bad_data", `data is not JSON-serialisable: ${String(err)}`, { cause: err });
    }
    const bytes = utf8Length(frame);
    if (bytes > this.maxMessageBytes) {
      throw new RoomcastError("too_large", `signal frame is ${bytes} bytes; the limit is ${this.maxMessageBytes}`);
    }
    const conn = this.conn;
    if (this.stopped || !conn || !conn.welcomed || this.pauseTimer !== undefined) return false;
    if (!conn.ws) {
      // SSE and long-poll: POST it. Fire-and-forget as on a socket, but a few at most at
      // once: a browser allows only ~6 connections per origin (and the stream holds one).
      if (this.httpSignals >= MAX_HTTP_SIGNALS) return false;
      const body = JSON.stringify({ ephemeral: true, id, event, data: data === undefined ? null : data, echo, ...(key !== undefined ? { key } : {}) });
      if (!echo) {
        // The server cannot tell this client's stream from others: drop it if it comes back.
        this.ownSignalIds.add(id);
        if (this.ownSignalIds.size > MAX_OWN_SIGNAL_IDS) this.ownSignalIds.delete(this.ownSignalIds.values().next().value as string);
      }
      void this.postSignal(conn, body);
      return true;
    }
    if (conn.ws.readyState !== OPEN) return false;
    try {
      conn.ws.send(frame);
    } catch {
      return false; // the socket is failing; its close event reconnects
    }
    conn.signals.push({ id, sentAt: ++conn.sends });
    if (conn.signals.length > MAX_UNANSWERED_SIGNALS) conn.signals.shift();
    return true;
  }

  /**
   * Drops the current connection (if any) and connects again now, resuming. Use it when
   * you know the network is back (e.g. the browser's `online` event).
   */
  reconnect(): void {
    if (this.stopped) return;
    this.clearTimer(this.retryTimer);
    this.retryTimer = undefined;
    const conn = this.conn;
    if (conn) this.teardown(conn, "reconnect requested");
    this.attempt = 0;
    void this.attemptConnect();
  }

  /** Closes for good: the socket with 1000, pending publishes reject with `closed`. */
  close(code = 1000, reason = "client closed"): void {
    if (this.stopped) return;
    this.stop(new RoomcastError("closed", "the client was closed", { closeCode: code }), { code, reason }, code, reason);
  }

  // ---- connection ----------------------------------------------------------------

  private async attemptConnect(): Promise<void> {
    if (this.stopped) return;
    const gen = ++this.generation;
    if (this._state !== "reconnecting" || this.attempt === 0) {
      this.setState(this._state === "connecting" ? "connecting" : "reconnecting", {});
    }
    let token: string;
    let base: string;
    const tokenReason = this.tokenReason;
    this.clearTimer(this.attemptTimer);
    this.attemptTimer = this.timers.setTimeout(() => {
      this.attemptTimer = undefined;
      if (gen !== this.generation || this.stopped) return;
      this.generation++; // abandon the attempt; a late answer is ignored
      this.emitError(new RoomcastError("token_provider", `the token or URL provider did not answer within ${this.connectTimeoutMs} ms`));
      this.scheduleRetry({ reason: "token provider timed out" });
    }, this.connectTimeoutMs);
    try {
      const t = typeof this.token === "string" ? this.token : await this.token({ room: this.room, reason: tokenReason, attempt: this.attempt });
      if (typeof t !== "string" || t.length === 0) throw new TypeError("the token provider returned no token");
      token = t;
      base = String(typeof this.url === "function" ? await this.url() : this.url);
    } catch (err) {
      if (gen !== this.generation || this.stopped) return;
      this.clearTimer(this.attemptTimer);
      this.attemptTimer = undefined;
      this.emitError(new RoomcastError("token_provider", `could not get a token or URL: ${errorMessage(err)}`, { cause: err }));
      this.scheduleRetry({ reason: "token provider failed" });
      return;
    }
    if (gen !== this.generation || this.stopped) return;
    this.clearTimer(this.attemptTimer);
    this.attemptTimer = undefined;

    const transport = this.transport;
    if (transport === "websocket") this.openWebSocket(token, base, tokenReason);
    else if (transport === "sse") this.openEventSource(token, base, tokenReason);
    else this.openLongPoll(token, base, tokenReason);
  }

  private newConn(transport: TransportName, token: string, base: string, tokenReason: TokenContext["reason"]): Conn {
    return {
      transport,
      base,
      token,
      welcomed: false,
      tokenReason,
      inflight: [],
      sends: 0,
      signals: [],
      receipts: false,
      received: 0,
      receivedAtReceipt: 0,
      charsSinceReceipt: 0,
    };
  }

  private openWebSocket(token: string, base: string, tokenReason: TokenContext["reason"]): void {
    let ws: WebSocketLike;
    try {
      ws = new (this.WS as WebSocketConstructor)(this.endpoint(base, "ws"), [SUBPROTOCOL, `roomcast.bearer.${token}`]);
    } catch (err) {
      this.emitError(new RoomcastError("handshake", `could not open a WebSocket: ${errorMessage(err)}`, { cause: err }));
      this.failedToOpen("WebSocket constructor failed", { immediate: true });
      return;
    }
    const conn = this.newConn("websocket", token, base, tokenReason);
    conn.ws = ws;
    this.conn = conn;
    ws.addEventListener("message", (ev: { data?: unknown }) => this.onData(conn, ev.data));
    ws.addEventListener("close", (ev: { code?: number; reason?: string }) => this.onLost(conn, ev.code ?? 1006, ev.reason || "closed"));
    ws.addEventListener("error", (ev: { message?: string; error?: { message?: string } }) => {
      const message = ev?.message ?? ev?.error?.message ?? "WebSocket error";
      const status = /Unexpected server response: (\d{3})/.exec(message);
      this.onLost(conn, 1006, message, status ? Number(status[1]) : undefined);
    });
    conn.connectTimer = this.timers.setTimeout(() => this.onLost(conn, 1006, "timed out waiting for welcome"), this.connectTimeoutMs);
  }

  /**
   * SSE (contract v1.1 §D): every server frame is an event named by its `type`; the token
   * travels as `?access_token=` because EventSource cannot set headers. The client does
   * its own reconnecting (a fresh token, `?since=&epoch=`), so it closes the EventSource on
   * its first error instead of letting it retry with the old URL.
   */
  private openEventSource(token: string, base: string, tokenReason: TokenContext["reason"]): void {
    const url = this.endpoint(base, "events", token);
    let es: EventSourceLike;
    try {
      es = new (this.ES as EventSourceConstructor)(url);
    } catch (err) {
      this.emitError(new RoomcastError("handshake", `could not open an EventSource: ${errorMessage(err)}`, { cause: err }));
      this.failedToOpen("EventSource constructor failed", { immediate: true });
      return;
    }
    const conn = this.newConn("sse", token, base, tokenReason);
    conn.es = es;
    conn.url = url;
    this.conn = conn;
    const onFrame = (ev: { data?: unknown }) => {
      if (this.conn === conn && typeof ev?.data === "string") this.handleText(conn, ev.data);
    };
    for (const type of ["welcome", "message", "presence", "ack"]) es.addEventListener(type, onFrame);
    es.addEventListener("error", (ev: { data?: unknown; code?: unknown; message?: unknown }) => {
      // An `event: error` from the server (an error frame) arrives as a MessageEvent named
      // "error", like EventSource's own failure event, which carries no data.
      if (typeof ev?.data === "string") onFrame(ev);
      else this.onStreamFailure(conn, typeof ev?.code === "number" ? ev.code : undefined);
    });
    es.addEventListener("close", (ev: { data?: unknown }) => {
      if (this.conn !== conn) return;
      let code = 1006;
      let reason = "stream closed by the server";
      try {
        const c = JSON.parse(String(ev?.data)) as { code?: unknown; reason?: unknown };
        if (typeof c.code === "number") code = c.code;
        if (typeof c.reason === "string") reason = c.reason;
      } catch {
        /* a close without a readable reason: reconnect */
      }
      this.onLost(conn, code, reason);
    });
    conn.connectTimer = this.timers.setTimeout(() => this.onLost(conn, 1006, "timed out waiting for welcome"), this.connectTimeoutMs);
  }

  /**
   * The event stream failed. Once open, that is a lost connection. Before `welcome`, an
   * EventSource that gave up (readyState 2: an HTTP error status or a wrong content type;
   * a browser shows neither) is asked about with fetch, which can read the status and the
   * server's JSON error: a refusal of §4 is then handled like its §10 close code.
   */
  private onStreamFailure(conn: Conn, status: number | undefined): void {
    if (this.conn !== conn) return;
    if (conn.welcomed) {
      this.onLost(conn, 1006, "event stream lost");
      return;
    }
    if (conn.es?.readyState !== 2 && status === undefined) {
      this.onLost(conn, 1006, "event stream failed to open");
      return;
    }
    try {
      conn.es?.close(); // no retries of its own while we look
    } catch {
      /* already closed */
    }
    void this.probe(conn, status);
  }

  private async probe(conn: Conn, status: number | undefined): Promise<void> {
    const ctl = newAbortController();
    const timer = this.timers.setTimeout(() => ctl?.abort(), this.connectTimeoutMs);
    let text: string | undefined;
    try {
      const res = await (this.fetchFn as FetchLike)(conn.url as string, { headers: { Accept: "text/event-stream" }, ...(ctl ? { signal: ctl.signal } : {}) });
      status = res.status;
      if (res.ok) ctl?.abort(); // it opens now: the failure was passing; do not hold a stream
      else text = await res.text();
    } catch {
      /* unreachable: a network failure */
    }
    this.clearTimer(timer);
    if (this.conn !== conn) return;
    this.refusedOverHttp(conn, status, text, "event stream");
  }

  /**
   * A failed HTTP answer before (or without) a working connection: a §4 refusal in the
   * body acts like its §10 close code; anything else is a failure to open (or, once open,
   * a lost connection).
   */
  private refusedOverHttp(conn: Conn, status: number | undefined, text: string | undefined, what: string): void {
    const refusal = httpRefusal(text);
    if (refusal) {
      conn.refusal = { code: refusal.code, message: refusal.message };
      this.onLost(conn, refusal.closeCode, refusal.code);
      return;
    }
    const ok = status !== undefined && status >= 200 && status < 300;
    const reason = status === undefined || ok ? `${what} failed` : `${what} answered HTTP ${status}`;
    this.onLost(conn, 1006, reason, conn.welcomed || ok ? undefined : status);
  }

  /**
   * Long-polling (contract v1.1 §D): `GET …/poll?since=&epoch=&timeout=` answers with the
   * messages after `since`, or none after `timeout` seconds. There is no `welcome`: the
   * first answer of a connection stands for it, so that poll asks for a 1 s hold (the
   * state is `open` within a second), the later ones for `pollTimeoutSecs`.
   */
  private openLongPoll(token: string, base: string, tokenReason: TokenContext["reason"]): void {
    const conn = this.newConn("longpoll", token, base, tokenReason);
    conn.resumed = this._epoch !== null;
    this.conn = conn;
    void this.pollLoop(conn);
  }

  private async pollLoop(conn: Conn): Promise<void> {
    while (this.conn === conn && !this.stopped) {
      const hold = conn.welcomed ? this.pollTimeoutSecs : 1;
      const url = this.endpoint(conn.base, "poll", undefined, hold);
      const ctl = newAbortController();
      conn.abort = ctl;
      const timer = this.timers.setTimeout(() => ctl?.abort(), hold * 1000 + this.connectTimeoutMs);
      let status: number | undefined;
      let text: string | undefined;
      try {
        const res = await (this.fetchFn as FetchLike)(url, {
          headers: { Authorization: `Bearer ${conn.token}`, Accept: "application/json" },
          ...(ctl ? { signal: ctl.signal } : {}),
        });
        status = res.status;
        text = await res.text();
      } catch (err) {
        this.clearTimer(timer);
        if (this.conn === conn) this.onLost(conn, 1006, `poll failed: ${errorMessage(err)}`);
        return;
      }
      this.clearTimer(timer);
      if (this.conn !== conn) return;
      if (status < 200 || status >= 300) {
        this.refusedOverHttp(conn, status, text, "poll");
        return;
      }
      let answer: PollAnswer;
      try {
        answer = JSON.parse(text) as PollAnswer;
        if (!answer || typeof answer.epoch !== "string" || typeof answer.last_seq !== "number" || !Array.isArray(answer.messages)) throw new Error("not a poll answer");
      } catch {
        this.emitError(new RoomcastError("bad_server_frame", `the server answered a poll with: ${String(text).slice(0, 100)}`));
        this.onLost(conn, 1006, "bad poll answer", conn.welcomed ? undefined : status);
        return;
      }
      this.onPollAnswer(conn, answer);
    }
  }

  private onPollAnswer(conn: Conn, a: PollAnswer): void {
    if (!conn.welcomed) {
      this._user = tokenSubject(conn.token) ?? this._user;
      const resync = this.opened(conn, a.epoch, a.last_seq, conn.resumed === true && a.recovered === true);
      if (resync) this.emit("resync", resync);
      if (this.conn !== conn) return;
      this.setState("open", {});
      this.pump();
    } else if (a.recovered !== true || a.epoch !== this._epoch) {
      const resync: ResyncEvent = {
        reason: a.epoch !== this._epoch ? "epoch_changed" : "not_recovered",
        epoch: a.epoch,
        seq: a.last_seq,
        previousEpoch: this._epoch,
        previousSeq: this.lastSeq,
      };
      this._epoch = a.epoch;
      this.lastSeq = a.last_seq;
      this.ownSeqs.clear();
      this.emit("resync", resync);
      return;
    }
    // Messages at or below lastSeq (all of them on a first connection, whose position is
    // the answer's last_seq, as a welcome's seq) are dropped by the usual filter.
    for (const m of a.messages) {
      if (this.conn !== conn) return;
      if (m && typeof m === "object") this.onMessage(m);
    }
  }

  /**
   * The URL of a room route. `ws` turns http(s) into ws(s), the others ws(s) into http(s);
   * a path prefix is kept. Room names are [A-Za-z0-9_.:-] (checked in the constructor):
   * path-safe as they are, and the server matches the raw segment, so they must not be
   * percent-encoded.
   */
  private endpoint(base: string, route: "ws" | "events" | "poll" | "publish", accessToken?: string, hold?: number): string {
    const u = new URL(base);
    if (route === "ws") {
      if (u.protocol === "http:") u.protocol = "ws:";
      else if (u.protocol === "https:") u.protocol = "wss:";
    } else if (u.protocol === "ws:") u.protocol = "http:";
    else if (u.protocol === "wss:") u.protocol = "https:";
    // Room names may hold one @ (a personal room): path-safe as it is.
    u.pathname = `${u.pathname.replace(/\/+$/, "")}/v1/rooms/${this.room}/${route}`;
    if (route !== "publish") {
      if (this._epoch !== null) {
        u.searchParams.set("since", String(this.lastSeq));
        u.searchParams.set("epoch", this._epoch);
      } else if (route === "poll") u.searchParams.set("since", "0");
    }
    if (this.tenant !== undefined) u.searchParams.set("tenant", this.tenant);
    if (!this.presenceEvents && (route === "ws" || route === "events")) u.searchParams.set("presence", "off");
    if (hold !== undefined) u.searchParams.set("timeout", String(hold));
    if (accessToken !== undefined) u.searchParams.set("access_token", accessToken);
    return u.toString();
  }

  /**
   * The connection ended (close, error, timeout, or a refusal frame). Decides whether and
   * when to retry (`endPolicy`); a refusal's code and message become the error reported.
   */
  private onLost(conn: Conn, code: number, reason: string, httpStatus?: number): void {
    if (this.conn !== conn) return;
    this.teardown(conn, reason);
    if (this.stopped) return;
    if (this.auto && !this.proven && !conn.welcomed && !conn.refusal && !(code >= 4000 && code <= 4999)) {
      // Nothing of ours was heard on this transport: not a refusal (an error frame or a
      // refusal body), not a close code of the protocol. It could not open.
      if (this.tokenReason !== "expired") this.tokenReason = "reconnect";
      this.failedToOpen(httpStatus !== undefined ? `HTTP ${httpStatus}` : reason, { code });
      return;
    }
    const refusal = conn.refusal;
    const action: CloseAction = endPolicy({
      code,
      ...(httpStatus !== undefined ? { status: httpStatus } : {}),
      welcomed: conn.welcomed,
      refreshedToken: conn.tokenReason === "expired",
      fixedToken: typeof this.token === "string",
    });
    const what = httpStatus !== undefined ? `${conn.transport === "websocket" ? "upgrade" : conn.transport} rejected with HTTP ${httpStatus}` : `closed with ${code}${reason ? ` (${reason})` : ""}`;
    const extra = { closeCode: code, ...(httpStatus !== undefined ? { status: httpStatus } : {}) };
    if (action === "stop") {
      // A token refused again (or one that cannot be refreshed) is reported as what it
      // is, so the application can say so, not as a generic close.
      const tokenRefused = code === 4001 || httpStatus === 401;
      const err = refusal
        ? new RoomcastError(refusal.code, refusal.message, { fatal: true, ...extra })
        : new RoomcastError(tokenRefused ? "token_expired" : httpStatus !== undefined ? "handshake" : "close", `connection ${what}; not reconnecting`, {
            fatal: true,
            ...extra,
          });
      this.stop(err, { code, reason }, undefined, undefined);
      return;
    }
    if (refusal) this.emitError(new RoomcastError(refusal.code, refusal.message, extra));
    if (action === "refresh_token") this.tokenReason = "expired";
    else if (this.tokenReason !== "expired") this.tokenReason = "reconnect";
    this.scheduleRetry({ code, reason: httpStatus !== undefined ? what : reason });
  }

  /**
   * The current transport could not open. Without `auto` (or once a transport has
   * opened) that is a retry like any other. With `auto` the transport is tried
   * `fallbackAfter` times in a row (a constructor that throws: once), then the next one at
   * once; after the last, the first again, with backoff.
   */
  private failedToOpen(reason: string, { code, immediate = false }: { code?: number; immediate?: boolean } = {}): void {
    const detail = { ...(code !== undefined ? { code } : {}), reason };
    if (!this.auto || this.proven) {
      this.scheduleRetry(detail);
      return;
    }
    this.openFailures++;
    if (!immediate && this.openFailures < this.fallbackAfter) {
      this.scheduleRetry(detail);
      return;
    }
    this.openFailures = 0;
    const previous = this.transport;
    if (this.transportIndex + 1 >= this.transports.length) {
      this.transportIndex = 0;
      if (this.transport !== previous) this.emit("transport", this.transport, { previous, reason });
      if (this.stopped) return;
      this.scheduleRetry(detail);
      return;
    }
    this.transportIndex++;
    this.emit("transport", this.transport, { previous, reason });
    if (this.stopped) return;
    this.scheduleRetry({ ...detail, reason: `${previous} could not open (${reason}); trying ${this.transport}` }, 0);
  }

  /**
   * Forgets a connection: its timers, its socket or stream, its in-flight publishes
   * (re-queued; an HTTP publish under way is left to finish, its answer still counts).
   * A socket is closed with `graceful` when given, else dropped without waiting for a
   * closing handshake that a dead peer would never complete.
   */
  private teardown(conn: Conn, reason: string, graceful?: number): void {
    if (this.conn === conn) this.conn = null;
    for (const t of [conn.connectTimer, conn.pingTimer, conn.pongTimer, conn.stableTimer]) this.clearTimer(t);
    for (const e of conn.inflight) if (this.outbox.get(e.id) === e) e.status = "queued";
    conn.inflight = [];
    if (conn.es) {
      try {
        conn.es.close();
      } catch {
        /* already closed */
      }
    }
    conn.abort?.abort();
    const ws = conn.ws as (WebSocketLike & { terminate?: () => void }) | undefined;
    if (!ws) return;
    try {
      if (ws.readyState === 0 || ws.readyState === OPEN) {
        if (graceful !== undefined) ws.close(graceful, reason.slice(0, 100));
        else if (typeof ws.terminate === "function") ws.terminate();
        else ws.close(4000, reason.slice(0, 100));
      }
    } catch {
      /* already gone */
    }
  }

  private scheduleRetry(detail: { code?: number; reason?: string }, delay?: number): void {
    const delayMs = delay ?? backoffDelay(this.attempt, this.baseMs, this.capMs, this.random);
    if (delay === undefined) this.attempt++;
    this.setState("reconnecting", { ...detail, delayMs });
    this.clearTimer(this.retryTimer);
    this.retryTimer = this.timers.setTimeout(() => {
      this.retryTimer = undefined;
      void this.attemptConnect();
    }, delayMs);
  }

  /** Terminal: no more connections, every pending publish rejects. */
  private stop(err: RoomcastError, detail: { code?: number; reason?: string }, closeCode: number | undefined, closeReason: string | undefined): void {
    this.stopped = true;
    this.generation++;
    this.clearTimer(this.retryTimer);
    this.clearTimer(this.pauseTimer);
    this.clearTimer(this.attemptTimer);
    this.retryTimer = this.pauseTimer = this.attemptTimer = undefined;
    if (this.conn) this.teardown(this.conn, closeReason ?? "closed", closeCode);
    this.httpPublish?.abort?.abort();
    this.httpPublish = null;
    const entries = Array.from(this.outbox.values());
    this.outbox.clear();
    const rejection = err.code === "closed" ? err : new RoomcastError("closed", `the client stopped: ${err.message}`, { cause: err });
    for (const e of entries) for (const w of e.waiters) w.reject(rejection);
    if (err.fatal) this.emitError(err);
    this.setState("closed", { ...detail, ...(err.fatal ? { error: err } : {}) });
  }

  // ---- frames --------------------------------------------------------------------

  private onData(conn: Conn, data: unknown): void {
    if (this.conn !== conn) return;
    if (typeof data !== "string") return; // the server sends text only
    if (data === "pong") {
      this.clearTimer(conn.pongTimer);
      conn.pongTimer = undefined;
      return;
    }
    conn.received++;
    conn.charsSinceReceipt += data.length;
    this.handleText(conn, data);
    if (this.conn === conn) this.maybeSendReceipt(conn);
  }

  private handleText(conn: Conn, data: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(data);
    } catch {
      this.emitError(new RoomcastError("bad_server_frame", `the server sent a frame that is not JSON: ${data.slice(0, 100)}`));
      return;
    }
    for (const frame of Array.isArray(parsed) ? parsed : [parsed]) {
      if (this.conn !== conn) return; // a listener closed or reconnected
      if (!frame || typeof frame !== "object") continue;
      const f = frame as { type?: unknown };
      if (f.type === "welcome") this.onWelcome(conn, frame as WelcomeFrame);
      else if (!conn.welcomed) {
        if (f.type === "error") this.onRefusal(conn, frame as ErrorFrame);
      } else if (f.type === "message") this.onMessage(frame as MessageFrame | EphemeralMessageFrame);
      else if (f.type === "ack") this.onAck(conn, frame as AckFrame | EphemeralAckFrame);
      else if (f.type === "error") this.onErrorFrame(conn, frame as ErrorFrame);
      else if (f.type === "presence") this.onPresence(frame as PresenceFrame);
      // Unknown types are ignored (forward compatibility).
    }
  }

  /**
   * An `error` frame before `welcome`: the server refused this socket and says why
   * (docs/protocol.md §10); its close follows. For the codes of that table the client acts
   * at once — a close event can trail its frame by seconds — and any other code is kept
   * for when the close comes.
   */
  private onRefusal(conn: Conn, f: ErrorFrame): void {
    if (conn.refusal) return;
    const code = typeof f.code === "string" ? f.code : "refused";
    conn.refusal = { code, message: typeof f.message === "string" ? f.message : code };
    const closeCode = Object.prototype.hasOwnProperty.call(REFUSAL_CLOSE_CODES, code) ? REFUSAL_CLOSE_CODES[code] : undefined;
    if (closeCode !== undefined) this.onLost(conn, closeCode, code);
  }

  /**
   * Tells the server how many messages this client has read on this connection, once
   * enough have arrived since the last receipt (contract v1.1 §C): the room cannot see
   * what the runtime buffers for a socket, so this is how it tells a slow reader from a
   * fast one. Only for servers that ask (`welcome.receipts`).
   */
  private maybeSendReceipt(conn: Conn): void {
    if (!conn.ws || !conn.receipts || !receiptDue(conn.received - conn.receivedAtReceipt, conn.charsSinceReceipt)) return;
    if (conn.ws.readyState !== OPEN) return;
    try {
      conn.ws.send(JSON.stringify({ type: "received", messages: conn.received }));
    } catch {
      return; // the socket is failing; its close event follows
    }
    conn.receivedAtReceipt = conn.received;
    conn.charsSinceReceipt = 0;
  }

  private onWelcome(conn: Conn, w: WelcomeFrame): void {
    if (conn.welcomed) return;
    // Receipts are for sockets; on SSE the Worker reads the room's socket for the client.
    conn.receipts = conn.ws !== undefined && w.receipts === true;
    conn.id = w.conn;
    this.myConns.push(w.conn);
    if (this.myConns.length > MAX_REMEMBERED_CONNS) this.myConns.shift();
    this._user = w.user;
    const resync = this.opened(conn, w.epoch, w.seq, w.resume?.recovered === true);

    this.members.clear();
    for (const u of w.presence?.users ?? []) this.members.set(u.user, u.info);

    this.emit("welcome", w);
    if (this.conn !== conn) return;
    if (resync) this.emit("resync", resync);
    if (this.conn !== conn) return;
    const users: PresenceUser[] = w.presence?.users ?? [];
    this.emit("presence", { op: "sync", count: w.presence?.count ?? users.length, users });
    if (this.conn !== conn) return;
    this.setState("open", {});
    this.pump();
  }

  /**
   * A connection is open (its `welcome`, or a long-poll's first answer) at the room's
   * `epoch` and `seq`. Returns the resync to report when the position could not be
   * resumed. With `auto`, the transport that opened is the one kept from now on.
   */
  private opened(conn: Conn, epoch: string, seq: number, recovered: boolean): ResyncEvent | null {
    conn.welcomed = true;
    this.clearTimer(conn.connectTimer);
    this.proven = true;
    this.openFailures = 0;

    const previousEpoch = this._epoch;
    const previousSeq = this.lastSeq;
    let resync: ResyncEvent | null = null;
    if (previousEpoch === null) {
      this._epoch = epoch;
      this.lastSeq = seq;
    } else if (!recovered) {
      this._epoch = epoch;
      this.lastSeq = seq;
      this.ownSeqs.clear();
      resync = {
        reason: epoch !== previousEpoch ? "epoch_changed" : "not_recovered",
        epoch,
        seq,
        previousEpoch,
        previousSeq,
      };
    }
    // Recovered: keep lastSeq; the missed messages follow in order.

    this.tokenReason = "reconnect";
    this.window = this.maxInFlight; // a new connection starts with a full rate-limit bucket
    conn.stableTimer = this.timers.setTimeout(() => {
      if (this.conn === conn) this.attempt = 0;
    }, this.stableMs);
    if (conn.ws) this.startHeartbeat(conn);
    return resync;
  }

  private onMessage(m: MessageFrame | EphemeralMessageFrame): void {
    if (m.ephemeral === true) {
      // No seq: outside resume, de-duplication and gap detection altogether. One of our
      // own signals posted over HTTP comes back on our stream: drop it unless echoed.
      if (typeof m.id === "string" && this.ownSignalIds.delete(m.id)) return;
      this.emit("message", m);
      return;
    }
    if (typeof m.seq !== "number" || m.seq <= this.lastSeq || this.ownSeqs.has(m.seq)) return; // seen
    // Our own message: published on one of our sockets, or — over HTTP, where the room
    // cannot name the publisher's stream — carrying the id of a publish we posted.
    const pending = this.outbox.get(m.id);
    const own =
      (m.from !== null && m.from !== undefined && this.myConns.includes(m.from.conn)) ||
      (pending !== undefined && pending.viaHttp && (this._user === null || m.from?.user === this._user));
    const entry = own ? pending : undefined;
    const previousSeq = this.lastSeq;
    this.lastSeq = m.seq;
    this.advance();
    if (m.seq !== previousSeq + 1) {
      this.emit("resync", {
        reason: "gap",
        epoch: this._epoch ?? "",
        seq: m.seq,
        previousEpoch: this._epoch,
        previousSeq,
        missed: { from: previousSeq + 1, to: m.seq - 1 },
      });
    }
    // Our own publish, seen in a replay (or echoed): that is its answer.
    if (entry) this.settle(entry, { id: entry.id, seq: m.seq, duplicate: false });
    if (!own || (entry ? entry.echo : this.echo)) this.emit("message", m);
  }

  private onAck(conn: Conn, a: AckFrame | EphemeralAckFrame): void {
    if (this.answerSignal(conn, a.id)) {
      // A server without ephemeral messages stored the signal as a plain publish: account
      // for its seq like any own publish, so the next message is not a "gap".
      if (a.ephemeral !== true && !a.duplicate && typeof a.seq === "number" && a.seq > this.lastSeq) {
        this.ownSeqs.add(a.seq);
        this.advance();
      }
      return;
    }
    if (a.ephemeral === true) return;
    const entry = this.outbox.get(a.id);
    if (entry) this.unflight(conn, entry);
    if (this.window < this.maxInFlight) this.window++;
    // Not echoed to us: account for its seq so the next message is not a "gap".
    if (!a.duplicate && typeof a.seq === "number" && a.seq > this.lastSeq) {
      this.ownSeqs.add(a.seq);
      this.advance();
    }
    if (entry) this.settle(entry, { id: a.id, seq: a.seq, duplicate: !!a.duplicate });
    else this.pump();
  }

  // ---- HTTP publish (SSE and long-poll) ------------------------------------------

  /**
   * Posts one publish (`POST …/publish`, the frame without `type`, contract v1.1 §D) and
   * handles its answer as a socket's `ack` or `error`. The same id is posted again after a
   * failure of any kind, so the room's dedup keeps it exactly-once.
   */
  private async postPublish(conn: Conn, entry: Entry): Promise<void> {
    entry.status = "inflight";
    entry.viaHttp = true;
    const ctl = newAbortController();
    const current: HttpPublish = { entry, abort: ctl };
    this.httpPublish = current;
    const timer = this.timers.setTimeout(() => ctl?.abort(), this.connectTimeoutMs);
    let status: number | undefined;
    let text: string | undefined;
    let retryAfter: string | null | undefined;
    try {
      const res = await (this.fetchFn as FetchLike)(this.endpoint(conn.base, "publish"), {
        method: "POST",
        headers: { Authorization: `Bearer ${conn.token}`, "Content-Type": "application/json" },
        body: withConn(entry.body, conn),
        ...(ctl ? { signal: ctl.signal } : {}),
      });
      status = res.status;
      retryAfter = res.headers?.get("Retry-After");
      text = await res.text();
    } catch {
      status = undefined; // the network: nothing is known about this attempt
    }
    this.clearTimer(timer);
    if (this.httpPublish === current) this.httpPublish = null;
    if (this.stopped) return;
    if (this.outbox.get(entry.id) !== entry) {
      this.pump(); // settled meanwhile (its own message came first)
      return;
    }
    entry.status = "queued";
    const body = parseJson(text) as { seq?: unknown; duplicate?: unknown; error?: { code?: unknown; message?: unknown; retry_after_ms?: unknown }; retry_after_ms?: unknown } | undefined;
    if (status === undefined) {
      this.pause(backoffDelay(this.httpFailures++, this.baseMs, this.capMs, this.random));
      return;
    }
    this.httpFailures = 0;
    if (status >= 200 && status < 300 && typeof body?.seq === "number") {
      const seq = body.seq;
      const duplicate = body.duplicate === true;
      // Not echoed: account for its seq so the next message is no gap, and drop it if our
      // stream brings it. Echoed: it is delivered when the stream brings it.
      if (!duplicate && !entry.echo && seq > this.lastSeq) {
        this.ownSeqs.add(seq);
        this.advance();
      }
      this.settle(entry, { id: entry.id, seq, duplicate });
      return;
    }
    const error = body?.error;
    const code = typeof error?.code === "string" ? error.code : httpErrorCode(status);
    const message = typeof error?.message === "string" ? error.message : `publish answered HTTP ${status}`;
    if (status === 401) {
      // As a socket's token_expired: the publish waits for a fresh token.
      this.emitError(new RoomcastError(code, message, { id: entry.id, status }));
      if (this.conn === conn && conn.welcomed) this.onLost(conn, 4001, code);
      else this.pump();
      return;
    }
    if (status === 429 || code === "rate_limited") {
      this.window = 1;
      this.pause(retryAfterMs(error?.retry_after_ms ?? body?.retry_after_ms, retryAfter) ?? backoffDelay(0, this.baseMs, this.capMs, this.random));
      return;
    }
    if (status >= 502 && status <= 504 && typeof error?.code !== "string") {
      // A gateway's or proxy's answer, not the Worker's: try again, as after a lost connection.
      this.pause(backoffDelay(this.httpFailures++, this.baseMs, this.capMs, this.random));
      return;
    }
    if (status >= 500 || code === "internal") {
      if (++entry.failures > this.maxRetries) this.fail(entry, new RoomcastError(code, message, { id: entry.id, status }));
      else this.pause(backoffDelay(entry.failures - 1, this.baseMs, this.capMs, this.random));
      return;
    }
    this.fail(entry, new RoomcastError(code, message, { id: entry.id, status }));
  }

  /** Posts a signal (ephemeral publish); only `rate_limited` and refusals are acted on. */
  private async postSignal(conn: Conn, body: string): Promise<void> {
    this.httpSignals++;
    let status: number | undefined;
    let text: string | undefined;
    let retryAfter: string | null | undefined;
    try {
      const res = await (this.fetchFn as FetchLike)(this.endpoint(conn.base, "publish"), {
        method: "POST",
        headers: { Authorization: `Bearer ${conn.token}`, "Content-Type": "application/json" },
        body: withConn(body, conn),
      });
      status = res.status;
      retryAfter = res.headers?.get("Retry-After");
      text = await res.text();
    } catch {
      /* lost: a signal is never retried */
    } finally {
      this.httpSignals--;
    }
    if (this.stopped || status === undefined || (status >= 200 && status < 300)) return;
    const parsed = parseJson(text) as { error?: { code?: unknown; message?: unknown; retry_after_ms?: unknown } } | undefined;
    const code = typeof parsed?.error?.code === "string" ? parsed.error.code : httpErrorCode(status);
    if (status === 429 || code === "rate_limited") {
      this.pause(retryAfterMs(parsed?.error?.retry_after_ms, retryAfter) ?? backoffDelay(0, this.baseMs, this.capMs, this.random));
      return;
    }
    if (status === 401) return; // the stream or the next publish gets a fresh token
    this.emitError(new RoomcastError(code, typeof parsed?.error?.message === "string" ? parsed.error.message : `signal answered HTTP ${status}`, { status }));
  }

  private onErrorFrame(conn: Conn, f: ErrorFrame): void {
    if (f.code === "disconnected") {
      // A backend ended this connection (docs/protocol.md §14). The close code decides —
      // 4400–4999 stop, 4000–4399 reconnect with backoff — and the frame names it: act on
      // it now, as for token_expired, since the close event can trail the frame by
      // seconds. A frame without it waits for the close. Either way the error reported
      // carries the server's message, like a refusal's.
      if (!conn.refusal) conn.refusal = { code: f.code, message: typeof f.message === "string" ? f.message : f.code };
      if (typeof f.close === "number" && Number.isInteger(f.close) && f.close >= 4000 && f.close <= 4999) this.onLost(conn, f.close, "disconnected");
      return;
    }
    if (f.code === "token_expired") {
      // The server closes with 4001 right after this frame. Act on the frame: the close
      // event can trail it by many seconds (it waits for the server's TCP close), and the
      // publish it names (if any) stays queued for the next connection.
      this.emitError(new RoomcastError("token_expired", f.message ?? "token expired", { ...(f.id ? { id: f.id } : {}) }));
      this.onLost(conn, 4001, "token_expired");
      return;
    }
    let signal = f.id ? this.answerSignal(conn, f.id) : false;
    let entry = f.id ? this.outbox.get(f.id) : undefined;
    if (!f.id && (f.code === "too_large" || f.code === "bad_frame")) {
      // Rejected before the server could read an id: answers come in send order, so it
      // is the oldest unanswered publish or signal on this connection.
      const oldestSignal = conn.signals[0];
      const oldestEntry = conn.inflight[0];
      if (oldestSignal && (!oldestEntry || oldestSignal.sentAt < oldestEntry.sentAt)) {
        signal = this.answerSignal(conn, oldestSignal.id);
      } else entry = oldestEntry;
    }
    if (signal) {
      // A signal is never retried. Sending more while rate limited would only add to the
      // refusals the server closes a socket for (4008), so all sending pauses instead.
      if (f.code === "rate_limited") {
        const wait = typeof f.retry_after_ms === "number" && f.retry_after_ms >= 0 ? f.retry_after_ms : backoffDelay(0, this.baseMs, this.capMs, this.random);
        this.pause(wait);
      } else this.emitError(new RoomcastError(f.code, f.message ?? f.code, { ...(f.id ? { id: f.id } : {}) }));
      return;
    }
    if (!entry) {
      this.emitError(new RoomcastError(f.code, f.message ?? f.code, { ...(f.id ? { id: f.id } : {}) }));
      return;
    }
    this.unflight(conn, entry);
    if (!RETRYABLE_PUBLISH_ERRORS.has(f.code) || (f.code === "internal" && ++entry.failures > this.maxRetries)) {
      this.fail(entry, new RoomcastError(f.code, f.message ?? f.code, { id: entry.id }));
      return;
    }
    entry.status = "queued";
    if (f.code === "rate_limited") {
      // Back off and send one at a time until acks come back: a full window of rejected
      // publishes is what the server punishes with 4008.
      this.window = 1;
      const wait = typeof f.retry_after_ms === "number" && f.retry_after_ms >= 0 ? f.retry_after_ms : backoffDelay(0, this.baseMs, this.capMs, this.random);
      this.pause(wait);
    } else if (f.code === "internal") {
      this.pause(backoffDelay(entry.failures - 1, this.baseMs, this.capMs, this.random));
    }
  }

  private onPresence(p: PresenceFrame): void {
    if (p.op === "join") this.members.set(p.user, p.info);
    else if (p.op === "leave") this.members.delete(p.user);
    else return;
    this.emit("presence", { op: p.op, user: p.user, info: p.info });
  }

  /** Forgets the signal `id` as answered; whether it was one of this connection's. */
  private answerSignal(conn: Conn, id: string): boolean {
    const i = conn.signals.findIndex((s) => s.id === id);
    if (i < 0) return false;
    conn.signals.splice(i, 1);
    return true;
  }

  /** Moves `lastSeq` over our own acknowledged seqs that are now contiguous. */
  private advance(): void {
    while (this.ownSeqs.delete(this.lastSeq + 1)) this.lastSeq++;
    for (const s of this.ownSeqs) if (s <= this.lastSeq) this.ownSeqs.delete(s);
  }

  // ---- outbox --------------------------------------------------------------------

  /** Sends queued publishes, oldest first, while the connection is open and not paused. */
  private pump(): void {
    const conn = this.conn;
    if (!conn || !conn.welcomed || this.pauseTimer !== undefined || this.stopped) return;
    if (!conn.ws) {
      // SSE and long-poll: one HTTP publish at a time, so they reach the room in order.
      if (this.httpPublish) return;
      for (const entry of this.outbox.values()) {
        if (entry.status !== "queued") continue;
        void this.postPublish(conn, entry);
        return;
      }
      return;
    }
    const ws = conn.ws;
    for (const entry of this.outbox.values()) {
      if (conn.inflight.length >= this.window || ws.readyState !== OPEN) return;
      if (entry.status !== "queued") continue;
      try {
        ws.send(entry.frame);
      } catch {
        return; // the socket is failing; its close event re-queues and reconnects
      }
      entry.status = "inflight";
      entry.sentAt = ++conn.sends;
      conn.inflight.push(entry);
    }
  }

  /** Stops sending for `ms` (rate limited), then resumes. */
  private pause(ms: number): void {
    if (this.pauseTimer !== undefined) return;
    this.pauseTimer = this.timers.setTimeout(() => {
      this.pauseTimer = undefined;
      this.pump();
    }, ms);
  }

  private unflight(conn: Conn, entry: Entry): void {
    const i = conn.inflight.indexOf(entry);
    if (i >= 0) conn.inflight.splice(i, 1);
  }

  private settle(entry: Entry, result: PublishResult): void {
    if (this.outbox.get(entry.id) !== entry) return;
    this.outbox.delete(entry.id);
    if (this.conn) this.unflight(this.conn, entry);
    for (const w of entry.waiters) w.resolve(result);
    this.pump();
  }

  private fail(entry: Entry, err: RoomcastError): void {
    if (this.outbox.get(entry.id) !== entry) return;
    this.outbox.delete(entry.id);
    if (this.conn) this.unflight(this.conn, entry);
    for (const w of entry.waiters) w.reject(err);
    this.pump();
  }

  // ---- heartbeat -----------------------------------------------------------------

  private startHeartbeat(conn: Conn): void {
    const ws = conn.ws;
    if (this.pingMs <= 0 || !ws) return;
    const tick = () => {
      if (this.conn !== conn) return;
      try {
        if (ws.readyState === OPEN) ws.send("ping");
      } catch {
        /* the close event follows */
      }
      if (conn.pongTimer === undefined) {
        conn.pongTimer = this.timers.setTimeout(() => this.onLost(conn, 1006, "no pong: connection presumed dead"), this.pongMs);
      }
      conn.pingTimer = this.timers.setTimeout(tick, this.pingMs);
    };
    conn.pingTimer = this.timers.setTimeout(tick, this.pingMs);
  }

  // ---- helpers -------------------------------------------------------------------

  private setState(state: ConnectionState, detail: Partial<StateDetail>): void {
    const previous = this._state;
    this._state = state;
    this.emit("state", state, { ...detail, state, previous, attempt: this.attempt, transport: this.transport });
  }

  private emitError(err: RoomcastError): void {
    this.emit("error", err);
  }

  protected override listenerFailed(event: string, err: unknown): void {
    if (event === "error") {
      console.error(err);
      return;
    }
    this.emitError(new RoomcastError("listener", `a "${event}" listener threw: ${errorMessage(err)}`, { cause: err }));
  }

  private closedError(): RoomcastError {
    return new RoomcastError("closed", "the client is closed");
  }

  private clearTimer(handle: unknown): void {
    if (handle !== undefined) this.timers.clearTimeout(handle);
  }
}

function positive(value: number | undefined, fallback: number): number {
  return typeof value === "number" && value > 0 && Number.isFinite(value) ? value : fallback;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * An HTTP publish body with the stream's connection id (`welcome.conn`, SSE only): the
 * room then treats the message as that connection's, as on a WebSocket — not fanned out
 * back to it unless `echo` (docs/protocol.md §13).
 */
function withConn(body: string, conn: Conn): string {
  return conn.id === undefined ? body : `${body.slice(0, -1)},"conn":${JSON.stringify(conn.id)}}`;
}

function parseJson(text: string | undefined): unknown {
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** The error code of an HTTP answer without a JSON error body. */
function httpErrorCode(status: number): string {
  if (status === 401) return "token_expired";
  if (status === 403) return "forbidden";
  if (status === 404) return "not_found";
  if (status === 413) return "too_large";
  if (status === 429) return "rate_limited";
  if (status >= 500) return "internal";
  return "bad_request";
}

/** `retry_after_ms` from the body, else `Retry-After` (seconds) from the headers. */
function retryAfterMs(bodyValue: unknown, header: string | null | undefined): number | undefined {
  if (typeof bodyValue === "number" && bodyValue >= 0 && Number.isFinite(bodyValue)) return bodyValue;
  const secs = header ? Number(header) : NaN;
  return Number.isFinite(secs) && secs >= 0 ? secs * 1000 : undefined;
}

function newAbortController(): AbortController | undefined {
  return typeof AbortController === "function" ? new AbortController() : undefined;
}

/** The `sub` claim of a JWT, read without verifying it (the server does that). */
function tokenSubject(token: string): string | null {
  try {
    const part = token.split(".")[1];
    if (!part) return null;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
    const json = decodeURIComponent(
      Array.from(atob(b64), (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join(""),
    );
    const sub = (JSON.parse(json) as { sub?: unknown }).sub;
    return typeof sub === "string" ? sub : null;
  } catch {
    return null;
  }
}
