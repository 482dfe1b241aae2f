// verifyWebhook and WidDedup against the webhooks the real Worker POSTs (docs/protocol.md
// §15): to a real loopback Node `http` receiver that uses the package, and to a receiver
// Worker in a second workerd (server/test/fixtures/receiver-worker.mjs).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Miniflare } from "miniflare";
import { start, connect, userToken, uid, API_SECRET, COMPATIBILITY_DATE } from "../../miniflare/helpers.mjs";
import { Roomcast, WidDedup, verifyWebhook, parseWid } from "../dist/index.js";

const SECRET = "webhook-secret-" + uid();
const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

/** Polls `pred` (sync or async) until it holds: deliveries and retries are timed by the room's alarm. */
async function until(pred, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A backend's webhook receiver in Node `http`, written with the package: every request is
 * recorded raw, verified with verifyWebhook (refusals answered with the error's status),
 * and each fresh event is processed once through a WidDedup. `respond(batch)` decides the
 * answer; a batch is processed when it is 2xx — or always with `processAlways`, which
 * plays a receiver whose work was done but whose answer the room did not take (a crash
 * after the commit, a lost response): the room redelivers events already processed.
 */
async function receiver({ secret = SECRET, respond = () => 200, processAlways = false } = {}) {
  const r = { raw: [], batches: [], refused: [], processed: [], respond, seen: new WidDedup() };
  r.server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const raw = { body: Buffer.concat(chunks), signature: req.headers["roomcast-signature"], url: req.url };
    r.raw.push(raw);
    let batch;
    try {
      batch = await verifyWebhook(raw, secret);
    } catch (e) {
      r.refused.push(e.code);
      res.writeHead(e.status ?? 500).end(e.message);
      return;
    }
    r.batches.push(batch);
    const status = r.respond(batch);
    if (processAlways || (status >= 200 && status < 300)) {
      for (const event of r.seen.fresh(batch)) {
        r.processed.push({ ...event, room: batch.room, tenant: batch.tenant });
        r.seen.add(batch, event.wid);
      }
    }
    res.writeHead(status).end();
  });
  await new Promise((resolve) => r.server.listen(0, "127.0.0.1", resolve));
  r.url = `http://127.0.0.1:${r.server.address().port}/hooks/roomcast?app=test`;
  r.of = (room) => r.processed.filter((e) => e.room === room);
  r.deliveredTimes = (wid) => r.batches.filter((b) => b.events.some((e) => e.wid === wid)).length;
  cleanups.push(() => new Promise((resolve) => { r.server.closeAllConnections(); r.server.close(resolve); }));
  return r;
}

async function worker(url, bindings = {}, opts = {}) {
  const env = await start({ ...opts, bindings: { WEBHOOK_URL: url, WEBHOOK_SECRET: SECRET, ...bindings } });
  cleanups.push(() => env.mf.dispose());
  env.rc = new Roomcast({ url: env.base, secret: API_SECRET });
  return env;
}

