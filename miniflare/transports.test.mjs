// Clients without WebSockets (docs/protocol.md §13): Server-Sent Events, long-polling and
// HTTP publish, against the real Worker in workerd. The Worker relays each SSE stream and
// long-poll over an internal WebSocket to the room, which accepts it with the Hibernation
// API like any socket; the hibernation test proves the room can still be evicted.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { EventSource } from "eventsource";
import { start, connect, sse, token, userToken, serviceToken, signedFetch, uid, until, now, holder } from "./helpers.mjs";

const HISTORY_LIMIT = 200;
const ORIGIN = "https://app.example";
/** The token clock leeway (contract §3). */
const LEEWAY_SECS = 30;
// workerd evicts an idle room this long after its last event (see durable.test.mjs).
const EVICTION_IDLE_MS = 10_000;

let env; // ALLOWED_ORIGINS set, default rate limits
let slow; // a small publish bucket and a 2 s SSE keep-alive, any origin
before(async () => {
  env = await start({ bindings: { HISTORY_LIMIT: String(HISTORY_LIMIT), ALLOWED_ORIGINS: ORIGIN } });
  slow = await start({ bindings: { RATE_LIMIT_PER_SEC: "1", RATE_LIMIT_BURST: "3", SSE_KEEPALIVE_SECS: "2" } });
});
after(async () => {
  await env?.mf.dispose();
  await slow?.mf.dispose();
});

const bearer = (t) => ({ Authorization: `Bearer ${t}` });

/** Publishes `n` durable messages through the server API, `parallel` at a time. */
async function serverPublish(base, room, prefix, n, parallel = 20) {
  const results = [];
  for (let i = 0; i < n; i += parallel) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + parallel); j++) {
      const body = JSON.stringify({ id: `${prefix}-${j}`, event: "bulk", data: { j } });
      batch.push(signedFetch(base, "POST", `/v1/rooms/${room}/messages`, body).then((r) => r.json()));
    }
    results.push(...(await Promise.all(batch)));
  }
  return results;
}

function poll(base, room, tok, query) {
  return fetch(`${base}/v1/rooms/${room}/poll?${new URLSearchParams(query)}`, { headers: bearer(tok) });
}

