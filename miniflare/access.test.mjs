// Personal rooms and disconnects (docs/protocol.md §14), against the real Worker in
// workerd with real JWTs and signatures: who may read and write `name@user` (and that no
// `rooms` pattern opens someone else's), tenants, the server API into personal rooms,
// `POST /v1/rooms/{room}/disconnect` by user and by connection, and the SDK's reaction.
//
// A socket the room closes receives the close frame at once, but workerd completes the
// TCP close only much later (about 10 s, when the idle room is evicted), so `ws` reports
// `close` late. Tests therefore observe a close by the room's `socket.close` log line,
// whose code is the one the client echoed back from the close frame it received, and
// await the client-side `close` event only where its code is the point (once, for all
// sockets of that test together).
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { start, connect, rejected, token, serviceToken, signedFetch, sse, uid, when } from "./helpers.mjs";
import { Roomcast } from "../client/dist/index.js";

let env;
before(async () => (env = await start()));
after(async () => env?.mf.dispose());

const live = new Set();
afterEach(() => {
  for (const c of live) c.close();
  live.clear();
});

/** A fresh personal room of `user`: `<unique name>@<user>`. */
const personal = (user, name = uid("inbox")) => `${name}@${user}`;

/** A user token with exactly these `rooms` entries (none by default). */
const user = (sub, rooms = {}, extra = {}) => token({ sub, rooms, ...extra });

const disconnect = (room, body, query = "") =>
  signedFetch(env.base, "POST", `/v1/rooms/${room}/disconnect${query}`, typeof body === "string" ? body : JSON.stringify(body));

const publish = (room, id, query = "") =>
  signedFetch(env.base, "POST", `/v1/rooms/${room}/messages${query}`, JSON.stringify({ id, event: "notice", data: { id } }));

/** The room's `socket.close` line for `conn`: the runtime reported the close, with the code the client echoed. */
const closeLine = (conn, from = 0) =>
  env.nextLog((l) => l.event === "socket.close" && l.conn === conn, { from, what: `socket.close of ${conn}` });

async function expectError(res, status, code) {
  assert.equal(res.status, status);
  const body = await res.json();
  assert.equal(body.error.code, code, JSON.stringify(body));
  return body.error.message;
}

// ---- personal rooms ------------------------------------------------------------------------

test("the owner reads their personal room without any rooms entry, on every transport", async () => {
  const room = personal("alice");
  for (const transport of ["header", "query", "protocol"]) {
    const c = await connect(env.wsBase, room, await user("alice"), { transport });
    assert.equal(c.welcome.room, room);
    assert.equal(c.welcome.user, "alice");
    await c.close();
  }
});

test("someone else's personal room is refused, even with rooms {\"*\"}, prefix patterns or its exact name", async () => {
  const room = personal("alice");
  const grants = [{ "*": ["read", "write"] }, { "inbox-*": ["read", "write"] }, { "inbox*": ["read"] }, { [`${room.split("@")[0]}@*`]: ["read"] }, { [room]: ["read", "write"] }];
  for (const rooms of grants) {
    const e = await rejected(connect(env.wsBase, room, await user("bob", rooms)));
    assert.equal(e.status, 403, JSON.stringify(rooms));
    assert.equal(e.body.error.code, "forbidden");
  }
  // A sub that only starts or ends like the owner's is someone else.
  for (const sub of ["alic", "alice2", "Alice"]) {
    const e = await rejected(connect(env.wsBase, room, await user(sub, { "*": ["read"] })));
    assert.equal(e.status, 403, sub);
  }
  // The browser transport gets the refusal as an error frame and close 4403 (§10).
  const ws = new WebSocket(`${env.wsBase}/v1/rooms/${room}/ws`, ["roomcast.v1", `roomcast.bearer.${await user("bob", { "*": ["read"] })}`]);
  const frame = await new Promise((resolve, reject) => {
    ws.on("message", (d) => resolve(JSON.parse(d.toString())));
    ws.on("error", reject);
  });
  assert.equal(frame.code, "forbidden");
  const [code] = await new Promise((resolve) => ws.on("close", (...args) => resolve(args)));
  assert.equal(code, 4403);
  // Nothing of this reached the room: it never started.
  assert.equal(env.logs.filter((l) => l.event === "room.start" && l.room_key === `/${room}`).length, 0);
});

