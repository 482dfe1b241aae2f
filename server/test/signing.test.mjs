// Pure unit tests of @roomcast/server (no Worker): the signing scheme against the test
// suite's independent signer (miniflare/helpers.mjs `signature`, node:crypto), header
// parsing, webhook verification of locally signed requests, and how requests are built.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { signature, API_SECRET } from "../../miniflare/helpers.mjs";
import {
  Roomcast,
  RoomcastError,
  WebhookVerificationError,
  parseSignature,
  sign,
  timingSafeEqual,
  verifyWebhook,
} from "../dist/index.js";

const T = 1_767_225_600; // a fixed timestamp: these tests compare strings, not clocks

const cases = [
  ["GET", "/v1/rooms/lobby", ""],
  ["GET", "/v1/rooms/lobby/messages?since=3&limit=10&tenant=t1", ""],
  ["POST", "/v1/rooms/inbox@alice/messages", '{"id":"e1","event":"chat","data":{"text":"hi"}}'],
  ["POST", "/v1/broadcast?tenant=acme.eu", '{"rooms":["a","b"],"id":"x","event":"e"}'],
  ["POST", "/hooks/in?app=test", '{"text":"héllo ✓ 😀 \\n line"}\n'],
  ["POST", "/v1/rooms/doc:1/disconnect", "{}"],
];

test("sign() equals the test suite's node:crypto signer for every case", async () => {
  for (const [method, path, body] of cases) {
    for (const t of [T, T + 1, 1]) {
      const ours = await sign({ secret: API_SECRET, method, pathAndQuery: path, body, t });
      assert.equal(ours, signature(method, path, body, { t }), `${method} ${path} t=${t}`);
    }
  }
  // Another secret gives another signature (the comparison above can fail).
  const other = await sign({ secret: "another", method: "GET", pathAndQuery: "/v1/rooms/lobby", t: T });
  assert.notEqual(other, signature("GET", "/v1/rooms/lobby", "", { t: T }));
});

test("sign() signs the body's bytes: text and its UTF-8 bytes give one signature", async () => {
  const body = '{"data":"ünïcødé 🎉"}';
  const bytes = new TextEncoder().encode(body);
  const a = await sign({ secret: "s", method: "POST", pathAndQuery: "/p", body, t: T });
  const b = await sign({ secret: "s", method: "POST", pathAndQuery: "/p", body: bytes, t: T });
  const c = await sign({ secret: "s", method: "POST", pathAndQuery: "/p", body: bytes.buffer, t: T });
  assert.equal(a, b);
  assert.equal(a, c);
  assert.equal(a, signature("POST", "/p", body, { secret: "s", t: T }));
  await assert.rejects(sign({ secret: "s", method: "GET", pathAndQuery: "/", t: 1.5 }), TypeError);
});

test("parseSignature accepts what the Worker accepts and rejects the malformed", () => {
  const hex = "ab".repeat(32);
  assert.deepEqual(parseSignature(`t=${T},v1=${hex}`), { t: T, v1: [new Uint8Array(32).fill(0xab)] });
  const two = parseSignature(` t=${T} , v1=${hex}, v1=${"CD".repeat(32)}, v0=zz`);
  assert.equal(two.v1.length, 2);
  assert.equal(two.v1[1][0], 0xcd);
  for (const bad of ["", `t=${T}`, `v1=${hex}`, `t=abc,v1=${hex}`, `t=${T},v1=xyz`, `t=${T},v1=abc`, `t=${T};v1=${hex}`, "garbage"]) {
    assert.equal(parseSignature(bad), null, bad);
  }
});

test("timingSafeEqual compares whole byte strings", () => {
  const a = new Uint8Array([1, 2, 3]);
  assert.equal(timingSafeEqual(a, new Uint8Array([1, 2, 3])), true);
  assert.equal(timingSafeEqual(a, new Uint8Array([1, 2, 4])), false);
  assert.equal(timingSafeEqual(a, new Uint8Array([1, 2])), false);
  assert.equal(timingSafeEqual(new Uint8Array(), new Uint8Array()), true);
});

