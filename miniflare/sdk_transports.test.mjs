// The client SDK (client/dist) on the transports of docs/protocol.md §13 (contract v1.1 §D)
// against the real Worker in workerd: Server-Sent Events read by an EventSource nobody here
// wrote (the npm `eventsource` package), long-polling with Node's fetch, and publishes over
// HTTP. `auto` falls back from a WebSocket that a proxy refuses; every guarantee the SDK
// gives on a WebSocket — order, no duplicates, resume after a cut, exactly-once publishes —
// is checked on each transport.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import WebSocket from "ws";
import { EventSource } from "eventsource";
import { start, connect, token, userToken, now, uid, signedFetch, when } from "./helpers.mjs";
import { Roomcast } from "../client/dist/index.js";

let env;
before(async () => {
  env = await start();
});
after(async () => env?.mf.dispose());

const live = new Set();
afterEach(() => {
  for (const c of live) c.close();
  live.clear();
});

const FAST = { backoff: { baseMs: 25, capMs: 200, stableMs: 2000 }, connectTimeoutMs: 5000 };


/** Resolves once `pred()` holds (checked on every message and every 20 ms). */
async function until(pred, what, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * An SDK client for `user`, with everything it does recorded: delivered messages,
 * resyncs, errors, states, the token reasons asked for and the transports it moved to.
 */
function sdk(room, user, { tokenFor, ...options } = {}) {
  const reasons = [];
  const client = new Roomcast({
    url: env.base,
    room,
    token: async (ctx) => {
      reasons.push(ctx.reason);
      return tokenFor ? tokenFor(ctx) : userToken(user);
    },
    WebSocket,
    EventSource,
    fetch,
    ...FAST,
    ...options,
  });
  live.add(client);
  const rec = { client, reasons, messages: [], resyncs: [], errors: [], states: [], switches: [] };
  client.on("message", (m) => rec.messages.push(m));
  client.on("resync", (r) => rec.resyncs.push(r));
  client.on("error", (e) => rec.errors.push(e));
  client.on("state", (s, d) => rec.states.push({ s, d }));
  client.on("transport", (t, d) => rec.switches.push(`${d.previous}→${t}`));
  rec.open = () => (client.state === "open" ? Promise.resolve() : when(client, "state", (s) => s === "open"));
  rec.closed = () => (client.state === "closed" ? Promise.resolve() : when(client, "state", (s) => s === "closed"));
  return rec;
}

/** Publishes `n` messages through the server API (ids `${prefix}-1`…), `parallel` at a time. */
async function serverPublish(room, prefix, n, parallel = 8) {
  let next = 1;
  const seqs = new Map();
  const worker = async () => {
    while (next <= n) {
      const i = next++;
      const res = await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, JSON.stringify({ id: `${prefix}-${i}`, event: "chat", data: { i } }));
      assert.equal(res.status, 200, await res.clone().text());
      seqs.set(i, (await res.json()).seq);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return seqs;
}

/** The room's stored messages (history API), every page. */
async function history(room) {
  const all = [];
  for (let since = 0; ; ) {
    const res = await signedFetch(env.base, "GET", `/v1/rooms/${room}/messages?since=${since}&limit=1000`);
    assert.equal(res.status, 200);
    const { messages } = await res.json();
    all.push(...messages);
    if (messages.length < 1000) return all;
    since = messages.at(-1).seq;
  }
}

/** Asserts that `messages` are durable, strictly consecutive from `from`, each seq once. */
function assertGapless(messages, from, what) {
  const seqs = messages.filter((m) => !m.ephemeral).map((m) => m.seq);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => from + i), `${what}: in order, no gap, no duplicate`);
}

/**
 * A stand-in for a proxy that refuses WebSocket upgrades: any `Upgrade` gets 403. A
 * WebSocket class that connects to it instead of the Worker.
 */
