// Presence, limits and hostile input (contract §2–§5): one bad client never hurts anyone
// else. Each table row is an input and its contract answer; a bystander in the same room
// checks that nothing leaked and nothing stalled.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import WebSocket from "ws";
import { start, connect, rejected, token, userToken, signedFetch, signature, makeKeys, now, uid, until, Client } from "./helpers.mjs";

let env, keys, jwks;
before(async () => {
  ({ keys, jwks } = await makeKeys());
  env = await start({
    jwks,
    bindings: {
      MAX_MESSAGE_BYTES: "2048",
      MAX_CONNECTIONS_PER_USER: "3",
      RATE_LIMIT_PER_SEC: "5",
      RATE_LIMIT_BURST: "10",
      JWT_ISSUER: "https://auth.example",
      JWT_AUDIENCE: "roomcast",
    },
  });
});
after(async () => env?.mf.dispose());

const claims = (sub, extra = {}) => ({ sub, iss: "https://auth.example", aud: "roomcast", rooms: { "*": ["read", "write"] }, ...extra });
const tok = (sub, extra, opts) => token(claims(sub, extra), opts);
const join = (room, sub, opts) => tok(sub).then((t) => connect(env.wsBase, room, t, opts));
/** The token clock leeway (contract §3). */
const LEEWAY_SECS = 30;

/**
 * A bystander publishes a marker and checks it arrives, proving the room still serves
 * others. Returns the marker's id: a socket receives frames in the order its room made
 * them, so anything the room sent it before the marker has arrived too.
 */
async function stillServes(room, bystander) {
  const id = uid("marker");
  const ack = await bystander.publish(id, {}, { echo: true });
  assert.equal(ack.type, "ack");
  await bystander.next((f) => f.type === "message" && f.id === id);
  return id;
}

test("presence: welcome snapshot with info, join/leave per user, and leave for a socket that vanished", async () => {
  const room = uid();
  const a = await connect(env.wsBase, room, await tok("alice", { info: { name: "Alice" } }));
  const b = await connect(env.wsBase, room, await tok("bob", { info: { name: "Bob" } }));
  assert.deepEqual(b.welcome.presence.count, 2);
  assert.deepEqual(
    b.welcome.presence.users.sort((x, y) => x.user.localeCompare(y.user)),
    [{ user: "alice", info: { name: "Alice" } }, { user: "bob", info: { name: "Bob" } }],
  );
  await a.next((f) => f.type === "presence" && f.op === "join" && f.user === "bob");
  b.ws.terminate(); // no close frame
  const leave = await a.next((f) => f.type === "presence" && f.op === "leave" && f.user === "bob");
  assert.deepEqual(leave.info, { name: "Bob" });
  const info = await (await signedFetch(env.base, "GET", `/v1/rooms/${room}`)).json();
  assert.deepEqual(info.users.map((u) => u.user), ["alice"]);
  await a.close();
});

test("rate limiting: over the bucket → rate_limited with retry_after_ms and no fan-out; sustained → 4008; others unaffected", async () => {
  const room = uid();
  const flood = await join(room, "flooder");
  const calm = await join(room, "calm");
  for (let i = 0; i < 16; i++) flood.send({ type: "publish", id: `f${i}`, event: "e" });
  const answers = await flood.nextN((f) => (f.type === "ack" || f.type === "error") && /^f\d+$/.test(f.id ?? ""), 16);
  const acked = answers.filter((f) => f.type === "ack");
  const limited = answers.filter((f) => f.type === "error");
  assert.ok(acked.length >= 10 && acked.length < 16, `acked ${acked.length}`);
  for (const e of limited) {
    assert.equal(e.code, "rate_limited");
    assert.ok(e.retry_after_ms > 0 && e.retry_after_ms <= 1000, JSON.stringify(e));
  }
  await stillServes(room, calm);
  const got = calm.messages().filter((m) => m.id.startsWith("f")).map((m) => m.id);
  assert.deepEqual(got, acked.map((a) => a.id), "only accepted publishes were fanned out");
  // Keep flooding after being told to back off: the connection is closed with 4008.
  for (let i = 16; i < 60; i++) flood.send({ type: "publish", id: `f${i}`, event: "e" });
  const closed = await flood.closed;
  assert.equal(closed.code, 4008);
  await stillServes(room, calm);
  await calm.close();
});

