// The transports of contract v1.1 §D in the SDK — WebSocket, Server-Sent Events and
// long-polling, the `auto` fallback between them, and publishing over HTTP — against a
// fake WebSocket, a fake EventSource, a fake fetch and a fake clock.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Roomcast } from "../dist/index.js";
import { FakeClock, socketClass, eventSourceClass, fakeFetch, settle, record, msg } from "./fakes.mjs";

/** A JWT-shaped token whose `sub` the client can read (it never verifies it). */
const jwt = (sub, n) => `h.${Buffer.from(JSON.stringify({ sub, n })).toString("base64url")}.s`;

function setup(options = {}) {
  const clock = new FakeClock();
  const WS = socketClass();
  const ES = eventSourceClass();
  const fetch = fakeFetch();
  const tokens = [];
  const client = new Roomcast({
    url: "https://rooms.test",
    room: "lobby",
    token: (ctx) => {
      tokens.push(ctx);
      return jwt("alice", tokens.length);
    },
    WebSocket: WS,
    EventSource: ES,
    fetch,
    timers: clock,
    random: () => 0.5,
    ...options,
  });
  const log = record(client);
  const switches = [];
  client.on("transport", (t, d) => switches.push(`${d.previous}→${t}`));
  return { clock, WS, ES, fetch, client, log, tokens, switches };
}

/** WebSocket fails to open twice (the default `fallbackAfter`), so `auto` moves to SSE. */
async function toSse(t) {
  await settle();
  t.WS.last.fail("connect ECONNREFUSED");
  await t.clock.advance(250);
  t.WS.last.fail("connect ECONNREFUSED");
  await t.clock.advance(0);
  assert.equal(t.client.transport, "sse");
  return t.ES.last;
}

/** …and SSE fails twice as well, so `auto` moves to long-poll. */
async function toLongPoll(t) {
  const es = await toSse(t);
  es.fail();
  await t.clock.advance(500);
  t.ES.last.fail();
  await t.clock.advance(0);
  assert.equal(t.client.transport, "longpoll");
}

/** Waits out exactly the retry the client scheduled last (no connect timeout runs meanwhile). */
async function retry(t) {
  await settle();
  const d = t.log.details.at(-1);
  assert.equal(d.state, "reconnecting", "a retry is scheduled");
  await t.clock.advance(d.delayMs);
}

const tokenOf = (call) => call.headers.Authorization?.replace(/^Bearer /, "");
const poll = (epoch, last_seq, messages = [], recovered = true) => ({ epoch, last_seq, recovered, messages });

// ---- choosing a transport ----------------------------------------------------------

test("auto starts on WebSocket and stays there when it opens; room.transport and the state detail say so", async () => {
  const { WS, ES, client, log } = setup();
  assert.equal(client.transport, "websocket");
  await settle();
  WS.last.accept();
  assert.equal(client.state, "open");
  assert.equal(client.transport, "websocket");
  assert.ok(log.details.every((d) => d.transport === "websocket"));
  assert.equal(ES.instances.length, 0);
  client.close();
});

test("auto: a WebSocket that fails before welcome twice → SSE at once (token in ?access_token=), which opens and is kept", async () => {
  const t = setup();
  const es = await toSse(t);
  assert.deepEqual(t.switches, ["websocket→sse"]);
  assert.equal(t.WS.instances.length, 2, "WebSocket was tried fallbackAfter = 2 times");
  assert.equal(es.url.origin + es.url.pathname, "https://rooms.test/v1/rooms/lobby/events");
  assert.equal(es.url.searchParams.get("access_token"), jwt("alice", 3), "a token asked for this attempt");
  assert.equal(es.url.searchParams.get("since"), null, "nothing to resume yet");
  es.accept({ seq: 7 });
  assert.equal(t.client.state, "open");
  assert.equal(t.client.transport, "sse");
  assert.equal(t.client.seq, 7);
  assert.equal(t.client.connectionId, "c_sse0");
  assert.equal(t.log.details.at(-1).transport, "sse");
  // Once open, a lost stream reconnects on SSE, resuming — never back to a WebSocket.
  for (let i = 0; i < 4; i++) {
    t.ES.last.fail();
    await retry(t);
  }
  assert.equal(t.WS.instances.length, 2);
  assert.equal(t.client.transport, "sse");
  assert.equal(t.ES.last.url.searchParams.get("since"), "7");
  assert.equal(t.ES.last.url.searchParams.get("epoch"), "e_1");
  t.client.close();
  assert.ok(t.ES.last.closed);
});

