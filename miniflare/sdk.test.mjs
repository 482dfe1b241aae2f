// The client SDK (client/dist) against the real Worker in workerd, for the refusals of
// docs/protocol.md §10: the SDK offers `roomcast.v1`, so a refused upgrade reaches it as an
// `error` frame and a close code, and it refreshes a token once, stops, or backs off as
// that code says — never looping on a refusal it cannot fix.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { start, connect, token, userToken, now, uid, when } from "./helpers.mjs";
import { Roomcast } from "../client/dist/index.js";

const MAX_CONNECTIONS = 2;
let env;
before(async () => {
  env = await start({ bindings: { ALLOWED_ORIGINS: "https://app.example", MAX_CONNECTIONS_PER_USER: String(MAX_CONNECTIONS) } });
});
after(async () => env?.mf.dispose());

const live = new Set();
afterEach(() => {
  for (const c of live) c.close();
  live.clear();
});

const FAST = { backoff: { baseMs: 25, capMs: 200, stableMs: 2000 }, connectTimeoutMs: 5000 };


/** A client whose sockets, token requests, errors and states are recorded. */
function sdk(room, tokenFor, { headers = {}, ...options } = {}) {
  const sockets = [];
  class CountingWebSocket extends WebSocket {
    constructor(address, protocols) {
      super(address, protocols, { headers });
      sockets.push(this);
    }
  }
  const reasons = [];
  const client = new Roomcast({
    url: env.wsBase,
    room,
    token: async (ctx) => {
      reasons.push(ctx.reason);
      return tokenFor(ctx);
    },
    WebSocket: CountingWebSocket,
    ...FAST,
    ...options,
  });
  live.add(client);
  const errors = [];
  const states = [];
  client.on("error", (e) => errors.push(e));
  client.on("state", (s, d) => states.push({ s, d }));
  const closed = when(client, "state", (s) => s === "closed");
  return { client, sockets, reasons, errors, states, closed };
}

/**
 * After the client stopped: several of its longest backoff periods pass with no new
 * attempt. The wait ends early if one is made (that is the failure).
 */
async function noFurtherAttempts(p, periods = 5) {
  const before = p.sockets.length;
  const calls = p.reasons.length;
  const deadline = Date.now() + periods * FAST.backoff.capMs;
  while (Date.now() < deadline && p.sockets.length === before && p.reasons.length === calls) {
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal(p.sockets.length, before, "no socket after stopping");
  assert.equal(p.reasons.length, calls, "no token request after stopping");
}

test("an always-expired token: the provider is asked twice (connect, expired), then the client stops with token_expired", async () => {
  const p = sdk(uid(), () => userToken("ada", { exp: now() - 120 }));
  const [, detail] = await p.closed;
  assert.deepEqual(p.reasons, ["connect", "expired"]);
  assert.equal(p.sockets.length, 2);
  assert.equal(p.client.state, "closed");
  assert.equal(detail.error.code, "token_expired");
  assert.equal(detail.error.fatal, true);
  assert.equal(detail.error.closeCode, 4001);
  assert.equal(detail.error.message, "the token has expired; get a fresh one", "the server's message");
  assert.deepEqual(p.errors.map((e) => [e.code, e.fatal]), [["token_expired", false], ["token_expired", true]]);
  await noFurtherAttempts(p);
});

test("a token that is expired only at first: the refreshed one is welcomed", async () => {
  const room = uid();
  const p = sdk(room, (ctx) => userToken("ada", ctx.reason === "expired" ? {} : { exp: now() - 120 }));
  await when(p.client, "state", (s) => s === "open");
  assert.deepEqual(p.reasons, ["connect", "expired"]);
  assert.deepEqual(p.errors.map((e) => [e.code, e.fatal]), [["token_expired", false]]);
});

test("no read permission on the room: one attempt, then closed with forbidden", async () => {
  const room = uid("doc");
  const p = sdk(room, () => token({ sub: "ada", rooms: { "other-*": ["read", "write"] } }));
  const [, detail] = await p.closed;
  assert.deepEqual(p.reasons, ["connect"]);
  assert.equal(p.sockets.length, 1);
  assert.deepEqual([detail.error.code, detail.error.fatal, detail.error.closeCode], ["forbidden", true, 4403]);
  assert.match(detail.error.message, /no "read" permission on room/);
  await noFurtherAttempts(p);
});

test("an origin not in ALLOWED_ORIGINS: one attempt, then closed with origin_not_allowed", async () => {
  const p = sdk(uid(), () => userToken("ada"), { headers: { Origin: "https://evil.example" } });
  const [, detail] = await p.closed;
  assert.equal(p.sockets.length, 1);
  assert.deepEqual([detail.error.code, detail.error.closeCode], ["origin_not_allowed", 4403]);
  await noFurtherAttempts(p);
});

test("too_many_connections: reported, retried with backoff, and connected once a slot frees", async () => {
  const room = uid();
  const tok = await userToken("busy");
  const held = [];
  for (let i = 0; i < MAX_CONNECTIONS; i++) held.push(await connect(env.wsBase, room, tok));
  const p = sdk(room, () => tok);
  // Two refusals: proof that it retries rather than stopping.
  while (p.errors.filter((e) => e.code === "too_many_connections").length < 2) await when(p.client, "error");
  assert.ok(p.errors.every((e) => e.code === "too_many_connections" && !e.fatal && e.closeCode === 4029));
  assert.ok(p.states.some(({ s, d }) => s === "reconnecting" && d.code === 4029 && d.delayMs !== undefined));
  await held.pop().close();
  await when(p.client, "state", (s) => s === "open");
  assert.equal(p.client.user, "busy");
  for (const c of held) await c.close();
});
