// The client against a fake WebSocket and a fake clock: every timer runs only when a
// test advances the clock, so these run in milliseconds and never sleep.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Roomcast, RoomcastError } from "../dist/index.js";
import { FakeClock, socketClass, settle, record, msg } from "./fakes.mjs";

function setup(options = {}) {
  const clock = new FakeClock();
  const WS = socketClass();
  const tokens = [];
  const client = new Roomcast({
    url: "ws://rooms.test",
    room: "lobby",
    token: (ctx) => {
      tokens.push(ctx);
      return `tok${tokens.length}`;
    },
    transport: "websocket", // "auto" (the default) is tested in transports.test.mjs
    WebSocket: WS,
    timers: clock,
    random: () => 0.5,
    ...options,
  });
  const log = record(client);
  return { clock, WS, client, log, tokens };
}

const ack = (id, seq, duplicate = false) => ({ type: "ack", id, seq, duplicate });
const delays = (log) => log.details.filter((d) => d.state === "reconnecting" && d.delayMs !== undefined).map((d) => d.delayMs);

// ---- connecting and state ----------------------------------------------------------

test("connects with the token in the subprotocol list and walks connecting → open → reconnecting → open → closed", async () => {
  const { clock, WS, client, log, tokens } = setup();
  assert.equal(client.state, "connecting");
  await settle();
  assert.equal(WS.instances.length, 1);
  const s1 = WS.last;
  assert.deepEqual(s1.protocols, ["roomcast.v1", "roomcast.bearer.tok1"]);
  assert.equal(s1.url.href, "ws://rooms.test/v1/rooms/lobby/ws");
  s1.accept({ seq: 5 });
  assert.equal(client.state, "open");
  assert.equal(client.epoch, "e_1");
  assert.equal(client.seq, 5);
  assert.equal(client.connectionId, "c_0");

  s1.serverClose(1006);
  assert.equal(client.state, "reconnecting");
  assert.deepEqual(log.details.at(-1), { code: 1006, reason: "closed", delayMs: 250, state: "reconnecting", previous: "open", attempt: 1, transport: "websocket" });
  await clock.advance(249);
  assert.equal(WS.instances.length, 1, "waits out the backoff");
  await clock.advance(1);
  assert.equal(WS.instances.length, 2);
  const s2 = WS.last;
  assert.equal(s2.url.search, "?since=5&epoch=e_1", "resumes from what it saw");
  assert.deepEqual(s2.protocols, ["roomcast.v1", "roomcast.bearer.tok2"]);
  assert.deepEqual(tokens.map((t) => t.reason), ["connect", "reconnect"], "a token per attempt");
  s2.accept({ seq: 5, resume: { requested: true, recovered: true, replayed: 0 } });

  client.close();
  assert.deepEqual(s2.closeCalls, [[1000, "client closed"]]);
  assert.deepEqual(log.states, ["connecting", "open", "reconnecting", "open", "closed"]);
  await clock.advance(120_000);
  assert.equal(WS.instances.length, 2, "nothing after close()");
  assert.deepEqual(log.errors, []);
  assert.deepEqual(clock.pending(), [], "no timer left behind");
});

test("url: http(s) becomes ws(s), a path prefix is kept, a provider is called per attempt, tenant is passed", async () => {
  let calls = 0;
  const { WS } = setup({ url: () => (++calls, "https://edge.test/rc/"), tenant: "acme", room: "doc:1" });
  await settle();
  assert.equal(WS.last.url.href, "wss://edge.test/rc/v1/rooms/doc:1/ws?tenant=acme");
  assert.equal(calls, 1);
  assert.throws(() => new Roomcast({ url: "ws://x", room: "bad room", token: "t", WebSocket: WS }), TypeError);
  assert.throws(() => new Roomcast({ url: "ws://x", room: "r", WebSocket: WS }), TypeError);
});

test("presence: false asks for no join/leave frames; the default sends nothing", async () => {
  const { WS } = setup({ presence: false });
  await settle();
  assert.equal(WS.last.url.search, "?presence=off");
  const d = setup({});
  await settle();
  assert.equal(d.WS.last.url.search, "");
});

test("an initial resume position is sent on the first connection", async () => {
  const { WS } = setup({ resume: { epoch: "e_9", seq: 42 } });
  await settle();
  assert.equal(WS.last.url.search, "?since=42&epoch=e_9");
});

test("backoff grows with full jitter on consecutive failures, is capped, and resets after a stable connection", async () => {
  const { clock, WS, log } = setup({ random: () => 0.999999, backoff: { baseMs: 500, capMs: 4000, stableMs: 10_000 } });
  await settle();
  for (let i = 0; i < 5; i++) {
    WS.last.fail("connect ECONNREFUSED");
    await clock.advance(delays(log).at(-1));
  }
  assert.deepEqual(delays(log), [499, 999, 1999, 3999, 3999]);
  assert.equal(WS.instances.length, 6);
  // A connection that does not last does not reset the backoff…
  WS.last.accept();
  await clock.advance(9_999);
  WS.last.serverClose(1011);
  assert.equal(delays(log).at(-1), 3999);
  await clock.advance(3999);
  // …one that stays up for stableMs does.
  WS.last.accept();
  await clock.advance(10_000);
  WS.last.serverClose(4000);
  assert.equal(delays(log).at(-1), 499);
});

