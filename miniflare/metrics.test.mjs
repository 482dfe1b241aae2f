// The `METRICS` Analytics Engine binding (docs/operating.md): what the real room writes.
// Miniflare's own local dataset accepts points and keeps nothing, so the binding here is
// a wrapped binding whose `writeDataPoint` prints each point as a log line; the room
// under test is the built Worker, unchanged.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { start, connect, token, uid } from "./helpers.mjs";

const DOUBLES = [
  "connections", "users", "peak_connections", "interval_ms", "messages", "duplicates", "ephemeral",
  "deliveries", "sends", "connects", "rejections", "kicks", "rows_read", "rows_written", "webhooks_pending",
];

let env;
before(async () => {
  env = await start({
    bindings: { METRICS_INTERVAL_SECS: "1" },
    worker: { wrappedBindings: { METRICS: { scriptName: "analytics-capture" } } },
    workers: [
      {
        name: "analytics-capture",
        modules: true,
        script: `export default function () {
          return { writeDataPoint(p) { console.log(JSON.stringify({ event: "analytics.point", point: p })); } };
        }`,
      },
    ],
  });
});
after(async () => env?.mf.dispose());

const points = (room, from = 0) =>
  env.logs.slice(from).filter((l) => l.event === "analytics.point" && l.point.indexes[0] === `/${room}`).map((l) => l.point);
const column = (p, name) => p.doubles[DOUBLES.indexOf(name)];

test("a room writes one point per interval with what changed, and one when it empties", async () => {
  const room = uid("metrics");
  const tok = await token({ sub: "ann", rooms: { "metrics-*": ["read", "write"] } });
  const a = await connect(env.wsBase, room, tok);
  const b = await connect(env.wsBase, room, await token({ sub: "ben", rooms: { "metrics-*": ["read"] } }));
  for (const id of ["m1", "m2", "m3"]) assert.equal((await a.publish(id)).type, "ack");
  a.send({ type: "publish", id: "m1", event: "chat", data: {} });
  const acks = await a.nextN((f) => f.type === "ack" && f.id === "m1", 2, "the duplicate's ack");
  assert.equal(acks[1].duplicate, true);
  assert.equal((await b.publish("nope")).code, "forbidden");
  await b.nextN((f) => f.type === "message", 3, "three messages");
  // Past the interval, the next event writes the point.
  await new Promise((r) => setTimeout(r, 1_100));
  assert.equal((await a.publish("m4")).type, "ack");
  const [p] = await waitFor(() => points(room), "the interval's point");
  assert.equal(p.indexes.length, 1);
  assert.deepEqual(p.blobs, [room, "", "forbidden=1", ""]);
  assert.equal(p.doubles.length, DOUBLES.length);
  assert.equal(column(p, "connections"), 2);
  assert.equal(column(p, "users"), 2);
  assert.equal(column(p, "peak_connections"), 2);
  assert.equal(column(p, "connects"), 2);
  assert.equal(column(p, "messages"), 4, "m1–m3 and m4, whose event wrote the point");
  assert.equal(column(p, "duplicates"), 1);
  assert.equal(column(p, "rejections"), 1);
  assert.ok(column(p, "deliveries") >= 6, `deliveries ${column(p, "deliveries")}`);
  assert.ok(column(p, "interval_ms") >= 1_000);
  assert.ok(column(p, "rows_written") > 0);
  assert.equal(column(p, "webhooks_pending"), 0);
  // Both leave: the partial interval is written, with nobody left.
  const before = points(room).length;
  await a.close();
  await b.close();
  const last = (await waitFor(() => points(room).slice(before).filter((q) => column(q, "connections") === 0), "the point of the emptied room"))[0];
  assert.equal(column(last, "users"), 0);
  assert.equal(column(last, "messages"), 0, "nothing published since the previous point");
});

async function waitFor(get, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const got = get();
    if (got.length) return got;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last lines ${JSON.stringify(env.logs.slice(-5))}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