test("auto: a WebSocket constructor that throws falls back at once, without a second try", async () => {
  class Throwing {
    constructor() {
      throw new Error("WebSocket is disabled by policy");
    }
  }
  const t = setup({ WebSocket: Throwing });
  await settle();
  await t.clock.advance(0);
  assert.equal(t.client.transport, "sse");
  assert.equal(t.ES.instances.length, 1);
  assert.deepEqual(t.log.errors.map((e) => e.code), ["handshake"]);
});

test("auto: no WebSocket at all starts on SSE; no EventSource either starts on long-poll", async () => {
  const noWs = setup({ WebSocket: undefined });
  assert.equal(noWs.client.transport, Object.hasOwn(globalThis, "WebSocket") ? "websocket" : "sse");
  noWs.client.close();
  if (!Object.hasOwn(globalThis, "WebSocket") && !Object.hasOwn(globalThis, "EventSource")) {
    const neither = setup({ WebSocket: undefined, EventSource: undefined });
    assert.equal(neither.client.transport, "longpoll");
    neither.client.close();
  }
  assert.throws(() => new Roomcast({ url: "ws://x", room: "r", token: "t", transport: "carrier-pigeon" }), TypeError);
  assert.throws(() => new Roomcast({ url: "ws://x", room: "r", token: "t", transport: "sse", fetch: () => {} }), /EventSource/);
});

test("auto: an upgrade that hangs (no welcome within connectTimeoutMs) twice is a WebSocket that cannot open", async () => {
  const t = setup({ connectTimeoutMs: 4000 });
  await settle();
  await t.clock.advance(4000);
  assert.equal(t.client.transport, "websocket", "one timeout is not enough");
  await t.clock.advance(250 + 4000);
  await t.clock.advance(0);
  assert.equal(t.WS.instances.length, 2);
  assert.equal(t.client.transport, "sse");
  assert.equal(t.ES.instances.length, 1);
  assert.ok(t.WS.instances.every((ws) => ws.terminated || ws.closeCalls.length > 0), "the hanging sockets were dropped");
  t.client.close();
});

test("auto: a §10 refusal on the WebSocket is an answer, not a reason to fall back", async () => {
  // forbidden: stop at once.
  const a = setup();
  await settle();
  a.WS.last.refuse("forbidden", 4403);
  assert.equal(a.client.state, "closed");
  assert.equal(a.log.errors.at(-1).code, "forbidden");
  assert.equal(a.ES.instances.length, 0);
  // too_many_connections: back off and retry the WebSocket, again and again.
  const b = setup();
  await settle();
  for (let i = 0; i < 3; i++) {
    b.WS.last.refuse("too_many_connections", 4029);
    await retry(b);
  }
  assert.equal(b.WS.instances.length, 4);
  assert.equal(b.ES.instances.length, 0);
  assert.equal(b.client.transport, "websocket");
  b.client.close();
  // token_expired: a fresh token, on the WebSocket.
  const c = setup();
  await settle();
  c.WS.last.refuse("token_expired", 4001);
  await retry(c);
  assert.deepEqual(c.tokens.map((x) => x.reason), ["connect", "expired"]);
  assert.equal(c.WS.instances.length, 2);
  c.WS.last.accept();
  assert.equal(c.client.transport, "websocket");
  c.client.close();
});

test("auto: a close code of the protocol before welcome (4000–4999) is the server speaking: no fallback", async () => {
  const t = setup();
  await settle();
  t.WS.last.serverClose(4000, "restarting");
  await retry(t);
  t.WS.last.serverClose(4000, "restarting");
  await retry(t);
  assert.equal(t.WS.instances.length, 3);
  assert.equal(t.client.transport, "websocket");
  t.client.close();
});

test("auto: SSE that cannot open either → long-poll; after long-poll fails too, WebSocket again with backoff", async () => {
  const t = setup({ fallbackAfter: 1 });
  await settle();
  t.WS.last.fail();
  await t.clock.advance(0);
  assert.equal(t.client.transport, "sse");
  t.ES.last.fail();
  await t.clock.advance(0);
  assert.equal(t.client.transport, "longpoll");
  const p = t.fetch.open("/poll")[0];
  assert.ok(p, "a poll was sent");
  p.fail("ECONNREFUSED");
  await settle();
  assert.equal(t.client.transport, "websocket");
  assert.deepEqual(t.switches, ["websocket→sse", "sse→longpoll", "longpoll→websocket"]);
  const last = t.log.details.at(-1);
  assert.equal(last.state, "reconnecting");
  assert.ok(last.delayMs > 0, "the round starts again after a backoff, not at once");
  await t.clock.advance(last.delayMs);
  assert.equal(t.WS.instances.length, 2);
  t.client.close();
});

