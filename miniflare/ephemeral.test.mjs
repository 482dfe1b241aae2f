// Ephemeral messages and conflation (docs/protocol.md §11), and the kick inside an array
// frame, against the real Worker in workerd: real sockets, real SQLite storage, whose row
// counters the room reports in GET /v1/rooms/{room}.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { start, connect, userToken, signedFetch, uid } from "./helpers.mjs";

let env, fast;
before(async () => {
  // `env` has the default limits (burst 40 at 20/s); `fast` lets one user send a burst of
  // 500 cursor moves without being rate limited, to see the room conflate them.
  env = await start();
  fast = await start({ bindings: { RATE_LIMIT_PER_SEC: "1000", RATE_LIMIT_BURST: "1000" } });
});
after(async () => {
  await env?.mf.dispose();
  await fast?.mf.dispose();
});

const join = (e, room, sub, query = "") => userToken(sub).then((t) => connect(e.wsBase, room, t, { query }));
const info = async (e, room) => (await signedFetch(e.base, "GET", `/v1/rooms/${room}`)).json();
const cursor = (data, extra = {}) => ({ type: "publish", ephemeral: true, event: "cursor", data, ...extra });

/** A marker published by `who` and awaited at every socket in `all`: what the room sent
 * before it has arrived everywhere (each socket gets frames in the order they were made). */
async function settle(who, all) {
  const id = uid("marker");
  await who.publish(id, {}, { echo: true });
  await Promise.all(all.map((c) => c.next((f) => f.type === "message" && f.id === id, `marker ${id}`)));
}

test("ephemeral messages fan out without storage, seq, history, replay or dedup", async () => {
  const room = uid();
  const alice = await join(env, room, "alice");
  const bob = await join(env, room, "bob");
  await alice.publish("durable-1", { n: 1 });
  await bob.next((f) => f.type === "message" && f.id === "durable-1");
  const before = await info(env, room);
  assert.equal(before.last_seq, 1);
  assert.ok(before.storage.rows_written > 0, `a durable publish writes rows: ${JSON.stringify(before.storage)}`);

  // Distinct keys: messages of one signal may be conflated if they meet in the queue.
  alice.send(cursor({ x: 1 }, { key: "k1" }));
  alice.send(cursor({ x: 2 }, { id: "same", key: "k2" }));
  alice.send(cursor({ x: 3 }, { id: "same", key: "k3" }));
  const ack = await alice.next((f) => f.type === "ack" && f.id === "same");
  assert.deepEqual(ack, { type: "ack", id: "same", ephemeral: true });
  const got = await bob.nextN((f) => f.type === "message" && f.ephemeral, 3, "ephemeral messages");
  assert.deepEqual(got.map((m) => m.data), [{ x: 1 }, { x: 2 }, { x: 3 }], "the same id twice is delivered twice");
  for (const m of got) {
    assert.equal(m.seq, undefined);
    assert.equal(m.event, "cursor");
    assert.deepEqual(m.from, { user: "alice", conn: alice.welcome.conn });
    assert.equal(typeof m.ts, "number");
  }
  assert.equal(got[0].id, undefined, "an id only when the publisher gave one");
  assert.equal(got[1].id, "same");
  assert.deepEqual(got.map((m) => m.key), ["k1", "k2", "k3"]);

  // The server API: no id needed.
  const body = JSON.stringify({ ephemeral: true, event: "typing", data: { on: true } });
  const res = await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, body);
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { room, ephemeral: true, delivered: 2 });
  const typing = await bob.next((f) => f.type === "message" && f.event === "typing");
  assert.equal(typing.from, null);

  const after = await info(env, room);
  assert.deepEqual(after.storage, before.storage, "no storage row read or written by ephemeral traffic");
  assert.equal(after.counters.ephemeral - before.counters.ephemeral, 4);
  assert.equal(after.last_seq, 1);
  const history = await (await signedFetch(env.base, "GET", `/v1/rooms/${room}/messages?since=0`)).json();
  assert.deepEqual(history.messages.map((m) => m.id), ["durable-1"]);

  // A client resuming from before them gets the durable message only.
  const late = await join(env, room, "carol", `since=0&epoch=${before.epoch}`);
  assert.deepEqual(late.welcome.resume, { requested: true, recovered: true, replayed: 1 });
  await settle(alice, [late]);
  assert.deepEqual(late.messages().map((m) => m.id).slice(0, 1), ["durable-1"]);
  assert.ok(late.messages().every((m) => !m.ephemeral));
});

