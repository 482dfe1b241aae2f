import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { start, connect, userToken, uid } from "./helpers.mjs";

let env;
before(async () => (env = await start()));
after(async () => env?.mf.dispose());

test("two clients see each other's messages", async () => {
  const room = uid();
  const a = await connect(env.wsBase, room, await userToken("alice"));
  const b = await connect(env.wsBase, room, await userToken("bob"));
  const ack = await a.publish("m1", { text: "hi" });
  assert.equal(ack.type, "ack");
  const m = await b.next((f) => f.type === "message" && f.id === "m1");
  assert.deepEqual(m.data, { text: "hi" });
  assert.equal(m.from.user, "alice");
  a.close();
  b.close();
});
