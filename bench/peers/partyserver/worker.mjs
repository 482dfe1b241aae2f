// partyserver peer: a PartyServer room with hibernation on, broadcasting with
// `this.broadcast`. It speaks the benchmark's subset: HS256 JWT checked in
// `onBeforeConnect` (WebCrypto), `welcome`, `publish` → `ack` + fan-out `message` with a
// per-room `seq`. The seq is kept in the room's SQLite so it survives hibernation; there
// is no dedup and no HTTP publish (marked n/a in the results).
// Bundled with esbuild by bench/run.mjs (partyserver and nanoid from bench/node_modules).
import { Server, routePartykitRequest } from "partyserver";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
let keyPromise;

function base64urlDecode(s) {
  const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

async function verifyJwt(token, secret) {
  keyPromise ??= crypto.subtle.importKey("raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  const [h, p, s] = token.split(".");
  if (!s) throw new Error("malformed token");
  if (JSON.parse(decoder.decode(base64urlDecode(h))).alg !== "HS256") throw new Error("unsupported alg");
  const ok = await crypto.subtle.verify("HMAC", await keyPromise, base64urlDecode(s), encoder.encode(`${h}.${p}`));
  if (!ok) throw new Error("bad signature");
  const claims = JSON.parse(decoder.decode(base64urlDecode(p)));
  if (typeof claims.exp !== "number" || Date.now() / 1000 > claims.exp + 30) throw new Error("expired");
  return claims;
}

export class Chat extends Server {
  static options = { hibernate: true };

  onStart() {
    this.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)");
    this.ctx.storage.sql.exec("INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0)");
    this.seq = this.ctx.storage.sql.exec("SELECT value FROM meta WHERE key = 'seq'").one().value;
  }

  onConnect(connection, ctx) {
    const user = ctx.request.headers.get("X-User");
    connection.setState({ user });
    connection.send(JSON.stringify({ type: "welcome", room: this.name, conn: connection.id, user, seq: this.seq }));
  }

  onMessage(connection, message) {
    let parsed;
    try {
      parsed = JSON.parse(message);
    } catch {
      connection.send(JSON.stringify({ type: "error", code: "bad_frame", message: "invalid JSON" }));
      return;
    }
    for (const f of Array.isArray(parsed) ? parsed : [parsed]) {
      if (f?.type !== "publish") continue;
      const seq = ++this.seq;
      this.ctx.storage.sql.exec("UPDATE meta SET value = ? WHERE key = 'seq'", seq);
      const frame = JSON.stringify({
        type: "message",
        seq,
        id: f.id,
        event: f.event,
        data: f.data ?? null,
        from: { user: connection.state?.user, conn: connection.id },
        ts: Date.now(),
      });
      this.broadcast(frame, [connection.id]);
      connection.send(JSON.stringify({ type: "ack", id: f.id, seq, duplicate: false }));
    }
  }
}

export default {
  async fetch(request, env) {
    // The rig's URLs are /parties/chat/<room>.
    const response = await routePartykitRequest(request, env, {
      async onBeforeConnect(req) {
        const auth = req.headers.get("Authorization") ?? "";
        if (!auth.startsWith("Bearer ")) return new Response("missing token", { status: 401 });
        try {
          const claims = await verifyJwt(auth.slice(7), env.JWT_SECRET);
          const headers = new Headers(req.headers);
          headers.set("X-User", claims.sub);
          return new Request(req, { headers });
        } catch (e) {
          return new Response(e.message, { status: 401 });
        }
      },
    });
    return response ?? new Response("not found", { status: 404 });
  },
};
