// Webhooks to a backend (docs/protocol.md §15) against the real Worker in workerd: a real
// HTTP receiver on loopback, started here, verifies every request's Roomcast-Signature
// with the same scheme as the server API, and answers as each test scripts it.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createHmac, timingSafeEqual } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { start, connect, userToken, signedFetch, uid } from "./helpers.mjs";

/** Polls `pred` (sync or async) until it holds: the room's retries are timed by its alarm,
 * which the runtime gives no event for. */
async function until(pred, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const SECRET = "webhook-secret-for-tests";
const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

/**
 * A receiver: `respond(body)` decides each answer (a status, or "hang" to never answer).
 * Requests whose signature does not verify are answered 401 and not recorded.
 */
async function receiver(respond = () => 200, { secret = SECRET, port = 0 } = {}) {
  const r = { batches: [], rejected: 0, requests: 0, respond };
  r.server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      r.requests++;
      const sig = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(req.headers["roomcast-signature"] ?? "");
      const mac = sig && createHmac("sha256", secret).update(`${sig[1]}\nPOST\n${req.url}\n${body}`).digest();
      if (!sig || !timingSafeEqual(mac, Buffer.from(sig[2], "hex")) || Math.abs(Date.now() / 1000 - Number(sig[1])) > 300) {
        r.rejected++;
        res.writeHead(401).end("bad signature");
        return;
      }
      const parsed = JSON.parse(body);
      const answer = r.respond(parsed);
      if (answer === "hang") return; // never answers; the room gives up after 10 s
      if (answer >= 200 && answer < 300) r.batches.push(parsed);
      res.writeHead(answer).end();
    });
  });
  await new Promise((resolve) => r.server.listen(port, "127.0.0.1", resolve));
  r.port = r.server.address().port;
  r.url = `http://127.0.0.1:${r.port}/hooks/in?app=test`;
  r.events = () => r.batches.flatMap((b) => b.events);
  r.close = () => new Promise((resolve) => { r.server.closeAllConnections?.(); r.server.close(resolve); });
  cleanups.push(() => r.close().catch(() => {}));
  return r;
}

async function worker(hook, bindings = {}, opts = {}) {
  const env = await start({
    ...opts,
    bindings: { WEBHOOK_URL: hook.url, WEBHOOK_SECRET: SECRET, RATE_LIMIT_PER_SEC: "200", RATE_LIMIT_BURST: "200", ...bindings },
  });
  cleanups.push(() => env.mf.dispose());
  return env;
}

const publish = (env, room, id, event = "chat", extra = {}) =>
  signedFetch(env.base, "POST", `/v1/rooms/${room}/messages`, JSON.stringify({ id, event, data: { id }, ...extra }));
/** Prints what the receiver saw (node --test shows it as a diagnostic line of the test). */
function report(t, hook, published) {
  const events = hook.events();
  const unique = new Set(events.map((e) => e.wid)).size;
  t.diagnostic(
    `published ${published}, requests ${hook.requests}, events received ${events.length}, unique wids ${unique}, duplicates ${events.length - unique}, bad-signature refusals ${hook.rejected}`,
  );
}

const status = async (env, room) => (await signedFetch(env.base, "GET", `/v1/rooms/${room}/webhooks`)).json();

