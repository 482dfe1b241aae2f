// Receiving Roomcast webhooks (docs/protocol.md §15): verify the signature, then process
// each event once although the room delivers at least once.
import { WebhookVerificationError } from "./errors.js";
import { DEFAULT_TOLERANCE_SECS, SIGNATURE_HEADER, type BodyInput, hmacKey, mac, parseSignature, timingSafeEqual } from "./signature.js";
import type { WebhookBatch, WebhookEvent } from "./types.js";

/** A webhook request as a receiver has it, when it is not a Fetch API `Request`. */
export interface RawWebhook {
  /** The exact body bytes (or their text): verify before parsing or re-serializing. */
  body: BodyInput;
  /** The `Roomcast-Signature` header (Node: `req.headers["roomcast-signature"]`). */
  signature: string | readonly string[] | null | undefined;
  /**
   * The request's path and query as received (Node: `req.url`, e.g. `/hooks/in?app=1`), or
   * an absolute URL. The room signs its `WEBHOOK_URL`'s path and query.
   */
  url: string;
}

/** Options of {@link verifyWebhook}. */
export interface VerifyWebhookOptions {
  /** Largest accepted distance between the signature's timestamp and now (default 300 s). */
  toleranceSecs?: number;
  /** The verifier's clock, ms since the unix epoch (default `Date.now()`). */
  now?: number;
  /**
   * The path and query to verify against instead of the request's — for a receiver behind
   * a proxy that rewrites them. Give `WEBHOOK_URL`'s path and query.
   */
  path?: string;
}

const keys = new Map<string, Promise<CryptoKey>>();

/** Keys for the few secrets a receiver verifies with, imported once each. */
function keyFor(secret: string): Promise<CryptoKey> {
  let key = keys.get(secret);
  if (!key) {
    if (keys.size >= 16) keys.delete(keys.keys().next().value!);
    key = hmacKey(secret);
    keys.set(secret, key);
  }
  return key;
}

function pathOf(url: string): string {
  if (url.startsWith("/")) return url;
  const u = new URL(url);
  return u.pathname + u.search;
}

function headerValue(signature: RawWebhook["signature"]): string | null {
  if (signature === null || signature === undefined) return null;
  if (typeof signature === "string") return signature;
  return signature.length === 1 ? signature[0]! : signature.length === 0 ? null : signature.join(",");
}

/**
 * Verifies a webhook request from a Roomcast room and returns its batch.
 *
 * Checks, in order: a `Roomcast-Signature` header is present and well-formed, its
 * timestamp is within `toleranceSecs` of now, and one of its `v1` values is the
 * HMAC-SHA256 with `secret` of `t + "\n" + "POST" + "\n" + path_and_query + "\n" + body`
 * (compared in constant time); then that the body is a batch.
 *
 * `input` is a Fetch API `Request` (Workers, Deno, Bun, Node's `Request`; its body is
 * consumed) or the raw parts of one ({@link RawWebhook}). `secret` is `WEBHOOK_SECRET`,
 * or a list of secrets during a rotation (any one verifying is enough).
 *
 * @throws {WebhookVerificationError} with `code` `missing_signature`, `malformed_signature`,
 *   `stale_signature`, `bad_signature` or `bad_body`, and the `status` to answer.
 */
export async function verifyWebhook(
  input: Request | RawWebhook,
  secret: string | readonly string[],
  options: VerifyWebhookOptions = {},
): Promise<WebhookBatch> {
  const secrets = typeof secret === "string" ? [secret] : [...secret];
  if (secrets.length === 0 || secrets.some((s) => typeof s !== "string" || s === "")) {
    throw new TypeError("verifyWebhook needs WEBHOOK_SECRET: a non-empty string or a list of them");
  }
  const tolerance = options.toleranceSecs ?? DEFAULT_TOLERANCE_SECS;
  let header: string | null;
  let url: string;
  let body: BodyInput;
  if (typeof Request !== "undefined" && input instanceof Request) {
    header = input.headers.get(SIGNATURE_HEADER);
    url = input.url;
    body = new Uint8Array(await input.arrayBuffer());
  } else {
    const raw = input as RawWebhook;
    header = headerValue(raw.signature);
    url = raw.url;
    body = raw.body;
  }
  if (header === null) throw new WebhookVerificationError("missing_signature", `no ${SIGNATURE_HEADER} header`);
  const parsed = parseSignature(header);
  if (!parsed) {
    throw new WebhookVerificationError("malformed_signature", `malformed ${SIGNATURE_HEADER}: expected t=<unix seconds>,v1=<hex HMAC-SHA256>`);
  }
  const nowSecs = Math.floor((options.now ?? Date.now()) / 1000);
  const skew = nowSecs - parsed.t;
  if (Math.abs(skew) > tolerance) {
    throw new WebhookVerificationError(
      "stale_signature",
      `signature timestamp is ${skew}s away from this clock; at most ${tolerance}s is accepted (a replay, or a clock to fix)`,
    );
  }
  const path = options.path ?? pathOf(url);
  let ok = false;
  for (const s of secrets) {
    const expected = await mac(await keyFor(s), parsed.t, "POST", path, body);
    // Every candidate is compared, so the time taken does not tell which one matched.
    for (const candidate of parsed.v1) if (timingSafeEqual(expected, candidate)) ok = true;
  }
  if (!ok) {
    throw new WebhookVerificationError(
      "bad_signature",
      `signature does not match: check WEBHOOK_SECRET and that ${JSON.stringify(path)} is WEBHOOK_URL's path and query`,
    );
  }
  return parseBatch(body);
}

