// The JS twin: the benchmark's protocol subset of Roomcast written the way Cloudflare's
// Durable Objects docs show it — a module Worker that authenticates, one SQLite-backed
// Durable Object per room, the WebSocket Hibernation API (ctx.acceptWebSocket /
// getWebSockets / attachments), sync `ctx.storage.sql`, and RPC for the HTTP publish.
//
// Subset: HS256 JWT on the upgrade (Authorization: Bearer or the roomcast.bearer.*
// subprotocol), `welcome`, `publish` → `ack` + fan-out `message` with a gapless `seq`,
// exactly-once by event id (SQLite `events` table), message bodies kept for replay
// (`messages` table, pruned like the product), signed `POST /v1/rooms/{room}/messages`,
// and signed `GET /v1/rooms/{room}` with the rows its SQLite statements read and wrote
// (the runtime's `rowsRead`/`rowsWritten`, summed since the object started, as the
// product reports them), for the bench's cost table.
// Not in the subset: presence, resume, history, rate limits, token-expiry alarms, tenants.
import { DurableObject } from "cloudflare:workers";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
const ROOM_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
const PRUNE_EVERY = 64;
const HISTORY_LIMIT = 1000;
const DEDUP_WINDOW_MS = 86_400_000;

// Imported keys are reused across requests in this isolate.
const keys = new Map();
function hmacKey(secret) {
  let key = keys.get(secret);
  if (!key) {
    key = crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"]);
    keys.set(secret, key);
  }
  return key;
}

function base64urlDecode(s) {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function hexToBytes(hex) {
  if (!/^[0-9a-f]{64}$/i.test(hex)) return null;
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

async function verifyJwt(token, secret) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Error("malformed token");
  const [h, p, s] = parts;
  const header = JSON.parse(decoder.decode(base64urlDecode(h)));
  if (header.alg !== "HS256") throw new Error("unsupported alg");
  const ok = await crypto.subtle.verify("HMAC", await hmacKey(secret), base64urlDecode(s), encoder.encode(`${h}.${p}`));
  if (!ok) throw new Error("bad signature");
  const claims = JSON.parse(decoder.decode(base64urlDecode(p)));
  const now = Date.now() / 1000;
  if (typeof claims.sub !== "string" || typeof claims.exp !== "number") throw new Error("missing claims");
  if (now > claims.exp + 30) throw new Error("expired");
  return claims;
}

function permsFor(claims, room) {
  const perms = { read: false, write: false };
  for (const [pattern, list] of Object.entries(claims.rooms ?? {})) {
    const match = pattern === "*" || pattern === room || (pattern.endsWith("*") && room.startsWith(pattern.slice(0, -1)));
    if (!match || !Array.isArray(list)) continue;
    if (list.includes("read")) perms.read = true;
    if (list.includes("write")) perms.write = true;
  }
  return perms;
}

const json = (status, body) => new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
const fail = (status, code, message) => json(status, { error: { code, message } });

async function verifySignature(request, url, body, secret) {
  const header = request.headers.get("Roomcast-Signature") ?? "";
  const fields = Object.fromEntries(header.split(",").map((kv) => kv.trim().split("=")));
  const t = Number(fields.t);
  if (!Number.isSafeInteger(t) || Math.abs(Date.now() / 1000 - t) > 300) return false;
  const mac = hexToBytes(fields.v1 ?? "");
  if (!mac) return false;
  const msg = `${t}\n${request.method}\n${url.pathname}${url.search}\n${body}`;
  return crypto.subtle.verify("HMAC", await hmacKey(secret), mac, encoder.encode(msg));
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const info = url.pathname.match(/^\/v1\/rooms\/([^/]+)$/);
    if (info && request.method === "GET") {
      if (!ROOM_RE.test(info[1])) return fail(400, "bad_room", "invalid room name");
      if (!(await verifySignature(request, url, "", env.API_SECRET))) return fail(401, "unauthorized", "bad signature");
      return json(200, { room: info[1], ...(await env.ROOMS.getByName(info[1]).info()) });
    }
    const m = url.pathname.match(/^\/v1\/rooms\/([^/]+)\/(ws|messages)$/);
    if (!m) return fail(404, "not_found", "no such route");
    const [, room, what] = m;
    if (!ROOM_RE.test(room)) return fail(400, "bad_room", "invalid room name");
    const stub = env.ROOMS.getByName(room);

    if (what === "ws") {
      if (request.headers.get("Upgrade")?.toLowerCase() !== "websocket") return fail(426, "upgrade_required", "expected a WebSocket upgrade");
      const protocols = (request.headers.get("Sec-WebSocket-Protocol") ?? "").split(",").map((p) => p.trim());
      const fromProtocol = protocols.find((p) => p.startsWith("roomcast.bearer."))?.slice("roomcast.bearer.".length);
      const auth = request.headers.get("Authorization") ?? "";
      const token = fromProtocol ?? (auth.startsWith("Bearer ") ? auth.slice(7) : null);
      if (!token) return fail(401, "missing_token", "no token");
      let claims;
      try {
        claims = await verifyJwt(token, env.JWT_SECRET);
      } catch (e) {
        return fail(401, "invalid_token", e.message);
      }
      const perms = permsFor(claims, room);
      if (!perms.read) return fail(403, "forbidden", "no read permission");
      const session = { room, user: claims.sub, write: perms.write, exp: claims.exp, subprotocol: protocols.includes("roomcast.v1") };
      const headers = new Headers(request.headers);
      headers.set("X-Session", JSON.stringify(session));
      return stub.fetch(new Request(request, { headers }));
    }

    if (request.method !== "POST") return fail(405, "method_not_allowed", "POST only");
    const body = await request.text();
    if (!(await verifySignature(request, url, body, env.API_SECRET))) return fail(401, "unauthorized", "bad signature");
    let msg;
    try {
      msg = JSON.parse(body);
    } catch {
      return fail(400, "bad_request", "invalid JSON body");
    }
    if (!ID_RE.test(msg.id ?? "") || typeof msg.event !== "string" || !msg.event || msg.event.length > 64) {
      return fail(400, "bad_request", "invalid id or event");
    }
    return json(200, { room, ...(await stub.publishFromServer(msg.id, msg.event, msg.data ?? null)) });
  },
};