test("names: one @ between two parts; anything else is bad_room", async () => {
  for (const room of ["@alice", "inbox@", "a@b@c"]) {
    const e = await rejected(connect(env.wsBase, room, await user("alice", { "*": ["read"] })));
    assert.equal(e.status, 400, room);
    assert.equal(e.body.error.code, "bad_room");
    await expectError(await publish(room, "x"), 400, "bad_room");
  }
});

test("the owner may not write without a write pattern; with one, it may", async () => {
  const room = personal("alice");
  const reader = await connect(env.wsBase, room, await user("alice"));
  live.add(reader);
  const refused = await reader.publish("w1");
  assert.equal(refused.type, "error");
  assert.equal(refused.code, "forbidden");
  const writer = await connect(env.wsBase, room, await user("alice", { "inbox-*": ["write"] }));
  live.add(writer);
  const ack = await writer.publish("w2");
  assert.deepEqual([ack.type, ack.seq], ["ack", 1]);
  await reader.next((f) => f.type === "message" && f.id === "w2", "the owner's write");
  assert.ok(!reader.frames.some((f) => f.type === "message" && f.id === "w1"), "the refused publish went nowhere");
});

test("the server API publishes into personal rooms (signed, service token, broadcast) and reaches the owner", async () => {
  const room = personal("alice");
  const other = personal("bob");
  const alice = await connect(env.wsBase, room, await user("alice"));
  const bob = await connect(env.wsBase, other, await user("bob"));
  live.add(alice).add(bob);
  const r = await (await publish(room, "n1")).json();
  assert.deepEqual([r.seq, r.delivered], [1, 1]);
  const m = await alice.next((f) => f.type === "message" && f.id === "n1", "signed publish");
  assert.equal(m.from, null);
  const viaToken = await fetch(`${env.base}/v1/rooms/${room}/messages`, {
    method: "POST",
    headers: { Authorization: `Bearer ${await serviceToken()}`, "Content-Type": "application/json" },
    body: JSON.stringify({ id: "n2", event: "notice" }),
  });
  assert.equal(viaToken.status, 200);
  await alice.next((f) => f.type === "message" && f.id === "n2", "service-token publish");
  const b = await signedFetch(env.base, "POST", "/v1/broadcast", JSON.stringify({ rooms: [room, other], id: "n3", event: "notice" }));
  assert.deepEqual((await b.json()).results.map((x) => [x.room, x.seq]), [[room, 3], [other, 1]]);
  await alice.next((f) => f.type === "message" && f.id === "n3");
  await bob.next((f) => f.type === "message" && f.id === "n3");
  assert.ok(!bob.frames.some((f) => f.type === "message" && f.id !== "n3"), "bob saw only what was sent to his room");
});

test("tenants: the same personal room name in two tenants is two rooms", async () => {
  const room = personal("alice");
  const t1 = await connect(env.wsBase, room, await user("alice", {}, { tenant: "t1" }));
  const t2 = await connect(env.wsBase, room, await user("alice", {}, { tenant: "t2" }));
  const none = await connect(env.wsBase, room, await user("alice"));
  live.add(t1).add(t2).add(none);
  assert.notEqual(t1.welcome.epoch, t2.welcome.epoch);
  // A token may not name another tenant than its own, for its own personal room either.
  const e = await rejected(connect(env.wsBase, room, await user("alice", {}, { tenant: "t1" }), { query: "tenant=t2" }));
  assert.equal(e.status, 403);
  await publish(room, "for-t1", "?tenant=t1");
  const viaToken = await fetch(`${env.base}/v1/rooms/${room}/messages`, {
    method: "POST",
    headers: { Authorization: `Bearer ${await serviceToken({ tenant: "t2" })}`, "Content-Type": "application/json" },
    body: JSON.stringify({ id: "for-t2", event: "notice" }),
  });
  assert.equal(viaToken.status, 200);
  await publish(room, "for-none");
  await t1.next((f) => f.type === "message" && f.id === "for-t1");
  await t2.next((f) => f.type === "message" && f.id === "for-t2");
  await none.next((f) => f.type === "message" && f.id === "for-none");
  for (const [c, id] of [[t1, "for-t1"], [t2, "for-t2"], [none, "for-none"]]) {
    assert.deepEqual(c.messages().map((m) => m.id), [id]);
  }
  // A disconnect is confined to its tenant too.
  const d = await (await disconnect(room, { user: "alice" }, "?tenant=t1")).json();
  assert.deepEqual(d, { closed: 1 });
  assert.equal((await closeLine(t1.welcome.conn)).code, "4403");
  await publish(room, "still-t2", "?tenant=t2");
  await t2.next((f) => f.type === "message" && f.id === "still-t2");
  assert.ok(!t2.frames.some((f) => f.type === "error"));
});

