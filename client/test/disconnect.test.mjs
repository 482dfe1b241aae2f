// The client's reaction to a backend's disconnect (docs/protocol.md §14): an `error` frame
// with code `disconnected`, the backend's reason and the close code that follows; the code
// decides — 4400–4999 stop with that error, 4000–4399 reconnect with backoff — and the
// client acts on the frame, not on the close event that trails it. Also personal room
// names (`name@user`). Fake WebSocket and clock, as in client.test.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Roomcast, RoomcastError } from "../dist/index.js";
import { FakeClock, socketClass, settle, record } from "./fakes.mjs";

function setup(options = {}) {
  const clock = new FakeClock();
  const WS = socketClass();
  const tokens = [];
  const client = new Roomcast({
    url: "ws://rooms.test",
    room: "lobby",
    token: (ctx) => {
      tokens.push(ctx);
      return `tok${tokens.length}`;
    },
    WebSocket: WS,
    timers: clock,
    random: () => 0.5,
    ...options,
  });
  const log = record(client);
  return { clock, WS, client, log, tokens };
}

const delays = (log) => log.details.filter((d) => d.state === "reconnecting" && d.delayMs !== undefined).map((d) => d.delayMs);

/**
 * The server side of a disconnect: the error frame naming `closeCode` (as `close`, unless
 * `frameClose` says otherwise: `null` leaves it out, like an older server), then — unless
 * `close` is false — the close itself.
 */
function disconnect(socket, closeCode, { message = "removed from the board", frameClose = closeCode, close = true } = {}) {
  socket.receive({ type: "error", code: "disconnected", message, ...(frameClose === null ? {} : { close: frameClose }) });
  if (close) socket.serverClose(closeCode, "disconnected");
}

test("disconnected then 4403 (and any 4400–4999): stops with a fatal `disconnected` error carrying the server's message", async () => {
  for (const code of [4403, 4400, 4401, 4999]) {
    const { clock, WS, client, log } = setup();
    await settle();
    WS.last.accept({ seq: 3 });
    const pending = client.publish("chat", { n: 1 });
    disconnect(WS.last, code);
    assert.equal(client.state, "closed", `after ${code}`);
    assert.equal(log.errors.length, 1, `one error for ${code}`);
    const e = log.errors[0];
    assert.ok(e instanceof RoomcastError);
    assert.deepEqual([e.code, e.message, e.fatal, e.closeCode], ["disconnected", "removed from the board", true, code]);
    assert.equal(log.details.at(-1).error, e, "the closed state names it");
    await assert.rejects(pending, (err) => err.code === "closed" && err.cause === e);
    await clock.advance(600_000);
    assert.equal(WS.instances.length, 1, `no reconnect after ${code}`);
  }
});

test("disconnected then 4000 (and any 4000–4399): reported, then a reconnect with backoff that resumes", async () => {
  for (const code of [4000, 4100, 4399]) {
    const { clock, WS, client, log, tokens } = setup({ random: () => 0.999999, backoff: { baseMs: 500, capMs: 8000, stableMs: 10_000 } });
    await settle();
    WS.last.accept({ seq: 7 });
    disconnect(WS.last, code, { message: "permissions changed; come back" });
    assert.equal(client.state, "reconnecting", `after ${code}`);
    assert.deepEqual(
      log.errors.map((e) => [e.code, e.message, e.fatal, e.closeCode]),
      [["disconnected", "permissions changed; come back", false, code]],
    );
    assert.deepEqual(delays(log), [499], "backoff, not at once");
    await clock.advance(498);
    assert.equal(WS.instances.length, 1, "waits out the backoff");
    await clock.advance(1);
    assert.equal(WS.instances.length, 2);
    assert.equal(WS.last.url.search, "?since=7&epoch=e_1", "resumes");
    assert.equal(tokens.at(-1).reason, "reconnect");
    WS.last.accept({ seq: 7, resume: { requested: true, recovered: true, replayed: 0 } });
    assert.equal(client.state, "open");
    // Disconnected again before the connection was stable: the backoff grows.
    disconnect(WS.last, code);
    assert.deepEqual(delays(log), [499, 999]);
    client.close();
  }
});

test("the frame is acted on at once: the close event, seconds later, finds nothing left to do", async () => {
  for (const [code, after] of [[4403, "closed"], [4000, "reconnecting"]]) {
    const { WS, client, log } = setup();
    await settle();
    WS.last.accept();
    const socket = WS.last;
    disconnect(socket, code, { close: false });
    assert.equal(client.state, after, `${code}, before its close event`);
    assert.ok(socket.terminated, "the old socket is dropped, not left to linger");
    const errors = log.errors.length;
    const states = log.states.length;
    socket.serverClose(code, "disconnected");
    assert.deepEqual([log.errors.length, log.states.length], [errors, states], "the trailing close is ignored");
    client.close();
  }
});

test("a frame without a usable `close` (an older server) waits for the close and its code", async () => {
  for (const frameClose of [null, 1000, 5000, "4000", 4000.5]) {
    const { WS, client, log } = setup();
    await settle();
    WS.last.accept();
    disconnect(WS.last, 4403, { frameClose, close: false });
    assert.equal(client.state, "open", `close: ${JSON.stringify(frameClose)}`);
    assert.deepEqual(log.errors, []);
    // A second frame does not replace the first reason.
    disconnect(WS.last, 4403, { frameClose: null, message: "a later reason", close: false });
    WS.last.serverClose(4403, "disconnected");
    assert.deepEqual([log.errors[0].code, log.errors[0].message, log.errors[0].fatal], ["disconnected", "removed from the board", true]);
    assert.equal(client.state, "closed");
  }
});

test("a disconnect's reason is kept only for its own connection", async () => {
  const { clock, WS, client, log } = setup();
  await settle();
  WS.last.accept();
  disconnect(WS.last, 4000);
  await clock.advance(delays(log).at(-1));
  WS.last.accept();
  // The next connection ends for another reason: reported as that, not as a disconnect.
  WS.last.serverClose(4403, "forbidden");
  assert.equal(client.state, "closed");
  assert.deepEqual(
    log.errors.map((e) => [e.code, e.fatal]),
    [
      ["disconnected", false],
      ["close", true],
    ],
  );
});

test("personal room names (name@user) are accepted and sent unencoded; other uses of @ are refused", async () => {
  const { WS } = setup({ room: "inbox@alice" });
  await settle();
  assert.equal(WS.last.url.pathname, "/v1/rooms/inbox@alice/ws");
  const Fake = socketClass();
  for (const room of ["@alice", "inbox@", "a@b@c", "inbox@al ice", `${"x".repeat(64)}@${"y".repeat(64)}`]) {
    assert.throws(() => new Roomcast({ url: "ws://x", room, token: "t", WebSocket: Fake }), TypeError, room);
  }
  const longest = new Roomcast({ url: "ws://x", room: `${"x".repeat(63)}@${"y".repeat(64)}`, token: "t", WebSocket: Fake, timers: new FakeClock() });
  longest.close();
});
