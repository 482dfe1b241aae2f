// The demo board in a real browser: headless Chromium (Debian's, driven by playwright-core)
// against `wrangler dev`, which serves the static assets and routes /v1/* to the Worker
// exactly as a deployment does. Two pages see each other's chat, cursor and presence; one
// page's connection is cut and it recovers without losing a message. Then the SDK, loaded by
// a page from /sdk/, meets refusals it can only see through docs/protocol.md §10 (a browser
// hides a refused upgrade's status): an always-expired token and a missing permission.
// Finally, a second Chromium whose WebSocket upgrades a local proxy refuses (the network of
// issue 12): the demo board falls back to Server-Sent Events by itself and still does
// everything — chat both ways with a WebSocket page, presence, cursors, a cut-and-recover
// that loses nothing — and a page forced to long-polling takes part too.
// Screenshots are saved to test-results/ (git-ignored).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { randomUUID } from "node:crypto";
import { chromium } from "playwright-core";
import { JWT_SECRET, API_SECRET, token, userToken, now, signedFetch } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
let server, browser, base, proxy, blockedBrowser;

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitForHealth(url, proc, timeoutMs = 180_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`wrangler dev exited with ${proc.exitCode}`);
    try {
      if ((await fetch(`${url}/healthz`)).ok) return;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error("wrangler dev did not become healthy");
}

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: scripts/test installs Debian's chromium`);
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  let log = "";
  server = spawn(
    "node_modules/.bin/wrangler",
    ["dev", "--ip", "127.0.0.1", "--port", String(port), "--var", `JWT_SECRET:${JWT_SECRET}`, "--var", `API_SECRET:${API_SECRET}`, "--var", "DEV_TOKENS:1", "--show-interactive-dev-session=false"],
    { env: { ...process.env, WRANGLER_SEND_METRICS: "false" }, stdio: ["ignore", "pipe", "pipe"], detached: true },
  );
  server.stdout.on("data", (c) => (log += c));
  server.stderr.on("data", (c) => (log += c));
  try {
    await waitForHealth(base, server);
  } catch (e) {
    throw new Error(`${e.message}\n${log.slice(-3000)}`);
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  // Chromium sends loopback traffic through a proxy only with both flags.
  proxy = await upgradeRefusingProxy();
  blockedBrowser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [...CHROMIUM_ARGS, `--proxy-server=http://127.0.0.1:${proxy.port}`, "--proxy-bypass-list=<-loopback>"],
  });
});

after(async () => {
  await blockedBrowser?.close();
  await proxy?.close();
  await browser?.close();
  if (server && server.exitCode === null) {
    try {
      process.kill(-server.pid, "SIGTERM");
    } catch {
      server.kill("SIGTERM");
    }
  }
});

/**
 * An HTTP proxy like those of networks that block WebSockets: plain requests (pages,
 * fetch, EventSource streams) are forwarded; every WebSocket — a CONNECT tunnel, or an
 * `Upgrade` sent to the proxy — is answered 403. `cut()` drops every connection and
 * refuses new ones until `restore()`, as a network outage would.
 */
async function upgradeRefusingProxy() {
  const clients = new Set();
  const upstreams = new Set();
  let down = false;
  const stats = { refused: 0, how: new Set(), forwarded: [] };
  const hopByHop = new Set(["proxy-connection", "proxy-authorization", "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"]);
  const srv = http.createServer((req, res) => {
    if (down) return void req.socket.destroy();
    const target = new URL(req.url);
    stats.forwarded.push(`${req.method} ${target.pathname}`);
    const headers = Object.fromEntries(Object.entries(req.headers).filter(([k]) => !hopByHop.has(k)));
    const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: target.pathname + target.search, headers }, (ures) => {
      res.writeHead(ures.statusCode, ures.headers);
      res.flushHeaders();
      ures.pipe(res);
    });
    upstreams.add(up);
    up.on("close", () => upstreams.delete(up));
    up.on("error", () => res.destroy());
    res.on("close", () => up.destroy());
    req.pipe(up);
  });
  const refuse = (how, socket) => {
    stats.refused++;
    stats.how.add(how);
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 25\r\nConnection: close\r\n\r\nWebSockets are not allowed");
  };
  srv.on("connect", (_req, socket) => refuse("CONNECT", socket));
  srv.on("upgrade", (_req, socket) => refuse("Upgrade", socket));
  srv.on("connection", (socket) => {
    if (down) return void socket.destroy();
    clients.add(socket);
    socket.on("close", () => clients.delete(socket));
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return {
    port: srv.address().port,
    stats,
    cut() {
      down = true;
      for (const s of clients) s.destroy();
      for (const u of upstreams) u.destroy();
    },
    restore() {
      down = false;
    },
    close: () => {
      for (const s of clients) s.destroy();
      return new Promise((r) => srv.close(r));
    },
  };
}

async function open(room, name, { via = browser, query = "" } = {}) {
  const page = await via.newPage({ viewport: { width: 1100, height: 700 } });
  // Keep a handle on the page's sockets so the test can cut a connection.
  await page.addInitScript(() => {
    const Native = window.WebSocket;
    window.__sockets = [];
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        window.__sockets.push(this);
      }
    };
  });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`${base}/?room=${room}&name=${name}${query}`);
  await page.waitForSelector('#state[data-state="open"]');
  page.errors = errors;
  return page;
}