// ---- POST /v1/rooms/{room}/disconnect ------------------------------------------------------

test("disconnect by user: every socket of that user gets the error frame and close 4403; the others stay", async () => {
  const room = uid("doc");
  const rw = { "doc-*": ["read", "write"] };
  const a1 = await connect(env.wsBase, room, await user("alice", rw));
  const a2 = await connect(env.wsBase, room, await user("alice", rw), { transport: "protocol" });
  const bob = await connect(env.wsBase, room, await user("bob", rw));
  live.add(bob);
  const from = env.logs.length;
  const res = await disconnect(room, { user: "alice", reason: "removed from the document" });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { closed: 2 });
  for (const c of [a1, a2]) {
    const f = await c.next((x) => x.type === "error", "the disconnected frame");
    assert.deepEqual(f, { type: "error", code: "disconnected", message: "removed from the document", close: 4403 });
    assert.equal(c.frames.at(-1), f, "the last frame before the close");
  }
  const kicks = await Promise.all([a1, a2].map((c) => env.nextLog((l) => l.event === "socket.kick" && l.conn === c.welcome.conn, { from })));
  assert.deepEqual(kicks.map((k) => k.code), ["4403", "4403"]);
  // Presence: alice left (once), bob is still served.
  const leave = await bob.next((f) => f.type === "presence" && f.op === "leave", "alice's leave");
  assert.equal(leave.user, "alice");
  assert.equal(bob.frames.filter((f) => f.type === "presence" && f.op === "leave").length, 1);
  assert.equal((await bob.publish("after")).type, "ack");
  const info = await (await signedFetch(env.base, "GET", `/v1/rooms/${room}`)).json();
  assert.deepEqual([info.connections, info.users.map((u) => u.user)], [1, ["bob"]]);
  // The client side: the close frame carried 4403 and the error code as its reason.
  assert.deepEqual(await Promise.all([a1.closed, a2.closed]), [
    { code: 4403, reason: "disconnected" },
    { code: 4403, reason: "disconnected" },
  ]);
  // Once more: nobody left to close.
  assert.deepEqual(await (await disconnect(room, { user: "alice" })).json(), { closed: 0 });
});