async function upgradeBlocker() {
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  let refused = 0;
  server.on("upgrade", (_req, socket) => {
    refused++;
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 21\r\nConnection: close\r\n\r\n<h1>Blocked</h1>\r\n\r\n");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  class BlockedWebSocket extends WebSocket {
    constructor(url, protocols) {
      const u = new URL(url);
      u.host = `127.0.0.1:${port}`;
      super(u.href, protocols);
    }
  }
  return { BlockedWebSocket, refused: () => refused, close: () => new Promise((r) => server.close(r)) };
}

// ---- auto -------------------------------------------------------------------------------

test("auto: a WebSocket refused by a proxy falls back to SSE, which carries presence, a burst of 300 in order, and exactly-once publishes", async () => {
  const room = uid("sse");
  const blocker = await upgradeBlocker();
  try {
    const alice = await connect(env.wsBase, room, await userToken("alice"));
    const bob = sdk(room, "bob", { WebSocket: blocker.BlockedWebSocket });
    await bob.open();
    assert.equal(bob.client.transport, "sse");
    assert.deepEqual(bob.switches, ["websocket→sse"]);
    assert.equal(blocker.refused(), 2, "two WebSocket attempts (fallbackAfter) were refused first");
    assert.ok(bob.client.connectionId, "the stream's welcome names its connection");
    assert.deepEqual([...bob.client.presence.keys()].sort(), ["alice", "bob"]);
    await alice.next((f) => f.type === "presence" && f.op === "join" && f.user === "bob", "bob's join");

    // A burst from a backend arrives whole, in order, once each.
    const seqs = await serverPublish(room, "burst", 300);
    await until(() => bob.messages.length >= 300, "300 messages over SSE");
    assertGapless(bob.messages, 1, "SSE burst");
    assert.deepEqual(bob.messages.map((m) => m.data.i), [...seqs.entries()].sort((a, b) => a[1] - b[1]).map(([i]) => i));

    // Publishes go over HTTP, one at a time and in order; each reaches the room once.
    const results = await Promise.all(Array.from({ length: 25 }, (_, i) => bob.client.publish("chat", { n: i }, { id: `bob-${i}` })));
    assert.deepEqual(results.map((r) => r.seq), Array.from({ length: 25 }, (_, i) => 301 + i), "in publish order");
    assert.ok(results.every((r) => !r.duplicate));
    const seen = await alice.nextN((f) => f.type === "message" && String(f.id).startsWith("bob-"), 25, "bob's messages");
    assert.deepEqual(seen.map((f) => f.id), results.map((r) => r.id));
    assert.ok(seen.every((f) => f.from?.user === "bob" && f.from.conn === bob.client.connectionId), "from bob's stream");
    // Not echoed to bob, and no gap after them.
    await serverPublish(room, "after", 1);
    await until(() => bob.messages.length === 301, "the next message");
    assert.equal(bob.messages.at(-1).seq, 326);
    assert.deepEqual(bob.resyncs, []);

    // The HTTP publish shares the room's id space: the same id again, by the SDK, the
    // server API or a socket, is the original seq, not a second message.
    const again = await bob.client.publish("chat", { n: 0 }, { id: "bob-0" });
    assert.deepEqual(again, { id: "bob-0", seq: 301, duplicate: true });
    const api = await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, JSON.stringify({ id: "bob-1", event: "chat", data: {} }));
    assert.deepEqual([(await api.json()).seq, (await alice.publish("bob-2")).seq], [302, 303]);
    const stored = (await history(room)).filter((m) => String(m.id).startsWith("bob-"));
    assert.equal(stored.length, 25, "each publish stored once");
    alice.close();
  } finally {
    await blocker.close();
  }
});

test("auto: a §10 refusal on the WebSocket is obeyed — no fallback to SSE", async () => {
  let sources = 0;
  class CountingEventSource extends EventSource {
    constructor(...args) {
      super(...args);
      sources++;
    }
  }
  const p = sdk(uid("sse"), "ada", { EventSource: CountingEventSource, tokenFor: () => token({ sub: "ada", rooms: { "other-*": ["read"] } }) });
  await p.closed();
  assert.deepEqual([p.errors.at(-1).code, p.errors.at(-1).fatal, p.errors.at(-1).closeCode], ["forbidden", true, 4403]);
  assert.equal(p.client.transport, "websocket");
  assert.equal(sources, 0);
});

// ---- SSE ----------------------------------------------------------------------------------

/**
 * A fetch for the EventSource whose open streams the test can cut, as a network would:
 * the body errors mid-stream, and the EventSource reports a failure.
 */
