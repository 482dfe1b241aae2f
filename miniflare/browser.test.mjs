// The demo board in a real browser: headless Chromium (Debian's, driven by playwright-core)
// against `wrangler dev`, which serves the static assets and routes /v1/* to the Worker
// exactly as a deployment does. Two pages see each other's chat, cursor and presence; one
// page's connection is cut and it recovers without losing a message. Then the SDK, loaded by
// a page from /sdk/, meets refusals it can only see through docs/protocol.md §10 (a browser
// hides a refused upgrade's status): an always-expired token and a missing permission.
// A screenshot is saved to test-results/demo-board.png (git-ignored).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import net from "node:net";
import { randomUUID } from "node:crypto";
import { chromium } from "playwright-core";
import { JWT_SECRET, token, userToken, now } from "./helpers.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
let server, browser, base;

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
    ["dev", "--ip", "127.0.0.1", "--port", String(port), "--var", `JWT_SECRET:${JWT_SECRET}`, "--var", "DEV_TOKENS:1", "--show-interactive-dev-session=false"],
    { env: { ...process.env, WRANGLER_SEND_METRICS: "false" }, stdio: ["ignore", "pipe", "pipe"], detached: true },
  );
  server.stdout.on("data", (c) => (log += c));
  server.stderr.on("data", (c) => (log += c));
  try {
    await waitForHealth(base, server);
  } catch (e) {
    throw new Error(`${e.message}\n${log.slice(-3000)}`);
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    try {
      process.kill(-server.pid, "SIGTERM");
    } catch {
      server.kill("SIGTERM");
    }
  }
});

async function open(room, name) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
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
  await page.goto(`${base}/?room=${room}&name=${name}`);
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
async function refusedInBrowser(room, tok) {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`${base}/healthz`); // any page of the origin; the SDK comes from /sdk/
  const seen = await page.evaluate(
    async ({ room, tok }) => {
      const { Roomcast } = await import("/sdk/index.js");
      const backoff = { baseMs: 50, capMs: 200, stableMs: 2000 };
      let sockets = 0;
      class CountingWebSocket extends WebSocket {
        constructor(...args) {
          super(...args);
          sockets++;
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
      const at = { sockets, reasons: reasons.length };
      const deadline = Date.now() + 5 * backoff.capMs;
      while (Date.now() < deadline && sockets === at.sockets && reasons.length === at.reasons) {
        await new Promise((r) => setTimeout(r, 10));
      }
      const result = {
        state: client.state,
        error: stopped && { code: stopped.code, fatal: stopped.fatal, closeCode: stopped.closeCode, message: stopped.message },
        reasons,
        sockets,
        socketsAtStop: at.sockets,
      };
      client.close();
      return result;
    },
    { room, tok },
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
