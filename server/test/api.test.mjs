// @roomcast/server's Roomcast client against the real built Worker in workerd (Miniflare):
// real WebSocket clients with real user JWTs receive what it publishes, and every error is
// the Worker's own answer.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { start, connect, token, userToken, serviceToken, now, uid, API_SECRET } from "../../miniflare/helpers.mjs";
import { Roomcast, RoomcastError } from "../dist/index.js";

let env;
let rc;
before(async () => {
  env = await start();
  rc = new Roomcast({ url: env.base, secret: API_SECRET });
});
after(async () => env?.mf.dispose());

/** Resolves with the RoomcastError `promise` rejects with, checking status and code. */
async function fails(promise, status, code) {
  const e = await promise.then(
    (v) => assert.fail(`expected ${status} ${code}, got ${JSON.stringify(v)}`),
    (x) => x,
  );
  assert.ok(e instanceof RoomcastError, String(e));
  assert.deepEqual([e.status, e.code], [status, code], e.message);
  assert.ok(e.message.length > 10, "the Worker's message");
  return e;
}

test("publish, history and room info round trip; the same id again is a duplicate with the same seq", async () => {
  const room = uid();
  const alice = await connect(env.wsBase, room, await userToken("alice"));
  const r1 = await rc.publish(room, { id: "evt-1", event: "order.updated", data: { n: 1 } });
  assert.deepEqual(r1, { room, epoch: alice.welcome.epoch, seq: 1, duplicate: false, delivered: 1 });
  const m = await alice.next((f) => f.type === "message" && f.id === "evt-1", "the published message");
  assert.deepEqual([m.seq, m.event, m.data, m.from], [1, "order.updated", { n: 1 }, null]);
  const r2 = await rc.publish(room, { id: "evt-2", event: "note" }); // data omitted: null
  assert.equal(r2.seq, 2);

  const again = await rc.publish(room, { id: "evt-1", event: "order.updated", data: { n: 1 } });
  assert.deepEqual(again, { room, epoch: alice.welcome.epoch, seq: 1, duplicate: true, delivered: 0 });

  const page = await rc.history(room);
  assert.equal(page.epoch, alice.welcome.epoch);
  assert.equal(page.last_seq, 2);
  assert.deepEqual(page.messages.map((x) => [x.seq, x.id, x.data]), [[1, "evt-1", { n: 1 }], [2, "evt-2", null]]);
  assert.deepEqual((await rc.history(room, { since: 1 })).messages.map((x) => x.id), ["evt-2"]);
  assert.deepEqual((await rc.history(room, { since: 0, limit: 1 })).messages.map((x) => x.id), ["evt-1"]);

  const info = await rc.room(room);
  assert.deepEqual([info.room, info.epoch, info.last_seq, info.connections], [room, alice.welcome.epoch, 2, 1]);
  assert.deepEqual(info.users.map((u) => [u.user, u.connections]), [["alice", 1]]);
  assert.deepEqual([info.counters.messages, info.counters.duplicates], [2, 1]);
  // Only the two accepted messages reached the socket.
  await alice.publish("marker", {}, { echo: true });
  assert.deepEqual(alice.messages().map((x) => x.id), ["evt-1", "evt-2", "marker"]);
  await alice.close();
});

test("publish: excludeConn, an ephemeral signal, and a personal room (name@user) signed as it is", async () => {
  const room = uid();
  const a = await connect(env.wsBase, room, await userToken("alice"));
  const b = await connect(env.wsBase, room, await userToken("bob"));
  const r = await rc.publish(room, { id: "ex-1", event: "e" }, { excludeConn: a.welcome.conn });
  assert.equal(r.delivered, 1);
  await b.next((f) => f.type === "message" && f.id === "ex-1");
  const s = await rc.publish(room, { ephemeral: true, event: "cursor", data: { x: 3 }, key: "k" });
  assert.deepEqual(s, { room, ephemeral: true, delivered: 2 });
  const sig = await a.next((f) => f.type === "message" && f.ephemeral, "the signal");
  assert.deepEqual([sig.event, sig.data, sig.seq], ["cursor", { x: 3 }, undefined]);
  await Promise.all([a.close(), b.close()]);

  // alice may read her personal room without any rooms entry; the backend writes to it.
  const inbox = `inbox-${uid()}@alice`;
  const owner = await connect(env.wsBase, inbox, await token({ sub: "alice" }));
  const p = await rc.publish(inbox, { id: "n-1", event: "notification", data: { text: "hello" } });
  assert.deepEqual([p.room, p.seq, p.delivered], [inbox, 1, 1]);
  await owner.next((f) => f.type === "message" && f.id === "n-1", "the notification");
  assert.equal((await rc.room(inbox)).last_seq, 1);
  await owner.close();
});