test("explicit transports never fall back", async () => {
  const ws = setup({ transport: "websocket" });
  await settle();
  for (let i = 0; i < 4; i++) {
    ws.WS.last.fail();
    await retry(ws);
  }
  assert.equal(ws.ES.instances.length, 0);
  assert.deepEqual(ws.switches, []);
  ws.client.close();

  const sse = setup({ transport: "sse" });
  assert.equal(sse.client.transport, "sse");
  await settle();
  assert.equal(sse.WS.instances.length, 0);
  for (let i = 0; i < 4; i++) {
    sse.ES.last.fail();
    await retry(sse);
  }
  assert.equal(sse.ES.instances.length, 5);
  assert.equal(sse.fetch.to("/poll").length, 0);
  sse.client.close();
});

// ---- SSE ---------------------------------------------------------------------------

test("sse: messages in order, each seq once, a gap is a resync; presence; the URL carries tenant and presence=off", async () => {
  const t = setup({ transport: "sse", tenant: "acme", presence: false });
  await settle();
  const es = t.ES.last;
  assert.equal(es.url.searchParams.get("tenant"), "acme");
  assert.equal(es.url.searchParams.get("presence"), "off");
  es.accept({ seq: 2, presence: { count: 2, users: [{ user: "alice", info: {} }, { user: "bob", info: { c: 1 } }] } });
  assert.deepEqual([...t.client.presence.keys()], ["alice", "bob"]);
  es.message(3);
  es.message(3);
  es.message(2);
  es.message(4);
  es.message(6);
  es.event("presence", { type: "presence", op: "leave", user: "bob", info: {} });
  es.event("message", { type: "message", ephemeral: true, event: "cursor", data: { x: 1 }, from: { user: "bob", conn: "c_b" }, ts: 0 });
  es.event("ping", "{}"); // an event type the client does not know is ignored
  assert.deepEqual(t.log.messages.map((m) => m.seq ?? "eph"), [3, 4, 6, "eph"]);
  assert.deepEqual(t.log.resyncs.map((r) => [r.reason, r.missed]), [["gap", { from: 5, to: 5 }]]);
  assert.deepEqual([...t.client.presence.keys()], ["alice"]);
  assert.deepEqual(t.log.errors, []);
  t.client.close();
});

test("sse: a lost stream reconnects with a fresh token and resumes; the replay fills in without duplicates", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.accept({ seq: 1 });
  t.ES.last.message(2);
  t.ES.last.fail();
  assert.ok(t.ES.instances[0].closed, "the client closes it rather than letting it retry with the old URL");
  assert.equal(t.client.state, "reconnecting");
  await t.clock.advance(250);
  const es2 = t.ES.last;
  assert.equal(t.ES.instances.length, 2);
  assert.equal(es2.url.searchParams.get("since"), "2");
  assert.equal(es2.url.searchParams.get("access_token"), jwt("alice", 2));
  es2.accept({ seq: 4, resume: { requested: true, recovered: true, replayed: 2 } });
  es2.message(2);
  es2.message(3);
  es2.message(4);
  assert.deepEqual(t.log.messages.map((m) => m.seq), [2, 3, 4]);
  assert.deepEqual(t.log.resyncs, []);
  t.client.close();
});

test("sse: event close with 4001 gets a fresh token; 4009 backs off and resumes; 4403 stops", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.accept();
  t.ES.last.serverClose(4001, "token_expired");
  await retry(t);
  assert.deepEqual(t.tokens.map((x) => x.reason), ["connect", "expired"]);
  t.ES.last.accept();
  t.ES.last.serverClose(4009, "too_slow");
  assert.equal(t.client.state, "reconnecting");
  await retry(t);
  assert.equal(t.ES.instances.length, 3);
  t.ES.last.accept();
  t.ES.last.serverClose(4403, "disconnected");
  assert.equal(t.client.state, "closed");
  assert.equal(t.log.errors.at(-1).fatal, true);
});

test("sse: an error frame (event: error) is a frame, not a stream failure; token_expired refreshes", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.accept();
  t.ES.last.event("error", { type: "error", code: "token_expired", message: "the token has expired" });
  assert.equal(t.client.state, "reconnecting");
  await retry(t);
  assert.deepEqual(t.tokens.map((x) => x.reason), ["connect", "expired"]);
  assert.deepEqual(t.log.errors.map((e) => e.code), ["token_expired"]);
  t.client.close();
});