const chatTexts = (page) => page.$$eval("#chat li", (lis) => lis.map((li) => li.textContent));

test("two pages share chat, cursors and presence, and a cut connection recovers without loss", async () => {
  const room = `demo-${randomUUID().slice(0, 8)}`;
  const alice = await open(room, "alice");
  const bob = await open(room, "bob");

  // Presence: each sees the other's avatar.
  await alice.waitForSelector('#people li[data-user="bob"]');
  await bob.waitForSelector('#people li[data-user="alice"]');

  // Chat both ways.
  await alice.fill("#text", "hello from alice");
  await alice.press("#text", "Enter");
  await bob.waitForFunction(() => [...document.querySelectorAll("#chat li")].some((li) => li.textContent === "alicehello from alice"));
  await bob.fill("#text", "hi alice");
  await bob.press("#text", "Enter");
  await alice.waitForFunction(() => [...document.querySelectorAll("#chat li")].some((li) => li.textContent === "bobhi alice"));

  // Cursor: bob moves over the board, alice sees bob's cursor.
  await bob.mouse.move(300, 300);
  await bob.mouse.move(420, 360, { steps: 5 });
  await alice.waitForSelector('.cursor[data-user="bob"]');
  mkdirSync("test-results", { recursive: true });
  await alice.screenshot({ path: "test-results/demo-board.png" });

  // Cut bob's connection; alice keeps talking meanwhile.
  await bob.evaluate(() => window.__sockets.at(-1).close(4000, "test cut"));
  await bob.waitForSelector('#state:not([data-state="open"])');
  for (const n of [1, 2, 3]) {
    await alice.fill("#text", `while you were away ${n}`);
    await alice.press("#text", "Enter");
  }
  await bob.waitForSelector('#state[data-state="open"]');
  await bob.waitForFunction(() => [...document.querySelectorAll("#chat li")].filter((li) => li.textContent.startsWith("alicewhile you were away")).length === 3);
  // Nothing lost, nothing twice, in order.
  const seen = (await chatTexts(bob)).filter((t) => t.startsWith("alice"));
  assert.deepEqual(seen, ["alicehello from alice", "alicewhile you were away 1", "alicewhile you were away 2", "alicewhile you were away 3"]);
  assert.ok((await bob.evaluate(() => window.__sockets.length)) >= 2, "bob reconnected on a new socket");

  await alice.screenshot({ path: "test-results/demo-board-after-reconnect.png" });
  assert.deepEqual([alice.errors, bob.errors].flat(), []);
});

/**
 * In a fresh page of the demo's origin: imports the SDK from /sdk/, connects to `room`
 * with a token provider that always returns `tok`, and waits for the client to stop. Then
 * waits several of its longest backoff periods (ending early if another attempt is made,
 * which is the failure). Returns what the page saw: provider calls, sockets created, the
 * final state and the error it stopped with.
 */
async function refusedInBrowser(room, tok, transport = "auto") {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`${base}/healthz`); // any page of the origin; the SDK comes from /sdk/
  const seen = await page.evaluate(
    async ({ room, tok, transport }) => {
      const { Roomcast } = await import("/sdk/index.js");
      const backoff = { baseMs: 50, capMs: 200, stableMs: 2000 };
      let sockets = 0;
      let streams = 0;
      class CountingWebSocket extends WebSocket {
        constructor(...args) {
          super(...args);
          sockets++;
        }
      }
      class CountingEventSource extends EventSource {
        constructor(...args) {
          super(...args);
          streams++;
        }
      }
      const reasons = [];
      const client = new Roomcast({
        url: location.origin,
        room,
        token: (ctx) => {
          reasons.push(ctx.reason);
          return tok;
        },
        WebSocket: CountingWebSocket,
        EventSource: CountingEventSource,
        transport,
        backoff,
      });
      const stopped = await new Promise((resolve) => {
        const timer = setTimeout(() => resolve(null), 20_000);
        client.on("state", (state, detail) => {
          if (state !== "closed") return;
          clearTimeout(timer);
          resolve(detail.error ?? {});
        });
      });
      const at = { sockets, streams, reasons: reasons.length };
      const deadline = Date.now() + 5 * backoff.capMs;
      while (Date.now() < deadline && sockets === at.sockets && streams === at.streams && reasons.length === at.reasons) {
        await new Promise((r) => setTimeout(r, 10));
      }
      const result = {
        state: client.state,
        error: stopped && { code: stopped.code, fatal: stopped.fatal, closeCode: stopped.closeCode, message: stopped.message },
        reasons,
        sockets,
        socketsAtStop: at.sockets,
        streams,
        streamsAtStop: at.streams,
        transport: client.transport,
      };
      client.close();
      return result;
    },
    { room, tok, transport },
  );
  await page.close();
  assert.deepEqual(errors, []);
  return seen;
}

