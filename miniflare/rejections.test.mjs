// Rejections a browser can see (docs/protocol.md §10): an upgrade that offers `roomcast.v1`
// and is refused for a v1 §4 reason is accepted anyway, gets one `error` frame with the
// v1 code and the HTTP body's message, and is closed with 4001 / 4403 / 4029 / 4400.
// The header and query transports keep their plain HTTP answers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { start, connect, rejected, token, userToken, serviceToken, now, uid } from "./helpers.mjs";

const MAX_CONNECTIONS = 2;
let env;
before(async () => {
  env = await start({ bindings: { ALLOWED_ORIGINS: "https://app.example", MAX_CONNECTIONS_PER_USER: String(MAX_CONNECTIONS) } });
});
after(async () => env?.mf.dispose());

/**
 * Opens a socket the way a browser does (offering `roomcast.v1`, the token as
 * `roomcast.bearer.<jwt>` when given) and resolves once it is closed, with the negotiated
 * protocol, every text message received and the close code and reason. Rejects with the
 * HTTP status if the upgrade itself is refused.
 */
function browserSocket(path, tok, { query = "", headers = {} } = {}) {
  const protocols = tok === null ? ["roomcast.v1"] : ["roomcast.v1", `roomcast.bearer.${tok}`];
  const url = `${env.wsBase}${path}${query ? `?${query}` : ""}`;
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, { headers });
    const messages = [];
    let opened = false;
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`no close within 10 s; got ${JSON.stringify(messages)}`));
    }, 10_000);
    ws.on("open", () => (opened = true));
    ws.on("message", (data) => messages.push(data.toString()));
    ws.on("unexpected-response", (_req, res) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`upgrade refused with HTTP ${res.statusCode}`), { status: res.statusCode }));
      res.resume();
    });
    ws.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    ws.on("close", (code, reason) => {
      clearTimeout(timer);
      resolve({ opened, protocol: ws.protocol, messages, code, reason: reason.toString() });
    });
  });
}

/** The same upgrade over the header (or query) transport: its HTTP rejection. */
function httpRejection(room, tok, { transport = "header", query = "", headers = {} } = {}) {
  return rejected(connect(env.wsBase, room, tok, { transport, query, headers }));
}

/**
 * Asserts the §10 shape: handshake completed with `roomcast.v1`, exactly one message that
 * is one `error` frame with `code` and `message`, then close `closeCode`.
 */
function assertRefusal(seen, { code, closeCode, message }) {
  assert.equal(seen.opened, true, "the handshake completes");
  assert.equal(seen.protocol, "roomcast.v1");
  assert.equal(seen.messages.length, 1, `exactly one message, got ${JSON.stringify(seen.messages)}`);
  const frame = JSON.parse(seen.messages[0]);
  assert.deepEqual(Object.keys(frame).sort(), ["code", "message", "type"]);
  assert.equal(frame.type, "error");
  assert.equal(frame.code, code);
  if (message !== undefined) assert.equal(frame.message, message, "the same message as the HTTP body");
  assert.ok(frame.message.length > 10, "message should be actionable");
  assert.equal(seen.code, closeCode);
  assert.equal(seen.reason, code, "the close reason names the code");
  return frame;
}

// Every row of the §10 table that the Worker decides before any room is involved, each
// checked against the header transport's HTTP answer for the same request.
const rows = [
  { name: "bad_room (invalid characters)", room: () => "bad%20room", tok: () => userToken("a"), status: 400, code: "bad_room", close: 4400 },
  { name: "bad_room (too long)", room: () => "x".repeat(129), tok: () => userToken("a"), status: 400, code: "bad_room", close: 4400 },
  { name: "bad_request (presence=none)", room: () => uid(), tok: () => userToken("a"), query: "presence=none", status: 400, code: "bad_request", close: 4400 },
  { name: "bad_request (since not a number)", room: () => uid(), tok: () => userToken("a"), query: "since=-1&epoch=e_x", status: 400, code: "bad_request", close: 4400 },
  { name: "missing_token", room: () => uid(), tok: async () => null, status: 401, code: "missing_token", close: 4001 },
  { name: "invalid_token (not a JWT)", room: () => uid(), tok: async () => "not.a.jwt", status: 401, code: "invalid_token", close: 4001 },
  { name: "invalid_token (wrong secret)", room: () => uid(), tok: () => userToken("a", {}, { secret: "wrong-secret" }), status: 401, code: "invalid_token", close: 4001 },
  { name: "token_expired", room: () => uid(), tok: () => userToken("a", { exp: now() - 120 }), status: 401, code: "token_expired", close: 4001 },
  { name: "forbidden (no read on the room)", room: () => uid("doc"), tok: () => token({ sub: "a", rooms: { "other-*": ["read", "write"] } }), status: 403, code: "forbidden", close: 4403 },
  { name: "forbidden (service token)", room: () => uid(), tok: () => serviceToken({ rooms: { "*": ["read"] } }), status: 403, code: "forbidden", close: 4403 },
  { name: "forbidden (wrong tenant)", room: () => uid(), tok: () => userToken("a", { tenant: "acme" }), query: "tenant=globex", status: 403, code: "forbidden", close: 4403 },
  { name: "origin_not_allowed", room: () => uid(), tok: () => userToken("a"), headers: { Origin: "https://evil.example" }, status: 403, code: "origin_not_allowed", close: 4403 },
];

