// The client SDK (client/dist, built by scripts/test) against the real Worker in workerd:
// connections killed mid-stream, a full restart over persisted storage, and a token
// expiring on an open socket. Afterwards every receiver has every message exactly once,
// in seq order, and every publish promise resolved exactly once.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { start, userToken, signedFetch, uid, now, until, when, SHARDED } from "./helpers.mjs";
import { Roomcast } from "../client/dist/index.js";

let env;
before(async () => (env = await start()));
after(async () => env?.mf.dispose());

// Every client a test made is closed afterwards, pass or fail: a client left open keeps
// reconnecting (and this process alive) after its server is gone.
const live = new Set();
afterEach(() => {
  for (const c of live) c.close();
  live.clear();
});

// Fast enough for tests, same shape as production.
const FAST = { backoff: { baseMs: 25, capMs: 400, stableMs: 2000 }, connectTimeoutMs: 5000 };


/**
 * A client with its own WebSocket subclass (so the test can grab and kill its current
 * socket) and a record of everything it emitted and every publish outcome.
 */
function peer(user, room, { url = () => env.wsBase, token, echo = false, ...rest } = {}) {
  const sockets = [];
  const sent = []; // publish ids as they went out, across all sockets
  class KillableWebSocket extends WebSocket {
    constructor(address, protocols) {
      super(address, protocols);
      sockets.push(this);
    }
    send(data, ...rest) {
      if (data !== "ping") sent.push(JSON.parse(data).id);
      return super.send(data, ...rest);
    }
  }
  const tokenCalls = [];
  const client = new Roomcast({
    url,
    room,
    token: async (ctx) => {
      tokenCalls.push(ctx.reason);
      return token ? token(ctx) : userToken(user);
    },
    WebSocket: KillableWebSocket,
    echo,
    ...FAST,
    ...rest,
  });
  live.add(client);
  const p = {
    user,
    client,
    echo,
    sockets,
    sent,
    tokenCalls,
    messages: [],
    resyncs: [],
    errors: [],
    states: [],
    welcomes: [],
    published: [], // { id, result?, error?, settlements }
  };
  client.on("message", (m) => p.messages.push(m));
  client.on("resync", (r) => p.resyncs.push(r));
  client.on("error", (e) => p.errors.push(e));
  client.on("state", (s, d) => p.states.push({ s, code: d.code, reason: d.reason }));
  client.on("welcome", (w) => p.welcomes.push(w));
  p.opened = () => (client.state === "open" ? Promise.resolve() : when(client, "state", (s) => s === "open", 10_000, `${user} open`));
  /** Abrupt termination of the current socket: no close frame, like a dropped network. */
  p.kill = () => sockets.at(-1)?.terminate();
  p.publish = (data) => {
    const rec = { settlements: 0 };
    p.published.push(rec);
    rec.promise = client.publish("chat", data).then(
      (r) => {
        rec.settlements++;
        rec.id = r.id;
        rec.result = r;
        return r;
      },
      (e) => {
        rec.settlements++;
        rec.error = e;
        throw e;
      },
    );
    return rec.promise;
  };
  return p;
}

/**
 * The exactly-once check. Every publish resolved once with a distinct seq; each receiver
 * got every message it should (all but its own unless echo), once, in ascending seq order;
 * the room's history holds each id once.
 */
async function verify(base, room, peers, receivers, { allowResync = false } = {}) {
  const all = peers.flatMap((p) => p.published);
  await Promise.allSettled(all.map((r) => r.promise));
  for (const rec of all) {
    assert.equal(rec.settlements, 1, "each publish settles exactly once");
    assert.equal(rec.error, undefined, `publish failed: ${rec.error?.message}`);
  }
  const bySeq = new Map(all.map((r) => [r.result.seq, r.result.id]));
  assert.equal(bySeq.size, all.length, "one seq per publish");
  const total = all.length;

  const expected = (r) => new Set(peers.filter((p) => p !== r || r.echo).flatMap((p) => p.published.map((x) => x.id)));
  for (const r of receivers) {
    const want = expected(r);
    // Checked after each message the client emits (`peer` records it first).
    const complete = () => new Set(r.messages.map((m) => m.id)).size >= want.size;
    if (!complete()) await when(r.client, "message", complete, 30_000, `${r.user} to receive ${want.size} messages (has ${r.messages.length})`);
  }
  for (const r of receivers) {
    const ids = r.messages.map((m) => m.id);
    assert.equal(new Set(ids).size, ids.length, `${r.user}: no message twice`);
    assert.deepEqual(new Set(ids), expected(r), `${r.user}: every expected message`);
    const seqs = r.messages.map((m) => m.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `${r.user}: in seq order`);
    for (const m of r.messages) assert.equal(bySeq.get(m.seq), m.id, `${r.user}: seq ${m.seq} is ${bySeq.get(m.seq)}`);
    if (!allowResync) assert.deepEqual(r.resyncs, [], `${r.user}: nothing to resync`);
    assert.deepEqual(r.errors.filter((e) => e.fatal), [], `${r.user}: no fatal error`);
  }

  const res = await signedFetch(base, "GET", `/v1/rooms/${room}/messages?since=0&limit=1000`);
  assert.equal(res.status, 200);
  const history = await res.json();
  assert.equal(history.last_seq, total, "the room accepted each publish once");
  assert.deepEqual(
    history.messages.map((m) => m.id).sort(),
    all.map((r) => r.id).sort(),
  );
}