test("MAX_CONNECTIONS_PER_USER → 429 at upgrade, and a slot frees when a socket closes", async () => {
  const room = uid();
  const socks = [];
  for (let i = 0; i < 3; i++) socks.push(await join(room, "greedy"));
  const e = await rejected(join(room, "greedy"));
  assert.equal(e.status, 429);
  assert.equal(e.body.error.code, "too_many_connections");
  const other = await join(room, "someone-else");
  const gone = socks.pop();
  await gone.close();
  // The client's close handshake may complete before the room hears of the close; the
  // room's socket.close line is the event that says it has, and from then on the slot is
  // free: the next upgrade must succeed at once.
  await env.nextLog((l) => l.event === "socket.close" && l.conn === gone.welcome.conn, { what: "the room's socket.close" });
  const again = await join(room, "greedy");
  assert.equal(again.welcome.user, "greedy");
  await Promise.all([...socks, other, again].map((c) => c.close()));
});

test("oversized messages → too_large, repeated → 1009; invalid frames repeated → 4400", async () => {
  const room = uid();
  const bystander = await join(room, "bystander");
  const big = await join(room, "big");
  for (let i = 0; i < 2; i++) {
    big.send({ type: "publish", id: `big${i}`, event: "e", data: "x".repeat(3000) });
    await big.nextN((f) => f.type === "error" && f.code === "too_large", i + 1);
  }
  assert.equal((await big.publish("small")).type, "ack", "still open after two");
  big.send({ type: "publish", id: "big3", event: "e", data: "x".repeat(3000) });
  assert.equal((await big.closed).code, 1009);

  const bad = await join(room, "bad");
  for (let i = 0; i < 9; i++) bad.send(`not json ${i}`);
  await bad.nextN((f) => f.type === "error" && f.code === "bad_frame", 9);
  assert.equal((await bad.publish("ok-between")).type, "ack");
  bad.send("{");
  assert.equal((await bad.closed).code, 4400);
  await stillServes(room, bystander);
  await bystander.close();
});

test("an expired token cannot publish: token_expired, then close 4001, and nothing is fanned out", async () => {
  const room = uid();
  const bystander = await join(room, "bystander");
  const mark = env.logs.length;
  // Within the 30 s leeway at connect time; past it within 2 s.
  const exp = now() - 29;
  const c = await connect(env.wsBase, room, await tok("late", { exp }));
  // Nothing announces that a token has run out: wait for the clock itself (workerd and
  // this process read the same machine clock), polling with a deadline.
  const expiredAt = (exp + LEEWAY_SECS + 1) * 1000;
  await until(() => Date.now() >= expiredAt, "the token to pass exp + leeway", 5_000);
  c.send({ type: "publish", id: "too-late", event: "e" });
  assert.equal((await c.closed).code, 4001);
  // The room's expiry alarm is due at that same instant (contract §9), so the publish is
  // either refused (token_expired with its id) or finds the socket already closed by the
  // alarm (token_expired without an id). Either way it is never accepted.
  const errors = c.frames.filter((f) => f.type === "error");
  assert.ok(errors.length >= 1, "a token_expired error frame before the close");
  for (const e of errors) {
    assert.equal(e.code, "token_expired", JSON.stringify(e));
    assert.ok(e.id === undefined || e.id === "too-late", JSON.stringify(e));
  }
  assert.deepEqual(c.frames.filter((f) => f.type === "ack"), [], "the late publish was not acked");
  await stillServes(room, bystander);
  assert.deepEqual(bystander.messages().filter((m) => m.id === "too-late"), [], "nor fanned out");
  // The alarm fires whichever closed the socket; let it, so that the next test sees only
  // its own room.alarm line.
  await env.nextLog((l) => l.event === "room.alarm", { from: mark, what: "this room's expiry alarm" });
  await bystander.close();
});