test("messages, presence and room events reach the backend signed, in wid order, filtered", async () => {
  const hook = await receiver();
  const env = await worker(hook, { WEBHOOK_EVENTS: "message,presence,room", WEBHOOK_MESSAGE_EVENTS: "chat,order.*" });
  const room = uid();
  const alice = await connect(env.wsBase, room, await userToken("alice", { info: { name: "A" } }));
  await alice.publish("m1", { text: "hi" });
  alice.send({ type: "publish", id: "c1", event: "cursor", data: {} }); // not forwarded by pattern
  alice.send({ type: "publish", ephemeral: true, event: "chat", data: {} }); // ephemeral: never
  assert.equal((await publish(env, room, "o1", "order.paid")).status, 200);
  await alice.close();
  await until(() => hook.events().some((e) => e.kind === "room" && e.op === "vacated"), "room vacated");
  const events = hook.events();
  assert.deepEqual(
    events.map((e) => `${e.kind}:${e.op ?? e.event}`),
    ["presence:join", "room:occupied", "message:chat", "message:order.paid", "presence:leave", "room:vacated"],
  );
  const epoch = alice.welcome.epoch;
  assert.deepEqual(events.map((e) => e.wid), events.map((_, i) => `${epoch}:${i + 1}`), "gapless wids");
  const m1 = events[2];
  assert.deepEqual([m1.seq, m1.id, m1.data, m1.from.user], [1, "m1", { text: "hi" }, "alice"]);
  assert.equal(events[3].from, null);
  assert.deepEqual(events[0].info, { name: "A" });
  for (const b of hook.batches) assert.deepEqual([b.room, b.tenant, b.epoch], [room, null, epoch]);
  assert.equal(hook.rejected, 0);
  const s = await status(env, room);
  assert.deepEqual([s.enabled, s.pending, s.dead], [true, 0, 0]);
});

test("a receiver that answers 500 three times gets the batch on the fourth attempt", async (t) => {
  let failures = 0;
  const hook = await receiver(() => (failures++ < 3 ? 500 : 200));
  const env = await worker(hook);
  const room = uid();
  for (const id of ["a", "b", "c"]) await publish(env, room, id);
  await until(() => hook.events().length >= 3, "delivery after three failures", 30_000);
  assert.equal(hook.requests >= 4, true);
  assert.deepEqual(hook.events().map((e) => e.id), ["a", "b", "c"]);
  const s = await status(env, room);
  assert.deepEqual([s.pending, s.attempts, s.last_error], [0, 0, null]);
  report(t, hook, 3);
});

test("the backoff goes on across the room's eviction instead of starting again at 1 s", async (t) => {
  const hook = await receiver(() => 503);
  const env = await worker(hook);
  const room = uid();
  const starts = () => env.logs.filter((l) => l.event === "room.start" && l.room_key?.endsWith(room)).length;
  await publish(env, room, "m");
  // Waits of 1, 2, 4 and 8 s keep the room awake; the fifth, 16 s, outlasts the ~10 s idle
  // after which workerd evicts it, so the alarm for attempt 6 wakes a fresh object.
  await until(() => hook.requests >= 6 && starts() >= 2, "attempt 6, after an eviction", 90_000);
  const s = await status(env, room);
  assert.ok(s.attempts >= 6, `the count survived the eviction: ${JSON.stringify(s)}`);
  assert.equal(s.last_error, "HTTP 503");
  report(t, hook, 1);
});

test("a receiver down while 200 messages are published gets all 200 in order once it is back", async (t) => {
  const hook = await receiver();
  const port = hook.port;
  const env = await worker(hook, { WEBHOOK_MAX_BATCH: "50" });
  const room = uid();
  await publish(env, room, "first");
  await until(() => hook.events().length === 1, "the first delivery");
  await hook.close(); // port closed: connections are refused
  for (let i = 0; i < 200; i++) assert.equal((await publish(env, room, `m${i}`)).status, 200);
  await until(async () => (await status(env, room)).attempts >= 2, "failed attempts while down", 30_000);
  const down = await status(env, room);
  assert.equal(down.pending, 200);
  assert.match(down.last_error, /network error|no answer/);
  const back = await receiver(() => 200, { port });
  await until(() => new Set(back.events().map((e) => e.wid)).size >= 200, "all 200 after the outage", 60_000);
  const unique = [...new Map(back.events().map((e) => [e.wid, e])).values()];
  assert.deepEqual(unique.map((e) => e.id), Array.from({ length: 200 }, (_, i) => `m${i}`), "in order, each once after dedup by wid");
  const n = unique.map((e) => Number(e.wid.split(":")[1]));
  assert.deepEqual(n, n.map((_, i) => n[0] + i), "gapless");
  assert.equal((await status(env, room)).pending, 0);
  report(t, back, 201);
});

