// The `Roomcast-Signature` scheme (docs/protocol.md §7, §15), with WebCrypto only so that
// it runs unchanged in Node ≥ 20, Cloudflare Workers, Deno and browsers.

/** The header that carries a signature, on server-API requests and on webhooks. */
export const SIGNATURE_HEADER = "Roomcast-Signature";

/** How far (seconds) a signature's timestamp may be from the verifier's clock. */
export const DEFAULT_TOLERANCE_SECS = 300;

const encoder = new TextEncoder();

/** A body as it is signed: text (encoded as UTF-8) or the exact bytes sent. */
export type BodyInput = string | Uint8Array | ArrayBuffer;

function bytesOf(body: BodyInput): Uint8Array {
  if (typeof body === "string") return encoder.encode(body);
  if (body instanceof Uint8Array) return body;
  return new Uint8Array(body);
}

/**
 * The signed message: `t + "\n" + METHOD + "\n" + path_and_query + "\n" + body`, as bytes
 * (the body is appended byte for byte, so a non-UTF-8 body is signed as sent).
 */
export function signingInput(t: number, method: string, pathAndQuery: string, body: BodyInput): Uint8Array<ArrayBuffer> {
  const head = encoder.encode(`${t}\n${method}\n${pathAndQuery}\n`);
  const tail = bytesOf(body);
  const out = new Uint8Array(head.length + tail.length);
  out.set(head, 0);
  out.set(tail, head.length);
  return out;
}

/** An HMAC-SHA256 key for `secret`, made once and reused. */
export function hmacKey(secret: string): Promise<CryptoKey> {
  return crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
}

/** Lower-case hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

/** Bytes of a lower- or upper-case hex string, or `null` when it is not hex. */
export function fromHex(hex: string): Uint8Array | null {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) return null;
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * Compares two byte strings in time that depends only on their lengths (a MAC's length
 * is public), never on where they first differ.
 */
export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** The raw HMAC-SHA256 of a request, for a key from {@link hmacKey}. */
export async function mac(key: CryptoKey, t: number, method: string, pathAndQuery: string, body: BodyInput): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, signingInput(t, method, pathAndQuery, body)));
}

/** What {@link sign} signs. */
export interface SignInput {
  /** `API_SECRET` (requests) or `WEBHOOK_SECRET` (webhooks), or a key from {@link hmacKey}. */
  secret: string | CryptoKey;
  /** Upper-case HTTP method, e.g. `POST`. */
  method: string;
  /** The URL path and query exactly as the receiver sees them: `/v1/rooms/lobby/messages?tenant=t1`. */
  pathAndQuery: string;
  /** The exact body; `""` for a GET. */
  body?: BodyInput;
  /** Unix seconds; defaults to now. */
  t?: number;
}

/**
 * The `Roomcast-Signature` header value for a request: `t=<unix seconds>,v1=<hex>`.
 *
 * ```ts
 * const header = await sign({ secret: API_SECRET, method: "GET", pathAndQuery: "/v1/rooms/lobby" });
 * ```
 */
export async function sign({ secret, method, pathAndQuery, body = "", t = Math.floor(Date.now() / 1000) }: SignInput): Promise<string> {
  if (!Number.isSafeInteger(t)) throw new TypeError(`t must be whole unix seconds, got ${t}`);
  const key = typeof secret === "string" ? await hmacKey(secret) : secret;
  return `t=${t},v1=${toHex(await mac(key, t, method, pathAndQuery, body))}`;
}

/** A parsed `Roomcast-Signature` header. */
export interface ParsedSignature {
  /** Unix seconds the sender signed at. */
  t: number;
  /** Every `v1=` value (a sender may send several during a secret rotation). */
  v1: Uint8Array[];
}

/**
 * Parses `t=<unix seconds>,v1=<hex>[,v1=<hex>…]` (spaces around parts allowed, unknown
 * keys ignored, as the Worker does); `null` when it is malformed.
 */
export function parseSignature(header: string): ParsedSignature | null {
  let t: number | undefined;
  const v1: Uint8Array[] = [];
  for (const part of header.split(",")) {
    const at = part.indexOf("=");
    if (at < 0) return null;
    const k = part.slice(0, at).trim();
    const v = part.slice(at + 1).trim();
    if (k === "t") {
      if (!/^-?\d{1,15}$/.test(v)) return null;
      t = Number(v);
    } else if (k === "v1") {
      const bytes = fromHex(v);
      if (!bytes) return null;
      v1.push(bytes);
    }
  }
  if (t === undefined || v1.length === 0) return null;
  return { t, v1 };
}