test("sockets whose token expires are closed proactively by an alarm, without any client activity", async () => {
  const room = uid();
  const bystander = await join(room, "bystander");
  const mark = env.logs.length;
  const c = await connect(env.wsBase, room, await tok("idle", { exp: now() - 27 }));
  const closed = await c.closed;
  assert.equal(closed.code, 4001);
  assert.ok(c.frames.some((f) => f.type === "error" && f.code === "token_expired"));
  await bystander.next((f) => f.type === "presence" && f.op === "leave" && f.user === "idle");
  // Only this room has an alarm due now (every other token in this file lasts 10 minutes).
  await env.nextLog((l) => l.event === "room.alarm", { from: mark, what: "the room's expiry alarm" });
  await stillServes(room, bystander);
  await bystander.close();
});

// ---- The hostile-input table -------------------------------------------------------

const nested = (depth) => "[".repeat(depth) + "]".repeat(depth);
const frameRows = [
  // [name, raw text or object, expected: "ack" | error code]
  ["malformed JSON", "{\"type\":\"publish\",", "bad_frame"],
  ["deeply nested JSON (1000 levels)", nested(1000), "bad_frame"],
  ["deeply nested JSON (10k levels, over the size limit)", nested(10000), "too_large"],
  // `data` is opaque to the room (kept as raw JSON, never built into a tree), so depth
  // costs nothing; only its size is bounded.
  ["deeply nested data (900 levels)", `{"type":"publish","id":"deep","event":"e","data":${nested(900)}}`, "ack"],
  ["huge number in data", `{"type":"publish","id":"num","event":"e","data":1e999}`, "ack"],
  ["huge string under the size limit", { type: "publish", id: "str", event: "e", data: "s".repeat(1900) }, "ack"],
  ["id of the wrong type", { type: "publish", id: 42, event: "e" }, "bad_frame"],
  ["event of the wrong type", { type: "publish", id: "ev", event: ["e"] }, "bad_frame"],
  ["echo of the wrong type", { type: "publish", id: "ec", event: "e", echo: "yes" }, "bad_frame"],
  ["type of the wrong type", { type: 7, id: "ty" }, "bad_frame"],
  ["unknown fields are ignored", { type: "publish", id: "unk", event: "e", extra: { a: 1 }, __proto__x: 1 }, "ack"],
  ["empty frame", "", "bad_frame"],
  ["whitespace frame", "   ", "bad_frame"],
  ["null", "null", "bad_frame"],
  ["empty object", "{}", "bad_frame"],
  ["empty array", "[]", "bad_frame"],
  ["10k-element array", JSON.stringify(Array.from({ length: 10000 }, () => 0)), "too_large"],
  ["101 frames in one array", JSON.stringify(Array.from({ length: 101 }, () => ({}))), "bad_frame"],
  ["id with illegal characters", { type: "publish", id: "a/b", event: "e" }, "invalid_id"],
  ["id with unicode", { type: "publish", id: "é", event: "e" }, "invalid_id"],
  ["id of 129 chars", { type: "publish", id: "i".repeat(129), event: "e" }, "invalid_id"],
  ["empty event", { type: "publish", id: "ee", event: "" }, "invalid_id"],
  ["unknown type", { type: "subscribe", id: "sub" }, "unknown_type"],
  ["oversized message", { type: "publish", id: "big", event: "e", data: "x".repeat(5000) }, "too_large"],
];