test("several clients publish while their sockets are killed mid-stream: each message once, in order", async () => {
  const room = uid("sdk-kill");
  const peers = [0, 1, 2, 3].map((i) => peer(`u${i}`, room, { echo: i % 2 === 0 }));
  const watcher = peer("watcher", room);
  await Promise.all([...peers, watcher].map((p) => p.opened()));

  const ROUNDS = 30;
  for (let round = 0; round < ROUNDS; round++) {
    const batch = peers.map((p) => p.publish({ round, from: p.user }));
    if (round % 3 === 1) peers[round % 4].kill();
    if (round % 7 === 3) watcher.kill();
    if (round === 20) {
      // Kill one twice in a row: the second lands while it is reconnecting.
      peers[2].kill();
      await when(peers[2].client, "state", (s) => s === "open", 10_000, "u2 back");
      peers[2].kill();
    }
    // Let the round get somewhere before the next (a specific event, not a sleep).
    await batch[(round + 1) % 4];
  }
  await Promise.all(peers.flatMap((p) => p.published.map((r) => r.promise)));

  await verify(env.base, room, peers, [...peers, watcher]);
  for (const p of [...peers, watcher]) assert.ok(p.welcomes.length > 1, `${p.user} did reconnect (${p.welcomes.length} welcomes)`);
  const resent = peers.reduce((n, p) => n + p.sent.length - new Set(p.sent).size, 0);
  assert.ok(resent > 0, "some publishes were cut off and re-sent with their id");
  assert.ok(peers.every((p) => p.welcomes.slice(1).every((w) => w.resume.requested && w.resume.recovered)), "every reconnect resumed");
  for (const p of [...peers, watcher]) p.client.close();
});

test("offline publishes wait in the outbox and go out once connected", async () => {
  const room = uid("sdk:offline.v1"); // every character a room name may use
  const watcher = peer("watcher", room);
  await watcher.opened();
  const late = peer("late", room);
  const pending = [1, 2, 3].map((i) => late.publish({ i })); // before the first welcome
  assert.equal(late.client.pending, 3);
  await Promise.all(pending);
  assert.deepEqual(late.published.map((r) => r.result.seq), [1, 2, 3]);
  await verify(env.base, room, [late], [watcher]);
  late.client.close();
  watcher.client.close();
});

test("rate limiting: rate_limited publishes are re-sent after retry_after_ms; even a 4008 close loses nothing", async () => {
  // In the sharded pass a shard interleaves the acks coming back from the sequencer with
  // its refusals, so handling the greedy burst takes longer than one refill interval at
  // 50/s and a token may come back mid-burst (which resets the strikes): a slower refill
  // keeps the burst a burst there.
  const limited = await start({ bindings: { RATE_LIMIT_PER_SEC: SHARDED ? "10" : "50", RATE_LIMIT_BURST: "10" } });
  try {
    const room = uid("sdk-rate");
    const url = () => limited.wsBase;
    // Polite: never more in flight than the burst, so it is slowed down but never closed.
    const polite = peer("polite", room, { url, maxInFlight: 8 });
    // Greedy: the default window (32) exceeds this server's burst of 10, so its first
    // flush is a burst of rejections that the server answers with 4008.
    const greedy = peer("greedy", room, { url });
    const watcher = peer("watcher", room, { url });
    await Promise.all([polite, greedy, watcher].map((p) => p.opened()));
    for (let i = 0; i < 60; i++) polite.publish({ i });
    for (let i = 0; i < 40; i++) greedy.publish({ i });
    await verify(limited.base, room, [polite, greedy], [polite, greedy, watcher]);
    const resent = (p) => p.sent.length - new Set(p.sent).size;
    assert.ok(resent(polite) > 0, "the polite client was rate limited and re-sent");
    assert.deepEqual(polite.states.filter((x) => x.code === 4008), [], "the polite client was never closed");
    assert.ok(greedy.states.some((x) => x.code === 4008), "the greedy client was closed with 4008 and came back");
    for (const p of [polite, greedy, watcher]) p.client.close();
  } finally {
    await limited.mf.dispose();
  }
});