for (const row of rows) {
  test(`browser transport: ${row.name} → error frame, close ${row.close}; header transport: HTTP ${row.status}`, async () => {
    const room = row.room();
    const tok = await row.tok();
    const opts = { query: row.query ?? "", headers: row.headers ?? {} };
    const http = await httpRejection(room, tok, opts);
    assert.equal(http.status, row.status, JSON.stringify(http.body));
    assert.equal(http.body.error.code, row.code);
    const seen = await browserSocket(`/v1/rooms/${room}/ws`, tok, opts);
    assertRefusal(seen, { code: row.code, closeCode: row.close, message: http.body.error.message });
  });
}

test("too_many_connections (decided by the room) → error frame, close 4029; header transport: HTTP 429", async () => {
  const room = uid();
  const tok = await userToken("busy");
  const held = [];
  for (let i = 0; i < MAX_CONNECTIONS; i++) held.push(await connect(env.wsBase, room, tok));
  const http = await httpRejection(room, tok);
  assert.equal(http.status, 429);
  assert.equal(http.body.error.code, "too_many_connections");
  const seen = await browserSocket(`/v1/rooms/${room}/ws`, tok);
  const frame = assertRefusal(seen, { code: "too_many_connections", closeCode: 4029, message: http.body.error.message });
  assert.match(frame.message, /MAX_CONNECTIONS_PER_USER/);
  // The refused socket never counted: a slot frees when a held socket closes, and the
  // browser transport is then welcomed as usual.
  await held.pop().close();
  const ok = await connect(env.wsBase, room, tok, { transport: "protocol" });
  assert.equal(ok.protocol, "roomcast.v1");
  await ok.close();
  for (const c of held) await c.close();
});

test("the query transport keeps plain HTTP answers too", async () => {
  const expired = await httpRejection(uid(), await userToken("a", { exp: now() - 120 }), { transport: "query" });
  assert.equal(expired.status, 401);
  assert.equal(expired.body.error.code, "token_expired");
  assert.equal(expired.headers["www-authenticate"], 'Bearer error="invalid_token"');
  const forbidden = await httpRejection(uid("doc"), await token({ sub: "a", rooms: { "other-*": ["read"] } }), { transport: "query" });
  assert.equal(forbidden.status, 403);
  assert.equal(forbidden.body.error.code, "forbidden");
});

test("a subprotocol list without roomcast.v1 keeps the plain HTTP answer", async () => {
  // The bearer entry alone is still a token transport, but not the browser one: a client
  // that did not offer roomcast.v1 could not accept the socket's answer anyway.
  const tok = await userToken("a", { exp: now() - 120 });
  const e = await rejected(connect(env.wsBase, uid(), null, { protocols: [`roomcast.bearer.${tok}`] }));
  assert.equal(e.status, 401);
  assert.equal(e.body.error.code, "token_expired");
});

test("426 upgrade_required stays HTTP even when roomcast.v1 is offered", async () => {
  const res = await fetch(`${env.base}/v1/rooms/${uid()}/ws`, {
    headers: { "Sec-WebSocket-Protocol": `roomcast.v1, roomcast.bearer.${await userToken("a")}` },
  });
  assert.equal(res.status, 426);
  assert.equal((await res.json()).error.code, "upgrade_required");
});

test("pre-room refusals over a socket never wake the room, and are logged as rejections", async () => {
  const room = uid();
  const refused = await browserSocket(`/v1/rooms/${room}/ws`, await userToken("a", { exp: now() - 120 }));
  assert.equal(refused.code, 4001);
  const forbidden = await browserSocket(`/v1/rooms/${room}/ws`, await token({ sub: "a", rooms: { "other-*": ["read"] } }));
  assert.equal(forbidden.code, 4403);
  // A positive control: a room that is really connected to logs its start. Its line comes
  // after any line the refused room could have produced.
  const control = uid();
  const c = await connect(env.wsBase, control, await userToken("a"), { transport: "protocol" });
  const deadline = Date.now() + 10_000;
  while (!env.logs.some((l) => l.event === "room.start" && l.room_key === `/${control}`)) {
    assert.ok(Date.now() < deadline, "the control room's start was never logged");
    await new Promise((r) => setTimeout(r, 20));
  }
  await c.close();
  assert.deepEqual(env.logs.filter((l) => l.room_key === `/${room}`), [], "no room log lines for the refused room");
  const rejects = env.logs.filter((l) => l.event === "reject" && l.path === `/v1/rooms/${room}/ws`);
  assert.deepEqual(
    rejects.map((l) => [l.status, l.code, l.close]),
    [
      ["401", "token_expired", "4001"],
      ["403", "forbidden", "4403"],
    ],
  );
});