test(`hostile frames (${frameRows.length} rows): each gets its contract answer, nothing leaks or stalls`, async () => {
  const room = uid();
  const bystander = await join(room, "bystander");
  const otherRoom = uid();
  const elsewhere = await join(otherRoom, "elsewhere");
  let accepted = 0;
  for (const [i, [name, input, expected]] of frameRows.entries()) {
    // A fresh attacker per row keeps strike counters out of the way of the next row.
    const attacker = await join(room, `attacker${i}`);
    const before = attacker.frames.length;
    attacker.send(typeof input === "string" ? input : JSON.stringify(input));
    const answer = await attacker.next((f, idx) => attacker.frames.indexOf(f) >= before && (f.type === "ack" || f.type === "error"), name);
    if (expected === "ack") {
      assert.equal(answer.type, "ack", `${name}: ${JSON.stringify(answer)}`);
      accepted++;
    } else {
      assert.equal(answer.type, "error", `${name}: ${JSON.stringify(answer)}`);
      assert.equal(answer.code, expected, name);
      assert.ok(answer.message.length > 5, name);
    }
    await attacker.close();
  }
  await stillServes(room, bystander);
  assert.equal(bystander.messages().length, accepted + 1, "only accepted frames were fanned out");
  const num = bystander.messages().find((m) => m.id === "num");
  assert.equal(num.data, Infinity, "huge numbers are delivered verbatim (1e999 parses to Infinity in JS)");
  // Had anything crossed into the other room, it would have reached `elsewhere` before
  // its own marker.
  const marker = await stillServes(otherRoom, elsewhere);
  assert.deepEqual(elsewhere.messages().map((m) => m.id), [marker], "nothing crossed into another room");
  await Promise.all([bystander.close(), elsewhere.close()]);
});