function httpPublish(base, room, tok, body, headers = {}) {
  return fetch(`${base}/v1/rooms/${room}/publish`, {
    method: "POST",
    headers: { ...bearer(tok), "Content-Type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

const seqsOf = (events) => events.map((e) => e.frame.seq);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

// ---- refusals ------------------------------------------------------------------------------

test("every route refuses like the socket route, over plain HTTP, without waking a room", async () => {
  const room = uid("refused");
  const mark = env.logs.length;
  const routes = {
    events: (headers, qs = "") => fetch(`${env.base}/v1/rooms/${room}/events${qs}`, { headers }),
    poll: (headers, qs = "") => fetch(`${env.base}/v1/rooms/${room}/poll${qs}`, { headers }),
    publish: (headers, qs = "") =>
      fetch(`${env.base}/v1/rooms/${room}/publish${qs}`, { method: "POST", headers, body: JSON.stringify({ id: "x", event: "e" }) }),
  };
  const tenantTok = await token({ sub: "t", tenant: "acme", rooms: { "*": ["read", "write"] } });
  const cases = [
    ["no token", {}, "", 401, "missing_token"],
    ["a garbage token", bearer("not.a.jwt"), "", 401, "invalid_token"],
    ["an expired token", bearer(await userToken("old", { exp: now() - LEEWAY_SECS - 60 })), "", 401, "token_expired"],
    ["an expired token in the query", {}, `?access_token=${await userToken("old", { exp: now() - LEEWAY_SECS - 60 })}`, 401, "token_expired"],
    ["a service token", bearer(await serviceToken()), "", 403, "forbidden"],
    ["another tenant", bearer(tenantTok), "?tenant=other", 403, "forbidden"],
    ["a disallowed origin", { ...bearer(await userToken("o")), Origin: "https://evil.example" }, "", 403, "origin_not_allowed"],
  ];
  for (const [name, route] of Object.entries(routes)) {
    for (const [what, headers, qs, status, code] of cases) {
      const res = await route(headers, qs);
      assert.equal(res.status, status, `${name}: ${what}`);
      const body = await res.json();
      assert.equal(body.error.code, code, `${name}: ${what}`);
      if (status === 401) assert.equal(res.headers.get("www-authenticate"), 'Bearer error="invalid_token"', `${name}: ${what}`);
      if (code === "origin_not_allowed") assert.equal(res.headers.get("access-control-allow-origin"), null, "no CORS for a refused origin");
    }
  }
  // Permissions: reading needs `read`, publishing needs `write`.
  const writeOnly = await token({ sub: "w", rooms: { [room]: ["write"] } });
  const readOnly = await token({ sub: "r", rooms: { [room]: ["read"] } });
  for (const res of [await routes.events(bearer(writeOnly)), await routes.poll(bearer(writeOnly)), await routes.publish(bearer(readOnly))]) {
    assert.equal(res.status, 403);
    assert.equal((await res.json()).error.code, "forbidden");
  }
  // Bad parameters and bodies are 400s, and wrong methods 405s with Allow.
  const ok = bearer(await userToken("u"));
  const bad = [
    [routes.events(ok, "?presence=maybe"), "bad_request"],
    [routes.events(ok, "?since=-1"), "bad_request"],
    [routes.events({ ...ok, "Last-Event-ID": "garbage" }), "bad_request"],
    [routes.poll(ok, "?timeout=31"), "bad_request"],
    [routes.poll(ok, "?timeout=0"), "bad_request"],
    [httpPublish(env.base, room, await userToken("u"), "{not json"), "bad_request"],
    [httpPublish(env.base, room, await userToken("u"), { event: "chat" }), "invalid_id"],
    [httpPublish(env.base, room, await userToken("u"), { id: "has space", event: "chat" }), "invalid_id"],
    [fetch(`${env.base}/v1/rooms/bad%20room/events`, { headers: ok }), "bad_room"],
  ];
  for (const [promise, code] of bad) {
    const res = await promise;
    assert.equal(res.status, 400, code);
    assert.equal((await res.json()).error.code, code);
  }
  const tooBig = await httpPublish(env.base, room, await userToken("u"), { id: "big", event: "e", data: "x".repeat(70_000) });
  assert.equal(tooBig.status, 413);
  const wrong = await fetch(`${env.base}/v1/rooms/${room}/events`, { method: "POST", headers: ok });
  assert.deepEqual([wrong.status, wrong.headers.get("allow")], [405, "GET, OPTIONS"]);
  const wrongPublish = await fetch(`${env.base}/v1/rooms/${room}/publish`, { headers: ok });
  assert.deepEqual([wrongPublish.status, wrongPublish.headers.get("allow")], [405, "POST, OPTIONS"]);
  // Nothing above reached the room. A log marker from a served request proves the lines
  // are in (they arrive in order).
  const probe = await serverPublish(env.base, uid("probe"), "probe", 1);
  await env.nextLog((l) => l.event === "room.start" && l.room_key?.endsWith(probe[0].room), { from: mark, what: "the probe's room.start" });
  assert.equal(env.logs.slice(mark).filter((l) => l.room_key === `/${room}`).length, 0, "no room was constructed for a refused request");
});

test("CORS: preflights and answers for allowed origins, refusals included", async () => {
  const room = uid("cors");
  const pre = await fetch(`${env.base}/v1/rooms/${room}/publish`, {
    method: "OPTIONS",
    headers: { Origin: ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type" },
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get("access-control-allow-origin"), ORIGIN);
  assert.match(pre.headers.get("access-control-allow-methods"), /POST/);
  assert.equal(pre.headers.get("access-control-allow-headers"), "authorization, content-type");
  assert.equal(pre.headers.get("access-control-allow-credentials"), null, "tokens, never cookies");
  const evil = await fetch(`${env.base}/v1/rooms/${room}/events`, { method: "OPTIONS", headers: { Origin: "https://evil.example" } });
  assert.deepEqual([evil.status, (await evil.json()).error.code], [403, "origin_not_allowed"]);
  // A refusal a page can read, and a stream it can open.
  const refused = await fetch(`${env.base}/v1/rooms/${room}/poll`, { headers: { Origin: ORIGIN } });
  assert.deepEqual([refused.status, refused.headers.get("access-control-allow-origin")], [401, ORIGIN]);
  const stream = await sse(env.base, room, await userToken("c"), { headers: { Origin: ORIGIN } });
  assert.equal(stream.res.headers.get("access-control-allow-origin"), ORIGIN);
  assert.match(stream.res.headers.get("content-type"), /^text\/event-stream/);
  assert.match(stream.res.headers.get("vary"), /Origin/);
  await stream.abort();
  const published = await httpPublish(env.base, room, await userToken("c"), { id: "c1", event: "e" }, { Origin: ORIGIN });
  assert.deepEqual([published.status, published.headers.get("access-control-allow-origin")], [200, ORIGIN]);
  // The other routes keep no CORS headers.
  const ws = await signedFetch(env.base, "GET", `/v1/rooms/${room}/messages`, "", { headers: { Origin: ORIGIN } });
  assert.equal(ws.headers.get("access-control-allow-origin"), null);
});

// ---- SSE -------------------------------------------------------------------------------

test("sse: a burst of 300 arrives gapless and in order, ids are epoch:seq, presence=off gets no presence", async () => {
  const room = uid("burst");
  const a = await sse(env.base, room, await userToken("ann"));
  const b = await sse(env.base, room, await userToken("ben"), { transport: "query", query: "presence=off" });
  const { epoch } = a.welcome;
  assert.equal(a.welcomeId, `${epoch}:0`, "a welcome carries the position the client holds");
  assert.deepEqual([b.welcome.user, b.welcome.presence.count], ["ben", 2]);
  await a.next((e) => e.event === "presence" && e.frame.op === "join" && e.frame.user === "ben", "ben's join");
  const ws = await connect(env.wsBase, room, await userToken("cat"));
  assert.deepEqual(ws.welcome.presence.users.map((u) => u.user), ["ann", "ben", "cat"], "SSE clients are present");
  await a.next((e) => e.event === "presence" && e.frame.user === "cat", "cat's join");

  await serverPublish(env.base, room, "burst", 300);
  ws.send({ type: "publish", ephemeral: true, event: "cursor", data: { x: 1 } });
  for (const s of [a, b]) {
    const msgs = await s.nextN((e) => e.event === "message" && e.frame.seq !== undefined, 300, "300 messages");
    assert.deepEqual(seqsOf(msgs), range(1, 300), "gapless, in order, once each");
    assert.ok(msgs.every((e) => e.id === `${epoch}:${e.frame.seq}` && e.frame.type === e.event));
    const signal = await s.next((e) => e.frame.ephemeral === true, "the cursor");
    assert.equal(signal.id, undefined, "ephemeral messages carry no SSE id");
  }
  assert.equal(b.events.filter((e) => e.event === "presence").length, 0, "presence=off");
  ws.close();
  await a.next((e) => e.event === "presence" && e.frame.op === "leave" && e.frame.user === "cat", "cat's leave");
  await Promise.all([a.abort(), b.abort()]);
});

test("sse: resume by Last-Event-ID after a cut while messages keep arriving: nothing missed, nothing twice", async () => {
  const room = uid("resume");
  const first = await sse(env.base, room, await userToken("rex"));
  const { epoch } = first.welcome;
  const TOTAL = 150;
  const publishing = (async () => {
    for (let i = 0; i < TOTAL; i++) {
      const r = await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, JSON.stringify({ id: `r-${i}`, event: "e", data: { i } }));
      assert.equal(r.status, 200);
    }
  })();
  await first.nextN((e) => e.event === "message", 40, "the first 40");
  await first.abort();
  const lastId = first.events.filter((e) => e.id).at(-1).id;
  const before = first.messages();
  // The cut stream's relay leaves the room at the next message the Worker cannot write.
  await env.nextLog((l) => l.event === "socket.close" && l.conn === first.welcome.conn, { what: "the cut stream's socket.close" });
  // The header is newer than the URL an EventSource reconnects to, so it wins over a
  // stale ?since= (which would replay duplicates).
  const second = await sse(env.base, room, await userToken("rex"), { headers: { "Last-Event-ID": lastId }, query: `since=1&epoch=${epoch}` });
  assert.equal(second.welcome.resume.recovered, true);
  await publishing;
  const after = await second.nextN((e) => e.event === "message", TOTAL - before.length, "the rest");
  assert.deepEqual([...seqsOf(before), ...seqsOf(after)], range(1, TOTAL));
  assert.equal(second.welcomeId, lastId, "the resumed welcome carries the position it resumed from");
  // ?since=&epoch= resumes the same way (an EventSource made with them in its URL).
  const byQuery = await sse(env.base, room, await userToken("rex"), { query: `since=${TOTAL - 5}&epoch=${epoch}` });
  assert.deepEqual(byQuery.welcome.resume, { requested: true, recovered: true, replayed: 5 });
  assert.deepEqual(seqsOf(await byQuery.nextN((e) => e.event === "message", 5, "the replay")), range(TOTAL - 4, TOTAL));
  await byQuery.abort();
  // A stale or foreign position is not recovered: the client must resync.
  const lost = await sse(env.base, room, await userToken("rex"), { headers: { "Last-Event-ID": `e_0000000000000000:3` } });
  assert.deepEqual(lost.welcome.resume, { requested: true, recovered: false, replayed: 0 });
  assert.equal(lost.welcomeId, `${epoch}:${TOTAL}`);
  await Promise.all([second.abort(), lost.abort()]);
});

test("sse: the npm eventsource package reconnects by itself with Last-Event-ID and misses nothing", async () => {
  const room = uid("es");
  const tok = await userToken("eve");
  const requests = [];
  let cut;
  // The package's own fetch, wrapped so the test can end a response body cleanly (a
  // network cut the client sees as the end of the stream, after which it reconnects).
  const cuttable = async (url, init) => {
    requests.push({ url: String(url), lastEventId: new Headers(init.headers).get("last-event-id") });
    const res = await fetch(url, init);
    if (res.status !== 200) return res;
    const reader = res.body.getReader();
    const body = new ReadableStream({
      start(controller) {
        cut = () => {
          reader.cancel().catch(() => {});
          controller.close();
        };
      },
      async pull(controller) {
        try {
          const { value, done } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        } catch {
          // cut
        }
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  const es = new EventSource(`${env.base}/v1/rooms/${room}/events?access_token=${tok}`, { fetch: cuttable });
  const seen = [];
  const welcomes = [];
  let wake = () => {};
  es.addEventListener("welcome", (e) => {
    welcomes.push(JSON.parse(e.data));
    wake();
  });
  es.addEventListener("message", (e) => {
    seen.push({ seq: JSON.parse(e.data).seq, lastEventId: e.lastEventId });
    wake();
  });
  const waitFor = (pred, what) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), 20_000);
      const check = () => {
        if (!pred()) return;
        clearTimeout(timer);
        wake = () => {};
        resolve();
      };
      wake = check;
      check();
    });
  try {
    await waitFor(() => welcomes.length === 1, "the welcome");
    const { epoch } = welcomes[0];
    await serverPublish(env.base, room, "es-a", 30);
    await waitFor(() => seen.length >= 30, "30 messages");
    cut();
    // Published while the client is away (it waits ~3 s before reconnecting).
    await serverPublish(env.base, room, "es-b", 30);
    await waitFor(() => welcomes.length === 2, "the reconnect");
    await serverPublish(env.base, room, "es-c", 10);
    await waitFor(() => seen.length >= 70, "70 messages");
    assert.deepEqual(seen.map((m) => m.seq), range(1, 70), "nothing missed, nothing twice");
    assert.ok(seen.every((m) => m.lastEventId === `${epoch}:${m.seq}`));
    assert.equal(requests.length, 2);
    assert.equal(requests[0].lastEventId, null);
    assert.equal(requests[1].lastEventId, `${epoch}:30`, "the package sent the last id it saw");
    assert.equal(welcomes[1].resume.recovered, true);
    assert.equal(welcomes[1].resume.replayed, 30);
  } finally {
    es.close();
  }
});

test("sse: token expiry ends the stream with event close 4001", async () => {
  const room = uid("exp");
  // Valid for ~3 s more inside the clock leeway; the room's alarm closes it then.
  const s = await sse(env.base, room, await userToken("tia", { exp: now() - LEEWAY_SECS + 3 }));
  const err = await s.next((e) => e.event === "error", "the error event", 20_000);
  assert.equal(err.frame.code, "token_expired");
  const closed = await s.next((e) => e.event === "close", "event: close");
  assert.deepEqual(closed.frame, { code: 4001, reason: "token_expired" });
  await s.ended;
  assert.equal(s.events.at(-1).event, "close", "close is the last event; the server ended the stream");
  assert.equal(s.error, undefined);
});

test("sse: the relay's receipts keep a reading stream within a small bound; a stalled one ends with event close 4009 and resumes", async () => {
  const room = uid("slowsse");
  const tok = await userToken("sly");
  const limited = await start({ bindings: { MAX_PENDING_BYTES: "65536" } });
  try {
    // A stream that reads: 1.2 MB as fast as the test can publish. Estimated without
    // receipts (drained at 2 × 64 KiB/s, 8 × 64 KiB allowed) it would be closed once
    // publishing outran 128 KiB/s; the relay's receipts (every 16 KiB here) keep it open.
    const readingRoom = uid("reading");
    const reader = await sse(limited.base, readingRoom, tok);
    const chunk = "y".repeat(8000);
    for (let i = 0; i < 150; i++) {
      const body = JSON.stringify({ id: `r-${i}`, event: "e", data: chunk });
      assert.equal((await signedFetch(limited.base, "POST", `/v1/rooms/${readingRoom}/messages`, body)).status, 200);
    }
    const read = await reader.nextN((e) => e.event === "message", 150, "150 messages");
    assert.deepEqual(seqsOf(read), range(1, 150));
    assert.equal(reader.events.filter((e) => e.event === "close").length, 0, "not closed as too slow");
    assert.ok(!limited.logs.some((l) => l.event === "socket.kick" && l.conn === reader.welcome.conn));
    await reader.abort();

    // A reader that never reads: the body is opened and then left alone. What the
    // runtime manages to write into the connection's buffers counts as read (it has left
    // the runtime); once those are full, the room's count grows and it closes the stream.
    const controller = new AbortController();
    const res = await fetch(`${limited.base}/v1/rooms/${room}/events`, { headers: bearer(tok), signal: controller.signal });
    assert.equal(res.status, 200);
    const kicked = () => limited.logs.some((l) => l.event === "socket.kick" && l.code === "4009");
    // One at a time, so that each flush sends one message well under the bound: the
    // close is the stall's doing, not a single oversized batch's.
    const results = [];
    for (let i = 0; i < 4000 && !kicked(); i++) {
      const body = JSON.stringify({ id: `big-${i}`, event: "e", data: chunk });
      results.push(await (await signedFetch(limited.base, "POST", `/v1/rooms/${room}/messages`, body)).json());
    }
    const kick = await limited.nextLog((l) => l.event === "socket.kick" && l.code === "4009", { what: "the 4009 kick" });
    // Reading now: everything the room sent comes first, then the close.
    const stream = new (await import("./helpers.mjs")).SseStream(res, controller);
    const closed = await stream.next((e) => e.event === "close", "event: close", 30_000);
    assert.deepEqual(closed.frame, { code: 4009, reason: "too_slow" });
    const got = stream.messages();
    assert.deepEqual(seqsOf(got), range(1, got.length), "in order up to the close");
    assert.ok(got.length < results.length, `closed before all ${results.length} (got ${got.length}, kick ${JSON.stringify(kick)})`);
    const back = await sse(limited.base, room, tok, { headers: { "Last-Event-ID": got.at(-1).id } });
    assert.equal(back.welcome.resume.recovered, true);
    const rest = await back.nextN((e) => e.event === "message", results.length - got.length, "the rest");
    assert.deepEqual(seqsOf(rest), range(got.length + 1, results.length));
    await back.abort();
  } finally {
    await limited.mf.dispose();
  }
});

test("hibernation: a room with only SSE clients and a waiting poll is evicted, and the next message reaches all of them", async () => {
  const room = uid("hib");
  // The object holding ada's relay socket: the room's, or in the sharded pass her shard.
  const isStart = (l) => l.event === "room.start" && l.room_key === holder(room, "ada");
  const a = await sse(slow.base, room, await userToken("ada"));
  const b = await sse(slow.base, room, await userToken("bo"), { query: "presence=off" });
  await serverPublish(slow.base, room, "pre", 1);
  for (const s of [a, b]) await s.next((e) => e.frame.id === "pre-0", "the first message");
  const mark = slow.logs.length;
  const waiting = poll(slow.base, room, await userToken("pia"), { since: 1, epoch: a.welcome.epoch, timeout: 30 });
  const pollOpen = await slow.nextLog((l) => l.event === "socket.open" && l.transport === "poll", { from: mark, what: "the poll's socket.open" });
  assert.equal(slow.logs.filter(isStart).length, 1);
  const idleSince = Date.now();
  const comments = a.comments;
  // Nothing reaches the room for the eviction delay; the Worker keeps both streams alive
  // with keep-alive comments (every 2 s here), which must not wake the room either.
  await until(() => Date.now() - idleSince >= EVICTION_IDLE_MS + 1_000, "the eviction delay", EVICTION_IDLE_MS + 5_000);
  assert.ok(a.comments - comments >= 3, `keep-alive comments while idle: ${a.comments - comments}`);
  await serverPublish(slow.base, room, "post", 1);
  for (const s of [a, b]) await s.next((e) => e.frame.id === "post-0", "the message after the eviction");
  const answered = await (await waiting).json();
  assert.deepEqual(answered.messages.map((m) => m.id), ["post-0"], "the waiting poll got it too");
  await slow.nextLog(isStart, { from: mark, what: "room.start after the idle time (the room was not evicted)" });
  assert.equal(slow.logs.filter(isStart).length, 2, "evicted and constructed again, once");
  assert.deepEqual(seqsOf(a.messages()), [1, 2]);
  assert.equal(b.messages().at(-1).id, `${a.welcome.epoch}:2`);
  // The woken room still knows both streams (and has forgotten the answered poll).
  await slow.nextLog((l) => l.event === "socket.close" && l.conn === pollOpen.conn, { what: "the poll's socket.close" });
  const info = await (await signedFetch(slow.base, "GET", `/v1/rooms/${room}`)).json();
  assert.deepEqual([info.connections, info.users.map((u) => u.user)], [2, ["ada", "bo"]]);
  await Promise.all([a.abort(), b.abort()]);
});

// ---- long-poll ---------------------------------------------------------------------------

test("long-poll: waits for the first durable message (not ephemeral, not presence), or times out", async () => {
  const room = uid("lp");
  const ws = await connect(env.wsBase, room, await userToken("pub"));
  await ws.publish("m1");
  const { epoch } = ws.welcome;
  const tok = await userToken("pol");
  const mark = env.logs.length;
  const waiting = poll(env.base, room, tok, { since: 1, epoch, timeout: 20 });
  await env.nextLog((l) => l.event === "socket.open" && l.transport === "poll" && l.user === "pol", { from: mark, what: "the poll's socket" });
  ws.send({ type: "publish", ephemeral: true, event: "cursor", data: {} });
  const other = await connect(env.wsBase, room, await userToken("joiner"));
  await ws.publish("m2");
  const res = await waiting;
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.deepEqual([body.epoch, body.last_seq, body.recovered], [epoch, 2, true]);
  assert.deepEqual(body.messages.map((m) => [m.type, m.seq, m.id]), [["message", 2, "m2"]]);
  // The poll's socket is gone again, and it never showed in presence.
  await env.nextLog((l) => l.event === "socket.close" && l.code === "1000" && env.logs.some((o) => o.event === "socket.open" && o.transport === "poll" && o.conn === l.conn), { from: mark, what: "the poll's socket.close" });
  assert.equal(ws.frames.filter((f) => f.type === "presence" && f.user === "pol").length, 0, "a poller does not join");
  assert.ok(ws.frames.some((f) => f.type === "presence" && f.user === "joiner"));
  // Nothing new within the timeout: an empty answer.
  const empty = await (await poll(env.base, room, tok, { since: 2, epoch, timeout: 1 })).json();
  assert.deepEqual(empty, { epoch, last_seq: 2, recovered: true, messages: [] });
  await Promise.all([ws.close(), other.close()]);
});

test("long-poll: waiting messages are answered at once, 100 at most, in seq order", async () => {
  const room = uid("lpb");
  await serverPublish(env.base, room, "b", 150);
  const tok = await userToken("pol");
  const first = await (await poll(env.base, room, tok, { since: 0, epoch: (await (await signedFetch(env.base, "GET", `/v1/rooms/${room}`)).json()).epoch })).json();
  assert.deepEqual([first.last_seq, first.recovered], [150, true]);
  assert.deepEqual(first.messages.map((m) => m.seq), range(1, 100));
  const second = await (await poll(env.base, room, tok, { since: 100, epoch: first.epoch })).json();
  assert.deepEqual(second.messages.map((m) => m.seq), range(101, 150));
  assert.deepEqual(second.messages[0], (await (await signedFetch(env.base, "GET", `/v1/rooms/${room}/messages?since=100&limit=1`)).json()).messages[0], "the stored frame, byte for byte");
});

test("long-poll: a wrong epoch, a since beyond the log, a pruned gap or no position is recovered:false with no messages", async () => {
  const room = uid("lpl");
  const published = await serverPublish(env.base, room, "l", HISTORY_LIMIT + 30);
  const { epoch } = published[0];
  const last = HISTORY_LIMIT + 30;
  const tok = await userToken("pol");
  for (const query of [{ since: 5, epoch: "e_0000000000000000" }, { since: last + 5, epoch }, { since: 0, epoch }, {}, { since: 3 }]) {
    const res = await poll(env.base, room, tok, { ...query, timeout: 5 });
    assert.deepEqual(await res.json(), { epoch, last_seq: last, recovered: false, messages: [] }, JSON.stringify(query));
  }
  // Within the retained history it recovers.
  const ok = await (await poll(env.base, room, tok, { since: last - 2, epoch })).json();
  assert.deepEqual(ok.messages.map((m) => m.seq), [last - 1, last]);
});

// ---- HTTP publish ------------------------------------------------------------------------

test("http publish: one id space with WebSocket and server API; from the user or its own stream", async () => {
  const room = uid("pub");
  const ws = await connect(env.wsBase, room, await userToken("wes"));
  const tok = await userToken("hal");
  const post = async (body) => {
    const res = await httpPublish(env.base, room, tok, body);
    assert.equal(res.status, 200, JSON.stringify(body));
    return res.json();
  };
  const a = await ws.publish("x1");
  assert.deepEqual(await post({ id: "x1", event: "chat", data: {} }), { room, epoch: ws.welcome.epoch, seq: a.seq, duplicate: true, delivered: 0 });
  const y = await post({ id: "y1", event: "chat", data: { t: "hi" } });
  assert.deepEqual([y.seq, y.duplicate, y.delivered], [2, false, 1]);
  const api = await (await signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, JSON.stringify({ id: "y1", event: "chat" }))).json();
  assert.deepEqual([api.seq, api.duplicate], [2, true]);
  assert.deepEqual(await ws.publish("y1"), { type: "ack", id: "y1", seq: 2, duplicate: true });
  const m = await ws.next((f) => f.type === "message" && f.id === "y1");
  assert.deepEqual([m.from, m.data], [{ user: "hal", conn: "h_hal" }, { t: "hi" }]);

  // Naming its own SSE stream: the message is from it and skips it unless echo.
  const stream = await sse(env.base, room, tok);
  const own = await post({ id: "z1", event: "chat", conn: stream.welcome.conn });
  const echoed = await post({ id: "z2", event: "chat", conn: stream.welcome.conn, echo: true });
  const z = await ws.nextN((f) => f.type === "message" && String(f.id).startsWith("z"), 2);
  assert.ok(z.every((f) => f.from.user === "hal" && f.from.conn === stream.welcome.conn));
  await stream.next((e) => e.frame.id === "z2", "the echoed message");
  assert.deepEqual(seqsOf(stream.messages()), [echoed.seq], `not ${own.seq}, which it published without echo`);

  // Ephemeral: fanned out, no seq.
  const e = await post({ ephemeral: true, event: "cursor", data: { x: 3 }, key: "k" });
  assert.deepEqual(e, { room, ephemeral: true, delivered: 2 });
  const sig = await ws.next((f) => f.ephemeral === true && f.event === "cursor");
  assert.deepEqual([sig.seq, sig.from.user, sig.key], [undefined, "hal", "k"]);
  await stream.next((ev) => ev.frame.ephemeral === true && ev.id === undefined, "the signal on the stream");
  const head = await (await signedFetch(env.base, "GET", `/v1/rooms/${room}`)).json();
  assert.equal(head.last_seq, 4);
  await Promise.all([ws.close(), stream.abort()]);
});

test("http publish: rate limited per user in the room, with Retry-After and retry_after_ms", async () => {
  const room = uid("rl");
  const tok = await userToken("rick");
  const post = (id, t = tok) => httpPublish(slow.base, room, t, { id, event: "e" }, { Origin: "https://any.example" });
  for (let i = 0; i < 3; i++) assert.equal((await post(`a${i}`)).status, 200);
  const refused = await post("a3");
  assert.equal(refused.status, 429);
  const retry = Number(refused.headers.get("retry-after"));
  const body = await refused.json();
  assert.equal(body.error.code, "rate_limited");
  assert.ok(body.error.retry_after_ms > 0 && body.error.retry_after_ms <= 1000, JSON.stringify(body));
  assert.equal(retry, Math.ceil(body.error.retry_after_ms / 1000), "Retry-After is retry_after_ms in whole seconds, rounded up");
  assert.match(refused.headers.get("access-control-expose-headers"), /Retry-After/, "a page can read it");
  const refusedAt = Date.now();
  // Another user, and the same user's socket, have buckets of their own.
  assert.equal((await post("b0", await userToken("bea"))).status, 200);
  const ws = await connect(slow.wsBase, room, tok);
  assert.equal((await ws.publish("w0")).seq, 5);
  await until(() => Date.now() >= refusedAt + body.error.retry_after_ms, "the advertised wait", 5_000);
  const again = await (await post("a3")).json();
  assert.deepEqual([again.seq, again.duplicate], [6, false], "the refused publish took no seq");
  await ws.close();
});