test("sse: a stream refused over HTTP is asked about with fetch; a §4 refusal is handled like §10 — even with auto", async () => {
  // forbidden → stop, with auto: no fallback to long-poll.
  const t = setup();
  const es = await toSse(t);
  es.refuse();
  assert.ok(es.closed, "no retries of its own");
  const probe = t.fetch.open("/events")[0];
  assert.ok(probe, "the client asked why");
  assert.equal(probe.url.href, es.url.href);
  assert.equal(probe.headers.Accept, "text/event-stream");
  probe.respond(403, { error: { code: "forbidden", message: 'no "read" permission on room lobby' } });
  await settle();
  assert.equal(t.client.state, "closed");
  assert.deepEqual([t.log.errors.at(-1).code, t.log.errors.at(-1).fatal, t.log.errors.at(-1).closeCode], ["forbidden", true, 4403]);
  assert.equal(t.fetch.to("/poll").length, 0);

  // token_expired → one fresh token; refused again → stop with token_expired.
  const u = setup({ transport: "sse" });
  await settle();
  for (let i = 0; i < 2; i++) {
    if (i > 0) await retry(u);
    u.ES.last.refuse();
    u.fetch.open("/events")[0].respond(401, { error: { code: "token_expired", message: "the token has expired; get a fresh one" } });
    await settle();
  }
  assert.deepEqual(u.tokens.map((x) => x.reason), ["connect", "expired"]);
  assert.equal(u.client.state, "closed");
  assert.equal(u.log.errors.at(-1).code, "token_expired");

  // too_many_connections → retried on SSE with backoff.
  const v = setup({ transport: "sse" });
  await settle();
  v.ES.last.refuse();
  v.fetch.open("/events")[0].respond(429, { error: { code: "too_many_connections", message: "too many" } });
  await settle();
  assert.equal(v.client.state, "reconnecting");
  await retry(v);
  assert.equal(v.ES.instances.length, 2);
  v.client.close();
});

test("sse: a refusal that is not ours (a proxy's 403, a server without the route) is a failure to open", async () => {
  const t = setup({ fallbackAfter: 1 });
  await settle();
  t.WS.last.fail();
  await t.clock.advance(0);
  t.ES.last.refuse();
  t.fetch.open("/events")[0].respond(403, "<html>Blocked by policy</html>");
  await settle();
  await t.clock.advance(0);
  assert.equal(t.client.transport, "longpoll");
  // A probe that finds the stream working aborts it and counts as a passing failure.
  const u = setup({ transport: "sse" });
  await settle();
  u.ES.last.refuse();
  const probe = u.fetch.open("/events")[0];
  probe.respond(200, "");
  await settle();
  assert.equal(u.client.state, "reconnecting");
  t.client.close();
  u.client.close();
});

test("sse: the npm eventsource package's error status is used for the probe's decision", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.refuse({ code: 401, message: "Non-200 status code (401)" });
  assert.equal(t.fetch.open("/events").length, 1, "the body says which refusal it is");
  t.client.close();
});

test("sse: no welcome within connectTimeoutMs is a failed attempt", async () => {
  const t = setup({ transport: "sse", connectTimeoutMs: 5000 });
  await settle();
  t.ES.last.event("open", "");
  await t.clock.advance(5000);
  assert.equal(t.client.state, "reconnecting");
  assert.ok(t.ES.instances[0].closed);
  t.client.close();
});

test("auto: a proxy that buffers the event stream (opened, but no welcome in time) twice → long-poll", async () => {
  const t = setup({ connectTimeoutMs: 3000 });
  const es = await toSse(t);
  es.event("open", "");
  await t.clock.advance(3000);
  await t.clock.advance(500);
  t.ES.last.event("open", "");
  await t.clock.advance(3000);
  await t.clock.advance(0);
  assert.equal(t.client.transport, "longpoll");
  assert.deepEqual(t.switches, ["websocket→sse", "sse→longpoll"]);
  assert.ok(t.ES.instances.every((x) => x.closed));
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 0, [], false));
  await settle();
  assert.equal(t.client.state, "open");
  t.client.close();
});

// ---- HTTP publish --------------------------------------------------------------------