test("terminal close codes stop the client, emit a fatal error and reject pending publishes", async () => {
  for (const code of [4403, 4400, 1009]) {
    const { clock, WS, client, log } = setup();
    await settle();
    WS.last.accept();
    const p = client.publish("chat", { n: 1 });
    WS.last.serverClose(code, "go away");
    assert.equal(client.state, "closed", `after ${code}`);
    assert.equal(log.errors.length, 1);
    assert.equal(log.errors[0].fatal, true);
    assert.equal(log.errors[0].closeCode, code);
    assert.equal(log.details.at(-1).error, log.errors[0]);
    await assert.rejects(p, (e) => e instanceof RoomcastError && e.code === "closed");
    await assert.rejects(client.publish("chat", {}), { code: "closed" });
    await clock.advance(120_000);
    assert.equal(WS.instances.length, 1, `no reconnect after ${code}`);
  }
});

test("reconnectable close codes (1006, 1011, 4000, 4008, unsolicited 1000) reconnect", async () => {
  const { clock, WS, client, log } = setup();
  await settle();
  for (const code of [1006, 1011, 4000, 4008, 1000, 1001]) {
    WS.last.accept();
    const before = WS.instances.length;
    WS.last.serverClose(code);
    assert.equal(client.state, "reconnecting", `after ${code}`);
    await clock.advance(delays(log).at(-1));
    assert.equal(WS.instances.length, before + 1, `reconnected after ${code}`);
  }
});

test("close 4001 asks the token provider for a fresh token; with a fixed token it is terminal", async () => {
  const { clock, WS, client, tokens } = setup();
  await settle();
  WS.last.accept();
  WS.last.serverClose(4001, "token expired");
  assert.equal(client.state, "reconnecting");
  await clock.advance(250);
  assert.deepEqual(tokens.map((t) => t.reason), ["connect", "expired"]);
  assert.equal(WS.last.protocols[1], "roomcast.bearer.tok2");
  WS.last.accept();
  WS.last.serverClose(1006);
  await clock.advance(500);
  assert.equal(tokens.at(-1).reason, "reconnect", "back to normal after a successful connection");

  const fixed = setup({ token: "static-jwt" });
  await settle();
  assert.deepEqual(fixed.WS.last.protocols, ["roomcast.v1", "roomcast.bearer.static-jwt"]);
  fixed.WS.last.accept();
  fixed.WS.last.serverClose(4001);
  assert.equal(fixed.client.state, "closed");
  assert.equal(fixed.log.errors[0].closeCode, 4001);
});

test("a rejected upgrade reported with its HTTP status (ws): 401 refreshes, 403 stops, 429 retries", async () => {
  const a = setup();
  await settle();
  a.WS.last.fail("Unexpected server response: 401");
  await a.clock.advance(delays(a.log).at(-1));
  assert.equal(a.WS.instances.length, 2);
  assert.equal(a.tokens.at(-1).reason, "expired");
  a.WS.last.fail("Unexpected server response: 429");
  assert.equal(a.client.state, "reconnecting");
  a.WS.last.fail("Unexpected server response: 403"); // stale socket: ignored
  assert.equal(a.client.state, "reconnecting");
  await a.clock.advance(delays(a.log).at(-1));
  assert.equal(a.WS.instances.length, 3);
  a.WS.last.fail("Unexpected server response: 403");
  assert.equal(a.client.state, "closed");
  assert.equal(a.log.errors[0].status, 403);
  assert.equal(a.log.errors[0].fatal, true);
});

test("a token provider that throws is reported and retried with backoff", async () => {
  let n = 0;
  const { clock, WS, client, log } = setup({
    token: async () => {
      if (++n === 1) throw new Error("auth backend down");
      return "good";
    },
  });
  await settle();
  assert.equal(WS.instances.length, 0);
  assert.equal(client.state, "reconnecting");
  assert.equal(log.errors[0].code, "token_provider");
  assert.match(log.errors[0].message, /auth backend down/);
  await clock.advance(250);
  assert.equal(WS.instances.length, 1);
  WS.last.accept();
  assert.equal(client.state, "open");
});

test("a token provider that never answers is abandoned after connectTimeoutMs", async () => {
  let calls = 0;
  const { clock, WS, client, log } = setup({
    connectTimeoutMs: 1000,
    token: () => (++calls === 1 ? new Promise(() => {}) : "second"),
  });
  await clock.advance(999);
  assert.equal(client.state, "connecting");
  await clock.advance(1);
  assert.equal(client.state, "reconnecting");
  assert.equal(log.errors[0].code, "token_provider");
  await clock.advance(250);
  assert.deepEqual(WS.last.protocols, ["roomcast.v1", "roomcast.bearer.second"]);
  WS.last.accept();
  client.close();
  assert.deepEqual(clock.pending(), []);
});

test("no welcome within connectTimeoutMs: the attempt is abandoned and retried", async () => {
  const { clock, WS, client } = setup({ connectTimeoutMs: 1000 });
  await settle();
  await clock.advance(999);
  assert.equal(client.state, "connecting");
  await clock.advance(1);
  assert.equal(client.state, "reconnecting");
  assert.equal(WS.instances[0].terminated, true);
  await clock.advance(250);
  assert.equal(WS.instances.length, 2);
});

test("heartbeat: ping every interval; a missing pong declares the connection dead", async () => {
  const { clock, WS, client, log } = setup({ heartbeat: { intervalMs: 1000, timeoutMs: 300 } });
  await settle();
  const s1 = WS.last.accept();
  await clock.advance(1000);
  assert.equal(s1.pings(), 1);
  s1.receive("pong"); // plain text, not JSON
  await clock.advance(1000);
  assert.equal(s1.pings(), 2);
  await clock.advance(299);
  assert.equal(client.state, "open");
  await clock.advance(1);
  assert.equal(client.state, "reconnecting");
  assert.equal(s1.terminated, true, "a dead socket is dropped, not closed politely");
  assert.match(log.details.at(-1).reason, /pong/);
  assert.deepEqual(log.errors, [], "pong is not parsed as JSON");
  await clock.advance(250);
  WS.last.accept();
  assert.equal(client.state, "open");
});