/** A raw HTTP request, so paths reach the Worker exactly as written (no client-side URL normalization). */
function raw(path, headers = {}) {
  const { hostname, port } = new URL(env.base);
  return new Promise((resolve, reject) => {
    const req = http.request({ hostname, port, path, method: "GET", headers }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    // A 101 is reported as an upgrade; close the socket right away.
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode, body: "" });
    });
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer for ${path}`)));
    req.on("error", reject);
    req.end();
  });
}

test("hostile upgrades: paths, tokens, headers and JWT attacks each get their contract status", async () => {
  const room = uid("only");
  const good = await tok("alice", { rooms: { [room]: ["read", "write"] } });
  const ws = { Upgrade: "websocket", Connection: "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13" };
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const [gh, gp, gs] = good.split(".");
  const rsaPublicJwk = JSON.stringify(jwks.keys.find((k) => k.kty === "RSA"));
  const rows = [
    ["room with illegal characters", `/v1/rooms/a$b/ws`, good, 400, "bad_room"],
    ["encoded slash in room", `/v1/rooms/${room}%2F..%2Fother/ws`, good, 400, "bad_room"],
    ["dot-dot climbs into another room: that room's permissions apply", `/v1/rooms/${room}/../other/ws`, good, 403, "forbidden"],
    ["dot-dot out of the rooms route", `/v1/rooms/../../healthz/ws`, good, 404, "not_found"],
    ["dot-dot onto a room the token lacks", `/v1/rooms/x/../${uid("nope")}/ws`, good, 403, "forbidden"],
    ["room of 129 chars", `/v1/rooms/${"r".repeat(129)}/ws`, good, 400, "bad_room"],
    ["oversized token", `/v1/rooms/${room}/ws`, "a".repeat(9000) + ".b.c", 401, "invalid_token"],
    ["alg none", `/v1/rooms/${room}/ws`, `${b64({ alg: "none" })}.${gp}.`, 401, "invalid_token"],
    ["HS/RS confusion: RSA public key as the HMAC secret", `/v1/rooms/${room}/ws`, await tok("alice", {}, { secret: rsaPublicJwk, header: { kid: "rsa-1" } }), 401, "invalid_token"],
    ["kid pointing nowhere", `/v1/rooms/${room}/ws`, await tok("alice", {}, { alg: "ES256", keys, kid: "missing" }), 401, "invalid_token"],
    ["tampered payload", `/v1/rooms/${room}/ws`, `${gh}.${b64({ ...claims("admin"), exp: now() + 60 })}.${gs}`, 401, "invalid_token"],
    ["exp in the past", `/v1/rooms/${room}/ws`, await tok("alice", { exp: now() - 3600 }), 401, "token_expired"],
    ["nbf in the future", `/v1/rooms/${room}/ws`, await tok("alice", { nbf: now() + 3600 }), 401, "invalid_token"],
    ["wrong aud", `/v1/rooms/${room}/ws`, await tok("alice", { aud: "someone-else" }), 401, "invalid_token"],
    ["wrong iss", `/v1/rooms/${room}/ws`, await tok("alice", { iss: "https://evil.example" }), 401, "invalid_token"],
    ["no iss/aud at all", `/v1/rooms/${room}/ws`, await token({ sub: "alice", rooms: { "*": ["read"] } }), 401, "invalid_token"],
    ["garbage token", `/v1/rooms/${room}/ws`, "%00%ff", 401, "invalid_token"],
  ];
  for (const [name, path, t, status, code] of rows) {
    const res = await raw(path, { ...ws, Authorization: `Bearer ${t}` });
    assert.equal(res.status, status, `${name}: ${res.body}`);
    assert.equal(JSON.parse(res.body).error.code, code, name);
  }
  // Oversized headers: an 8 KiB+ token in the subprotocol is refused like any oversized
  // token; a 64 KiB unrelated header is simply ignored (header size limits belong to
  // Cloudflare's edge), and the upgrade proceeds on the token's merits. The subprotocol
  // upgrade offers roomcast.v1, so its refusal is an error frame and close 4001 on an
  // accepted socket (docs/protocol.md §10), not the HTTP 401 of the other transports.
  const bigProto = new Client(new WebSocket(`${env.wsBase}/v1/rooms/${room}/ws`, ["roomcast.v1", `roomcast.bearer.${"a".repeat(20000)}`]));
  bigProto.ws.on("error", () => {}); // an HTTP refusal shows as close 1006, asserted below
  assert.equal((await bigProto.closed).code, 4001);
  assert.deepEqual(bigProto.frames.map((f) => [f.type, f.code]), [["error", "invalid_token"]]);
  const padded = await raw(`/v1/rooms/${room}/ws`, { ...ws, Authorization: `Bearer ${good}`, "X-Pad": "p".repeat(65536) });
  assert.equal(padded.status, 101);
  assert.equal(await (await fetch(`${env.base}/healthz`)).text(), "ok");
});

test("signature replays: a replayed signed request is a duplicate (no second fan-out), and cannot be moved to another path or tenant", async () => {
  const room = uid();
  const watcher = await join(room, "watch");
  const path = `/v1/rooms/${room}/messages`;
  const body = JSON.stringify({ id: "replayed", event: "e" });
  const headers = { "Roomcast-Signature": signature("POST", path, body), "Content-Type": "application/json" };
  const first = await (await fetch(env.base + path, { method: "POST", headers, body })).json();
  const second = await (await fetch(env.base + path, { method: "POST", headers, body })).json();
  assert.deepEqual([first.duplicate, second.duplicate, second.seq], [false, true, first.seq]);
  const moved = await fetch(`${env.base}/v1/rooms/${uid()}/messages`, { method: "POST", headers, body });
  assert.equal(moved.status, 401);
  const tenant = await fetch(`${env.base + path}?tenant=other`, { method: "POST", headers, body });
  assert.equal(tenant.status, 401);
  await stillServes(room, watcher);
  assert.equal(watcher.messages().filter((m) => m.id === "replayed").length, 1);
  await watcher.close();
});
