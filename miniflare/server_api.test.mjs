// The server API (contract §7): signed and service-JWT requests, broadcast, room info,
// and tenant isolation.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { start, connect, userToken, serviceToken, signedFetch, signature, now, uid } from "./helpers.mjs";

let env;
before(async () => (env = await start({ bindings: { MAX_MESSAGE_BYTES: "4096" } })));
after(async () => env?.mf.dispose());

const post = (path, body, headers = {}) =>
  fetch(env.base + path, { method: "POST", headers: { "Content-Type": "application/json", ...headers }, body });

async function expectError(res, status, code) {
  assert.equal(res.status, status);
  const body = await res.json();
  assert.equal(body.error.code, code, JSON.stringify(body));
  assert.ok(body.error.message.length > 10);
  return body;
}

test("signed publish reaches the room with from:null and reports delivery", async () => {
  const room = uid();
  const a = await connect(env.wsBase, room, await userToken("alice"));
  const b = await connect(env.wsBase, room, await userToken("bob"));
  const body = JSON.stringify({ id: "evt_1", event: "order.updated", data: { n: 1 } });
  const res = await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, body);
  assert.equal(res.status, 200);
  const r = await res.json();
  assert.deepEqual(r, { room, epoch: a.welcome.epoch, seq: 1, duplicate: false, delivered: 2 });
  for (const c of [a, b]) {
    const m = await c.next((f) => f.type === "message" && f.id === "evt_1");
    assert.equal(m.from, null);
    assert.equal(m.event, "order.updated");
  }
  // A retry is a success with the original seq, not an error.
  const again = await (await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, body)).json();
  assert.deepEqual(again, { room, epoch: a.welcome.epoch, seq: 1, duplicate: true, delivered: 0 });
  await Promise.all([a.close(), b.close()]);
});

test("exclude_conn skips one connection", async () => {
  const room = uid();
  const a = await connect(env.wsBase, room, await userToken("alice"));
  const b = await connect(env.wsBase, room, await userToken("bob"));
  const body = JSON.stringify({ id: "ex-1", event: "e", exclude_conn: a.welcome.conn });
  const r = await (await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, body)).json();
  assert.equal(r.delivered, 1);
  await b.next((f) => f.type === "message" && f.id === "ex-1");
  await b.publish("marker", {}, { echo: true });
  await a.next((f) => f.type === "message" && f.id === "marker");
  assert.deepEqual(a.messages().map((m) => m.id), ["marker"]);
  await Promise.all([a.close(), b.close()]);
});

test("Idempotency-Key stands in for the body id; conflicting ids are a 400", async () => {
  const room = uid();
  const path = `/v1/rooms/${room}/messages`;
  const body = JSON.stringify({ event: "e", data: {} });
  const r1 = await (await signedFetch(env.base, "POST", path, body, { headers: { "Idempotency-Key": "idem-1" } })).json();
  const r2 = await (await signedFetch(env.base, "POST", path, JSON.stringify({ id: "idem-1", event: "e" }))).json();
  assert.equal(r1.seq, 1);
  assert.deepEqual([r2.seq, r2.duplicate], [1, true]);
  const conflict = await signedFetch(env.base, "POST", path, JSON.stringify({ id: "a", event: "e" }), { headers: { "Idempotency-Key": "b" } });
  await expectError(conflict, 400, "bad_request");
  await expectError(await signedFetch(env.base, "POST", path, body), 400, "bad_request");
});

test("bad, stale, replayed-elsewhere and missing signatures are 401", async () => {
  const room = uid();
  const path = `/v1/rooms/${room}/messages`;
  const body = JSON.stringify({ id: "s-1", event: "e" });
  await expectError(await post(path, body), 401, "unauthorized");
  await expectError(await post(path, body, { "Roomcast-Signature": "garbage" }), 401, "unauthorized");
  await expectError(await post(path, body, { "Roomcast-Signature": signature("POST", path, body, { secret: "wrong" }) }), 401, "unauthorized");
  const stale = await expectError(await post(path, body, { "Roomcast-Signature": signature("POST", path, body, { t: now() - 301 }) }), 401, "unauthorized");
  assert.match(stale.error.message, /300/);
  await expectError(await post(path, body, { "Roomcast-Signature": signature("POST", path, body, { t: now() + 400 }) }), 401, "unauthorized");
  // A valid signature for another room's path cannot be replayed here.
  const other = `/v1/rooms/${uid()}/messages`;
  await expectError(await post(path, body, { "Roomcast-Signature": signature("POST", other, body) }), 401, "unauthorized");
  // Nor with a changed body or query.
  await expectError(await post(path, JSON.stringify({ id: "s-2", event: "e" }), { "Roomcast-Signature": signature("POST", path, body) }), 401, "unauthorized");
  await expectError(await post(path + "?tenant=x", body, { "Roomcast-Signature": signature("POST", path, body) }), 401, "unauthorized");
});

