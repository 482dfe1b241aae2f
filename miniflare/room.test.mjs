// The Room Durable Object (contract §5, §8): fan-out, echo, exactly-once dedup, gapless
// ordering, array frames and per-frame errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { start, connect, rejected, userToken, token, signedFetch, uid } from "./helpers.mjs";

let env;
// Ordering and fan-out are tested here, not rate limiting (hostile.test.mjs does that):
// a bucket big enough for the bursts below.
before(async () => (env = await start({ bindings: { RATE_LIMIT_PER_SEC: "1000", RATE_LIMIT_BURST: "1000" } })));
after(async () => env?.mf.dispose());

async function clients(room, names) {
  const out = [];
  for (const n of names) out.push(await connect(env.wsBase, room, await userToken(n)));
  return out;
}

test("fan-out reaches every other client; echo:false skips the sender, echo:true does not", async () => {
  const room = uid();
  const [a, b, c] = await clients(room, ["alice", "bob", "carol"]);
  const ack = await a.publish("no-echo", { n: 1 });
  assert.deepEqual(ack, { type: "ack", id: "no-echo", seq: 1, duplicate: false });
  for (const r of [b, c]) {
    const m = await r.next((f) => f.type === "message" && f.id === "no-echo");
    assert.equal(m.seq, 1);
    assert.equal(m.event, "chat");
    assert.deepEqual(m.data, { n: 1 });
    assert.deepEqual(m.from, { user: "alice", conn: a.welcome.conn });
    assert.equal(typeof m.ts, "number");
  }
  await a.publish("with-echo", { n: 2 }, { echo: true });
  const own = await a.next((f) => f.type === "message" && f.id === "with-echo");
  assert.equal(own.seq, 2);
  await b.next((f) => f.type === "message" && f.id === "with-echo");
  // After both, alice saw only her echoed message.
  assert.deepEqual(a.messages().map((m) => m.id), ["with-echo"]);
  await Promise.all([a, b, c].map((x) => x.close()));
});

test("a repeated id on the same socket is acked with the original seq and not fanned out again", async () => {
  const room = uid();
  const [a, b] = await clients(room, ["alice", "bob"]);
  await a.publish("x1");
  a.send({ type: "publish", id: "x1", event: "chat", data: { again: true } });
  const dup = await a.next((f) => f.type === "ack" && f.id === "x1" && f.duplicate);
  assert.equal(dup.seq, 1);
  // A later message proves bob's stream moved on without a second x1.
  await a.publish("x2");
  await b.next((f) => f.type === "message" && f.id === "x2");
  assert.deepEqual(b.messages().map((m) => [m.id, m.seq]), [["x1", 1], ["x2", 2]]);
  await Promise.all([a.close(), b.close()]);
});

test("dedup holds across sockets and across a reconnect", async () => {
  const room = uid();
  const [a, b, watcher] = await clients(room, ["alice", "bob", "watch"]);
  await a.publish("shared-1");
  const dupB = await b.publish("shared-1");
  assert.deepEqual(dupB, { type: "ack", id: "shared-1", seq: 1, duplicate: true });
  await a.close();
  const a2 = await connect(env.wsBase, room, await userToken("alice"));
  assert.equal(a2.welcome.seq, 1);
  const dupA = await a2.publish("shared-1");
  assert.equal(dupA.duplicate, true);
  await a2.publish("after");
  await watcher.next((f) => f.type === "message" && f.id === "after");
  assert.deepEqual(watcher.messages().map((m) => m.id), ["shared-1", "after"]);
  await Promise.all([b.close(), a2.close(), watcher.close()]);
});

test("WebSocket and HTTP share one id space per room", async () => {
  const room = uid();
  const [a, watcher] = await clients(room, ["alice", "watch"]);
  await a.publish("evt-ws");
  const body = JSON.stringify({ id: "evt-ws", event: "chat", data: {} });
  const res = await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, body);
  assert.equal(res.status, 200);
  const r = await res.json();
  assert.equal(r.duplicate, true);
  assert.equal(r.seq, 1);
  assert.equal(r.delivered, 0);
  // And the other way round: an id first seen over HTTP is a duplicate on a socket.
  const res2 = await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, JSON.stringify({ id: "evt-http", event: "chat" }));
  assert.equal((await res2.json()).seq, 2);
  const ack = await a.publish("evt-http");
  assert.deepEqual(ack, { type: "ack", id: "evt-http", seq: 2, duplicate: true });
  await watcher.next((f) => f.type === "message" && f.id === "evt-http");
  assert.deepEqual(watcher.messages().map((m) => [m.id, m.seq, m.from]), [["evt-ws", 1, { user: "alice", conn: a.welcome.conn }], ["evt-http", 2, null]]);
  await Promise.all([a.close(), watcher.close()]);
});

