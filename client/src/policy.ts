// Pure policy: backoff, what a close code or a failed handshake means, and errors.
// Exported so applications (and tests) can see exactly what the client will do.

/** What to do after a connection ends. */
export type CloseAction = "reconnect" | "refresh_token" | "stop";

/**
 * Exponential backoff with full jitter: a uniformly random delay in
 * `[0, min(capMs, baseMs · 2^attempt))`, where `attempt` counts consecutive failures from 0.
 */
export function backoffDelay(attempt: number, baseMs = 500, capMs = 30_000, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * Math.pow(2, Math.max(0, attempt)));
  const r = Math.min(Math.max(random(), 0), 1 - Number.EPSILON);
  return Math.floor(r * ceiling);
}

/**
 * The close-code policy (docs/protocol.md §5, §10):
 *
 * * 4001 (token expired or refused) → get a fresh token, reconnect (see `endPolicy` for
 *   when that stops instead);
 * * 1000 that we initiated, 1009 (too big), 4400–4999 → terminal; among them 4400
 *   (protocol error, or a bad room name or request at upgrade) and 4403 (forbidden, or an
 *   origin not allowed);
 * * everything else — 1001, 1005, 1006 (abnormal, no close frame), 1011, 1012–1014,
 *   4000–4399 (among them 4008 rate limited, 4009 too slow, 4029 too many connections),
 *   an unsolicited 1000 — → reconnect with backoff.
 *
 * A backend's disconnect (§14) chooses its code from 4000–4999, so the same split says
 * whether a disconnected client comes back.
 *
 * An unsolicited 1000 is retried rather than obeyed: the server never sends one on its own,
 * so it comes from an intermediary or a shutting-down runtime, and stopping would leave
 * the application silently offline.
 */
export function closePolicy(code: number, initiatedByUs = false): CloseAction {
  if (code === 4001) return "refresh_token";
  if (code === 1000) return initiatedByUs ? "stop" : "reconnect";
  if (code === 1009) return "stop";
  if (code >= 4400 && code <= 4999) return "stop";
  return "reconnect";
}

/**
 * What an HTTP rejection of the upgrade means (§4), when the WebSocket implementation
 * exposes the status (`ws` does; browsers do not, and report only close code 1006):
 * 401 → fresh token; 400, 403, 404, 426 → terminal; 429 and 5xx → back off and retry.
 * Servers with §10 answer the browser transport (which this client uses) with a socket
 * and a close code instead, so this applies to older servers and to intermediaries.
 */
export function handshakePolicy(status: number): CloseAction {
  if (status === 401) return "refresh_token";
  if (status === 400 || status === 403 || status === 404 || status === 426) return "stop";
  return "reconnect";
}

/** How a connection ended, as far as the policy cares. */
export interface ConnectionEnd {
  /** The close code (1006 when the socket never opened). */
  code: number;
  /** The HTTP status of a rejected upgrade, when the WebSocket implementation shows it. */
  status?: number;
  /** Whether this client asked for the close. */
  initiatedByUs?: boolean;
  /** Whether the connection got its `welcome` (a refusal never does). */
  welcomed?: boolean;
  /** Whether this attempt's token was asked for with reason `"expired"`. */
  refreshedToken?: boolean;
  /** Whether the token is a fixed string (so it cannot be refreshed). */
  fixedToken?: boolean;
}

/**
 * The whole decision after a connection ends: `closePolicy` (or `handshakePolicy` for an
 * HTTP status), except that a token refresh happens once. When the server refuses a
 * connection for its token (4001 or HTTP 401 before `welcome`) although that token was
 * just asked for with reason `"expired"`, or when the token is a fixed string, the client
 * stops instead of asking again: nothing loops on a token provider that cannot help.
 */
export function endPolicy(end: ConnectionEnd): CloseAction {
  const action = end.status !== undefined ? handshakePolicy(end.status) : closePolicy(end.code, end.initiatedByUs ?? false);
  if (action !== "refresh_token") return action;
  if (end.fixedToken || (end.refreshedToken && !end.welcomed)) return "stop";
  return action;
}

/**
 * The close code that follows each `error` code with which a server refuses a browser
 * upgrade (docs/protocol.md §10). An `error` frame before `welcome` with one of these
 * codes is acted on at once, without waiting for the close that follows it.
 */