test("disconnect reaches the HTTP transports: an SSE stream gets the frame and event close; a waiting poll ends", async () => {
  const room = uid("doc");
  const tok = await user("alice", { "doc-*": ["read"] });
  const stream = await sse(env.base, room, tok);
  const poll = fetch(`${env.base}/v1/rooms/${room}/poll?since=0&epoch=${stream.welcome.epoch}&timeout=20`, {
    headers: { Authorization: `Bearer ${tok}` },
  });
  // The poll waits once the room holds its relay socket too.
  for (let i = 0; ; i++) {
    const info = await (await signedFetch(env.base, "GET", `/v1/rooms/${room}`)).json();
    if (info.connections === 2) break;
    assert.ok(i < 500, `the poll never reached the room: ${JSON.stringify(info)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const res = await disconnect(room, { user: "alice", reason: "gone" });
  assert.deepEqual(await res.json(), { closed: 2 });
  const err = await stream.next((e) => e.event === "error", "the disconnected event");
  assert.deepEqual(err.frame, { type: "error", code: "disconnected", message: "gone", close: 4403 });
  const closed = await stream.next((e) => e.event === "close", "event: close");
  assert.deepEqual(closed.frame, { code: 4403, reason: "disconnected" });
  await stream.ended;
  // The poll's relay socket was closed by the room: it answers with what it has (nothing).
  const answer = await poll;
  assert.equal(answer.status, 200);
  assert.deepEqual((await answer.json()).messages, []);
});

test("disconnect by conn: only that connection, with a custom code and the default reason", async () => {
  const room = uid("doc");
  const rw = { "doc-*": ["read", "write"] };
  const a1 = await connect(env.wsBase, room, await user("alice", rw));
  const a2 = await connect(env.wsBase, room, await user("alice", rw));
  const bob = await connect(env.wsBase, room, await user("bob", rw));
  live.add(a2).add(bob);
  const from = env.logs.length;
  const res = await disconnect(room, { conn: a1.welcome.conn, code: 4000 });
  assert.deepEqual(await res.json(), { closed: 1 });
  const f = await a1.next((x) => x.type === "error");
  assert.deepEqual(f, { type: "error", code: "disconnected", message: "disconnected by the server", close: 4000 });
  assert.equal((await closeLine(a1.welcome.conn, from)).code, "4000");
  // alice's other socket is untouched, and she has not left.
  await publish(room, "p1");
  await a2.next((x) => x.type === "message" && x.id === "p1");
  await bob.next((x) => x.type === "message" && x.id === "p1");
  assert.ok(!a2.frames.some((x) => x.type === "error"));
  assert.ok(!bob.frames.some((x) => x.type === "presence" && x.op === "leave"));
  // Unknown connections and users close nothing; the answer is still 200.
  assert.deepEqual(await (await disconnect(room, { conn: "c_0000000000000000" })).json(), { closed: 0 });
  assert.deepEqual(await (await disconnect(room, { user: "nobody" })).json(), { closed: 0 });
  assert.deepEqual(await (await disconnect(room, { user: a2.welcome.conn })).json(), { closed: 0 }, "a conn id is not a user");
});

test("disconnect: bad bodies are 400 bad_request, without auth 401, other methods 405, bad names 400 bad_room", async () => {
  const room = uid("doc");
  const c = await connect(env.wsBase, room, await user("alice", { "doc-*": ["read"] }));
  live.add(c);
  const bodies = [
    "not json",
    "{}",
    { user: "alice", conn: c.welcome.conn },
    { user: "" },
    { user: 7 },
    { conn: "has space" },
    { user: "alice", code: 3999 },
    { user: "alice", code: 5000 },
    { user: "alice", code: 1000 },
    { user: "alice", code: "4403" },
    { user: "alice", code: 4403.5 },
    { user: "alice", reason: "" },
    { user: "alice", reason: "x".repeat(124) },
    { user: "alice", reason: "é".repeat(62) }, // 124 bytes in 62 characters
  ];
  for (const body of bodies) {
    const message = await expectError(await disconnect(room, body), 400, "bad_request");
    assert.ok(message.length > 10, message);
  }
  assert.match(await expectError(await disconnect(room, { user: "alice", code: 5000 }), 400, "bad_request"), /4000 to 4999/);
  assert.match(await expectError(await disconnect(room, { user: "alice", reason: "x".repeat(124) }), 400, "bad_request"), /123 bytes/);
  const unsigned = await fetch(`${env.base}/v1/rooms/${room}/disconnect`, { method: "POST", body: JSON.stringify({ user: "alice" }) });
  await expectError(unsigned, 401, "unauthorized");
  const userToken = await fetch(`${env.base}/v1/rooms/${room}/disconnect`, {
    method: "POST",
    headers: { Authorization: `Bearer ${await user("alice", { "*": ["read", "write"] })}` },
    body: JSON.stringify({ user: "alice" }),
  });
  await expectError(userToken, 403, "forbidden");
  const get = await signedFetch(env.base, "GET", `/v1/rooms/${room}/disconnect`);
  await expectError(get, 405, "method_not_allowed");
  assert.equal(get.headers.get("Allow"), "POST");
  await expectError(await disconnect("a@b@c", { user: "alice" }), 400, "bad_room");
  // None of it touched the socket; a 123-byte reason is accepted.
  const longest = "é".repeat(61) + "x";
  assert.deepEqual(await (await disconnect(room, { user: "alice", reason: longest, code: 4999 })).json(), { closed: 1 });
  const f = await c.next((x) => x.type === "error");
  assert.deepEqual([f.message, f.close], [longest, 4999]);
  assert.equal(c.frames.filter((x) => x.type === "error").length, 1);
});

// ---- the SDK's reaction -----------------------------------------------------------------------

const FAST = { backoff: { baseMs: 25, capMs: 200, stableMs: 2000 }, connectTimeoutMs: 5000 };

/** An SDK client on `room` whose sockets and errors are recorded. */
function sdk(room, tok) {
  const sockets = [];
  class CountingWebSocket extends WebSocket {
    constructor(address, protocols) {
      super(address, protocols);
      sockets.push(this);
    }
  }
  const client = new Roomcast({ url: env.wsBase, room, token: () => tok, WebSocket: CountingWebSocket, ...FAST });
  live.add(client);
  const errors = [];
  client.on("error", (e) => errors.push(e));
  return { client, sockets, errors };
}

test("SDK: disconnected with 4403 stops at once with a fatal `disconnected` error and the server's message", async () => {
  const room = personal("alice");
  const p = sdk(room, await user("alice"));
  await when(p.client, "state", (s) => s === "open");
  const closed = when(p.client, "state", (s) => s === "closed");
  const t0 = Date.now();
  assert.deepEqual(await (await disconnect(room, { user: "alice", reason: "account suspended" })).json(), { closed: 1 });
  const [, detail] = await closed;
  // The frame decides, not the close event that trails it by ~10 s.
  assert.ok(Date.now() - t0 < 5000, `stopped after ${Date.now() - t0} ms`);
  assert.deepEqual([detail.error.code, detail.error.message, detail.error.fatal, detail.error.closeCode], ["disconnected", "account suspended", true, 4403]);
  assert.deepEqual(p.errors.map((e) => [e.code, e.fatal]), [["disconnected", true]]);
  await assert.rejects(p.client.publish("chat", {}), { code: "closed" });
  // Stopped for good: five of its longest backoffs pass without another attempt.
  const deadline = Date.now() + 5 * FAST.backoff.capMs;
  while (Date.now() < deadline && p.sockets.length === 1) await new Promise((r) => setTimeout(r, 10));
  assert.equal(p.sockets.length, 1, "no socket after stopping");
});

test("SDK: disconnected with 4000 reconnects with backoff and resumes without a gap", async () => {
  const room = personal("alice");
  const p = sdk(room, await user("alice"));
  await when(p.client, "state", (s) => s === "open");
  await publish(room, "before");
  await when(p.client, "message", (m) => m.id === "before");
  const reconnecting = when(p.client, "state", (s) => s === "reconnecting");
  const rewelcome = when(p.client, "welcome", (w) => w.resume.requested);
  assert.deepEqual(await (await disconnect(room, { user: "alice", code: 4000, reason: "token scope changed" })).json(), { closed: 1 });
  const [, detail] = await reconnecting;
  assert.equal(detail.code, 4000);
  assert.ok(detail.delayMs >= 0 && detail.delayMs < FAST.backoff.baseMs, `backoff ${detail.delayMs}`);
  assert.deepEqual(p.errors.map((e) => [e.code, e.message, e.fatal, e.closeCode]), [["disconnected", "token scope changed", false, 4000]]);
  const [w] = await rewelcome;
  assert.equal(w.resume.recovered, true);
  assert.equal(p.sockets.length, 2);
  await publish(room, "after");
  const [m] = await when(p.client, "message", (x) => x.id === "after");
  assert.equal(m.seq, 2);
  assert.equal(p.client.state, "open");
});
