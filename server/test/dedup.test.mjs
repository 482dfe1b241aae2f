// WidDedup and parseWid as pure units: redeliveries dropped, late (retried dead) events
// accepted, epochs and tenants kept apart, memory bounded, state saved and restored.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WidDedup, parseWid } from "../dist/index.js";

const lobby = { room: "lobby", tenant: null };
const wid = (n, epoch = "e_1") => `${epoch}:${n}`;
const batch = (ns, scope = lobby, epoch = "e_1") => ({ ...scope, epoch, events: ns.map((n) => ({ wid: wid(n, epoch), kind: "room", op: "occupied", ts: n })) });

test("parseWid splits at the last colon and wants a positive integer", () => {
  assert.deepEqual(parseWid("e_9kq:42"), { epoch: "e_9kq", n: 42 });
  for (const bad of ["e_1", "e_1:", ":5", "e_1:0", "e_1:-1", "e_1:1.5", "e_1:1e3", 7, "e_1:99999999999999999999"]) {
    assert.throws(() => parseWid(bad), TypeError, String(bad));
  }
});

test("a redelivered batch yields nothing; a batch that overlaps yields only its new events", () => {
  const d = new WidDedup();
  const first = batch([1, 2, 3]);
  assert.deepEqual(d.fresh(first).map((e) => e.wid), [wid(1), wid(2), wid(3)]);
  for (const e of d.fresh(first)) assert.equal(d.add(first, e.wid), true);
  assert.deepEqual(d.fresh(first), [], "the same batch again");
  assert.deepEqual(d.fresh(batch([2, 3, 4, 5])).map((e) => e.wid), [wid(4), wid(5)]);
  assert.equal(d.add(lobby, wid(3)), false, "already added");
  assert.equal(d.has(lobby, wid(3)), true);
  assert.equal(d.has(lobby, wid(4)), false, "fresh() marks nothing");
  // Within one batch a repeated wid counts once.
  assert.deepEqual(d.fresh(batch([6, 6])).map((e) => e.wid), [wid(6)]);
});

test("events that were dead and come later (out of order) are still fresh", () => {
  const d = new WidDedup();
  for (const n of [1, 2, 5, 6, 9]) d.add(lobby, wid(n)); // 3, 4, 7, 8 became dead
  assert.deepEqual(d.toJSON().rooms[0][2], [[1, 2], [5, 6], [9, 9]]);
  assert.deepEqual(d.fresh(batch([3, 4, 7, 8])).map((e) => e.wid), [wid(3), wid(4), wid(7), wid(8)]);
  for (const n of [4, 3, 8, 7]) assert.equal(d.add(lobby, wid(n)), true);
  assert.deepEqual(d.toJSON().rooms[0][2], [[1, 9]], "ranges merge once the gaps fill");
  // A receiver that starts mid-stream keeps one range from its first event.
  const late = new WidDedup();
  for (let n = 500; n <= 1500; n++) late.add(lobby, wid(n));
  assert.deepEqual(late.toJSON().rooms[0][2], [[500, 1500]]);
  assert.equal(late.has(lobby, wid(499)), false);
});

test("rooms, tenants and epochs are kept apart", () => {
  const d = new WidDedup();
  d.add(lobby, wid(1));
  assert.equal(d.has({ room: "lobby", tenant: "t1" }, wid(1)), false, "another tenant's lobby");
  assert.equal(d.has({ room: "other" }, wid(1)), false, "another room");
  assert.equal(d.has({ room: "lobby" }, wid(1)), true, "tenant omitted = null");
  // The room's storage was lost: a new epoch starts again at 1 and replaces the old one.
  assert.equal(d.has(lobby, wid(1, "e_2")), false);
  assert.equal(d.add(lobby, wid(1, "e_2")), true);
  assert.equal(d.has(lobby, wid(1, "e_2")), true);
  assert.equal(d.has(lobby, wid(1)), false);
});

test("memory is bounded: least recently used rooms, then the lowest gaps, are forgotten", () => {
  const d = new WidDedup({ maxRooms: 2, maxGaps: 2 });
  d.add({ room: "a" }, wid(1));
  d.add({ room: "b" }, wid(1));
  d.add({ room: "a" }, wid(2)); // a is now the most recent
  d.add({ room: "c" }, wid(1)); // b goes
  assert.equal(d.size, 2);
  assert.equal(d.has({ room: "b" }, wid(1)), false);
  assert.equal(d.has({ room: "a" }, wid(2)), true);
  const g = new WidDedup({ maxGaps: 2 });
  for (const n of [1, 3, 5, 7]) g.add(lobby, wid(n)); // gaps at 2, 4, 6: one too many
  assert.deepEqual(g.toJSON().rooms[0][2], [[1, 3], [5, 5], [7, 7]], "the lowest gap (2) was closed");
  assert.equal(g.has(lobby, wid(2)), true, "so 2 now counts as seen");
  assert.equal(g.has(lobby, wid(4)), false);
});

test("toJSON / from round-trips through JSON", () => {
  const d = new WidDedup();
  for (const n of [1, 2, 3, 7]) d.add(lobby, wid(n));
  d.add({ room: "inbox@alice", tenant: "t1" }, wid(4, "e_x"));
  const restored = WidDedup.from(JSON.parse(JSON.stringify(d)));
  assert.deepEqual(restored.toJSON(), d.toJSON());
  assert.equal(restored.has(lobby, wid(2)), true);
  assert.equal(restored.has(lobby, wid(5)), false);
  assert.equal(restored.has({ room: "inbox@alice", tenant: "t1" }, wid(4, "e_x")), true);
  assert.throws(() => WidDedup.from({ version: 2, rooms: [] }), TypeError);
});
