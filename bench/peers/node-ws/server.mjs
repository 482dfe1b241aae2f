// Node `ws` peer: one process, rooms in memory, broadcast to every other socket of the
// room. Speaks the benchmark subset: HS256 JWT on the upgrade, `welcome`,
// `publish` → `ack` + fan-out `message` with a per-room `seq`, and the signed
// `POST /v1/rooms/{room}/messages`. No storage and no dedup (n/a in the results).
// Each message is serialized once into a Buffer that every send reuses.
// Prints {"listening": port} on stdout when ready.
import { createServer } from "node:http";
import { createHmac, timingSafeEqual } from "node:crypto";
import { WebSocketServer } from "ws";

const JWT_SECRET = process.env.BENCH_JWT_SECRET;
const API_SECRET = process.env.BENCH_API_SECRET;
const rooms = new Map();
let nextConn = 0;

function verifyJwt(token) {
  const [h, p, s] = token.split(".");
  if (!s) throw new Error("malformed token");
  if (JSON.parse(Buffer.from(h, "base64url")).alg !== "HS256") throw new Error("unsupported alg");
  const expected = createHmac("sha256", JWT_SECRET).update(`${h}.${p}`).digest();
  const got = Buffer.from(s, "base64url");
  if (got.length !== expected.length || !timingSafeEqual(got, expected)) throw new Error("bad signature");
  const claims = JSON.parse(Buffer.from(p, "base64url"));
  if (typeof claims.exp !== "number" || Date.now() / 1000 > claims.exp + 30) throw new Error("expired");
  return claims;
}

function roomOf(name) {
  let room = rooms.get(name);
  if (!room) {
    room = { seq: 0, clients: new Set() };
    rooms.set(name, room);
  }
  return room;
}

function publish(room, msg, from, skip) {
  const seq = ++room.seq;
  const frame = Buffer.from(JSON.stringify({ type: "message", seq, id: msg.id, event: msg.event, data: msg.data ?? null, from, ts: Date.now() }));
  let delivered = 0;
  for (const client of room.clients) {
    if (client === skip || client.readyState !== 1) continue;
    client.send(frame, { binary: false });
    delivered++;
  }
  return { seq, delivered };
}

const reply = (res, status, body) => {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
};

const server = createServer((req, res) => {
  const m = req.url.match(/^\/v1\/rooms\/([^/?]+)\/messages$/);
  if (!m || req.method !== "POST") return reply(res, 404, { error: { code: "not_found" } });
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString();
    const sig = Object.fromEntries((req.headers["roomcast-signature"] ?? "").split(",").map((kv) => kv.trim().split("=")));
    const t = Number(sig.t);
    const expected = createHmac("sha256", API_SECRET).update(`${t}\nPOST\n${req.url}\n${body}`).digest();
    const got = Buffer.from(sig.v1 ?? "", "hex");
    if (!Number.isSafeInteger(t) || Math.abs(Date.now() / 1000 - t) > 300 || got.length !== 32 || !timingSafeEqual(got, expected)) {
      return reply(res, 401, { error: { code: "unauthorized" } });
    }
    let msg;
    try {
      msg = JSON.parse(body);
    } catch {
      return reply(res, 400, { error: { code: "bad_request" } });
    }
    const r = publish(roomOf(m[1]), msg, null, null);
    reply(res, 200, { room: m[1], seq: r.seq, duplicate: false, delivered: r.delivered });
  });
});

const wss = new WebSocketServer({ noServer: true });

server.on("upgrade", (req, socket, head) => {
  const m = req.url.match(/^\/v1\/rooms\/([^/?]+)\/ws/);
  const auth = req.headers.authorization ?? "";
  let claims;
  try {
    if (!m || !auth.startsWith("Bearer ")) throw new Error("missing token");
    claims = verifyJwt(auth.slice(7));
  } catch {
    socket.end("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const room = roomOf(m[1]);
    const conn = `c_${++nextConn}`;
    const user = claims.sub;
    room.clients.add(ws);
    ws.send(JSON.stringify({ type: "welcome", room: m[1], conn, user, seq: room.seq }));
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      const text = data.toString();
      if (text === "ping") return ws.send("pong");
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch {
        return ws.send(JSON.stringify({ type: "error", code: "bad_frame", message: "invalid JSON" }));
      }
      for (const f of Array.isArray(parsed) ? parsed : [parsed]) {
        if (f?.type !== "publish") continue;
        const r = publish(room, f, { user, conn }, f.echo ? null : ws);
        ws.send(JSON.stringify({ type: "ack", id: f.id, seq: r.seq, duplicate: false }));
      }
    });
    ws.on("close", () => room.clients.delete(ws));
  });
});

// Exit with the rig: bench/run.mjs holds our stdin open.
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ listening: server.address().port }) + "\n");
});