test("an ephemeral publish needs write, counts against the rate limit and is refused like any frame", async () => {
  const room = uid();
  const t = await userToken("reader", { rooms: { "*": ["read"] } });
  const reader = await connect(env.wsBase, room, t);
  reader.send(cursor({}, { id: "r1" }));
  const refused = await reader.next((f) => f.type === "error" && f.id === "r1");
  assert.equal(refused.code, "forbidden");
  const writer = await join(env, room, "writer");
  writer.send(cursor({}, { key: "k".repeat(65), id: "long" }));
  assert.equal((await writer.next((f) => f.type === "error" && f.id === "long")).code, "invalid_id");
  writer.send({ type: "publish", ephemeral: "yes", event: "cursor", id: "odd" });
  assert.equal((await writer.next((f) => f.type === "error" && f.id === "odd")).code, "bad_frame");
  // Over the bucket (burst 40): refused with retry_after_ms like a durable publish.
  writer.send(Array.from({ length: 45 }, (_, i) => cursor({ i }, { id: `c${i}` })));
  const limited = await writer.next((f) => f.type === "error" && f.code === "rate_limited");
  assert.ok(limited.retry_after_ms > 0);
  const bad = await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, JSON.stringify({ event: "x" }));
  assert.equal(bad.status, 400, "a durable server publish still needs an id");
  const broadcast = JSON.stringify({ rooms: [room], ephemeral: true, event: "x" });
  assert.equal((await signedFetch(env.base, "POST", "/v1/broadcast", broadcast)).status, 400);
});

test("a room that is behind conflates: 500 cursor moves into 200 sockets arrive as the final position", async () => {
  const room = uid();
  const mover = await join(fast, room, "mover");
  const watchers = [];
  for (let i = 0; i < 199; i++) watchers.push(join(fast, room, `w${i}`, "presence=off"));
  const all = await Promise.all(watchers);
  const before = await info(fast, room);
  // Five array messages of 100 moves each, sent back to back.
  for (let batch = 0; batch < 5; batch++) {
    mover.ws.send(JSON.stringify(Array.from({ length: 100 }, (_, i) => cursor({ i: batch * 100 + i }))));
  }
  await settle(mover, all);
  for (const w of all) {
    const moves = w.frames.filter((f) => f.type === "message" && f.event === "cursor");
    assert.ok(moves.length >= 1 && moves.length <= 50, `far fewer than 500 frames: ${moves.length}`);
    assert.deepEqual(moves.at(-1).data, { i: 499 }, "every receiver ends at the final position");
  }
  const after = await info(fast, room);
  assert.equal(after.last_seq, before.last_seq + 1, "only the marker took a seq");
});

test("a socket kicked with 4008 inside an array frame publishes nothing after the kick", async () => {
  const room = uid();
  const spammer = await join(env, room, "spammer");
  const others = await Promise.all([join(env, room, "o1"), join(env, room, "o2")]);
  spammer.send(Array.from({ length: 100 }, (_, i) => ({ type: "publish", id: `s${i}`, event: "chat", data: { i } })));
  const closed = await spammer.closed;
  assert.equal(closed.code, 4008);
  const acks = spammer.frames.filter((f) => f.type === "ack");
  const errors = spammer.frames.filter((f) => f.type === "error");
  // The default bucket holds 40; a 41st refusal in a row closes. Nothing after it is read.
  assert.ok(acks.length >= 40 && acks.length < 60, `accepted: ${acks.length}`);
  assert.equal(errors.length, 41, "40 refusals, then the one that closes");
  assert.ok(errors.every((e) => e.code === "rate_limited"));
  const accepted = acks.map((a) => a.id);
  assert.deepEqual(acks.map((a) => a.seq), accepted.map((_, i) => i + 1), "gapless seqs for the accepted ones");
  await settle(others[0], others);
  for (const o of others) {
    const ids = o.messages().map((m) => m.id).filter((id) => id.startsWith("s"));
    assert.deepEqual(ids, accepted, "exactly the accepted publishes reach the other sockets");
  }
  const room_ = await info(env, room);
  assert.equal(room_.connections, 2, "no per-connection state left behind");
  assert.equal(room_.last_seq, accepted.length + 1);
  assert.deepEqual(room_.users.map((u) => u.user).sort(), ["o1", "o2"]);
  // What an operator sees of it.
  assert.equal(room_.counters.kicks["4008"], 1);
  assert.equal(room_.counters.rejections.rate_limited, 40);
  assert.equal(room_.counters.messages, accepted.length + 1);
  assert.equal(room_.counters.peak_connections, 3);
});