test("service JWTs: scope server required, tenant confined", async () => {
  const room = uid();
  const body = JSON.stringify({ id: "j-1", event: "e" });
  const ok = await post(`/v1/rooms/${room}/messages`, body, { Authorization: `Bearer ${await serviceToken()}` });
  assert.equal(ok.status, 200);
  assert.equal((await ok.json()).seq, 1);
  await expectError(await post(`/v1/rooms/${room}/messages`, body, { Authorization: `Bearer ${await userToken("u")}` }), 403, "forbidden");
  await expectError(await post(`/v1/rooms/${room}/messages`, body, { Authorization: "Bearer nope" }), 401, "unauthorized");
  await expectError(await post(`/v1/rooms/${room}/messages`, body, { Authorization: `Bearer ${await serviceToken({ exp: now() - 100 })}` }), 401, "unauthorized");
  const acme = `Bearer ${await serviceToken({ tenant: "acme" })}`;
  await expectError(await post(`/v1/rooms/${room}/messages?tenant=globex`, body, { Authorization: acme }), 403, "forbidden");
  const inAcme = await post(`/v1/rooms/${room}/messages?tenant=acme`, body, { Authorization: acme });
  assert.equal((await inAcme.json()).seq, 1, "acme's room is a different room with its own seq");
});

test("two tenants with the same room name never see each other's messages", async () => {
  const room = uid("shared");
  const acme = await connect(env.wsBase, room, await userToken("a", { tenant: "acme" }));
  const globex = await connect(env.wsBase, room, await userToken("g", { tenant: "globex" }));
  const plain = await connect(env.wsBase, room, await userToken("p"));
  assert.notEqual(acme.welcome.epoch, globex.welcome.epoch);
  await acme.publish("t-1", { secret: "acme" });
  await globex.publish("t-1", { secret: "globex" });
  const signed = JSON.stringify({ id: "t-2", event: "e" });
  const r = await (await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages?tenant=globex`, signed)).json();
  assert.equal(r.delivered, 1);
  await globex.next((f) => f.type === "message" && f.id === "t-2");
  await plain.publish("t-3", {}, { echo: true });
  await plain.next((f) => f.type === "message" && f.id === "t-3");
  // Each socket's last message is one it awaited, so anything leaked into its room earlier
  // has arrived by now (a socket receives frames in the order its room made them).
  await acme.publish("t-4", {}, { echo: true });
  await acme.next((f) => f.type === "message" && f.id === "t-4");
  assert.deepEqual(acme.messages().map((m) => m.id), ["t-4"]);
  assert.deepEqual(globex.messages().map((m) => m.id), ["t-2"]);
  assert.deepEqual(plain.messages().map((m) => m.id), ["t-3"]);
  await Promise.all([acme.close(), globex.close(), plain.close()]);
});

test("broadcast: per-room results, one failing room does not fail the others", async () => {
  const [r1, r2] = [uid(), uid()];
  const a = await connect(env.wsBase, r1, await userToken("a"));
  const b = await connect(env.wsBase, r2, await userToken("b"));
  const body = JSON.stringify({ rooms: [r1, "bad room", r2], id: "bc-1", event: "notice", data: { x: 1 } });
  const res = await signedFetch(env.base, "POST", "/v1/broadcast", body);
  assert.equal(res.status, 200);
  const { results } = await res.json();
  assert.deepEqual(results[0], { room: r1, seq: 1, duplicate: false });
  assert.equal(results[1].room, "bad room");
  assert.equal(results[1].error.code, "bad_room");
  assert.deepEqual(results[2], { room: r2, seq: 1, duplicate: false });
  await a.next((f) => f.type === "message" && f.id === "bc-1");
  await b.next((f) => f.type === "message" && f.id === "bc-1");
  const again = (await (await signedFetch(env.base, "POST", "/v1/broadcast", body)).json()).results;
  assert.deepEqual([again[0].duplicate, again[2].duplicate], [true, true]);
  await expectError(await signedFetch(env.base, "POST", "/v1/broadcast", JSON.stringify({ rooms: [], id: "x", event: "e" })), 400, "bad_request");
  await Promise.all([a.close(), b.close()]);
});

test("GET /v1/rooms/{room} reports seq, connections and users", async () => {
  const room = uid();
  const a = await connect(env.wsBase, room, await userToken("alice", { info: { n: "A" } }));
  const a2 = await connect(env.wsBase, room, await userToken("alice", { info: { n: "A" } }));
  const b = await connect(env.wsBase, room, await userToken("bob"));
  await a.publish("i-1");
  const res = await signedFetch(env.base, "GET", `/v1/rooms/${room}`);
  assert.equal(res.status, 200);
  const info = await res.json();
  assert.equal(info.room, room);
  assert.equal(info.epoch, a.welcome.epoch);
  assert.equal(info.last_seq, 1);
  assert.equal(info.connections, 3);
  assert.deepEqual(
    info.users.sort((x, y) => x.user.localeCompare(y.user)),
    [{ user: "alice", connections: 2, info: { n: "A" } }, { user: "bob", connections: 1, info: {} }],
  );
  await expectError(await fetch(`${env.base}/v1/rooms/${room}`), 401, "unauthorized");
  await Promise.all([a.close(), a2.close(), b.close()]);
});

test("bodies: 413 over MAX_MESSAGE_BYTES, 400 for bad JSON, bad room and bad ids", async () => {
  const room = uid();
  const path = `/v1/rooms/${room}/messages`;
  const big = JSON.stringify({ id: "big", event: "e", data: "x".repeat(5000) });
  await expectError(await signedFetch(env.base, "POST", path, big), 413, "too_large");
  await expectError(await signedFetch(env.base, "POST", path, "{nope"), 400, "bad_request");
  await expectError(await signedFetch(env.base, "POST", path, JSON.stringify({ id: "has space", event: "e" })), 400, "bad_request");
  await expectError(await signedFetch(env.base, "POST", `/v1/rooms/bad!room/messages`, JSON.stringify({ id: "a", event: "e" })), 400, "bad_room");
});