test("verifyWebhook accepts the Worker's real webhooks, and refuses them tampered, with a wrong secret or stale", async () => {
  const hook = await receiver();
  const env = await worker(hook.url, { WEBHOOK_EVENTS: "message,presence,room" });
  const room = uid();
  const alice = await connect(env.wsBase, room, await userToken("alice"));
  await env.rc.publish(room, { id: "m1", event: "chat", data: { text: "ünïcødé ✓" } });
  await alice.publish("m2", { text: "from alice" });
  await alice.close();
  await until(() => hook.of(room).some((e) => e.kind === "room" && e.op === "vacated"), "room vacated");
  assert.deepEqual(hook.refused, []);
  const events = hook.of(room);
  assert.deepEqual(events.map((e) => `${e.kind}:${e.op ?? e.id}`), ["presence:join", "room:occupied", "message:m1", "message:m2", "presence:leave", "room:vacated"]);
  assert.deepEqual(events.map((e) => parseWid(e.wid)), events.map((_, i) => ({ epoch: alice.welcome.epoch, n: i + 1 })));
  assert.deepEqual(events[2].data, { text: "ünïcødé ✓" }, "the body was verified and parsed as bytes");
  for (const b of hook.batches) assert.deepEqual([b.room, b.tenant, b.epoch], [room, null, alice.welcome.epoch]);

  // A tenant's room: the batch names the tenant.
  await env.rc.forTenant("t1").publish(room, { id: "m-t1", event: "chat" });
  await until(() => hook.processed.some((e) => e.id === "m-t1"), "the tenant's message");
  assert.equal(hook.processed.find((e) => e.id === "m-t1").tenant, "t1");

  // One real request, replayed through verifyWebhook: intact it verifies (within the
  // tolerance; replays are what the timestamp and wid dedup are for), changed it does not.
  const real = hook.raw.find((r) => r.body.includes('"m1"'));
  assert.equal((await verifyWebhook(real, SECRET)).room, room);
  const tampered = Buffer.from(real.body);
  tampered[tampered.indexOf('"m1"') + 2] ^= 1; // "m1" → "m0"
  const reasons = [];
  const code = (p) => p.then(() => "accepted", (e) => e.code);
  reasons.push(await code(verifyWebhook({ ...real, body: tampered }, SECRET)));
  reasons.push(await code(verifyWebhook({ ...real, body: real.body.toString().replace("ünïcødé", "unicode") }, SECRET)));
  reasons.push(await code(verifyWebhook(real, "not-" + SECRET)));
  const t = Number(/t=(\d+)/.exec(real.signature)[1]);
  reasons.push(await code(verifyWebhook(real, SECRET, { now: (t + 301) * 1000 })));
  reasons.push(await code(verifyWebhook(real, SECRET, { now: (t - 301) * 1000 })));
  reasons.push(await code(verifyWebhook({ ...real, url: "/hooks/roomcast?app=other" }, SECRET)));
  reasons.push(await code(verifyWebhook({ ...real, signature: undefined }, SECRET)));
  assert.deepEqual(reasons, ["bad_signature", "bad_signature", "bad_signature", "stale_signature", "stale_signature", "bad_signature", "missing_signature"]);
  // The same request as a Fetch API Request, as a Worker receives it.
  const asRequest = new Request(`http://127.0.0.1${real.url}`, { method: "POST", headers: { "Roomcast-Signature": real.signature }, body: real.body });
  assert.equal((await verifyWebhook(asRequest, SECRET)).events.length > 0, true);
});

test("a room signing with another secret is refused 401 by verifyWebhook; its events stay pending", async () => {
  const hook = await receiver();
  const env = await worker(hook.url, { WEBHOOK_SECRET: "another-secret" });
  const room = uid();
  await env.rc.publish(room, { id: "w1", event: "chat" });
  await until(async () => (await env.rc.webhooks(room)).attempts >= 1, "a refused attempt");
  const s = await env.rc.webhooks(room);
  assert.deepEqual([s.enabled, s.pending, s.dead, s.last_error], [true, 1, 0, "HTTP 401"]);
  assert.ok(hook.refused.length >= 1 && hook.refused.every((c) => c === "bad_signature"), JSON.stringify(hook.refused));
  assert.deepEqual(hook.of(room), [], "nothing processed");
  assert.deepEqual((await env.rc.room(room)).webhooks, { pending: 1, dead: 0 });
});

test("WidDedup drops a redelivered batch: the room resends after a 500, the receiver processed it once", async () => {
  let refusals = 0;
  const hook = await receiver({ respond: () => (refusals++ < 1 ? 500 : 200), processAlways: true });
  const env = await worker(hook.url);
  const room = uid();
  await env.rc.publish(room, { id: "a", event: "chat", data: 1 });
  await env.rc.publish(room, { id: "b", event: "chat", data: 2 });
  await until(async () => (await env.rc.webhooks(room)).pending === 0 && hook.of(room).length === 2, "both delivered");
  const first = hook.batches[0].events[0].wid;
  assert.equal(hook.deliveredTimes(first), 2, "the first event arrived twice");
  assert.deepEqual(hook.of(room).map((e) => e.id), ["a", "b"], "and was processed once, in order");
  assert.equal(hook.seen.has(hook.batches[0], first), true);
});