test("http publish: waits for the stream to open, posts the frame without type with the Bearer token, resolves with seq", async () => {
  const t = setup({ transport: "sse" });
  const p = t.client.publish("chat", { text: "hi" }, { id: "p1" });
  await settle();
  assert.equal(t.fetch.to("/publish").length, 0, "not before the stream is open");
  t.ES.last.accept({ seq: 4 });
  await settle();
  const [post] = t.fetch.open("/publish");
  assert.equal(post.method, "POST");
  assert.equal(post.url.href, "https://rooms.test/v1/rooms/lobby/publish");
  assert.equal(post.headers.Authorization, `Bearer ${jwt("alice", 1)}`);
  assert.equal(post.headers["Content-Type"], "application/json");
  assert.deepEqual(post.json(), { id: "p1", event: "chat", data: { text: "hi" }, echo: false, conn: "c_sse0" }, "with the stream's connection id");
  post.respond(200, { seq: 5, duplicate: false });
  assert.deepEqual(await p, { id: "p1", seq: 5, duplicate: false });
  // Were our own message to come back on the stream: not delivered (no echo), and no gap after it.
  t.ES.last.message(5, { id: "p1", from: { user: "alice", conn: "c_sse0" } });
  t.ES.last.message(6);
  assert.deepEqual(t.log.messages.map((m) => m.seq), [6]);
  assert.deepEqual(t.log.resyncs, []);
  t.client.close();
});

test("http publish: one at a time, in order; the tenant is passed", async () => {
  const t = setup({ transport: "sse", tenant: "acme" });
  await settle();
  t.ES.last.accept();
  const a = t.client.publish("chat", 1, { id: "a" });
  const b = t.client.publish("chat", 2, { id: "b" });
  await settle();
  assert.deepEqual(t.fetch.open("/publish").map((c) => c.json().id), ["a"]);
  assert.equal(t.fetch.open("/publish")[0].url.search, "?tenant=acme");
  t.fetch.open("/publish")[0].respond(200, { seq: 1, duplicate: false });
  await settle();
  assert.deepEqual(t.fetch.open("/publish").map((c) => c.json().id), ["b"]);
  t.fetch.open("/publish")[0].respond(200, { seq: 2, duplicate: false });
  assert.deepEqual([(await a).seq, (await b).seq], [1, 2]);
  assert.equal(t.client.seq, 2);
  t.client.close();
});

test("http publish: a network failure re-posts the same id after backoff; the duplicate answer resolves it once", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.accept();
  const p = t.client.publish("chat", { n: 1 });
  await settle();
  const first = t.fetch.open("/publish")[0];
  const id = first.json().id;
  first.fail("socket hang up");
  await settle();
  assert.equal(t.fetch.open("/publish").length, 0, "waits out the backoff");
  await t.clock.advance(250);
  const second = t.fetch.open("/publish")[0];
  assert.equal(second.json().id, id, "the same id");
  second.respond(200, { seq: 1, duplicate: true });
  assert.deepEqual(await p, { id, seq: 1, duplicate: true });
  assert.equal(t.fetch.to("/publish").length, 2);
  t.client.close();
});

test("http publish: a timeout aborts the request and re-posts the same id", async () => {
  const t = setup({ transport: "sse", connectTimeoutMs: 3000 });
  await settle();
  t.ES.last.accept();
  const p = t.client.publish("chat", null, { id: "slow" });
  await settle();
  await t.clock.advance(3000);
  assert.ok(t.fetch.to("/publish")[0].aborted);
  await t.clock.advance(250);
  t.fetch.open("/publish")[0].respond(200, { seq: 1, duplicate: false });
  assert.equal((await p).seq, 1);
  t.client.close();
});

test("http publish: its own message on the stream before the answer settles it; the late answer changes nothing", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.accept();
  const p = t.client.publish("chat", {}, { id: "early" });
  await settle();
  t.ES.last.message(1, { id: "early", from: { user: "alice", conn: "h_1" } });
  assert.deepEqual(await p, { id: "early", seq: 1, duplicate: false });
  assert.deepEqual(t.log.messages, [], "not echoed");
  t.fetch.open("/publish")[0].respond(200, { seq: 1, duplicate: false });
  await settle();
  assert.equal(t.fetch.to("/publish").length, 1);
  // Someone else's message with an id we never posted is theirs.
  const q = t.client.publish("chat", {}, { id: "mine" });
  await settle();
  t.ES.last.message(2, { id: "other", from: { user: "bob", conn: "c_b" } });
  assert.deepEqual(t.log.messages.map((m) => m.id), ["other"]);
  t.fetch.open("/publish")[0].respond(200, { seq: 3, duplicate: false });
  assert.equal((await q).seq, 3);
  t.client.close();
});