/** A webhook request signed by the test suite's own signer, as a room would send it. */
function webhook(secret, { t = Math.floor(Date.now() / 1000), url = "/hooks/in?app=test" } = {}) {
  const body = JSON.stringify({
    room: "lobby",
    tenant: null,
    epoch: "e_test",
    events: [{ wid: "e_test:1", kind: "message", seq: 1, id: "m1", event: "chat", data: { text: "ü" }, from: null, ts: 1 }],
  });
  return { body, url, signature: signature("POST", url.replace(/^https?:\/\/[^/]+/, ""), body, { secret, t }) };
}

async function refused(promise, code) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof WebhookVerificationError, String(e));
    assert.ok(e instanceof RoomcastError);
    assert.equal(e.code, code, e.message);
    assert.equal(e.status, code === "bad_body" ? 400 : 401);
    return true;
  });
}

test("verifyWebhook: accepts a correctly signed batch and refuses every kind of bad one", async () => {
  const secret = "whsec";
  const good = webhook(secret);
  const batch = await verifyWebhook(good, secret);
  assert.deepEqual([batch.room, batch.tenant, batch.epoch, batch.events[0].wid, batch.events[0].data], ["lobby", null, "e_test", "e_test:1", { text: "ü" }]);
  // Bytes, an absolute URL, an array header (Node may give one), a rotation list.
  await verifyWebhook({ ...good, body: new TextEncoder().encode(good.body) }, secret);
  await verifyWebhook({ ...good, url: `http://127.0.0.1:9${good.url}` }, secret);
  await verifyWebhook({ ...good, signature: [good.signature] }, secret);
  await verifyWebhook(good, ["old-secret", secret]);

  await refused(verifyWebhook({ ...good, signature: undefined }, secret), "missing_signature");
  await refused(verifyWebhook({ ...good, signature: "t=1" }, secret), "malformed_signature");
  await refused(verifyWebhook({ ...good, body: good.body.replace('"m1"', '"m2"') }, secret), "bad_signature");
  await refused(verifyWebhook(good, "wrong"), "bad_signature");
  await refused(verifyWebhook({ ...good, url: "/hooks/in?app=other" }, secret), "bad_signature");
  const t = Number(/t=(\d+)/.exec(good.signature)[1]);
  await refused(verifyWebhook(good, secret, { now: (t + 301) * 1000 }), "stale_signature");
  await refused(verifyWebhook(good, secret, { now: (t - 301) * 1000 }), "stale_signature");
  await verifyWebhook(good, secret, { now: (t + 300) * 1000 });
  await verifyWebhook(good, secret, { now: (t + 3600) * 1000, toleranceSecs: 3600 });
  // Verified against WEBHOOK_URL's path when a proxy rewrote the request's.
  await verifyWebhook({ ...good, url: "/rewritten" }, secret, { path: "/hooks/in?app=test" });
  // Correctly signed but not a batch.
  const notBatch = { body: '{"hello":1}', url: "/h" };
  notBatch.signature = signature("POST", "/h", notBatch.body, { secret });
  await refused(verifyWebhook(notBatch, secret), "bad_body");
  await assert.rejects(verifyWebhook(good, ""), TypeError);
  await assert.rejects(verifyWebhook(good, []), TypeError);
});

test("verifyWebhook takes a Fetch API Request (as in a Worker)", async () => {
  const secret = "whsec";
  const good = webhook(secret);
  const req = () => new Request(`https://backend.example${good.url}`, { method: "POST", headers: { "Roomcast-Signature": good.signature }, body: good.body });
  assert.equal((await verifyWebhook(req(), secret)).room, "lobby");
  await refused(verifyWebhook(req(), "wrong"), "bad_signature");
});

/** A fetch that records each request and answers with `answer()`: for unit tests of request building only. */
function recorder(answer = () => new Response('{"ok":true}', { status: 200 })) {
  const calls = [];
  const f = async (url, init) => {
    calls.push({ url, init });
    return answer(url, init);
  };
  return { f, calls };
}