export class Room extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    this.sql = ctx.storage.sql;
    this.rowsRead = 0;
    this.rowsWritten = 0;
    this.q(`CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
      CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
      CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, frame TEXT NOT NULL);`);
    this.q("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?), ('last_seq', 0)", "e_" + crypto.randomUUID().slice(0, 16));
    const meta = Object.fromEntries(this.q("SELECT key, value FROM meta").map((r) => [r.key, r.value]));
    this.epoch = meta.epoch;
    this.seq = Number(meta.last_seq);
    // Heartbeats are answered by the runtime without waking the room.
    ctx.setWebSocketAutoResponse(new WebSocketRequestResponsePair("ping", "pong"));
  }

  /** Runs one statement and counts the rows it read and wrote. */
  q(query, ...bindings) {
    const cursor = this.sql.exec(query, ...bindings);
    const rows = cursor.toArray();
    this.rowsRead += cursor.rowsRead;
    this.rowsWritten += cursor.rowsWritten;
    return rows;
  }

  /** RPC from the Worker: what `GET /v1/rooms/{room}` reports. */
  info() {
    return { epoch: this.epoch, last_seq: this.seq, connections: this.ctx.getWebSockets().length, storage: { rows_read: this.rowsRead, rows_written: this.rowsWritten } };
  }

  async fetch(request) {
    const session = JSON.parse(request.headers.get("X-Session"));
    const { 0: client, 1: server } = new WebSocketPair();
    const conn = "c_" + crypto.randomUUID().replace(/-/g, "").slice(0, 16);
    this.ctx.acceptWebSocket(server, [session.user]);
    server.serializeAttachment({ conn, user: session.user, write: session.write, exp: session.exp });
    server.send(JSON.stringify({ type: "welcome", room: session.room, conn, user: session.user, epoch: this.epoch, seq: this.seq }));
    const headers = session.subprotocol ? { "Sec-WebSocket-Protocol": "roomcast.v1" } : {};
    return new Response(null, { status: 101, webSocket: client, headers });
  }

  /** RPC from the Worker: a signed server-API publish. */
  publishFromServer(id, event, data) {
    const r = this.publish(id, event, data, null, null);
    return { epoch: this.epoch, ...r };
  }

  publish(id, event, data, from, skip) {
    const seen = this.q("SELECT seq FROM events WHERE id = ?", id);
    if (seen.length) return { seq: seen[0].seq, duplicate: true, delivered: 0 };
    const seq = this.seq + 1;
    const ts = Date.now();
    const frame = JSON.stringify({ type: "message", seq, id, event, data, from, ts });
    this.q("INSERT INTO events (id, seq, ts) VALUES (?, ?, ?)", id, seq, ts);
    this.q("INSERT INTO messages (seq, frame) VALUES (?, ?)", seq, frame);
    this.q("UPDATE meta SET value = ? WHERE key = 'last_seq'", seq);
    this.seq = seq;
    if (seq % PRUNE_EVERY === 0) {
      this.q("DELETE FROM messages WHERE seq <= ?", seq - HISTORY_LIMIT);
      this.q("DELETE FROM events WHERE ts < ?", ts - DEDUP_WINDOW_MS);
    }
    let delivered = 0;
    for (const ws of this.ctx.getWebSockets()) {
      if (ws === skip) continue;
      try {
        ws.send(frame);
        delivered++;
      } catch {
        // closing socket; webSocketClose cleans up
      }
    }
    return { seq, duplicate: false, delivered };
  }

  webSocketMessage(ws, message) {
    const error = (id, code, text) => ws.send(JSON.stringify({ type: "error", ...(id ? { id } : {}), code, message: text }));
    if (typeof message !== "string") return error(null, "bad_frame", "binary messages are not accepted");
    let parsed;
    try {
      parsed = JSON.parse(message);
    } catch {
      return error(null, "bad_frame", "invalid JSON");
    }
    const session = ws.deserializeAttachment();
    for (const f of Array.isArray(parsed) ? parsed : [parsed]) {
      if (f?.type !== "publish") {
        error(f?.id, "unknown_type", "expected publish");
        continue;
      }
      if (!ID_RE.test(f.id ?? "") || typeof f.event !== "string" || !f.event || f.event.length > 64) {
        error(f.id, "invalid_id", "invalid id or event");
        continue;
      }
      if (!session.write) {
        error(f.id, "forbidden", "no write permission");
        continue;
      }
      const r = this.publish(f.id, f.event, f.data ?? null, { user: session.user, conn: session.conn }, f.echo ? null : ws);
      ws.send(JSON.stringify({ type: "ack", id: f.id, seq: r.seq, duplicate: r.duplicate }));
    }
  }

  webSocketClose(ws, code) {
    try {
      ws.close(code === 1005 || code === 1006 ? 1000 : code, "bye");
    } catch {
      // already closed
    }
  }
}