test("http publish: a stream lost while a publish is posted lets the answer count; nothing is posted twice", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.accept();
  const p = t.client.publish("chat", {}, { id: "x" });
  await settle();
  t.ES.last.fail();
  t.fetch.open("/publish")[0].respond(200, { seq: 1, duplicate: false });
  assert.equal((await p).seq, 1);
  await t.clock.advance(250);
  t.ES.last.accept({ seq: 1, resume: { requested: true, recovered: true, replayed: 0 } });
  await settle();
  assert.equal(t.fetch.to("/publish").length, 1);
  t.client.close();
});

test("http publish with echo: delivered once when the stream brings it, after or before the answer", async () => {
  const t = setup({ transport: "sse", echo: true });
  await settle();
  t.ES.last.accept();
  const a = t.client.publish("chat", {}, { id: "a" });
  await settle();
  t.fetch.open("/publish")[0].respond(200, { seq: 1, duplicate: false });
  await a;
  t.ES.last.message(1, { id: "a", from: { user: "alice", conn: "h" } });
  const b = t.client.publish("chat", {}, { id: "b" });
  await settle();
  t.ES.last.message(2, { id: "b", from: { user: "alice", conn: "h" } });
  await b;
  t.fetch.open("/publish")[0].respond(200, { seq: 2, duplicate: false });
  await settle();
  t.ES.last.message(2, { id: "b", from: { user: "alice", conn: "h" } });
  assert.deepEqual(t.log.messages.map((m) => m.id), ["a", "b"]);
  t.client.close();
});

test("http publish: 429 rate_limited waits retry_after_ms (or Retry-After), then re-posts the same id", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.accept();
  const p = t.client.publish("chat", {}, { id: "r" });
  await settle();
  t.fetch.open("/publish")[0].respond(429, { error: { code: "rate_limited", message: "slow down", retry_after_ms: 700 } }, { "Retry-After": "1" });
  await t.clock.advance(699);
  assert.equal(t.fetch.open("/publish").length, 0);
  await t.clock.advance(1);
  assert.equal(t.fetch.open("/publish")[0].json().id, "r");
  t.fetch.open("/publish")[0].respond(429, "Too Many Requests", { "Retry-After": "2" });
  await t.clock.advance(1999);
  assert.equal(t.fetch.open("/publish").length, 0);
  await t.clock.advance(1);
  t.fetch.open("/publish")[0].respond(200, { seq: 1, duplicate: false });
  assert.equal((await p).seq, 1);
  t.client.close();
});

test("http publish: 401 keeps the publish, reconnects the stream with a fresh token, and re-posts with it", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.accept();
  const p = t.client.publish("chat", {}, { id: "e" });
  await settle();
  t.fetch.open("/publish")[0].respond(401, { error: { code: "token_expired", message: "expired" } });
  await settle();
  assert.equal(t.client.state, "reconnecting");
  await retry(t);
  assert.deepEqual(t.tokens.map((x) => x.reason), ["connect", "expired"]);
  t.ES.last.accept();
  await settle();
  const again = t.fetch.open("/publish")[0];
  assert.equal(tokenOf(again), jwt("alice", 2));
  assert.equal(again.json().id, "e");
  again.respond(200, { seq: 1, duplicate: false });
  assert.equal((await p).seq, 1);
  t.client.close();
});

test("http publish: forbidden and too_large reject that publish only; internal is retried maxRetries times; 503 is retried", async () => {
  const t = setup({ transport: "sse", maxRetries: 2 });
  await settle();
  t.ES.last.accept();
  const f = t.client.publish("chat", {}, { id: "f" });
  await settle();
  t.fetch.open("/publish")[0].respond(403, { error: { code: "forbidden", message: 'no "write" permission' } });
  await assert.rejects(f, (e) => e.code === "forbidden" && e.status === 403 && e.id === "f");
  const i = assert.rejects(t.client.publish("chat", {}, { id: "i" }), (e) => e.code === "internal");
  for (let n = 0; n < 3; n++) {
    await settle();
    t.fetch.open("/publish")[0].respond(500, { error: { code: "internal", message: "boom" } });
    await t.clock.advance(10_000);
  }
  await i;
  const g = t.client.publish("chat", {}, { id: "g" });
  for (let n = 0; n < 6; n++) {
    await settle();
    t.fetch.open("/publish")[0].respond(503, "Service Unavailable");
    await t.clock.advance(10_000);
  }
  t.fetch.open("/publish")[0].respond(200, { seq: 1, duplicate: false });
  assert.equal((await g).seq, 1);
  assert.equal(t.client.state, "open", "the stream was never touched");
  t.client.close();
});