test("in Chromium, an always-expired token is asked for twice, then the SDK stops with token_expired", async () => {
  const seen = await refusedInBrowser(`demo-${randomUUID().slice(0, 8)}`, await userToken("ada", { exp: now() - 120 }));
  assert.equal(seen.state, "closed");
  assert.ok(seen.error, "the client stopped");
  assert.deepEqual([seen.error.code, seen.error.fatal, seen.error.closeCode], ["token_expired", true, 4001]);
  assert.equal(seen.error.message, "the token has expired; get a fresh one");
  assert.deepEqual(seen.reasons, ["connect", "expired"], "the provider, exactly twice");
  assert.equal(seen.sockets, 2);
  assert.equal(seen.socketsAtStop, 2, "no attempt after stopping");
});

test("in Chromium, a token without read permission stops the SDK at once with forbidden", async () => {
  const room = `demo-${randomUUID().slice(0, 8)}`;
  const seen = await refusedInBrowser(room, await token({ sub: "ada", rooms: { "other-*": ["read", "write"] } }));
  assert.equal(seen.state, "closed");
  assert.ok(seen.error, "the client stopped");
  assert.deepEqual([seen.error.code, seen.error.fatal, seen.error.closeCode], ["forbidden", true, 4403]);
  assert.match(seen.error.message, /no "read" permission on room/);
  assert.deepEqual(seen.reasons, ["connect"]);
  assert.equal(seen.sockets, 1);
});

test("in Chromium over SSE, whose EventSource hides HTTP statuses, the SDK reads refusals with fetch: forbidden stops, an expired token is refreshed once", async () => {
  const forbidden = await refusedInBrowser(`demo-${randomUUID().slice(0, 8)}`, await token({ sub: "ada", rooms: { "other-*": ["read"] } }), "sse");
  assert.equal(forbidden.state, "closed");
  assert.deepEqual([forbidden.error.code, forbidden.error.fatal, forbidden.error.closeCode], ["forbidden", true, 4403]);
  assert.deepEqual([forbidden.sockets, forbidden.streams, forbidden.streamsAtStop, forbidden.transport], [0, 1, 1, "sse"]);

  const expired = await refusedInBrowser(`demo-${randomUUID().slice(0, 8)}`, await userToken("ada", { exp: now() - 120 }), "sse");
  assert.equal(expired.state, "closed");
  assert.deepEqual([expired.error.code, expired.error.fatal], ["token_expired", true]);
  assert.deepEqual(expired.reasons, ["connect", "expired"]);
  assert.deepEqual([expired.streams, expired.streamsAtStop], [2, 2]);
});

// ---- a network that refuses WebSockets (issue 12) ------------------------------------------