function cuttableFetch() {
  const streams = new Set();
  const f = async (url, init) => {
    const res = await fetch(url, init);
    if (!res.body) return res;
    const reader = res.body.getReader();
    let controller;
    const body = new ReadableStream({
      start(c) {
        controller = c;
      },
      async pull(c) {
        try {
          const { value, done } = await reader.read();
          if (done) c.close();
          else c.enqueue(value);
        } catch (e) {
          c.error(e);
        }
      },
      cancel: (why) => reader.cancel(why),
    });
    const entry = {
      cut() {
        streams.delete(entry);
        controller.error(new TypeError("network connection lost"));
        reader.cancel().catch(() => {});
      },
    };
    streams.add(entry);
    return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
  f.cutAll = () => {
    const n = streams.size;
    for (const s of [...streams]) s.cut();
    return n;
  };
  return f;
}

test("sse: a stream cut while messages keep arriving resumes with nothing missed and nothing twice", async () => {
  const room = uid("sse");
  const cuttable = cuttableFetch();
  class CuttableEventSource extends EventSource {
    constructor(url, init) {
      super(url, { ...init, fetch: cuttable });
    }
  }
  const p = sdk(room, "carol", { transport: "sse", EventSource: CuttableEventSource });
  await p.open();
  const firstConn = p.client.connectionId;
  let publishing = true;
  const published = (async () => {
    let i = 0;
    while (publishing) await serverPublish(room, `live${i++}`, 10, 2);
    return i * 10;
  })();
  for (let cut = 0; cut < 3; cut++) {
    await until(() => p.messages.length >= 20 * (cut + 1), `messages before cut ${cut + 1}`);
    assert.equal(cuttable.cutAll(), 1, "one stream open");
    await when(p.client, "state", (s) => s === "reconnecting");
    await p.open();
  }
  publishing = false;
  const total = await published;
  await until(() => p.messages.length >= total, `${total} messages`);
  await new Promise((r) => setTimeout(r, 200));
  assertGapless(p.messages, 1, "across three cuts");
  assert.equal(p.messages.length, total);
  assert.deepEqual(p.resyncs, []);
  assert.notEqual(p.client.connectionId, firstConn, "a new stream");
  assert.ok(p.states.filter((x) => x.s === "open").length >= 4);
  assert.ok(p.states.every((x) => x.d.transport === "sse"));
});

test("sse: token expiry ends the stream with event close 4001; the SDK gets a fresh token and resumes", async () => {
  const room = uid("sse");
  let calls = 0;
  // Valid for ~3 s more (30 s leeway): the room closes the stream when it runs out.
  const p = sdk(room, "dave", { transport: "sse", tokenFor: () => (++calls === 1 ? userToken("dave", { exp: now() - 27 }) : userToken("dave")) });
  await p.open();
  await serverPublish(room, "before", 3);
  await when(p.client, "state", (s, d) => s === "reconnecting" && d.code === 4001, 15_000);
  await serverPublish(room, "between", 3);
  await p.open();
  assert.deepEqual(p.reasons, ["connect", "expired"]);
  await serverPublish(room, "after", 3);
  await until(() => p.messages.length === 9, "nine messages");
  assertGapless(p.messages, 1, "across the token refresh");
});

test("sse refusals (plain HTTP answers, read by the SDK's probe): forbidden stops; an expired token is refreshed once, then stops", async () => {
  const forbidden = sdk(uid("sse"), "eve", { transport: "sse", tokenFor: () => token({ sub: "eve", rooms: { "other-*": ["read"] } }) });
  await forbidden.closed();
  assert.deepEqual([forbidden.errors.at(-1).code, forbidden.errors.at(-1).fatal, forbidden.errors.at(-1).closeCode], ["forbidden", true, 4403]);
  assert.match(forbidden.errors.at(-1).message, /no "read" permission/);

  const expired = sdk(uid("sse"), "eve", { transport: "sse", tokenFor: () => userToken("eve", { exp: now() - 120 }) });
  await expired.closed();
  assert.deepEqual(expired.reasons, ["connect", "expired"]);
  assert.equal(expired.errors.at(-1).code, "token_expired");
});

test("sse: HTTP publishes over the rate limit wait out 429 and still land exactly once, in order", async () => {
  // 4 a second after a burst of 2: 12 publishes cannot all pass, however slow the machine.
  const strict = await start({ bindings: { RATE_LIMIT_PER_SEC: "4", RATE_LIMIT_BURST: "2" } });
  try {
    const room = uid("sse");
    const statuses = [];
    const recording = async (url, init) => {
      const res = await fetch(url, init);
      if (init?.method === "POST") statuses.push(res.status);
      return res;
    };
    const client = new Roomcast({ url: strict.base, room, token: () => userToken("fay"), transport: "sse", EventSource, fetch: recording, ...FAST });
    live.add(client);
    await when(client, "state", (s) => s === "open");
    const observer = await connect(strict.wsBase, room, await userToken("obs"));
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => client.publish("chat", { i }, { id: `fay-${i}` })));
    assert.deepEqual(results.map((r) => r.seq), Array.from({ length: 12 }, (_, i) => i + 1));
    assert.ok(statuses.includes(429), `rate limited at least once (${statuses.join(",")})`);
    assert.equal(statuses.filter((s) => s === 200).length, 12, "one accepted POST per publish");
    const seen = await observer.nextN((f) => f.type === "message", 12, "fay's messages");
    assert.deepEqual(seen.map((f) => f.id), results.map((r) => r.id));
    observer.close();
  } finally {
    for (const c of live) c.close();
    live.clear();
    await strict.mf.dispose();
  }
});

// ---- long-poll --------------------------------------------------------------------------