function parseBatch(body: BodyInput): WebhookBatch {
  let value: unknown;
  try {
    const text = typeof body === "string" ? body : new TextDecoder("utf-8", { fatal: true }).decode(body);
    value = JSON.parse(text);
  } catch (e) {
    throw new WebhookVerificationError("bad_body", `the body is not JSON: ${(e as Error).message}`);
  }
  const b = value as Partial<WebhookBatch> | null;
  const ok =
    typeof b === "object" &&
    b !== null &&
    typeof b.room === "string" &&
    typeof b.epoch === "string" &&
    (b.tenant === null || typeof b.tenant === "string") &&
    Array.isArray(b.events) &&
    b.events.every((e) => typeof e === "object" && e !== null && typeof e.wid === "string" && typeof e.kind === "string");
  if (!ok) throw new WebhookVerificationError("bad_body", "the body is not a webhook batch {room, tenant, epoch, events: [{wid, kind, …}]}");
  return b as WebhookBatch;
}

/** A `wid`, `"<epoch>:<n>"`, taken apart. */
export function parseWid(wid: string): { epoch: string; n: number } {
  const at = typeof wid === "string" ? wid.lastIndexOf(":") : -1;
  const n = at > 0 ? Number(wid.slice(at + 1)) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || !/^\d+$/.test(wid.slice(at + 1))) {
    throw new TypeError(`not a webhook wid ("<epoch>:<n>"): ${JSON.stringify(wid)}`);
  }
  return { epoch: wid.slice(0, at), n };
}

/** Which room a wid belongs to: a batch, or its `room` and `tenant`. */
export interface WidScope {
  room: string;
  tenant?: string | null;
}

/** Options of {@link WidDedup}. */
export interface WidDedupOptions {
  /** Rooms remembered; the least recently used is forgotten beyond this (default 10,000). */
  maxRooms?: number;
  /**
   * Gaps remembered per room (default 64). A gap is a run of wids not seen between seen
   * ones — events that became dead and may be retried later. Beyond this, the lowest gap
   * is closed: its wids would count as seen.
   */
  maxGaps?: number;
}

/** What {@link WidDedup.toJSON} saves and {@link WidDedup.from} restores. */
export interface WidDedupState {
  version: 1;
  /** Least recently used first: `[room key, epoch, [[from, to], …]]`. */
  rooms: [string, string, [number, number][]][];
}

interface RoomSeen {
  epoch: string;
  /** Seen wid numbers as sorted, disjoint, non-adjacent inclusive ranges. */
  ranges: [number, number][];
}

/**
 * Remembers the `wid`s a receiver has processed, so that each webhook event is processed
 * once although rooms deliver at least once (a batch is sent again when its answer was
 * lost, timed out or was not 2xx).
 *
 * Per room (and tenant) it keeps the seen numbers of the room's current epoch as ranges:
 * in the usual in-order stream that is one range, `1..n` or `first..n`, however many
 * events went by. Events that became dead leave a gap, and are still accepted when the
 * retry route sends them later. Memory is bounded by `maxRooms × maxGaps`.
 *
 * ```ts
 * const seen = new WidDedup();
 * for (const event of seen.fresh(batch)) {
 *   await handle(event);        // your processing
 *   seen.add(batch, event.wid); // only after it succeeded
 * }
 * ```
 *
 * It lives in memory: a receiver that restarts forgets, and a batch redelivered across
 * the restart is processed again. Save {@link toJSON} with your own state (or keep
 * `wid`s in your database, in the same transaction as the effect) for exactly-once
 * across restarts. Several receiver processes need a shared store.
 */