test("reconnect() drops the connection and connects again at once", async () => {
  const { WS, client } = setup();
  await settle();
  WS.last.accept({ seq: 3 });
  client.reconnect();
  await settle();
  assert.equal(WS.instances.length, 2);
  assert.equal(WS.instances[0].terminated, true);
  assert.equal(WS.last.url.search, "?since=3&epoch=e_1");
});

// ---- outbox ------------------------------------------------------------------------

test("a publish made offline is sent after welcome and resolves with its ack", async () => {
  const { WS, client } = setup();
  const p = client.publish("chat", { text: "hi" }, { id: "a1" });
  assert.equal(client.pending, 1);
  await settle();
  assert.deepEqual(WS.last.sent, [], "nothing before welcome");
  WS.last.accept();
  assert.deepEqual(WS.last.publishes(), [{ type: "publish", id: "a1", event: "chat", data: { text: "hi" }, echo: false }]);
  WS.last.receive(ack("a1", 1));
  assert.deepEqual(await p, { id: "a1", seq: 1, duplicate: false });
  assert.equal(client.pending, 0);
});

test("ids default to random UUIDs; a custom generator and per-publish echo are honoured", async () => {
  const { WS, client } = setup({ generateId: () => "gen-1", echo: true });
  await settle();
  WS.last.accept();
  void client.publish("chat", 1);
  void client.publish("chat", 2, { id: "x", echo: false });
  assert.deepEqual(WS.last.publishes().map((f) => [f.id, f.echo]), [["gen-1", true], ["x", false]]);
  const plain = setup();
  await settle();
  plain.WS.last.accept();
  void plain.client.publish("chat");
  assert.match(plain.WS.last.publishes()[0].id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(plain.WS.last.publishes()[0].data, null);
});

test("publishes unanswered when the connection dies are re-sent with the same id and resolve once", async () => {
  const { clock, WS, client } = setup();
  await settle();
  const s1 = WS.last.accept();
  const results = [];
  const p1 = client.publish("chat", 1, { id: "u1" }).then((r) => results.push(r));
  const p2 = client.publish("chat", 2, { id: "u2" }).then((r) => results.push(r));
  s1.receive(ack("u1", 1));
  s1.serverClose(1006);
  await clock.advance(250);
  const s2 = WS.last;
  assert.equal(s2.url.search, "?since=1&epoch=e_1", "own acked publish counts as seen");
  s2.accept({ seq: 2, resume: { requested: true, recovered: true, replayed: 0 } });
  assert.deepEqual(s2.publishes().map((f) => f.id), ["u2"], "only the unanswered one, same id");
  s2.receive(ack("u2", 2, true));
  s2.receive(ack("u2", 2, true)); // a stray repeat changes nothing
  await Promise.all([p1, p2]);
  assert.deepEqual(results, [
    { id: "u1", seq: 1, duplicate: false },
    { id: "u2", seq: 2, duplicate: true },
  ]);
  assert.equal(client.pending, 0);
});

test("an own publish seen in the resume replay settles it and is not echoed", async () => {
  const { clock, WS, client, log } = setup();
  await settle();
  WS.last.accept();
  const p = client.publish("chat", 1, { id: "r1" });
  WS.last.serverClose(1006);
  await clock.advance(250);
  const s2 = WS.last;
  s2.accept({ seq: 1, resume: { requested: true, recovered: true, replayed: 1 } });
  s2.receive([msg(1, { id: "r1", from: { user: "alice", conn: "c_0" } })]);
  assert.deepEqual(await p, { id: "r1", seq: 1, duplicate: false });
  assert.deepEqual(log.messages, [], "echo is off");
  s2.receive(ack("r1", 1, true)); // the answer to the re-send
  s2.message(2);
  assert.deepEqual(log.messages.map((m) => m.seq), [2]);
  assert.deepEqual(log.resyncs, []);
});

test("the outbox is bounded: a clear error when full, room again once one resolves", async () => {
  const { WS, client } = setup({ maxOutbox: 3 });
  const ps = [1, 2, 3].map((i) => client.publish("chat", i, { id: `b${i}` }));
  await assert.rejects(client.publish("chat", 4, { id: "b4" }), (e) => e.code === "outbox_full" && /maxOutbox 3/.test(e.message));
  assert.equal(client.pending, 3);
  await settle();
  WS.last.accept();
  WS.last.receive(ack("b1", 1));
  await ps[0];
  const p4 = client.publish("chat", 4, { id: "b4" });
  WS.last.receive([ack("b2", 2), ack("b3", 3), ack("b4", 4)]);
  assert.deepEqual((await Promise.all([...ps, p4])).map((r) => r.seq), [1, 2, 3, 4]);
});

test("close() rejects every pending publish with `closed`, exactly once", async () => {
  const { WS, client } = setup();
  await settle();
  WS.last.accept();
  const outcomes = [];
  const ps = ["c1", "c2"].map((id) => client.publish("chat", {}, { id }).then(() => outcomes.push("ok"), (e) => outcomes.push(e.code)));
  client.close();
  WS.last.receive(ack("c1", 1)); // too late: the connection is gone
  await Promise.all(ps);
  assert.deepEqual(outcomes, ["closed", "closed"]);
  assert.equal(client.pending, 0);
});

test("non-retryable error frames reject that publish only; the socket stays open", async () => {
  const { WS, client } = setup();
  await settle();
  WS.last.accept();
  const bad = client.publish("chat", {}, { id: "f1" });
  const good = client.publish("chat", {}, { id: "f2" });
  WS.last.receive({ type: "error", id: "f1", code: "forbidden", message: "no write permission" });
  await assert.rejects(bad, (e) => e.code === "forbidden" && e.id === "f1" && e.message === "no write permission");
  WS.last.receive(ack("f2", 1));
  assert.equal((await good).seq, 1);
  assert.equal(client.state, "open");
});

test("an error without an id (too_large before parsing) is the oldest unanswered publish's", async () => {
  const { WS, client } = setup();
  await settle();
  WS.last.accept();
  const p1 = client.publish("chat", "big", { id: "t1" });
  const p2 = client.publish("chat", "small", { id: "t2" });
  WS.last.receive({ type: "error", code: "too_large", message: "message is 70000 bytes" });
  await assert.rejects(p1, { code: "too_large" });
  WS.last.receive(ack("t2", 1));
  assert.equal((await p2).seq, 1);
});

test("rate_limited: sending pauses for retry_after_ms, then the same publish is re-sent", async () => {
  const { clock, WS, client } = setup();
  await settle();
  const s = WS.last.accept();
  const p1 = client.publish("chat", 1, { id: "r1" });
  s.receive({ type: "error", id: "r1", code: "rate_limited", message: "slow down", retry_after_ms: 2000 });
  const p2 = client.publish("chat", 2, { id: "r2" });
  assert.deepEqual(s.publishes().map((f) => f.id), ["r1"], "paused");
  await clock.advance(1999);
  assert.deepEqual(s.publishes().map((f) => f.id), ["r1"]);
  await clock.advance(1);
  assert.deepEqual(s.publishes().map((f) => f.id), ["r1", "r1"], "the limited one first, same id, alone");
  s.receive(ack("r1", 1));
  assert.deepEqual(s.publishes().map((f) => f.id), ["r1", "r1", "r2"], "the window reopens with acks");
  s.receive(ack("r2", 2));
  assert.deepEqual([(await p1).seq, (await p2).seq], [1, 2]);
});

test("rate_limited shrinks the in-flight window to 1; it grows back by one per ack", async () => {
  const { clock, WS, client } = setup({ maxInFlight: 4 });
  await settle();
  const s = WS.last.accept();
  const ps = Array.from({ length: 12 }, (_, i) => client.publish("chat", i, { id: `q${i}` }));
  const limited = (id) => ({ type: "error", id, code: "rate_limited", message: "slow down", retry_after_ms: 50 });
  const sentIds = (from) => s.publishes().slice(from).map((f) => f.id);
  assert.deepEqual(sentIds(0), ["q0", "q1", "q2", "q3"]);
  s.receive([limited("q0"), ack("q1", 1), limited("q2"), limited("q3")]);
  assert.equal(s.publishes().length, 4, "nothing during the pause");
  await clock.advance(50);
  assert.deepEqual(sentIds(4), ["q0"], "one at a time after the pause");
  s.receive(ack("q0", 2));
  assert.deepEqual(sentIds(5), ["q2", "q3"], "window 2");
  s.receive([ack("q2", 3), ack("q3", 4)]);
  assert.deepEqual(sentIds(7), ["q4", "q5", "q6", "q7"], "window 4, the maximum");
  s.receive([ack("q4", 5), ack("q5", 6), ack("q6", 7), ack("q7", 8)]);
  assert.deepEqual(sentIds(11), ["q8", "q9", "q10", "q11"], "and it stays at the maximum");
  s.receive([ack("q8", 9), ack("q9", 10), ack("q10", 11), ack("q11", 12)]);
  assert.deepEqual((await Promise.all(ps)).map((r) => r.id), Array.from({ length: 12 }, (_, i) => `q${i}`));
  assert.equal(client.pending, 0);
});

test("token_expired on a publish: kept, and re-sent after the 4001 reconnect with a fresh token", async () => {
  const { clock, WS, client, tokens, log } = setup();
  await settle();
  const s1 = WS.last.accept();
  const p = client.publish("chat", {}, { id: "e1" });
  s1.receive({ type: "error", id: "e1", code: "token_expired", message: "expired" });
  // Acted on at once: the close event may trail the frame by seconds.
  assert.equal(client.state, "reconnecting");
  assert.equal(log.details.at(-1).code, 4001);
  assert.equal(s1.terminated, true);
  assert.deepEqual(log.errors.map((e) => [e.code, e.id, e.fatal]), [["token_expired", "e1", false]]);
  s1.serverClose(4001); // the late close event changes nothing
  await clock.advance(250);
  assert.equal(tokens.at(-1).reason, "expired");
  WS.last.accept({ resume: { requested: true, recovered: true, replayed: 0 } });
  assert.deepEqual(WS.last.publishes().map((f) => f.id), ["e1"]);
  WS.last.receive(ack("e1", 1));
  assert.equal((await p).seq, 1);
});

test("an idle socket told token_expired (no id) reconnects with a fresh token at once", async () => {
  const { clock, WS, client, tokens } = setup();
  await settle();
  WS.last.accept({ seq: 4 });
  WS.last.receive({ type: "error", code: "token_expired", message: "the token has expired" });
  assert.equal(client.state, "reconnecting");
  await clock.advance(250);
  assert.deepEqual(tokens.map((t) => t.reason), ["connect", "expired"]);
  assert.equal(WS.last.url.search, "?since=4&epoch=e_1");
});

test("internal errors are retried up to maxRetries, then rejected", async () => {
  const { clock, WS, client } = setup({ maxRetries: 2 });
  await settle();
  const s = WS.last.accept();
  const p = client.publish("chat", {}, { id: "i1" });
  const fail = () => s.receive({ type: "error", id: "i1", code: "internal", message: "internal error" });
  fail();
  await clock.advance(249);
  assert.equal(s.publishes().length, 1, "waits before retrying");
  await clock.advance(1);
  assert.equal(s.publishes().length, 2);
  fail();
  await clock.advance(500);
  assert.equal(s.publishes().length, 3);
  fail();
  await assert.rejects(p, { code: "internal" });
});

test("at most maxInFlight publishes are unanswered at once", async () => {
  const { WS, client } = setup({ maxInFlight: 2 });
  await settle();
  const s = WS.last.accept();
  const ps = [1, 2, 3, 4, 5].map((i) => client.publish("chat", i, { id: `w${i}` }));
  assert.deepEqual(s.publishes().map((f) => f.id), ["w1", "w2"]);
  s.receive(ack("w1", 1));
  assert.deepEqual(s.publishes().map((f) => f.id), ["w1", "w2", "w3"]);
  s.receive([ack("w2", 2), ack("w3", 3)]);
  assert.equal(s.publishes().length, 5);
  s.receive([ack("w4", 4), ack("w5", 5)]);
  assert.deepEqual((await Promise.all(ps)).map((r) => r.seq), [1, 2, 3, 4, 5]);
});

test("local checks: bad id, bad event, too large, not JSON; the same id twice shares one send", async () => {
  const { WS, client } = setup({ maxMessageBytes: 200 });
  await assert.rejects(client.publish("chat", {}, { id: "has space" }), { code: "invalid_id" });
  await assert.rejects(client.publish("", {}), { code: "invalid_id" });
  await assert.rejects(client.publish("x".repeat(65), {}), { code: "invalid_id" });
  await assert.rejects(client.publish("chat", "é".repeat(100)), { code: "too_large" });
  const loop = {};
  loop.self = loop;
  await assert.rejects(client.publish("chat", loop), { code: "bad_data" });
  assert.equal(client.pending, 0);
  const a = client.publish("chat", {}, { id: "same" });
  const b = client.publish("chat", {}, { id: "same" });
  await settle();
  WS.last.accept();
  assert.equal(WS.last.publishes().length, 1);
  WS.last.receive(ack("same", 7));
  assert.deepEqual([(await a).seq, (await b).seq], [7, 7]);
});

// ---- sequence, resume, resync ---------------------------------------------------------

test("messages: arrays and single frames, each seq at most once, a gap is reported as resync", async () => {
  const { WS, client, log } = setup();
  await settle();
  const s = WS.last.accept({ seq: 10 });
  s.receive([msg(11), msg(12)]);
  s.message(12);
  s.message(9);
  s.message(13);
  assert.deepEqual(log.messages.map((m) => m.seq), [11, 12, 13]);
  assert.deepEqual(log.resyncs, []);
  s.message(16);
  assert.deepEqual(log.resyncs, [{ reason: "gap", epoch: "e_1", seq: 16, previousEpoch: "e_1", previousSeq: 13, missed: { from: 14, to: 15 } }]);
  assert.deepEqual(log.messages.map((m) => m.seq), [11, 12, 13, 16]);
  assert.equal(client.seq, 16);
});

test("own publishes (not echoed) are accounted by their ack, so the next message is no gap", async () => {
  const { WS, client, log } = setup();
  await settle();
  const s = WS.last.accept({ seq: 0 });
  const p = client.publish("chat", {}, { id: "o1" });
  s.receive(ack("o1", 1));
  s.message(2);
  await p;
  assert.deepEqual(log.resyncs, []);
  assert.deepEqual(log.messages.map((m) => m.seq), [2]);
  assert.equal(client.seq, 2);
});

test("echo: own messages are delivered once, and the echo settles the publish", async () => {
  const { WS, client, log } = setup({ echo: true });
  await settle();
  const s = WS.last.accept();
  const p = client.publish("chat", { x: 1 }, { id: "me1" });
  s.message(1, { id: "me1", from: { user: "alice", conn: "c_0" } });
  s.receive(ack("me1", 1));
  assert.deepEqual(await p, { id: "me1", seq: 1, duplicate: false });
  assert.deepEqual(log.messages.map((m) => m.id), ["me1"]);
});

test("resume recovered: the replay fills in, duplicates are dropped, no resync", async () => {
  const { clock, WS, log } = setup();
  await settle();
  WS.last.accept({ seq: 3 });
  WS.last.message(4);
  WS.last.serverClose(1011);
  await clock.advance(250);
  const s2 = WS.last;
  assert.equal(s2.url.search, "?since=4&epoch=e_1");
  s2.accept({ seq: 6, resume: { requested: true, recovered: true, replayed: 2 } });
  s2.receive([msg(5), msg(6)]);
  s2.message(5);
  s2.message(7);
  assert.deepEqual(log.messages.map((m) => m.seq), [4, 5, 6, 7]);
  assert.deepEqual(log.resyncs, []);
});

test("resume not recovered: resync with the new epoch/seq (epoch_changed or not_recovered)", async () => {
  for (const [epoch, reason] of [["e_2", "epoch_changed"], ["e_1", "not_recovered"]]) {
    const { clock, WS, client, log } = setup();
    await settle();
    WS.last.accept({ seq: 3 });
    WS.last.message(4);
    WS.last.serverClose(1006);
    await clock.advance(250);
    WS.last.accept({ epoch, seq: 1500, resume: { requested: true, recovered: false, replayed: 0 } });
    assert.deepEqual(log.resyncs, [{ reason, epoch, seq: 1500, previousEpoch: "e_1", previousSeq: 4 }]);
    assert.equal(client.seq, 1500);
    assert.equal(client.epoch, epoch);
    WS.last.message(1501);
    assert.equal(log.resyncs.length, 1);
    assert.deepEqual(log.messages.map((m) => m.seq), [4, 1501]);
  }
});

test("presence: the welcome's snapshot, then joins and leaves", async () => {
  const { WS, client, log } = setup();
  await settle();
  const s = WS.last.accept({ presence: { count: 2, users: [{ user: "alice", info: {} }, { user: "bob", info: { name: "Bob" } }] } });
  s.receive({ type: "presence", op: "join", user: "carol", info: {} });
  s.receive({ type: "presence", op: "leave", user: "bob", info: { name: "Bob" } });
  assert.deepEqual(log.presence, [
    { op: "sync", count: 2, users: [{ user: "alice", info: {} }, { user: "bob", info: { name: "Bob" } }] },
    { op: "join", user: "carol", info: {} },
    { op: "leave", user: "bob", info: { name: "Bob" } },
  ]);
  assert.deepEqual([...client.presence.keys()], ["alice", "carol"]);
  assert.equal(client.user, "alice");
});

test("robustness: unknown frames ignored, non-JSON reported, a throwing listener does not break delivery", async () => {
  const { WS, client, log } = setup();
  await settle();
  const s = WS.last.accept();
  client.on("message", (m) => {
    if (m.seq === 1) throw new Error("boom");
  });
  s.receive({ type: "future-thing", x: 1 });
  s.receive("not json");
  s.message(1);
  s.message(2);
  assert.deepEqual(log.messages.map((m) => m.seq), [1, 2]);
  assert.deepEqual(log.errors.map((e) => e.code), ["bad_server_frame", "listener"]);
  assert.equal(client.state, "open");
});

test("frames before welcome and from an abandoned socket are ignored", async () => {
  const { clock, WS, log } = setup();
  await settle();
  const s1 = WS.last;
  s1.message(1);
  s1.accept();
  s1.serverClose(1006);
  s1.message(2);
  await clock.advance(250);
  assert.deepEqual(log.messages, []);
});

// ---- refusals a browser can see (docs/protocol.md §10) ---------------------------------

test("a token refused at upgrade is refreshed once; refused again, the client stops with token_expired", async () => {
  const { clock, WS, client, log, tokens } = setup();
  await settle();
  // Acted on at the error frame: the close that follows may trail it.
  WS.last.refuse("token_expired", 4001, { message: "the token has expired; get a fresh one", close: false });
  assert.equal(client.state, "reconnecting");
  assert.equal(WS.last.terminated, true);
  assert.deepEqual(log.errors.map((e) => [e.code, e.fatal, e.closeCode]), [["token_expired", false, 4001]]);
  WS.last.serverClose(4001, "token_expired"); // the late close changes nothing
  await clock.advance(delays(log).at(-1));
  assert.equal(WS.instances.length, 2);
  assert.deepEqual(tokens.map((t) => t.reason), ["connect", "expired"]);
  WS.last.refuse("token_expired", 4001, { message: "the token has expired; get a fresh one" });
  assert.equal(client.state, "closed");
  const fatal = log.errors.at(-1);
  assert.deepEqual([fatal.code, fatal.fatal, fatal.closeCode, fatal.message], ["token_expired", true, 4001, "the token has expired; get a fresh one"]);
  assert.equal(log.details.at(-1).error, fatal);
  await clock.advance(600_000);
  assert.equal(WS.instances.length, 2, "no further attempts");
  assert.equal(tokens.length, 2, "the provider was asked exactly twice");
  assert.deepEqual(clock.pending(), []);
});

test("the second refusal's own code is reported (invalid_token), and a network failure in between does not reset the refresh", async () => {
  const { clock, WS, client, log, tokens } = setup();
  await settle();
  WS.last.refuse("token_expired", 4001);
  await clock.advance(delays(log).at(-1));
  WS.last.fail("connect ECONNREFUSED"); // the refreshed token was never judged
  await clock.advance(delays(log).at(-1));
  assert.deepEqual(tokens.map((t) => t.reason), ["connect", "expired", "expired"]);
  WS.last.refuse("invalid_token", 4001, { message: "bad signature" });
  assert.equal(client.state, "closed");
  assert.deepEqual([log.errors.at(-1).code, log.errors.at(-1).message, log.errors.at(-1).fatal], ["invalid_token", "bad signature", true]);
});

test("a refreshed token that was welcomed is refreshed again when it expires later", async () => {
  const { clock, WS, client, log, tokens } = setup();
  await settle();
  WS.last.refuse("token_expired", 4001);
  await clock.advance(delays(log).at(-1));
  WS.last.accept();
  WS.last.receive({ type: "error", code: "token_expired", message: "expired" });
  WS.last.serverClose(4001);
  assert.equal(client.state, "reconnecting");
  await clock.advance(delays(log).at(-1));
  assert.deepEqual(tokens.map((t) => t.reason), ["connect", "expired", "expired"]);
  WS.last.accept();
  assert.equal(client.state, "open");
  assert.ok(log.errors.every((e) => !e.fatal));
});

test("HTTP 401 at upgrade (older servers, seen with ws) twice: the same single refresh, then token_expired", async () => {
  const { clock, WS, client, log, tokens } = setup();
  await settle();
  WS.last.fail("Unexpected server response: 401");
  await clock.advance(delays(log).at(-1));
  WS.last.fail("Unexpected server response: 401");
  assert.equal(client.state, "closed");
  assert.deepEqual([log.errors.at(-1).code, log.errors.at(-1).status, log.errors.at(-1).fatal], ["token_expired", 401, true]);
  assert.equal(tokens.length, 2);
});

test("4403 refusals (forbidden, origin_not_allowed) and 4400 (bad_room, bad_request) stop at once with the frame's code and message", async () => {
  for (const [code, closeCode] of [["forbidden", 4403], ["origin_not_allowed", 4403], ["bad_room", 4400], ["bad_request", 4400]]) {
    const { clock, WS, client, log, tokens } = setup();
    const p = client.publish("chat", {});
    await settle();
    WS.last.refuse(code, closeCode, { message: `why: ${code}` });
    assert.equal(client.state, "closed", code);
    assert.equal(log.errors.length, 1);
    assert.deepEqual([log.errors[0].code, log.errors[0].message, log.errors[0].fatal, log.errors[0].closeCode], [code, `why: ${code}`, true, closeCode]);
    await assert.rejects(p, { code: "closed" });
    await clock.advance(600_000);
    assert.equal(WS.instances.length, 1, `one attempt for ${code}`);
    assert.equal(tokens.length, 1);
  }
});

test("4029 too_many_connections is reported and retried with backoff", async () => {
  const { clock, WS, client, log } = setup({ random: () => 0.999999 });
  await settle();
  WS.last.refuse("too_many_connections", 4029, { message: "user has 10 sockets" });
  assert.equal(client.state, "reconnecting");
  assert.deepEqual(log.errors.map((e) => [e.code, e.message, e.fatal, e.closeCode]), [["too_many_connections", "user has 10 sockets", false, 4029]]);
  WS.last.serverClose(4029); // ignored: already handled
  await clock.advance(delays(log).at(-1));
  WS.last.refuse("too_many_connections", 4029);
  assert.deepEqual(delays(log), [499, 999], "backoff grows");
  await clock.advance(999);
  WS.last.accept();
  assert.equal(client.state, "open");
});

test("an error frame before welcome with an unknown code waits for the close, and names the error", async () => {
  const { clock, WS, client, log } = setup();
  await settle();
  WS.last.refuse("maintenance", 4400, { message: "down for maintenance", close: false });
  assert.equal(client.state, "connecting", "not acted on by itself");
  WS.last.serverClose(4400);
  assert.equal(client.state, "closed");
  assert.deepEqual([log.errors[0].code, log.errors[0].message, log.errors[0].closeCode], ["maintenance", "down for maintenance", 4400]);
  const retry = setup();
  await settle();
  retry.WS.last.refuse("overloaded", 1013, { message: "try later" });
  assert.equal(retry.client.state, "reconnecting");
  assert.deepEqual(retry.log.errors.map((e) => [e.code, e.fatal]), [["overloaded", false]]);
  void clock;
});

test("4009 (too slow) reconnects with backoff and resumes", async () => {
  const { clock, WS, client, log } = setup();
  await settle();
  WS.last.accept({ seq: 7 });
  WS.last.serverClose(4009, "too slow");
  assert.equal(client.state, "reconnecting");
  assert.equal(delays(log).at(-1), 250);
  await clock.advance(250);
  assert.equal(WS.last.url.search, "?since=7&epoch=e_1");
});

// ---- signals (ephemeral messages, contract v1.1 §B) ------------------------------------

test("signal: sent at once as an ephemeral publish, never queued, dropped while not open", async () => {
  const { clock, WS, client } = setup({ echo: true });
  assert.equal(client.signal("cursor", { x: 1 }), false, "connecting: dropped");
  await settle();
  const s1 = WS.last.accept();
  assert.deepEqual(s1.sent, [], "the dropped signal is not sent after welcome");
  assert.equal(client.signal("cursor", { x: 0.5, y: 0.25 }), true);
  assert.equal(client.signal("drag", null, { key: "shape-7", echo: false }), true);
  assert.equal(client.signal("typing"), true);
  const frames = s1.publishes();
  assert.equal(frames.length, 3);
  for (const f of frames) assert.match(f.id, /^sig\.[0-9a-f]{8}\.\d+$/);
  assert.equal(new Set(frames.map((f) => f.id)).size, 3, "distinct ids");
  assert.deepEqual(frames.map(({ id, ...f }) => f), [
    { type: "publish", ephemeral: true, event: "cursor", data: { x: 0.5, y: 0.25 }, echo: true },
    { type: "publish", ephemeral: true, event: "drag", data: null, echo: false, key: "shape-7" },
    { type: "publish", ephemeral: true, event: "typing", data: null, echo: true },
  ]);
  assert.equal(client.pending, 0, "not in the outbox");
  s1.serverClose(1006);
  assert.equal(client.signal("cursor", {}), false, "reconnecting: dropped");
  await clock.advance(250);
  WS.last.accept({ resume: { requested: true, recovered: true, replayed: 0 } });
  assert.deepEqual(WS.last.publishes(), [], "nothing re-sent after the reconnect");
  client.close();
  assert.equal(client.signal("cursor", {}), false, "closed: dropped");
});

test("signal: bad event, bad key, too large and non-JSON data throw", async () => {
  const { WS, client } = setup({ maxMessageBytes: 200 });
  await settle();
  WS.last.accept();
  assert.throws(() => client.signal(""), { code: "invalid_id" });
  assert.throws(() => client.signal("x".repeat(65)), { code: "invalid_id" });
  assert.throws(() => client.signal("cursor", {}, { key: "" }), { code: "invalid_id" });
  assert.throws(() => client.signal("cursor", {}, { key: "k".repeat(65) }), { code: "invalid_id" });
  assert.throws(() => client.signal("cursor", "é".repeat(100)), (e) => e instanceof RoomcastError && e.code === "too_large");
  const loop = {};
  loop.self = loop;
  assert.throws(() => client.signal("cursor", loop), { code: "bad_data" });
  assert.deepEqual(WS.last.sent, []);
});

test("incoming ephemeral messages are delivered as they come and never touch seq, de-dup or gap detection", async () => {
  const { WS, client, log } = setup();
  await settle();
  const s = WS.last.accept({ seq: 10 });
  const eph = (extra = {}) => ({ type: "message", ephemeral: true, event: "cursor", data: { x: 1 }, from: { user: "bob", conn: "c_bob" }, ts: 0, ...extra });
  s.receive(eph());
  s.receive([eph(), msg(11), eph({ id: "bob-1" })]);
  s.receive(eph({ id: "bob-1" })); // the same id twice is delivered twice (no dedup)
  s.message(12);
  assert.deepEqual(log.messages.map((m) => (m.ephemeral ? `e${m.id ? `:${m.id}` : ""}` : m.seq)), ["e", "e", 11, "e:bob-1", "e:bob-1", 12]);
  assert.deepEqual(log.resyncs, []);
  assert.equal(client.seq, 12);
});

test("signal answers: an ephemeral ack settles nothing else; an id-less error goes to the older of signal and publish", async () => {
  const { WS, client, log } = setup();
  await settle();
  const s = WS.last.accept();
  client.signal("cursor", {});
  const sigId = s.publishes()[0].id;
  const p = client.publish("chat", "big", { id: "p1" });
  // The server answers in send order: the first id-less error is the signal's…
  s.receive({ type: "error", code: "too_large", message: "message is 70000 bytes" });
  assert.equal(client.pending, 1, "the publish is still waiting");
  assert.deepEqual(log.errors.map((e) => e.code), ["too_large"]);
  // …the next is the publish's.
  s.receive({ type: "error", code: "too_large", message: "message is 70000 bytes" });
  await assert.rejects(p, { code: "too_large", id: "p1" });
  client.signal("cursor", {});
  const p2 = client.publish("chat", 2, { id: "p2" });
  s.receive({ type: "ack", id: s.publishes().at(-2).id, ephemeral: true });
  s.receive(ack("p2", 1));
  assert.equal((await p2).seq, 1);
  s.receive({ type: "ack", id: sigId, ephemeral: true }); // a stray answer changes nothing
  s.message(2);
  assert.deepEqual(log.resyncs, []);
  assert.equal(client.seq, 2);
});

test("a signal answered rate_limited pauses all sending for retry_after_ms; signals meanwhile are dropped, publishes wait", async () => {
  const { clock, WS, client, log } = setup();
  await settle();
  const s = WS.last.accept();
  client.signal("cursor", { n: 1 });
  s.receive({ type: "error", id: s.publishes()[0].id, code: "rate_limited", message: "slow down", retry_after_ms: 1000 });
  assert.deepEqual(log.errors, [], "expected under load: not reported");
  assert.equal(client.signal("cursor", { n: 2 }), false);
  const p = client.publish("chat", {}, { id: "w1" });
  assert.equal(s.publishes().length, 1, "nothing sent while paused");
  await clock.advance(1000);
  assert.deepEqual(s.publishes().map((f) => f.id).slice(1), ["w1"]);
  assert.equal(client.signal("cursor", { n: 3 }), true);
  s.receive(ack("w1", 1));
  await p;
});

test("a server without ephemeral messages stores a signal as a publish: its seq is accounted, no gap", async () => {
  const { WS, client, log } = setup();
  await settle();
  const s = WS.last.accept({ seq: 3 });
  client.signal("cursor", {});
  s.receive(ack(s.publishes()[0].id, 4));
  s.message(5);
  assert.deepEqual(log.resyncs, []);
  assert.equal(client.seq, 5);
});

// ---- receipts (slow consumers, contract v1.1 §C) ---------------------------------------

test("receipts: none unless welcome asks for them", async () => {
  const { WS } = setup();
  await settle();
  const s = WS.last.accept({ seq: 0 });
  for (let i = 1; i <= 600; i++) s.message(i);
  s.receive("x".repeat(200_000));
  assert.deepEqual(s.receipts(), []);
});

test("receipts: every 256 messages (welcome included, pong excluded), cumulative per connection", async () => {
  const { clock, WS } = setup({ heartbeat: false });
  await settle();
  const s = WS.last.accept({ seq: 0, receipts: true }); // message 1
  for (let i = 1; i <= 254; i++) s.message(i); // messages 2–255
  s.receive("pong");
  assert.deepEqual(s.receipts(), [], "pong is not counted");
  s.receive([msg(255), msg(256)]); // message 256: an array is one message
  assert.deepEqual(s.receipts(), [{ type: "received", messages: 256 }]);
  for (let i = 257; i <= 511; i++) s.message(i); // messages 257–511
  assert.equal(s.receipts().length, 1);
  s.message(512); // message 512
  assert.deepEqual(s.receipts().map((r) => r.messages), [256, 512]);
  // A new connection counts from its own welcome.
  s.serverClose(1006);
  await clock.advance(250);
  const s2 = WS.last.accept({ seq: 512, receipts: true, resume: { requested: true, recovered: true, replayed: 0 } });
  for (let i = 513; i <= 767; i++) s2.message(i);
  assert.deepEqual(s2.receipts(), [{ type: "received", messages: 256 }]);
});

test("receipts: at 128 KiB received since the last one, whichever comes first", async () => {
  const { WS } = setup();
  await settle();
  const s = WS.last.accept({ seq: 0, receipts: true });
  const big = (seq, chars) => msg(seq, { data: "x".repeat(chars) });
  s.message(1, { data: "x".repeat(60 * 1024) });
  assert.deepEqual(s.receipts(), []);
  s.receive(big(2, 70 * 1024));
  assert.deepEqual(s.receipts(), [{ type: "received", messages: 3 }]);
  s.receive(big(3, 130 * 1024)); // one message over the bound: a receipt right after it
  assert.deepEqual(s.receipts().map((r) => r.messages), [3, 4]);
  s.message(4);
  assert.equal(s.receipts().length, 2, "counting starts again from the receipt");
});