export const REFUSAL_CLOSE_CODES: Readonly<Record<string, number>> = Object.freeze({
  missing_token: 4001,
  invalid_token: 4001,
  token_expired: 4001,
  forbidden: 4403,
  origin_not_allowed: 4403,
  too_many_connections: 4029,
  bad_room: 4400,
  bad_request: 4400,
});

/** A receipt is sent once this many characters have been received since the last one. */
export const RECEIPT_EVERY_CHARS = 128 * 1024;
/** …or once this many WebSocket messages have been received since the last one. */
export const RECEIPT_EVERY_MESSAGES = 256;

/**
 * Whether a `received` receipt is due (contract v1.1 §C), given the messages and
 * characters received on this connection since the last receipt.
 */
export function receiptDue(messagesSince: number, charsSince: number): boolean {
  return messagesSince >= RECEIPT_EVERY_MESSAGES || charsSince >= RECEIPT_EVERY_CHARS;
}

/** Publish error codes after which the publish is tried again instead of rejected. */
export const RETRYABLE_PUBLISH_ERRORS: ReadonlySet<string> = new Set(["rate_limited", "token_expired", "internal"]);

/** Event ids (§5). */
export const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/;

/**
 * Room names (§3): the id characters, or a personal room `name@user` (§14) — one `@`
 * between two runs of them — 128 characters in all. `@` is legal in a URL path, so
 * neither form is percent-encoded.
 */
export const ROOM_PATTERN = /^(?=.{1,128}$)[A-Za-z0-9_.:-]+(?:@[A-Za-z0-9_.:-]+)?$/;

/**
 * Every error the client reports: rejected publishes, the `error` event and the `closed`
 * state. `code` is the server's `error.code` or one of the client's own:
 * `closed`, `outbox_full`, `bad_data`, `token_provider`, `handshake`, `close`,
 * `bad_server_frame`, `listener`. A connection the server refused with an `error` frame
 * (docs/protocol.md §10) carries that frame's code and message (`token_expired`,
 * `forbidden`, `too_many_connections`, …) and the close code; so does one a backend ended
 * (`disconnected`, §14), fatal when its close code stops the client.
 */
export class RoomcastError extends Error {
  readonly code: string;
  /** True when the client has stopped because of this error. */
  readonly fatal: boolean;
  /** The publish this error is about. */
  readonly id?: string;
  /** The close code, for errors caused by a closed connection. */
  readonly closeCode?: number;
  /** The HTTP status of a rejected upgrade, when known. */
  readonly status?: number;
  readonly retryAfterMs?: number;
  readonly cause?: unknown;

  constructor(
    code: string,
    message: string,
    extra: { fatal?: boolean; id?: string; closeCode?: number; status?: number; retryAfterMs?: number; cause?: unknown } = {},
  ) {
    super(message);
    this.name = "RoomcastError";
    this.code = code;
    this.fatal = extra.fatal ?? false;
    if (extra.id !== undefined) this.id = extra.id;
    if (extra.closeCode !== undefined) this.closeCode = extra.closeCode;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
    if (extra.cause !== undefined) this.cause = extra.cause;
  }
}

/** UTF-8 length of a string, without allocating. */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/** A random UUID v4: `crypto.randomUUID` where available (secure contexts), else `getRandomValues`. */
export function randomId(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const b = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * An HTTP answer of the SSE, long-poll or publish routes that carries one of the refusals
 * of docs/protocol.md §4 in its JSON error body (`{"error":{"code","message"}}`), with the
 * close code the same refusal has on the browser WebSocket transport (§10). `null` for any
 * other answer — a proxy's, a server without the route — whose body is not one of ours.
 */
export function httpRefusal(bodyText: string | undefined): { code: string; message: string; closeCode: number } | null {
  if (!bodyText) return null;
  let body: unknown;
  try {
    body = JSON.parse(bodyText);
  } catch {
    return null;
  }
  const error = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  const code = error?.code;
  if (typeof code !== "string" || !Object.prototype.hasOwnProperty.call(REFUSAL_CLOSE_CODES, code)) return null;
  return { code, message: typeof error?.message === "string" ? error.message : code, closeCode: REFUSAL_CLOSE_CODES[code] };
}

/** The order in which `transport: "auto"` tries the transports. */
export const TRANSPORT_ORDER = Object.freeze(["websocket", "sse", "longpoll"] as const);