test("a burst of hundreds of publishes from several senders is gapless and in order at every receiver", async () => {
  const room = uid();
  const senders = await clients(room, ["s1", "s2", "s3"]);
  const receivers = await clients(room, ["r1", "r2"]);
  const perSender = 150;
  for (let i = 0; i < perSender; i++) {
    for (const [k, s] of senders.entries()) s.send({ type: "publish", id: `s${k}-${i}`, event: "burst", data: { i } });
  }
  const total = perSender * senders.length;
  for (const r of receivers) {
    const msgs = await r.nextN((f) => f.type === "message", total, "burst messages");
    assert.deepEqual(msgs.map((m) => m.seq), Array.from({ length: total }, (_, i) => i + 1));
    // Each sender's own messages keep their send order.
    for (const k of [0, 1, 2]) {
      const mine = msgs.filter((m) => m.id.startsWith(`s${k}-`)).map((m) => m.data.i);
      assert.deepEqual(mine, Array.from({ length: perSender }, (_, i) => i));
    }
  }
  // Every sender got an ack per publish, all distinct seqs.
  const seqs = new Set();
  for (const s of senders) {
    const acks = await s.nextN((f) => f.type === "ack", perSender, "acks");
    for (const a of acks) seqs.add(a.seq);
  }
  assert.equal(seqs.size, total);
  await Promise.all([...senders, ...receivers].map((x) => x.close()));
});

test("array frames: several publishes in one message, each acked, bad ones answered alone", async () => {
  const room = uid();
  const [a, b] = await clients(room, ["alice", "bob"]);
  a.send([
    { type: "publish", id: "arr-1", event: "e", data: 1 },
    { type: "subscribe", id: "arr-x" },
    { type: "publish", id: "bad id!", event: "e" },
    { type: "publish", id: "arr-2", event: "e", data: 2 },
  ]);
  await a.next((f) => f.type === "ack" && f.id === "arr-2");
  const unknown = await a.next((f) => f.type === "error" && f.code === "unknown_type");
  assert.equal(unknown.id, "arr-x");
  await a.next((f) => f.type === "error" && f.code === "invalid_id");
  const msgs = await b.nextN((f) => f.type === "message", 2);
  assert.deepEqual(msgs.map((m) => [m.id, m.seq, m.data]), [["arr-1", 1, 1], ["arr-2", 2, 2]]);
  await Promise.all([a.close(), b.close()]);
});

test("a burst handled in one event leaves as one array per socket, each socket's frames in order", async () => {
  const room = uid();
  const [pub, r1, r2] = await clients(room, ["pub", "r1", "r2"]);
  // 100 publishes in one WebSocket message are one event for the room: everything they
  // produce is queued and flushed together (contract §5: the server may coalesce).
  const n = 100;
  pub.send(Array.from({ length: n }, (_, i) => ({ type: "publish", id: `c-${i}`, event: "e", data: i, echo: i % 2 === 0 })));
  for (const r of [r1, r2]) {
    const msgs = await r.nextN((f) => f.type === "message", n, "coalesced messages");
    assert.deepEqual(msgs.map((m) => m.seq), Array.from({ length: n }, (_, i) => i + 1));
    const first = r.frames.findIndex((f) => f.type === "message");
    assert.ok(r.carriers.slice(first, first + n).every((size) => size === n), `one message of ${n} frames, got sizes ${r.carriers.slice(first, first + n)}`);
  }
  // The publisher gets its echoed messages (even ids) and every ack, and an echoed
  // message always arrives before its own ack.
  const acks = await pub.nextN((f) => f.type === "ack", n, "acks");
  assert.deepEqual(acks.map((a) => a.seq), Array.from({ length: n }, (_, i) => i + 1));
  const order = pub.frames.filter((f) => f.type === "message" || f.type === "ack").map((f) => `${f.type}:${f.seq}`);
  for (let i = 0; i < n; i += 2) {
    const at = order.indexOf(`message:${i + 1}`);
    assert.ok(at >= 0 && at < order.indexOf(`ack:${i + 1}`), `message ${i + 1} arrived, before its ack`);
  }
  assert.equal(order.filter((x) => x.startsWith("message:")).length, n / 2);
  await Promise.all([pub, r1, r2].map((x) => x.close()));
});