/** The room's stored chat texts, in seq order (history API, signed). */
async function storedChat(room) {
  const res = await signedFetch(base, "GET", `/v1/rooms/${room}/messages?since=0&limit=1000`);
  assert.equal(res.status, 200);
  return (await res.json()).messages.filter((m) => m.event === "chat").map((m) => `${m.from?.user}:${m.data.text}`);
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const hasChat = (page, text) =>
  page.waitForFunction((t) => [...document.querySelectorAll("#chat li")].some((li) => li.textContent === t), text, { timeout: 20_000 });

test("behind a proxy that refuses WebSockets, the demo board falls back to SSE and still works with a WebSocket page", async () => {
  const room = `demo-${randomUUID().slice(0, 8)}`;
  const alice = await open(room, "alice");
  const refusedBefore = proxy.stats.refused;
  const bob = await open(room, "bob", { via: blockedBrowser });

  // Alice is on a WebSocket; bob's WebSocket was refused, and the SDK moved to SSE by itself.
  await alice.waitForSelector('#transport[data-transport="websocket"]');
  await bob.waitForSelector('#transport[data-transport="sse"]');
  assert.equal(await bob.evaluate(() => window.roomcast.transport), "sse");
  assert.equal(await alice.evaluate(() => window.roomcast.transport), "websocket");
  assert.ok(proxy.stats.refused - refusedBefore >= 2, `bob's WebSocket upgrades were refused (${proxy.stats.refused - refusedBefore})`);
  console.log(`proxy: ${proxy.stats.refused - refusedBefore} WebSocket attempts refused (${[...proxy.stats.how].join(", ")}), ${proxy.stats.forwarded.length} requests forwarded`);
  assert.ok(proxy.stats.forwarded.some((r) => r.startsWith("GET /v1/rooms/" + room + "/events")), "the stream went through the proxy");
  assert.equal(await bob.evaluate(() => window.__sockets.length), 2, "two WebSocket attempts (fallbackAfter), then none");

  // Presence both ways: bob's stream is a member of the room like a socket.
  await alice.waitForSelector('#people li[data-user="bob"]');
  await bob.waitForSelector('#people li[data-user="alice"]');

  // Chat both ways: bob publishes over HTTP, receives over SSE.
  await say(alice, "hello from a websocket");
  await hasChat(bob, "alicehello from a websocket");
  await say(bob, "hi from behind the proxy");
  await hasChat(alice, "bobhi from behind the proxy");

  // Cursors (signals) both ways.
  await bob.mouse.move(300, 300);
  await bob.mouse.move(420, 360, { steps: 5 });
  await alice.waitForSelector('.cursor[data-user="bob"]');
  await alice.mouse.move(500, 200);
  await alice.mouse.move(520, 260, { steps: 5 });
  await bob.waitForSelector('.cursor[data-user="alice"]');
  mkdirSync("test-results", { recursive: true });
  await bob.screenshot({ path: "test-results/demo-board-sse.png" });
  await alice.screenshot({ path: "test-results/demo-board-sse-peer.png" });

  // The network goes away under bob: alice keeps talking, bob writes offline.
  proxy.cut();
  await bob.waitForSelector('#state:not([data-state="open"])');
  for (const n of [1, 2, 3]) await say(alice, `while you were away ${n}`);
  await say(bob, "written offline");
  proxy.restore();
  await bob.waitForSelector('#state[data-state="open"]', { timeout: 60_000 });
  await bob.waitForFunction(() => [...document.querySelectorAll("#chat li")].filter((li) => li.textContent.startsWith("alicewhile you were away")).length === 3, null, { timeout: 20_000 });
  await hasChat(alice, "bobwritten offline");
  assert.equal(await bob.evaluate(() => window.roomcast.transport), "sse", "still SSE after the outage");

  // Nothing lost, nothing twice, in order — on bob's screen and in the room's log.
  const bobSaw = (await chatTexts(bob)).filter((t) => t.startsWith("alice"));
  assert.deepEqual(bobSaw, ["alicehello from a websocket", "alicewhile you were away 1", "alicewhile you were away 2", "alicewhile you were away 3"]);
  const aliceSaw = (await chatTexts(alice)).filter((t) => t.startsWith("bob"));
  assert.deepEqual(aliceSaw, ["bobhi from behind the proxy", "bobwritten offline"]);
  const stored = await storedChat(room);
  assert.deepEqual(stored.filter((t) => t.startsWith("bob:")), ["bob:hi from behind the proxy", "bob:written offline"], "each of bob's publishes stored exactly once");
  assert.equal(stored.length, 6);
  assert.equal(await bob.evaluate(() => window.roomcast.pending), 0);

  await bob.screenshot({ path: "test-results/demo-board-sse-after-outage.png" });
  assert.deepEqual([alice.errors, bob.errors].flat(), []);
  await alice.close();
  await bob.close();
});

test("a page forced to long-polling (?transport=longpoll) chats with a WebSocket page", async () => {
  const room = `demo-${randomUUID().slice(0, 8)}`;
  const alice = await open(room, "alice");
  const carl = await open(room, "carl", { query: "&transport=longpoll" });
  await carl.waitForSelector('#transport[data-transport="longpoll"]');
  assert.equal(await carl.evaluate(() => window.__sockets.length), 0, "no WebSocket at all");
  await say(alice, "can you hear me");
  await hasChat(carl, "alicecan you hear me");
  await say(carl, "loud and clear");
  await hasChat(alice, "carlloud and clear");
  assert.deepEqual(await storedChat(room), ["alice:can you hear me", "carl:loud and clear"]);
  await carl.screenshot({ path: "test-results/demo-board-longpoll.png" });
  assert.deepEqual([alice.errors, carl.errors].flat(), []);
  await alice.close();
  await carl.close();
});
