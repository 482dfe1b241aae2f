// Upgrade authentication at the edge (contract §3, §4): the three token transports and
// every rejection, each with its status, code, JSON body and headers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { start, connect, rejected, token, userToken, serviceToken, makeKeys, now, uid } from "./helpers.mjs";

let env, keys;
before(async () => {
  const k = await makeKeys();
  keys = k.keys;
  env = await start({ jwks: k.jwks, bindings: { ALLOWED_ORIGINS: "https://app.example" } });
});
after(async () => env?.mf.dispose());

async function expectReject(p, status, code) {
  const e = await rejected(p);
  assert.equal(e.status, status, JSON.stringify(e.body));
  assert.equal(e.body.error.code, code);
  assert.equal(typeof e.body.error.message, "string");
  assert.ok(e.body.error.message.length > 10, "message should be actionable");
  if (status === 401) assert.equal(e.headers["www-authenticate"], 'Bearer error="invalid_token"');
  return e;
}

for (const transport of ["protocol", "header", "query"]) {
  test(`token via ${transport} is accepted and welcomed`, async () => {
    const room = uid();
    const c = await connect(env.wsBase, room, await userToken("alice", { info: { name: "Alice" } }), { transport });
    assert.equal(c.welcome.room, room);
    assert.equal(c.welcome.user, "alice");
    assert.match(c.welcome.conn, /^c_[0-9a-f]{16}$/);
    assert.match(c.welcome.epoch, /^e_[0-9a-f]{16}$/);
    assert.equal(c.welcome.seq, 0);
    assert.deepEqual(c.welcome.resume, { requested: false, recovered: false, replayed: 0 });
    assert.deepEqual(c.welcome.presence, { count: 1, users: [{ user: "alice", info: { name: "Alice" } }] });
    // Only the browser transport negotiates the subprotocol.
    assert.equal(c.protocol, transport === "protocol" ? "roomcast.v1" : "");
    await c.close();
  });
}

for (const alg of ["RS256", "ES256", "EdDSA"]) {
  test(`${alg} token from JWT_PUBLIC_KEYS is accepted`, async () => {
    const c = await connect(env.wsBase, uid(), await userToken("u-" + alg, {}, { alg, keys }));
    assert.equal(c.welcome.user, "u-" + alg);
    await c.close();
  });
}

test("400 bad_room for an invalid room name", async () => {
  await expectReject(connect(env.wsBase, "bad%20room", await userToken("a")), 400, "bad_room");
  await expectReject(connect(env.wsBase, "x".repeat(129), await userToken("a")), 400, "bad_room");
});

test("426 upgrade_required without a WebSocket upgrade", async () => {
  const res = await fetch(`${env.base}/v1/rooms/lobby/ws`, { headers: { Authorization: `Bearer ${await userToken("a")}` } });
  assert.equal(res.status, 426);
  assert.equal((await res.json()).error.code, "upgrade_required");
});

test("401 missing_token", async () => {
  await expectReject(connect(env.wsBase, uid(), null), 401, "missing_token");
});

test("401 invalid_token for bad signatures, alg none, unknown kid, wrong key type", async () => {
  const room = uid();
  await expectReject(connect(env.wsBase, room, "not.a.jwt"), 401, "invalid_token");
  await expectReject(connect(env.wsBase, room, await userToken("a", {}, { secret: "wrong-secret" })), 401, "invalid_token");
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const none = `${b64({ alg: "none", typ: "JWT" })}.${b64({ sub: "a", exp: now() + 60, rooms: { "*": ["read"] } })}.`;
  await expectReject(connect(env.wsBase, room, none), 401, "invalid_token");
  await expectReject(connect(env.wsBase, room, await userToken("a", {}, { alg: "RS256", keys, kid: "nope" })), 401, "invalid_token");
  // An RS256 kid used on an ES256 token: the key is bound to its algorithm.
  await expectReject(connect(env.wsBase, room, await userToken("a", {}, { alg: "ES256", keys, kid: "rsa-1" })), 401, "invalid_token");
  // Tampered payload: swap the claims, keep the signature.
  const good = await userToken("a");
  const [h, , s] = good.split(".");
  await expectReject(connect(env.wsBase, room, `${h}.${b64({ sub: "admin", exp: now() + 60, rooms: { "*": ["read", "write"] } })}.${s}`), 401, "invalid_token");
  await expectReject(connect(env.wsBase, room, await token({ rooms: { "*": ["read"] } })), 401, "invalid_token"); // no sub
  await expectReject(connect(env.wsBase, room, await token({ sub: "a", rooms: { "*": ["read"] }, nbf: now() + 3600 })), 401, "invalid_token");
});