test("http publish: close() aborts the request under way and rejects pending publishes", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  t.ES.last.accept();
  const p = t.client.publish("chat", {});
  await settle();
  t.client.close();
  await assert.rejects(p, (e) => e.code === "closed");
  assert.ok(t.fetch.to("/publish")[0].aborted);
});

// ---- signals over HTTP ---------------------------------------------------------------

test("http signal: posted as an ephemeral publish; its echo-less return is dropped; a few at once; 429 pauses", async () => {
  const t = setup({ transport: "sse" });
  await settle();
  assert.equal(t.client.signal("cursor", { x: 1 }), false, "not open: dropped");
  t.ES.last.accept();
  assert.equal(t.client.signal("cursor", { x: 1 }, { key: "k" }), true);
  const [s] = t.fetch.open("/publish");
  const body = s.json();
  assert.equal(body.ephemeral, true);
  assert.equal(body.key, "k");
  assert.equal(body.type, undefined);
  assert.match(body.id, /^sig\./);
  t.ES.last.event("message", { type: "message", ephemeral: true, id: body.id, event: "cursor", data: { x: 1 }, from: { user: "alice", conn: "h" }, ts: 0 });
  assert.deepEqual(t.log.messages, [], "our own signal is not delivered back");
  for (let n = 0; n < 3; n++) assert.equal(t.client.signal("cursor", { n }), true);
  assert.equal(t.client.signal("cursor", {}), false, "at most four in flight");
  for (const c of t.fetch.open("/publish")) c.respond(200, { ephemeral: true, delivered: 1 });
  await settle();
  assert.equal(t.client.signal("cursor", {}), true);
  t.fetch.open("/publish")[0].respond(429, { error: { code: "rate_limited", message: "slow", retry_after_ms: 300 } });
  await settle();
  assert.equal(t.client.signal("cursor", {}), false, "paused");
  await t.clock.advance(300);
  assert.equal(t.client.signal("cursor", {}), true);
  t.client.close();
});

// ---- long-poll -------------------------------------------------------------------------

test("longpoll: the first answer stands for welcome (1 s hold), then polls of pollTimeoutSecs from the last seq", async () => {
  const t = setup({ transport: "longpoll", pollTimeoutSecs: 20, tenant: "acme" });
  await settle();
  const first = t.fetch.open("/poll")[0];
  assert.equal(first.url.pathname, "/v1/rooms/lobby/poll");
  assert.deepEqual(Object.fromEntries(first.url.searchParams), { since: "0", tenant: "acme", timeout: "1" });
  assert.equal(tokenOf(first), jwt("alice", 1), "the token in the Authorization header");
  assert.equal(t.client.state, "connecting");
  first.respond(200, poll("e_1", 3, [msg(1), msg(2), msg(3)]));
  await settle();
  assert.equal(t.client.state, "open");
  assert.equal(t.client.transport, "longpoll");
  assert.equal(t.client.seq, 3);
  assert.equal(t.client.user, "alice", "from the token's sub");
  assert.deepEqual(t.log.messages, [], "what came before this client is not delivered, as after a welcome");
  assert.deepEqual(t.log.welcomes, []);
  const second = t.fetch.open("/poll")[0];
  assert.deepEqual(Object.fromEntries(second.url.searchParams), { since: "3", epoch: "e_1", tenant: "acme", timeout: "20" });
  second.respond(200, poll("e_1", 5, [msg(4), msg(5)]));
  await settle();
  const third = t.fetch.open("/poll")[0];
  assert.equal(third.url.searchParams.get("since"), "5");
  third.respond(200, poll("e_1", 5));
  await settle();
  assert.equal(t.fetch.open("/poll")[0].url.searchParams.get("since"), "5");
  assert.deepEqual(t.log.messages.map((m) => m.seq), [4, 5]);
  t.client.close();
  assert.ok(t.fetch.to("/poll").at(-1).aborted, "close() aborts the poll under way");
});

