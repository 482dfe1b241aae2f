/**
 * A server-API request that did not succeed.
 *
 * * An answer from the Worker: `status` is its HTTP status and `code`/`message` come from
 *   its JSON error body `{"error":{"code","message"}}` (docs/protocol.md §7):
 *   `bad_request`, `bad_room`, `unauthorized`, `forbidden`, `too_large`, `not_found`,
 *   `method_not_allowed`, `rate_limited`, `misconfigured`, `internal`, …
 * * An answer without that body (a proxy's error page): `code` is `unexpected_response`.
 * * No answer at all (DNS, refused connection, aborted): `status` is 0 and `code` is
 *   `network_error`, with the underlying error as `cause`.
 *
 * Every call is safe to repeat with the same arguments: a publish or broadcast with the
 * same `id` is answered `duplicate: true` with the original `seq`, never fanned out twice.
 */
export class RoomcastError extends Error {
  /** HTTP status, or 0 when no answer arrived. */
  readonly status: number;
  /** Machine-readable error code. */
  readonly code: string;
  /** How long to wait before trying again, on `429` (from `retry_after_ms` or `Retry-After`). */
  readonly retryAfterMs?: number;
  /** The error behind a `network_error`. */
  readonly cause?: unknown;

  constructor(status: number, code: string, message: string, extra: { retryAfterMs?: number; cause?: unknown } = {}) {
    super(message);
    this.name = "RoomcastError";
    this.status = status;
    this.code = code;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
    if (extra.cause !== undefined) this.cause = extra.cause;
  }
}

/** Why {@link verifyWebhook} refused a request. */
export type WebhookErrorCode =
  /** No `Roomcast-Signature` header. */
  | "missing_signature"
  /** The header is not `t=<unix seconds>,v1=<hex>`. */
  | "malformed_signature"
  /** The timestamp is further from the verifier's clock than the tolerance (a replay, or a wrong clock). */
  | "stale_signature"
  /** No `v1` matches: another secret, another path, or a changed body. */
  | "bad_signature"
  /** Signed correctly, but the body is not a webhook batch. */
  | "bad_body";

/**
 * A webhook that failed verification. `status` is what a receiver should answer (401 for
 * signature problems, 400 for a signed body that is not a batch); answering non-2xx makes
 * the room retry, so a request that fails only because of a clock problem is not lost.
 */
export class WebhookVerificationError extends RoomcastError {
  declare readonly code: WebhookErrorCode;

  constructor(code: WebhookErrorCode, message: string) {
    super(code === "bad_body" ? 400 : 401, code, message);
    this.name = "WebhookVerificationError";
  }
}
