// Slow consumers (docs/protocol.md §12) against the real Worker in workerd: a reader that
// stops reading while publishers keep a room busy is closed with 4009 once it has more
// than MAX_PENDING_BYTES unread; readers that keep up are never touched; the slow one
// recovers every durable message by resuming.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { start, connect, userToken, uid, until } from "./helpers.mjs";

let env;
before(async () => {
  env = await start();
});
after(async () => env?.mf.dispose());

/**
 * A raw `ws` reader that sends read receipts (`received`, as the SDK does) every 32
 * messages while it reads, and can stop reading: `pause()` stops taking data off its TCP
 * socket, so what the server sends piles up in the server's buffers.
 */
function reader(room, tok, query = "") {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${env.wsBase}/v1/rooms/${room}/ws${query}`, { headers: { Authorization: `Bearer ${tok}` } });
    const r = { ws, count: 0, seqs: [], welcome: null, paused: false, closeCode: null };
    r.closed = new Promise((res) => ws.on("close", (code) => res((r.closeCode = code))));
    r.pause = () => ws._socket.pause();
    r.resume = () => ws._socket.resume();
    ws.on("message", (data) => {
      const text = data.toString();
      if (text === "pong") return;
      r.count++;
      const parsed = JSON.parse(text);
      for (const f of Array.isArray(parsed) ? parsed : [parsed]) {
        if (f.type === "welcome") {
          r.welcome = f;
          resolve(r);
        }
        if (f.type === "message" && typeof f.seq === "number") r.seqs.push(f.seq);
      }
      if (r.welcome?.receipts && r.count % 32 === 1 && ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "received", messages: r.count }));
      }
    });
    ws.on("error", reject);
  });
}

const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

test("a paused reader among busy ones is closed with 4009 and recovers everything by resuming", async () => {
  const room = uid();
  const payload = "x".repeat(16 * 1024);
  const readers = await Promise.all(["r1", "r2", "r3"].map(async (u) => reader(room, await userToken(u))));
  const slow = await reader(room, await userToken("slow"));
  assert.equal(slow.welcome.receipts, true, "the room reads receipts");
  const publishers = await Promise.all(["p1", "p2", "p3", "p4"].map(async (u) => connect(env.wsBase, room, await userToken(u))));

  // Four publishers at ~20/s each (the default per-connection rate): ~80 × 16 KiB a second.
  let sent = 0;
  let stop = false;
  const pumps = publishers.map(async (p, n) => {
    for (let i = 0; !stop; i++) {
      const id = `p${n}-${i}`;
      const ack = await p.publish(id, { payload });
      if (ack.type === "ack") sent++;
      await new Promise((r) => setTimeout(r, 50));
    }
  });
  await until(() => sent >= 8, "the room is busy");
  slow.pause();
  const kick = await env.nextLog((l) => l.event === "socket.kick" && l.conn === slow.welcome.conn, {
    from: 0,
    what: "the slow socket's kick",
    timeoutMs: 30_000,
  });
  assert.equal(kick.code, "4009");
  const pending = Number(kick.pending_bytes);
  const baseline = Number(kick.baseline_bytes);
  assert.ok(pending > 1024 * 1024 + baseline, `kicked once over 1 MiB unread beyond its peers: ${pending} (peers: ${baseline})`);
  // Closed at the first batch after it passed the bound: at most one more batch (coalesced
  // messages of up to 256 KiB each, several when the room is behind) beyond it.
  assert.ok(pending < 2 * 1024 * 1024 + baseline, `at the next batch: ${pending} (peers: ${baseline})`);
  // Keep the room busy a little longer with the slow socket gone, then stop.
  const more = sent + 16;
  await until(() => sent >= more, "more traffic after the kick");
  stop = true;
  await Promise.all(pumps);

  // Readers that kept up were never closed and have every message, in order, once each.
  await until(() => readers.every((r) => r.seqs.length >= sent), "readers caught up");
  for (const r of readers) {
    assert.equal(r.closeCode, null);
    assert.deepEqual(r.seqs, range(1, r.seqs.length));
  }
  assert.equal(readers[0].seqs.length, sent);

  // The slow reader reads again: what was buffered, then the 4009 close.
  slow.resume();
  assert.equal(await slow.closed, 4009);
  const upTo = slow.seqs.at(-1) ?? 0;
  assert.deepEqual(slow.seqs, range(1, upTo), "what it got before the close is gapless");
  assert.ok(upTo < sent, "it was closed before the end");

  // Resume: everything it missed, exactly once.
  const back = await reader(room, await userToken("slow"), `?since=${upTo}&epoch=${slow.welcome.epoch}`);
  assert.deepEqual(back.welcome.resume, { requested: true, recovered: true, replayed: sent - upTo });
  await until(() => back.seqs.length >= sent - upTo, "the replay");
  assert.deepEqual([...slow.seqs, ...back.seqs], range(1, sent));
  for (const c of [...readers, back]) c.ws.close();
  for (const p of publishers) p.close();
});