export class WidDedup {
  readonly #rooms = new Map<string, RoomSeen>();
  readonly #maxRooms: number;
  readonly #maxGaps: number;

  constructor(options: WidDedupOptions = {}) {
    this.#maxRooms = Math.max(1, options.maxRooms ?? 10_000);
    this.#maxGaps = Math.max(0, options.maxGaps ?? 64);
  }

  /** Restores a state saved with {@link toJSON}. */
  static from(state: WidDedupState, options: WidDedupOptions = {}): WidDedup {
    if (!state || state.version !== 1 || !Array.isArray(state.rooms)) throw new TypeError("not a WidDedup state (version 1)");
    const d = new WidDedup(options);
    for (const [key, epoch, ranges] of state.rooms) {
      d.#rooms.set(key, { epoch, ranges: ranges.map(([a, b]) => [a, b] as [number, number]) });
    }
    while (d.#rooms.size > d.#maxRooms) d.#rooms.delete(d.#rooms.keys().next().value!);
    return d;
  }

  /** Rooms currently remembered. */
  get size(): number {
    return this.#rooms.size;
  }

  /** Whether `wid` of this room was added before. */
  has(scope: WidScope, wid: string): boolean {
    const { epoch, n } = parseWid(wid);
    const seen = this.#rooms.get(keyOf(scope));
    if (!seen || seen.epoch !== epoch) return false;
    return seen.ranges.some(([a, b]) => a <= n && n <= b);
  }

  /**
   * Marks `wid` of this room as processed; returns false when it already was. A wid of
   * a new epoch (the room's storage was lost and began again) replaces the old epoch's.
   */
  add(scope: WidScope, wid: string): boolean {
    const { epoch, n } = parseWid(wid);
    const key = keyOf(scope);
    let seen = this.#rooms.get(key);
    if (seen) this.#rooms.delete(key); // re-inserted below: most recently used last
    if (!seen || seen.epoch !== epoch) seen = { epoch, ranges: [] };
    this.#rooms.set(key, seen);
    if (this.#rooms.size > this.#maxRooms) this.#rooms.delete(this.#rooms.keys().next().value!);
    return insert(seen.ranges, n, this.#maxGaps);
  }

  /** The events of `batch` not processed yet, in order (nothing is marked). */
  fresh(batch: WebhookBatch): WebhookEvent[] {
    const inBatch = new Set<string>();
    return batch.events.filter((e) => {
      if (inBatch.has(e.wid)) return false;
      inBatch.add(e.wid);
      return !this.has(batch, e.wid);
    });
  }

  /** Forgets a room. */
  forget(scope: WidScope): void {
    this.#rooms.delete(keyOf(scope));
  }

  /** A JSON-serializable copy of what is remembered. */
  toJSON(): WidDedupState {
    return {
      version: 1,
      rooms: [...this.#rooms].map(([key, s]) => [key, s.epoch, s.ranges.map(([a, b]) => [a, b] as [number, number])]),
    };
  }
}

/** The room's identity, as the Worker keys it: tenants cannot contain `/`. */
function keyOf(scope: WidScope): string {
  if (!scope || typeof scope.room !== "string") throw new TypeError("scope must name a room (pass the webhook batch)");
  return `${scope.tenant ?? ""}/${scope.room}`;
}

/** Adds `n` to sorted disjoint non-adjacent ranges; false when it was in one. */
function insert(ranges: [number, number][], n: number, maxGaps: number): boolean {
  let i = 0;
  while (i < ranges.length && ranges[i]![1] < n - 1) i++;
  const r = ranges[i];
  if (r && r[0] <= n + 1) {
    if (r[0] <= n && n <= r[1]) return false;
    if (n === r[1] + 1) {
      r[1] = n;
      const next = ranges[i + 1];
      if (next && next[0] === n + 1) {
        r[1] = next[1];
        ranges.splice(i + 1, 1);
      }
    } else {
      r[0] = n; // n === r[0] - 1; the range before ends below n - 1
    }
  } else {
    ranges.splice(i, 0, [n, n]);
  }
  while (ranges.length > maxGaps + 1) {
    // Too many gaps: close the lowest one (the oldest events, the least likely to come).
    ranges[0]![1] = ranges[1]![1];
    ranges.splice(1, 1);
  }
  return true;
}