test("dead events come back through retryWebhooks, after newer ones: WidDedup takes them out of order", async () => {
  let up = false;
  const hook = await receiver({ respond: () => (up ? 200 : 503) });
  const env = await worker(hook.url, { WEBHOOK_MAX_AGE_SECS: "1" });
  const room = uid();
  await env.rc.publish(room, { id: "d1", event: "chat" });
  await until(async () => (await env.rc.webhooks(room)).dead === 1, "d1 dead");
  assert.equal((await env.rc.webhooks(room)).pending, 0);
  up = true;
  await env.rc.publish(room, { id: "d2", event: "chat" });
  await until(() => hook.of(room).length === 1, "d2");
  assert.deepEqual(hook.of(room).map((e) => [e.id, parseWid(e.wid).n]), [["d2", 2]], "d1 was never processed: every answer was 503");
  assert.deepEqual(await env.rc.retryWebhooks(room), { requeued: 1 });
  await until(() => hook.of(room).length === 2, "d1 after the retry");
  assert.deepEqual(hook.of(room).map((e) => [e.id, parseWid(e.wid).n]), [["d2", 2], ["d1", 1]], "the lower wid, later, still fresh");
  const s = await env.rc.webhooks(room);
  assert.deepEqual([s.pending, s.dead], [0, 0]);
});

/** A port that was free a moment ago (for a Worker that must know another's URL up front). */
async function freePort() {
  const s = http.createServer();
  await new Promise((r) => s.listen(0, "127.0.0.1", r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

test("in a Worker: a receiver Worker verifies the Request, dedupes, and answers a ping with a pong through the server API", async () => {
  const roomcastPort = await freePort();
  const receiverMf = new Miniflare({
    modules: true,
    scriptPath: "server/test/fixtures/receiver-worker.mjs",
    modulesRules: [{ type: "ESModule", include: ["**/*.js", "**/*.mjs"] }],
    compatibilityDate: COMPATIBILITY_DATE,
    bindings: { WEBHOOK_SECRET: SECRET, API_SECRET, ROOMCAST_URL: `http://127.0.0.1:${roomcastPort}` },
  });
  cleanups.push(() => receiverMf.dispose());
  const receiverUrl = (await receiverMf.ready).href.replace(/\/$/, "");
  const env = await worker(`${receiverUrl}/webhooks?source=roomcast`, {}, { shared: { host: "127.0.0.1", port: roomcastPort } });
  const state = async () => (await fetch(`${receiverUrl}/state`)).json();
  const room = uid();
  const alice = await connect(env.wsBase, room, await userToken("alice"));
  await alice.publish("p1", { hello: 1 }, { event: "ping" });
  const pong = await alice.next((f) => f.type === "message" && f.event === "pong", "the receiver Worker's pong");
  assert.equal(pong.id, "pong-p1");
  assert.equal(pong.from, null, "published through the server API");
  await until(async () => (await state()).processed.some((e) => e.id === "pong-p1"), "the pong's own webhook");
  const s = await state();
  assert.deepEqual(s.refused, []);
  assert.deepEqual(s.processed.map((e) => e.id), ["p1", "pong-p1"]);
  assert.equal(pong.data.wid, s.processed[0].wid);
  // A forged request to the same receiver is refused by verifyWebhook inside workerd.
  const forged = await fetch(`${receiverUrl}/webhooks?source=roomcast`, {
    method: "POST",
    headers: { "Roomcast-Signature": `t=${Math.floor(Date.now() / 1000)},v1=${"0".repeat(64)}` },
    body: JSON.stringify({ room, tenant: null, epoch: "e_x", events: [] }),
  });
  assert.equal(forged.status, 401);
  assert.deepEqual((await state()).refused, ["bad_signature"]);
  await alice.close();
});