test("events pending when workerd restarts are delivered after the restart", async (t) => {
  const persist = mkdtempSync(join(tmpdir(), "roomcast-hooks-"));
  cleanups.push(() => rmSync(persist, { recursive: true, force: true }));
  const hook = await receiver(() => 503);
  const room = uid();
  const first = await start({ persist, bindings: { WEBHOOK_URL: hook.url, WEBHOOK_SECRET: SECRET } });
  for (const id of ["x1", "x2"]) await publish(first, room, id);
  await until(() => hook.requests >= 1, "a refused attempt");
  assert.equal((await status(first, room)).pending, 2);
  await first.mf.dispose();
  hook.respond = () => 200;
  const second = await start({ persist, bindings: { WEBHOOK_URL: hook.url, WEBHOOK_SECRET: SECRET } });
  cleanups.push(() => second.mf.dispose());
  // No request touches the room: its stored alarm wakes it after the restart.
  await until(() => hook.events().length >= 2, "delivery after the restart", 60_000);
  assert.deepEqual(hook.events().map((e) => e.id), ["x1", "x2"]);
  // Woken by its alarm alone, the object is not told its name by the runtime: the body
  // still names the room.
  for (const b of hook.batches) assert.deepEqual([b.room, b.tenant], [room, null]);
  report(t, hook, 2);
});

test("a receiver that never answers times out after 10 s and the batch is retried", async (t) => {
  let hung = false;
  const hook = await receiver(() => {
    if (!hung) {
      hung = true;
      return "hang";
    }
    return 200;
  });
  const env = await worker(hook);
  const room = uid();
  await publish(env, room, "slow-1");
  await until(async () => /no answer within 10000 ms/.test((await status(env, room)).last_error ?? ""), "the timeout", 30_000);
  await until(() => hook.events().length >= 1, "the retry", 30_000);
  assert.deepEqual(hook.events().map((e) => e.id), ["slow-1"]);
  report(t, hook, 1);
});

test("events older than WEBHOOK_MAX_AGE_SECS become dead; the retry route queues them again", async (t) => {
  let accept = false;
  const hook = await receiver(() => (accept ? 200 : 500));
  const env = await worker(hook, { WEBHOOK_MAX_AGE_SECS: "2" });
  const room = uid();
  await publish(env, room, "d1");
  await until(async () => (await status(env, room)).dead === 1, "dead after 2 s", 30_000);
  const dead = await status(env, room);
  assert.deepEqual([dead.pending, dead.dead], [0, 1]);
  accept = true;
  const res = await signedFetch(env.base, "POST", `/v1/rooms/${room}/webhooks/retry`, "");
  assert.deepEqual(await res.json(), { requeued: 1 });
  await until(() => hook.events().length >= 1, "delivery after the retry route");
  assert.equal(hook.events()[0].id, "d1");
  assert.deepEqual([(await status(env, room)).dead, (await status(env, room)).pending], [0, 0]);
  report(t, hook, 1);
});

test("a receiver rejects a bad signature, and the events wait for a good one", async (t) => {
  const hook = await receiver(() => 200, { secret: "another-secret" });
  const env = await worker(hook);
  const room = uid();
  await publish(env, room, "s1");
  await until(() => hook.rejected >= 1, "the receiver's own verification refuses it");
  await until(async () => (await status(env, room)).last_error === "HTTP 401", "the room records the refusal");
  assert.equal(hook.events().length, 0);
  assert.equal((await status(env, room)).pending, 1, "nothing lost");
  report(t, hook, 1);
});

test("webhook configuration is validated: a URL without a secret is misconfigured", async () => {
  const env = await start({ bindings: { WEBHOOK_URL: "https://hooks.example/in" } });
  cleanups.push(() => env.mf.dispose());
  const res = await publish(env, uid(), "z");
  assert.equal(res.status, 500);
  const body = await res.json();
  assert.equal(body.error.code, "misconfigured");
  assert.match(body.error.message, /WEBHOOK_SECRET/);
});