test("bad frames get error frames and leave the socket open", async () => {
  const room = uid();
  const [a] = await clients(room, ["alice"]);
  a.send("{not json");
  await a.next((f) => f.type === "error" && f.code === "bad_frame");
  a.ws.send(Buffer.from([1, 2, 3]), { binary: true });
  const bin = await a.next((f) => f.type === "error" && f.code === "bad_frame" && /binary/.test(f.message));
  assert.equal("id" in bin, false, `a binary message has no id to answer with: ${JSON.stringify(bin)}`);
  a.send({ type: "publish", id: "no-event" });
  await a.next((f) => f.type === "error" && f.code === "bad_frame" && f.id === "no-event");
  a.send({ type: "publish", id: "long-event", event: "e".repeat(65) });
  await a.next((f) => f.type === "error" && f.code === "invalid_id" && f.id === "long-event");
  const ok = await a.publish("still-open");
  assert.equal(ok.type, "ack");
  await a.close();
});

test("a socket without write permission cannot publish, and others are unaffected", async () => {
  const room = uid();
  const reader = await connect(env.wsBase, room, await token({ sub: "reader", rooms: { [room]: ["read"] } }));
  const [w] = await clients(room, ["writer"]);
  const r = await reader.publish("ro-1");
  assert.equal(r.type, "error");
  assert.equal(r.code, "forbidden");
  await w.publish("w-1");
  const m = await reader.next((f) => f.type === "message" && f.id === "w-1");
  assert.equal(m.seq, 1, "the rejected publish took no seq");
  await Promise.all([reader.close(), w.close()]);
});

test("presence: join on a user's first socket, leave when the last one goes", async () => {
  const room = uid();
  const [a] = await clients(room, ["alice"]);
  const b1 = await connect(env.wsBase, room, await userToken("bob", { info: { color: "red" } }));
  const join = await a.next((f) => f.type === "presence" && f.user === "bob");
  assert.deepEqual(join, { type: "presence", op: "join", user: "bob", info: { color: "red" } });
  assert.equal(b1.welcome.presence.count, 2);
  const b2 = await connect(env.wsBase, room, await userToken("bob", { info: { color: "red" } }));
  assert.equal(b2.welcome.presence.count, 2);
  await b1.close();
  await b2.close();
  await a.next((f) => f.type === "presence" && f.op === "leave" && f.user === "bob");
  assert.equal(a.frames.filter((f) => f.type === "presence" && f.user === "bob").length, 2, "one join, one leave");
  await a.close();
});

test("presence=off: the socket still gets the snapshot and messages but no join/leave; others still see it", async () => {
  const room = uid();
  const [a] = await clients(room, ["alice"]);
  const q = await connect(env.wsBase, room, await userToken("quiet"), { query: "presence=off" });
  assert.equal(q.welcome.presence.count, 2, "the snapshot is still there");
  await a.next((f) => f.type === "presence" && f.op === "join" && f.user === "quiet");
  const b = await connect(env.wsBase, room, await userToken("bob"));
  await a.next((f) => f.type === "presence" && f.op === "join" && f.user === "bob");
  await b.close();
  await a.next((f) => f.type === "presence" && f.op === "leave" && f.user === "bob");
  // Frames reach a socket in the order the room made them: had bob's join or leave been
  // for q, it would have arrived before this message.
  await a.publish("after-bob");
  await q.next((f) => f.type === "message" && f.id === "after-bob");
  assert.deepEqual(q.frames.filter((f) => f.type === "presence"), []);
  await q.close();
  await a.next((f) => f.type === "presence" && f.op === "leave" && f.user === "quiet");
  await a.close();
});

test("presence must be on or off", async () => {
  const e = await rejected(connect(env.wsBase, uid(), await userToken("alice"), { query: "presence=none" }));
  assert.equal(e.status, 400);
  assert.equal(e.body.error.code, "bad_request");
  assert.match(e.body.error.message, /presence must be "on" or "off"/);
  const on = await connect(env.wsBase, uid(), await userToken("alice"), { query: "presence=on" });
  await on.close();
});

test("ping is answered with pong", async () => {
  const [a] = await clients(uid(), ["alice"]);
  a.send("ping");
  await a.next((f) => f.raw === "pong");
  await a.close();
});