test("longpoll: duplicates dropped, a gap and recovered:false are resyncs, an epoch change too", async () => {
  const t = setup({ transport: "longpoll" });
  await settle();
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 0));
  await settle();
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 3, [msg(1), msg(1), msg(3)]));
  await settle();
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 900, [], false));
  await settle();
  assert.equal(t.fetch.open("/poll")[0].url.searchParams.get("since"), "900");
  t.fetch.open("/poll")[0].respond(200, poll("e_2", 4, [], false));
  await settle();
  assert.equal(t.fetch.open("/poll")[0].url.searchParams.get("epoch"), "e_2");
  assert.deepEqual(t.log.messages.map((m) => m.seq), [1, 3]);
  assert.deepEqual(t.log.resyncs.map((r) => r.reason), ["gap", "not_recovered", "epoch_changed"]);
  t.client.close();
});

test("longpoll: a failed poll reconnects with backoff and resumes (1 s hold again); recovered fills in", async () => {
  const t = setup({ transport: "longpoll" });
  await settle();
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 2));
  await settle();
  t.fetch.open("/poll")[0].fail("ECONNRESET");
  await settle();
  assert.equal(t.client.state, "reconnecting");
  await t.clock.advance(250);
  const resume = t.fetch.open("/poll")[0];
  assert.deepEqual(Object.fromEntries(resume.url.searchParams), { since: "2", epoch: "e_1", timeout: "1" });
  assert.equal(tokenOf(resume), jwt("alice", 2), "a token per attempt");
  resume.respond(200, poll("e_1", 4, [msg(3), msg(4)]));
  await settle();
  assert.equal(t.client.state, "open");
  assert.deepEqual(t.log.messages.map((m) => m.seq), [3, 4]);
  assert.deepEqual(t.log.resyncs, []);
  t.client.close();
});

test("longpoll: a poll that hangs past its hold is aborted and retried", async () => {
  const t = setup({ transport: "longpoll", pollTimeoutSecs: 10, connectTimeoutMs: 5000 });
  await settle();
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 0));
  await settle();
  await t.clock.advance(15_000);
  assert.ok(t.fetch.to("/poll")[1].aborted);
  assert.equal(t.client.state, "reconnecting");
  t.client.close();
});

test("longpoll: refusals — 401 refreshes the token once, 403 forbidden stops, 429 too_many_connections backs off", async () => {
  const t = setup({ transport: "longpoll" });
  await settle();
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 0));
  await settle();
  t.fetch.open("/poll")[0].respond(401, { error: { code: "token_expired", message: "expired" } });
  await settle();
  await retry(t);
  assert.deepEqual(t.tokens.map((x) => x.reason), ["connect", "expired"]);
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 0));
  await settle();
  t.fetch.open("/poll")[0].respond(429, { error: { code: "too_many_connections", message: "too many" } });
  await settle();
  assert.equal(t.client.state, "reconnecting");
  await retry(t);
  t.fetch.open("/poll")[0].respond(403, { error: { code: "forbidden", message: "no read" } });
  await settle();
  assert.equal(t.client.state, "closed");
  assert.deepEqual([t.log.errors.at(-1).code, t.log.errors.at(-1).fatal], ["forbidden", true]);
});

test("longpoll: publishes go over HTTP, exactly once, and own messages in later polls are not delivered", async () => {
  const t = setup();
  await toLongPoll(t);
  const p = t.client.publish("chat", { text: "hi" }, { id: "lp1" });
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 0));
  await settle();
  const post = t.fetch.open("/publish")[0];
  assert.deepEqual(post.json(), { id: "lp1", event: "chat", data: { text: "hi" }, echo: false });
  // The next poll brings it before the publish is answered: it settles the publish.
  t.fetch.open("/poll")[0].respond(200, poll("e_1", 2, [msg(1, { id: "lp1", from: { user: "alice", conn: "h" } }), msg(2)]));
  assert.deepEqual(await p, { id: "lp1", seq: 1, duplicate: false });
  post.respond(200, { seq: 1, duplicate: false });
  await settle();
  assert.deepEqual(t.log.messages.map((m) => m.seq), [2]);
  assert.equal(t.fetch.to("/publish").length, 1);
  t.client.close();
});

test("longpoll: a refusal before the first answer is an answer with auto too (no fallback, no wrap-around)", async () => {
  const t = setup({ WebSocket: undefined, EventSource: undefined, transport: "longpoll" });
  await settle();
  t.fetch.open("/poll")[0].respond(403, { error: { code: "origin_not_allowed", message: "origin" } });
  await settle();
  assert.equal(t.client.state, "closed");
  assert.equal(t.log.errors.at(-1).code, "origin_not_allowed");
});