test("broadcast: one id to several rooms, a bad name is a per-room error, a repeat is a duplicate everywhere", async () => {
  const [r1, r2] = [uid(), uid()];
  const c1 = await connect(env.wsBase, r1, await userToken("alice"));
  const res = await rc.broadcast([r1, r2, "bad room!"], { id: "b-1", event: "notice", data: { t: 1 } });
  assert.deepEqual(res.results.slice(0, 2), [
    { room: r1, seq: 1, duplicate: false },
    { room: r2, seq: 1, duplicate: false },
  ]);
  assert.equal(res.results[2].room, "bad room!");
  assert.equal(res.results[2].error.code, "bad_room");
  await c1.next((f) => f.type === "message" && f.id === "b-1");
  assert.deepEqual((await rc.history(r2)).messages.map((m) => [m.id, m.data]), [["b-1", { t: 1 }]]);
  const again = await rc.broadcast([r1, r2], { id: "b-1", event: "notice", data: { t: 1 } });
  assert.deepEqual(again.results, [
    { room: r1, seq: 1, duplicate: true },
    { room: r2, seq: 1, duplicate: true },
  ]);
  await fails(rc.broadcast([], { id: "b-2", event: "e" }), 400, "bad_request");
  await c1.close();
});

test("tenant: the same room name in two tenants is two rooms", async () => {
  const room = uid();
  const t1 = rc.forTenant("t1");
  const c = await connect(env.wsBase, room, await userToken("alice", { tenant: "t1" }));
  const r = await t1.publish(room, { id: "t-1", event: "e", data: "for t1" });
  assert.deepEqual([r.seq, r.delivered, r.epoch], [1, 1, c.welcome.epoch]);
  await c.next((f) => f.type === "message" && f.id === "t-1");
  assert.deepEqual((await t1.history(room)).messages.map((m) => m.data), ["for t1"]);
  assert.equal((await rc.history(room)).last_seq, 0, "no tenant: another room");
  assert.equal((await rc.forTenant("t2").room(room)).last_seq, 0, "tenant t2: another room");
  const inT1 = new Roomcast({ url: env.base, secret: API_SECRET, tenant: "t1" });
  assert.equal((await inT1.room(room)).connections, 1);
  await fails(rc.forTenant("not a tenant!").room(room), 400, "bad_request");
  await c.close();
});

test("disconnect closes real sockets of a user connected with a real JWT; by conn; nobody there is closed:0", async () => {
  const room = uid();
  const tok = await userToken("alice");
  const [a1, a2] = [await connect(env.wsBase, room, tok), await connect(env.wsBase, room, tok)];
  const bob = await connect(env.wsBase, room, await userToken("bob"));
  assert.deepEqual(await rc.disconnect(room, { user: "alice" }, { code: 4000, reason: "your permissions changed" }), { closed: 2 });
  for (const c of [a1, a2]) {
    const f = await c.next((x) => x.type === "error", "the disconnected frame");
    assert.deepEqual(f, { type: "error", code: "disconnected", message: "your permissions changed", close: 4000 });
  }
  assert.deepEqual(await Promise.all([a1.closed, a2.closed]), [
    { code: 4000, reason: "disconnected" },
    { code: 4000, reason: "disconnected" },
  ]);
  const info = await rc.room(room);
  assert.deepEqual([info.connections, info.users.map((u) => u.user)], [1, ["bob"]]);
  assert.deepEqual(await rc.disconnect(room, { user: "alice" }), { closed: 0 });
  assert.deepEqual(await rc.disconnect(room, { conn: bob.welcome.conn }), { closed: 1 });
  const f = await bob.next((x) => x.type === "error", "bob's frame");
  assert.deepEqual([f.code, f.close], ["disconnected", 4403], "the default code");
  assert.deepEqual(await bob.closed, { code: 4403, reason: "disconnected" });
  await fails(rc.disconnect(room, { user: "alice" }, { code: 1000 }), 400, "bad_request");
  await fails(rc.disconnect(room, {}), 400, "bad_request");
});