test("requests: signed over the URL's own path and query, room names as they are, tenant as a parameter", async () => {
  const { f, calls } = recorder();
  const rc = new Roomcast({ url: "http://rooms.test/", secret: API_SECRET, fetch: f, tenant: "t1" });
  await rc.publish("inbox@alice", { id: "e1", event: "chat", data: { a: 1 } }, { excludeConn: "c_1" });
  await rc.history("doc:1", { since: 4, limit: 2 });
  await rc.room("bad room");
  await rc.room("a/b");
  const paths = calls.map((c) => new URL(c.url).pathname + new URL(c.url).search);
  assert.deepEqual(paths, [
    "/v1/rooms/inbox@alice/messages?tenant=t1",
    "/v1/rooms/doc:1/messages?since=4&limit=2&tenant=t1",
    "/v1/rooms/bad%20room?tenant=t1",
    "/v1/rooms/a%2Fb?tenant=t1",
  ]);
  for (const [i, c] of calls.entries()) {
    const header = c.init.headers["Roomcast-Signature"];
    const t = Number(/^t=(\d+),/.exec(header)[1]);
    assert.equal(header, signature(c.init.method, paths[i], c.init.body ?? "", { t }), paths[i]);
  }
  assert.deepEqual(JSON.parse(calls[0].init.body), { id: "e1", event: "chat", data: { a: 1 }, exclude_conn: "c_1" });
  assert.equal(calls[1].init.body, undefined, "a GET has no body and is signed with an empty one");
  await assert.rejects(rc.room(".."), (e) => e instanceof RoomcastError && e.code === "bad_room");
});

test("requests: a service token (string or function, called per request) instead of a signature", async () => {
  const { f, calls } = recorder();
  let n = 0;
  const rc = new Roomcast({ url: "http://rooms.test/prefix", token: () => `tok-${++n}`, fetch: f });
  await rc.room("a");
  await rc.disconnect("a", { user: "alice" }, { code: 4000 });
  assert.deepEqual(calls.map((c) => c.init.headers.Authorization), ["Bearer tok-1", "Bearer tok-2"]);
  assert.equal(calls[0].init.headers["Roomcast-Signature"], undefined);
  assert.equal(new URL(calls[1].url).pathname, "/prefix/v1/rooms/a/disconnect");
  assert.deepEqual(JSON.parse(calls[1].init.body), { user: "alice", code: 4000 });
  assert.throws(() => new Roomcast({ url: "http://x" }), TypeError);
  assert.throws(() => new Roomcast({ url: "http://x", secret: "s", token: "t" }), TypeError);
  assert.throws(() => new Roomcast({ url: "ws://x", secret: "s" }), TypeError);
});

test("errors: a 429's retry_after_ms or Retry-After, a body that is not Roomcast's", async () => {
  const answers = [
    new Response('{"error":{"code":"rate_limited","message":"slow down","retry_after_ms":1500}}', { status: 429, headers: { "Retry-After": "2" } }),
    new Response("busy", { status: 429, headers: { "Retry-After": "3" } }),
    new Response("<html>bad gateway</html>", { status: 502 }),
    new Response("not json", { status: 200 }),
  ];
  const { f } = recorder(() => answers.shift());
  const rc = new Roomcast({ url: "http://rooms.test", secret: "s", fetch: f });
  const errors = [];
  for (let i = 0; i < 4; i++) errors.push(await rc.room("a").catch((e) => e));
  assert.deepEqual(
    errors.map((e) => [e instanceof RoomcastError, e.status, e.code, e.retryAfterMs]),
    [
      [true, 429, "rate_limited", 1500],
      [true, 429, "unexpected_response", 3000],
      [true, 502, "unexpected_response", undefined],
      [true, 200, "unexpected_response", undefined],
    ],
  );
  assert.equal(errors[0].message, "slow down");
});

test("errors: no answer at all is a network_error with status 0", async () => {
  const server = http.createServer();
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  await new Promise((r) => server.close(r)); // nothing listens there now
  const rc = new Roomcast({ url: `http://127.0.0.1:${port}`, secret: "s" });
  const e = await rc.room("a").catch((x) => x);
  assert.ok(e instanceof RoomcastError);
  assert.deepEqual([e.status, e.code], [0, "network_error"]);
  assert.ok(e.cause);
});
