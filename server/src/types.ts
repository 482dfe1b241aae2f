// Wire shapes of the server API and of webhooks (docs/protocol.md §7, §14, §15). Answers
// are returned as the Worker sends them, field names included (`last_seq`, not `lastSeq`),
// so these types read like the protocol document.

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Who sent a message: a connection, or `null` for the server API. */
export type From = { user: string; conn: string } | null;

/** A stored message, as fanned out to sockets and returned by history. */
export interface MessageFrame {
  type: "message";
  seq: number;
  id: string;
  event: string;
  data: Json;
  from: From;
  /** Milliseconds since the unix epoch, when the room accepted it. */
  ts: number;
}

/** A durable message to publish. */
export interface Message {
  /**
   * The event id, `[A-Za-z0-9_.:-]{1,128}`. Keep it stable across retries: the room fans
   * an id out once within `DEDUP_WINDOW_SECS` and answers repeats with the original `seq`.
   */
  id: string;
  /** Event name, 1–64 characters. */
  event: string;
  /** Any JSON; omitted means `null`. */
  data?: unknown;
}

/** Options of {@link Roomcast.publish}. */
export interface PublishOptions {
  /** A connection (`welcome.conn`) that should not receive the message. */
  excludeConn?: string;
}

/** An ephemeral signal: fanned out, never stored or sequenced (§11). */
export interface Signal {
  ephemeral: true;
  event: string;
  data?: unknown;
  /** Conflation key: a newer signal with the same `event` and `key` replaces a queued one. */
  key?: string;
  /** Optional; not deduplicated for ephemeral messages. */
  id?: string;
}

/** `POST /v1/rooms/{room}/messages` for a durable message. */
export interface PublishResult {
  room: string;
  epoch: string;
  /** The assigned seq, or the original one for a duplicate. */
  seq: number;
  /** Whether this id had been accepted before (then nothing was fanned out). */
  duplicate: boolean;
  /** Sockets the message was queued for (0 for a duplicate). */
  delivered: number;
}

/** `POST /v1/rooms/{room}/messages` for an ephemeral signal. */
export interface SignalResult {
  room: string;
  ephemeral: true;
  delivered: number;
}

/** A server's error body, as in `{"error": {...}}`. */
export interface ErrorDetail {
  code: string;
  message: string;
  retry_after_ms?: number;
}

/** One room's outcome in a broadcast. */
export type BroadcastRoomResult =
  | { room: string; seq: number; duplicate: boolean; error?: undefined }
  | { room: string; error: ErrorDetail; seq?: undefined; duplicate?: undefined };

/** `POST /v1/broadcast`: one result per room, in the order given. */
export interface BroadcastResult {
  results: BroadcastRoomResult[];
}

/** Options of {@link Roomcast.history}. */
export interface HistoryOptions {
  /** Messages after this seq (default 0: from the oldest retained). */
  since?: number;
  /** At most this many, 1–1000 (default 100). */
  limit?: number;
}

/** `GET /v1/rooms/{room}/messages`. */
export interface HistoryPage {
  epoch: string;
  last_seq: number;
  messages: MessageFrame[];
}

/** One user in {@link RoomInfo}. */
export interface RoomUser {
  user: string;
  /** Open connections of this user in the room. */
  connections: number;
  info: Json;
}

/** `GET /v1/rooms/{room}` (§7, §9 "counters" and "storage"). */
export interface RoomInfo {
  room: string;
  epoch: string;
  last_seq: number;
  connections: number;
  users: RoomUser[];
  storage: { rows_read: number; rows_written: number };
  counters: {
    since_ms: number;
    messages: number;
    duplicates: number;
    ephemeral: number;
    deliveries: number;
    sends: number;
    connects: number;
    peak_connections: number;
    rejections: Record<string, number>;
    kicks: Record<string, number>;
    [more: string]: Json;
  };
  /** Present when webhooks are on. */
  webhooks?: { pending: number; dead: number };
}

/** Whom {@link Roomcast.disconnect} closes: every socket of a user, or one connection. */
export type DisconnectTarget = { user: string; conn?: undefined } | { conn: string; user?: undefined };

/** Options of {@link Roomcast.disconnect} (§14). */
export interface DisconnectOptions {
  /**
   * Close code 4000–4999 (default 4403). 4400–4999 tell clients to stop; 4000–4399 to
   * reconnect with backoff (for example after their permissions changed).
   */
  code?: number;
  /** 1–123 bytes of UTF-8 shown to the client (default "disconnected by the server"). */
  reason?: string;
}

/** `POST /v1/rooms/{room}/disconnect`. */
export interface DisconnectResult {
  /** Sockets closed; 0 when the user or connection is not in the room. */
  closed: number;
}

/** `GET /v1/rooms/{room}/webhooks` (§15). */
export interface WebhookStatus {
  enabled: boolean;
  pending: number;
  dead: number;
  /** When the next attempt is due, ms since the unix epoch; `null` when none is scheduled. */
  next_attempt_ms: number | null;
  /** Why the last attempt failed (`"HTTP 500"`, a network error), or `null`. */
  last_error: string | null;
  /** Failed attempts in a row. */
  attempts: number;
}

/** `POST /v1/rooms/{room}/webhooks/retry`. */
export interface WebhookRetryResult {
  /** Dead events queued again. */
  requeued: number;
}

/** A `message` webhook event: the message frame with `kind` for `type`. */
export interface WebhookMessageEvent {
  wid: string;
  kind: "message";
  seq: number;
  id: string;
  event: string;
  data: Json;
  from: From;
  ts: number;
}

/** A `presence` webhook event: a user's first socket joined, or its last one left. */
export interface WebhookPresenceEvent {
  wid: string;
  kind: "presence";
  op: "join" | "leave";
  user: string;
  info: Json;
  ts: number;
}

/** A `room` webhook event: the first socket arrived, or the last one left. */
export interface WebhookRoomEvent {
  wid: string;
  kind: "room";
  op: "occupied" | "vacated";
  ts: number;
}

/** One event in a webhook batch; `wid` is `"<epoch>:<n>"`, `n` gapless per room. */
export type WebhookEvent = WebhookMessageEvent | WebhookPresenceEvent | WebhookRoomEvent;

/** The body of a webhook request. */
export interface WebhookBatch {
  room: string;
  tenant: string | null;
  epoch: string;
  events: WebhookEvent[];
}