test("401 token_expired past the 30 s leeway, accepted within it", async () => {
  const room = uid();
  await expectReject(connect(env.wsBase, room, await userToken("a", { exp: now() - 120 })), 401, "token_expired");
  const c = await connect(env.wsBase, room, await userToken("a", { exp: now() - 5 }));
  await c.close();
});

test("403 forbidden: no read on the room, service token on the socket route, wrong tenant", async () => {
  const room = uid("doc");
  const e = await expectReject(connect(env.wsBase, room, await token({ sub: "a", rooms: { "other-*": ["read", "write"] } })), 403, "forbidden");
  assert.match(e.body.error.message, /read/);
  await expectReject(connect(env.wsBase, room, await token({ sub: "a", rooms: { [room]: ["write"] } })), 403, "forbidden");
  await expectReject(connect(env.wsBase, room, await serviceToken({ rooms: { "*": ["read"] } })), 403, "forbidden");
  await expectReject(connect(env.wsBase, room, await userToken("a", { tenant: "acme" }), { query: "tenant=globex" }), 403, "forbidden");
  // Prefix patterns grant what they say.
  const c = await connect(env.wsBase, room, await token({ sub: "a", rooms: { "doc-*": ["read"] } }));
  await c.close();
});

test("403 origin_not_allowed for a browser origin not in ALLOWED_ORIGINS", async () => {
  await expectReject(connect(env.wsBase, uid(), await userToken("a"), { headers: { Origin: "https://evil.example" } }), 403, "origin_not_allowed");
  const c = await connect(env.wsBase, uid(), await userToken("a"), { headers: { Origin: "https://app.example" } });
  await c.close();
});

test("a client-sent internal session header is never trusted", async () => {
  // The Worker builds the room request from scratch, so this forged identity is ignored:
  // the socket is alice's, with no write permission.
  const room = uid();
  const forged = JSON.stringify({ room, user: "root", write: true, exp: now() + 3600, info: null, subprotocol: false, since: null, epoch: null });
  const c = await connect(env.wsBase, room, await token({ sub: "alice", rooms: { [room]: ["read"] } }), {
    headers: { "X-Roomcast-Session": forged },
  });
  assert.equal(c.welcome.user, "alice");
  const r = await c.publish("forged-1");
  assert.equal(r.type, "error");
  assert.equal(r.code, "forbidden");
  await c.close();
});

test("misconfigured: no key at all is a 500 naming the variable, never a panic", async () => {
  const bare = await start({ bindings: { JWT_SECRET: "" } });
  try {
    const res = await bare.mf.dispatchFetch(`${bare.base}/v1/rooms/lobby/ws`, { headers: { Upgrade: "websocket", Authorization: "Bearer x" } });
    assert.equal(res.status, 500);
    const body = await res.json();
    assert.equal(body.error.code, "misconfigured");
    assert.match(body.error.message, /JWT_SECRET/);
    // The health check does not depend on configuration.
    assert.equal(await (await fetch(`${bare.base}/healthz`)).text(), "ok");
  } finally {
    await bare.mf.dispose();
  }
});

test("unknown routes and methods get JSON errors", async () => {
  const res = await fetch(`${env.base}/nope`);
  assert.equal(res.status, 404);
  assert.equal((await res.json()).error.code, "not_found");
  const m = await fetch(`${env.base}/v1/rooms/lobby/messages`, { method: "DELETE" });
  assert.equal(m.status, 405);
  assert.equal(m.headers.get("allow"), "GET, POST");
  assert.equal((await m.json()).error.code, "method_not_allowed");
  const b = await fetch(`${env.base}/v1/broadcast`);
  assert.equal(b.status, 405);
  assert.equal(b.headers.get("allow"), "POST");
});
