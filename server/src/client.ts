import { RoomcastError } from "./errors.js";
import { SIGNATURE_HEADER, hmacKey, sign } from "./signature.js";
import type {
  BroadcastResult,
  DisconnectOptions,
  DisconnectResult,
  ErrorDetail,
  HistoryOptions,
  HistoryPage,
  Message,
  PublishOptions,
  PublishResult,
  RoomInfo,
  Signal,
  SignalResult,
  DisconnectTarget,
  WebhookRetryResult,
  WebhookStatus,
} from "./types.js";

/** A service token, or a function that returns a current one (called for every request). */
export type TokenSource = string | (() => string | Promise<string>);

/** Options of {@link Roomcast}. Give exactly one of `secret` and `token`. */
export interface RoomcastOptions {
  /** The Worker's base URL, `https://rooms.example.com` (a path prefix is kept). */
  url: string;
  /**
   * `API_SECRET`: every request is signed with `Roomcast-Signature` (§7). The tenant is
   * then the `tenant` option.
   */
  secret?: string;
  /**
   * A service JWT whose `scope` contains `server`, or a function returning one. Its
   * `tenant` claim confines it; the `tenant` option may only repeat it.
   */
  token?: TokenSource;
  /** The tenant to act in (sent as the `tenant` query parameter). */
  tenant?: string;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** The clock used for signatures, ms since the unix epoch (default `Date.now`). */
  now?: () => number;
}

type Query = Record<string, string | number | undefined>;

/**
 * A room name as a path segment: legal names (`[A-Za-z0-9_.:-]`, one `@` for personal
 * rooms) are sent as they are — the Worker reads the segment without decoding, so `@`
 * and `:` must not become `%40`/`%3A`. Anything else is percent-encoded so that it stays
 * inside its segment (and the Worker answers `400 bad_room`).
 */
function roomSegment(room: string): string {
  if (typeof room !== "string") throw new TypeError("room must be a string");
  if (room === "." || room === "..") {
    // A URL cannot carry these as a segment: every URL parser removes them.
    throw new RoomcastError(0, "bad_room", `room ${JSON.stringify(room)} cannot be addressed in a URL`);
  }
  return encodeURIComponent(room).replace(/%40/g, "@").replace(/%3A/g, ":");
}

/**
 * A client for Roomcast's server API (docs/protocol.md §7): publish and broadcast from a
 * backend, read history and room state, disconnect users, inspect and retry webhooks.
 *
 * ```ts
 * const rc = new Roomcast({ url: "https://rooms.example.com", secret: env.API_SECRET });
 * const { seq, duplicate } = await rc.publish("lobby", { id: "order-42-paid", event: "order.paid", data: { total: 42 } });
 * ```
 *
 * Every method sends one request, signed fresh (or with the current token), and resolves
 * with the Worker's JSON answer or rejects with a {@link RoomcastError}. None retries by
 * itself; publishing again with the same `id` is always safe.
 */
export class Roomcast {
  readonly url: string;
  readonly tenant: string | undefined;
  readonly #options: RoomcastOptions;
  readonly #fetch: (input: string, init: RequestInit) => Promise<Response>;
  readonly #now: () => number;
  #key: Promise<CryptoKey> | undefined;

  constructor(options: RoomcastOptions) {
    if (!options || typeof options.url !== "string") throw new TypeError("url is required");
    const hasSecret = options.secret !== undefined;
    const hasToken = options.token !== undefined;
    if (hasSecret === hasToken) throw new TypeError("give exactly one of secret (API_SECRET) and token (a service JWT)");
    if (hasSecret && (typeof options.secret !== "string" || options.secret === "")) throw new TypeError("secret must be a non-empty string");
    const base = new URL(options.url);
    if (base.protocol !== "https:" && base.protocol !== "http:") throw new TypeError(`url must be http(s), got ${base.protocol}`);
    if (base.search || base.hash) throw new TypeError("url must not have a query or fragment");
    this.url = base.href.replace(/\/+$/, "");
    this.tenant = options.tenant;
    this.#options = options;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new TypeError("no fetch: pass options.fetch");
    // Called as a plain function: Workers' fetch throws "Illegal invocation" on a foreign `this`.
    this.#fetch = (input, init) => f(input, init);
    this.#now = options.now ?? Date.now;
  }