test("server restart over persisted storage: clients reconnect, resume, re-send, and nothing is lost or doubled", async () => {
  const dir = mkdtempSync(join(tmpdir(), "roomcast-sdk-restart-"));
  let current = await start({ persist: dir });
  const room = uid("sdk-restart");
  const url = () => current.wsBase; // the new instance listens on a new port
  try {
    const peers = [0, 1, 2].map((i) => peer(`r${i}`, room, { url, echo: i === 0 }));
    const watcher = peer("watcher", room, { url });
    await Promise.all([...peers, watcher].map((p) => p.opened()));
    const epoch = watcher.client.epoch;

    for (let i = 0; i < 10; i++) await Promise.all(peers.map((p) => p.publish({ phase: "before", i })));
    // Publishes in flight while the runtime goes away, and more while it is down.
    const inflight = peers.flatMap((p) => [p.publish({ phase: "during" }), p.publish({ phase: "during" })]);
    const downs = [...peers, watcher].map((p) => when(p.client, "state", (s) => s === "reconnecting", 20_000, `${p.user} notices`));
    await current.mf.dispose();
    const [[, detail]] = await Promise.all(downs);
    const whileDown = peers.map((p) => p.publish({ phase: "down" }));
    assert.ok(peers.every((p) => p.client.pending > 0), "publishes wait while the server is down");

    current = await start({ persist: dir });
    await Promise.all([...inflight, ...whileDown]);
    for (let i = 0; i < 5; i++) await Promise.all(peers.map((p) => p.publish({ phase: "after", i })));

    await verify(current.base, room, peers, [...peers, watcher]);
    assert.equal(watcher.client.epoch, epoch, "same log after the restart");
    for (const p of [...peers, watcher]) {
      const back = p.welcomes.at(-1);
      assert.ok(p.welcomes.length >= 2, `${p.user} reconnected`);
      assert.equal(back.resume.recovered, true, `${p.user} resumed`);
    }
    // What a client sees when the runtime goes away (documented in the report).
    assert.ok([1001, 1006, 1011, 1012, 1000].includes(detail.code), `close code on shutdown: ${detail.code}`);
    for (const p of [...peers, watcher]) p.client.close();
  } finally {
    await current.mf.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * A peer whose first token has exp ≈ now − 25: accepted (30 s leeway), it expires on the
 * open socket about 5 s later. Every later token is fresh. `exp` is on the peer.
 */
function expiringPeer(user, room) {
  const exp = now() - 25;
  const p = peer(user, room, { token: (ctx) => (ctx.reason === "connect" ? userToken(user, { exp }) : userToken(user)) });
  p.exp = exp;
  return p;
}

test("publishing across a token expiry: 4001 (or token_expired on the publish), fresh token, delivered once", async () => {
  const room = uid("sdk-exp-pub");
  const watcher = peer("watcher", room);
  const e = expiringPeer("expiring", room);
  await Promise.all([watcher.opened(), e.opened()]);
  const reconnected = when(e.client, "state", (s, d) => s === "reconnecting" && d.code === 4001, 20_000, "close 4001");
  await e.publish({ n: 1 });
  // Past exp + leeway: the server either closed the socket already (4001) or rejects this
  // publish with token_expired and then closes with 4001. Either way it must get through.
  // Nothing announces the expiry itself, so this waits for the clock (with a deadline).
  await until(() => now() > e.exp + 31, "the token to expire", 15_000);
  await e.publish({ n: 2 });
  await reconnected;
  await e.publish({ n: 3 });
  assert.ok(e.tokenCalls.includes("expired"), `asked for a fresh token: ${e.tokenCalls}`);
  await verify(env.base, room, [e], [watcher]);
  e.client.close();
  watcher.client.close();
});

test("an idle socket whose token expires is closed with 4001; the client refreshes and misses nothing", async () => {
  const room = uid("sdk-exp-idle");
  const pub = peer("pub", room);
  const e = expiringPeer("idle", room);
  await Promise.all([pub.opened(), e.opened()]);
  for (let i = 0; i < 5; i++) await pub.publish({ i });
  // The server must close the socket itself (error token_expired, then 4001) once
  // exp + 30 s has passed — the receiver never publishes.
  const [, detail] = await when(e.client, "state", (s) => s === "reconnecting", 20_000, "the server to close the expired idle socket");
  assert.equal(detail.code, 4001, `closed with ${detail.code} (${detail.reason})`);
  for (let i = 5; i < 10; i++) void pub.publish({ i }); // while it reconnects
  await when(e.client, "state", (s) => s === "open", 10_000, "reopen");
  assert.equal(e.tokenCalls.at(-1), "expired");
  assert.ok(e.errors.some((x) => x.code === "token_expired"), "the token_expired error frame was surfaced");
  await verify(env.base, room, [pub], [e]);
  e.client.close();
  pub.client.close();
});