test("errors are the Worker's: wrong secret, stale clock, bad room, bad id, bad limit, too large", async () => {
  const room = uid();
  const wrong = new Roomcast({ url: env.base, secret: "not-the-api-secret" });
  const e = await fails(wrong.publish(room, { id: "x", event: "e" }), 401, "unauthorized");
  assert.match(e.message, /signature does not match/);
  await fails(wrong.room(room), 401, "unauthorized");
  const late = new Roomcast({ url: env.base, secret: API_SECRET, now: () => Date.now() - 600_000 });
  assert.match((await fails(late.room(room), 401, "unauthorized")).message, /timestamp/);
  await fails(rc.publish("bad room", { id: "x", event: "e" }), 400, "bad_room");
  await fails(rc.room("a@b@c"), 400, "bad_room");
  await fails(rc.history("ü"), 400, "bad_room");
  await fails(rc.publish(room, { id: "has space", event: "e" }), 400, "bad_request");
  await fails(rc.publish(room, { event: "e" }), 400, "bad_request"); // no id
  await fails(rc.history(room, { limit: 5000 }), 400, "bad_request");
  await fails(rc.publish(room, { id: "big", event: "e", data: "x".repeat(70_000) }), 413, "too_large");
  // Nothing of it reached the room.
  assert.equal((await rc.room(room)).last_seq, 0);
});

test("service-token mode: a string or a function; its tenant claim confines it; user and expired tokens are refused", async () => {
  const room = uid();
  const byString = new Roomcast({ url: env.base, token: await serviceToken() });
  const c = await connect(env.wsBase, room, await userToken("alice"));
  assert.deepEqual((await byString.publish(room, { id: "s-1", event: "e" })).seq, 1);
  await c.next((f) => f.type === "message" && f.id === "s-1");
  let calls = 0;
  const byFunction = new Roomcast({ url: env.base, token: async () => (calls++, serviceToken()) });
  assert.equal((await byFunction.history(room)).last_seq, 1);
  assert.equal((await byFunction.room(room)).connections, 1);
  assert.equal(calls, 2, "a fresh token per request");
  await c.close();

  // A token with tenant t9 acts in t9 without a tenant option; another tenant is forbidden.
  const t9 = new Roomcast({ url: env.base, token: () => serviceToken({ tenant: "t9" }) });
  const c9 = await connect(env.wsBase, room, await userToken("alice", { tenant: "t9" }));
  assert.equal((await t9.publish(room, { id: "s-9", event: "e" })).seq, 1, "t9's room is another room");
  await c9.next((f) => f.type === "message" && f.id === "s-9");
  assert.equal((await t9.forTenant("t9").room(room)).connections, 1);
  await fails(t9.forTenant("t8").room(room), 403, "forbidden");
  await c9.close();

  await fails(new Roomcast({ url: env.base, token: await userToken("alice") }).room(room), 403, "forbidden");
  const expired = await serviceToken({ exp: now() - 3600, iat: now() - 7200 });
  await fails(new Roomcast({ url: env.base, token: expired }).room(room), 401, "unauthorized");
  await fails(new Roomcast({ url: env.base, token: "not.a.jwt" }).room(room), 401, "unauthorized");
});

test("webhook routes answer for a room without webhooks configured", async () => {
  const room = uid();
  const s = await rc.webhooks(room);
  assert.equal(s.enabled, false);
  assert.deepEqual(await rc.retryWebhooks(room), { requeued: 0 });
});