test("longpoll: open within a second, 250 waiting messages across polls in order, exactly-once publishes not delivered back", async () => {
  const room = uid("lp");
  const observer = await connect(env.wsBase, room, await userToken("obs"));
  await serverPublish(room, "old", 5); // before the client: not delivered, as after a welcome
  const started = Date.now();
  const p = sdk(room, "gus", { transport: "longpoll", pollTimeoutSecs: 3 });
  await p.open();
  assert.ok(Date.now() - started < 3000, `open after ${Date.now() - started} ms`);
  assert.equal(p.client.seq, 5);
  assert.equal(p.client.user, "gus");
  assert.equal(p.client.connectionId, null);

  await serverPublish(room, "lp", 250);
  await until(() => p.messages.length >= 250, "250 messages over long-poll");
  assertGapless(p.messages, 6, "long-poll");

  const results = [];
  for (let i = 0; i < 5; i++) results.push(await p.client.publish("chat", { i }, { id: `gus-${i}` }));
  assert.deepEqual(results.map((r) => r.seq), [256, 257, 258, 259, 260]);
  const seen = await observer.nextN((f) => f.type === "message" && String(f.id).startsWith("gus-"), 5, "gus's messages");
  assert.deepEqual(seen.map((f) => f.id), results.map((r) => r.id));
  await serverPublish(room, "next", 1);
  await until(() => p.messages.length === 251, "the next message");
  assert.equal(p.messages.at(-1).seq, 261, "own messages not delivered back, and no gap for them");
  assert.deepEqual(p.resyncs, []);
  observer.close();
});

test("longpoll: a poll cut by the network resumes from its position; forbidden stops", async () => {
  const room = uid("lp");
  let failNext = false;
  const flaky = async (url, init) => {
    if (failNext && String(url).includes("/poll")) {
      failNext = false;
      throw new TypeError("fetch failed");
    }
    return fetch(url, init);
  };
  const p = sdk(room, "hal", { transport: "longpoll", pollTimeoutSecs: 2, fetch: flaky });
  await p.open();
  await serverPublish(room, "a", 10);
  await until(() => p.messages.length === 10, "ten");
  failNext = true;
  await serverPublish(room, "b", 10);
  await until(() => p.messages.length === 20, "twenty", 15_000);
  assertGapless(p.messages, 1, "across a failed poll");

  const forbidden = sdk(uid("lp"), "hal", { transport: "longpoll", tokenFor: () => token({ sub: "hal", rooms: { "other-*": ["read"] } }) });
  await forbidden.closed();
  assert.deepEqual([forbidden.errors.at(-1).code, forbidden.errors.at(-1).fatal], ["forbidden", true]);
});

// ---- resync -----------------------------------------------------------------------------

test("sse and long-poll: away for longer than the history holds → resync not_recovered, then live again", async () => {
  const short = await start({ bindings: { HISTORY_LIMIT: "10" } });
  try {
    for (const transport of ["sse", "longpoll"]) {
      const room = uid(transport);
      let offline = false;
      const net = async (url, init) => {
        if (offline) throw new TypeError("fetch failed: network is down");
        return fetch(url, init);
      };
      class NetEventSource extends EventSource {
        constructor(url, init) {
          super(url, { ...init, fetch: net });
        }
      }
      const client = new Roomcast({ url: short.base, room, token: () => userToken("ivy"), transport, EventSource: NetEventSource, fetch: net, pollTimeoutSecs: 2, ...FAST });
      live.add(client);
      const messages = [];
      const resyncs = [];
      client.on("message", (m) => messages.push(m));
      client.on("resync", (r) => resyncs.push(r));
      await when(client, "state", (s) => s === "open");
      const publish = async (prefix, n) => {
        for (let i = 1; i <= n; i++) {
          const res = await signedFetch(short.base, "POST", `/v1/rooms/${room}/messages`, JSON.stringify({ id: `${prefix}-${i}`, event: "chat", data: { i } }));
          assert.equal(res.status, 200);
        }
      };
      await publish("a", 3);
      await until(() => messages.length === 3, `${transport}: three`);
      offline = true;
      if (transport === "sse") client.reconnect(); // the stream is cut; reconnecting fails while offline
      await when(client, "state", (s) => s === "reconnecting");
      await publish("b", 80);
      offline = false;
      await when(client, "resync", () => true, 20_000);
      assert.deepEqual(resyncs.map((r) => [r.reason, r.previousSeq, r.seq]), [["not_recovered", 3, 83]], transport);
      await publish("c", 2);
      await until(() => messages.length === 5, `${transport}: live after the resync`);
      assert.deepEqual(messages.map((m) => m.seq), [1, 2, 3, 84, 85], transport);
      client.close();
    }
  } finally {
    for (const c of live) c.close();
    live.clear();
    await short.mf.dispose();
  }
});