  /** The same client acting in another tenant. */
  forTenant(tenant: string | undefined): Roomcast {
    return new Roomcast({ ...this.#options, tenant });
  }

  /**
   * Publishes a durable message to a room: stored, sequenced and fanned out once per `id`.
   * A repeated `id` resolves with `duplicate: true` and the original `seq`.
   * `POST /v1/rooms/{room}/messages`.
   */
  publish(room: string, message: Message, options?: PublishOptions): Promise<PublishResult>;
  /** Sends an ephemeral signal (never stored, no `seq`); resolves with how many sockets it was queued for. */
  publish(room: string, message: Signal, options?: PublishOptions): Promise<SignalResult>;
  async publish(room: string, message: Message | Signal, options: PublishOptions = {}): Promise<PublishResult | SignalResult> {
    const body: Record<string, unknown> = { ...message };
    if (options.excludeConn !== undefined) body.exclude_conn = options.excludeConn;
    return this.#request("POST", `/v1/rooms/${roomSegment(room)}/messages`, {}, body);
  }

  /**
   * Publishes one message to up to 100 rooms (`POST /v1/broadcast`). Resolves with a
   * result per room, in order; a room that failed (an invalid name) has `error` instead
   * of `seq` — the call as a whole still succeeds.
   */
  async broadcast(rooms: readonly string[], message: Message): Promise<BroadcastResult> {
    if (!Array.isArray(rooms)) throw new TypeError("rooms must be an array of room names");
    return this.#request("POST", "/v1/broadcast", {}, { ...message, rooms });
  }

  /** Stored messages after `since`, oldest first (`GET /v1/rooms/{room}/messages`). */
  async history(room: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    return this.#request("GET", `/v1/rooms/${roomSegment(room)}/messages`, { since: options.since, limit: options.limit });
  }

  /** The room's state: last seq, connections, users, storage rows, counters (`GET /v1/rooms/{room}`). */
  async room(room: string): Promise<RoomInfo> {
    return this.#request("GET", `/v1/rooms/${roomSegment(room)}`);
  }

  /**
   * Closes every socket of a user in a room, or one connection (§14). Each gets an
   * `error` frame with code `disconnected` and the reason, then the close code.
   * Resolves with how many sockets were closed (0 is not an error). Not a ban: stop
   * issuing the user tokens for the room to keep it out.
   */
  async disconnect(room: string, target: DisconnectTarget, options: DisconnectOptions = {}): Promise<DisconnectResult> {
    return this.#request("POST", `/v1/rooms/${roomSegment(room)}/disconnect`, {}, { ...target, ...options });
  }

  /** The room's webhook outbox: pending and dead events, the next attempt, the last error. */
  async webhooks(room: string): Promise<WebhookStatus> {
    return this.#request("GET", `/v1/rooms/${roomSegment(room)}/webhooks`);
  }

  /** Queues the room's dead webhook events again and attempts delivery at once. */
  async retryWebhooks(room: string): Promise<WebhookRetryResult> {
    return this.#request("POST", `/v1/rooms/${roomSegment(room)}/webhooks/retry`);
  }

  /**
   * Sends one request. The signature covers the URL's path and query exactly as they go
   * on the wire (taken from the parsed URL that is fetched) and the exact body text.
   */
  async #request<T>(method: "GET" | "POST", path: string, query: Query = {}, body?: unknown): Promise<T> {
    const url = new URL(this.url + path);
    for (const [k, v] of Object.entries(query)) if (v !== undefined) url.searchParams.set(k, String(v));
    if (this.tenant !== undefined) url.searchParams.set("tenant", this.tenant);
    const text = body === undefined ? "" : JSON.stringify(body);
    const headers: Record<string, string> = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.#options.secret !== undefined) {
      this.#key ??= hmacKey(this.#options.secret);
      const t = Math.floor(this.#now() / 1000);
      headers[SIGNATURE_HEADER] = await sign({ secret: await this.#key, method, pathAndQuery: url.pathname + url.search, body: text, t });
    } else {
      const source = this.#options.token!;
      const token = typeof source === "function" ? await source() : source;
      if (typeof token !== "string" || token === "") throw new TypeError("the token function returned no token");
      headers.Authorization = `Bearer ${token}`;
    }
    const init: RequestInit = { method, headers };
    if (text !== "") init.body = text;
    let res: Response;
    try {
      res = await this.#fetch(url.href, init);
    } catch (e) {
      throw new RoomcastError(0, "network_error", `${method} ${url.pathname}: ${(e as Error)?.message ?? String(e)}`, { cause: e });
    }
    const answer = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(answer);
    } catch {
      parsed = undefined;
    }
    if (res.ok && parsed !== undefined) return parsed as T;
    throw errorFrom(res, parsed, answer, method, url.pathname);
  }
}

/** The {@link RoomcastError} for a non-2xx (or unreadable) answer. */
function errorFrom(res: Response, parsed: unknown, text: string, method: string, path: string): RoomcastError {
  const detail = (parsed as { error?: Partial<ErrorDetail> } | undefined)?.error;
  let retryAfterMs: number | undefined;
  if (typeof detail?.retry_after_ms === "number") retryAfterMs = detail.retry_after_ms;
  else {
    const header = res.headers.get("Retry-After");
    if (header !== null && /^\d+$/.test(header.trim())) retryAfterMs = Number(header.trim()) * 1000;
  }
  const extra = retryAfterMs === undefined ? {} : { retryAfterMs };
  if (detail && typeof detail.code === "string") {
    return new RoomcastError(res.status, detail.code, typeof detail.message === "string" ? detail.message : detail.code, extra);
  }
  const snippet = text.length > 200 ? `${text.slice(0, 200)}…` : text;
  return new RoomcastError(res.status, "unexpected_response", `${method} ${path}: HTTP ${res.status} without a Roomcast error body${snippet ? `: ${snippet}` : ""}`, extra);
}
