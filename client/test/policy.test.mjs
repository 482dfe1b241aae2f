// Pure policy: backoff bounds and the close-code table.
import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, closePolicy, handshakePolicy, RETRYABLE_PUBLISH_ERRORS } from "../dist/index.js";

test("backoff: full jitter between 0 and min(cap, base·2^attempt)", () => {
  const low = () => 0;
  const high = () => 0.999999;
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(30_000, 500 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, 500, 30_000, low), 0, `attempt ${attempt} lower bound`);
    const hi = backoffDelay(attempt, 500, 30_000, high);
    assert.ok(hi < ceiling && hi >= ceiling - 1, `attempt ${attempt}: ${hi} just under ${ceiling}`);
    assert.equal(backoffDelay(attempt, 500, 30_000, () => 0.5), Math.floor(ceiling / 2));
  }
});

test("backoff: capped, never NaN or negative, even for absurd inputs", () => {
  assert.equal(backoffDelay(1e6, 500, 30_000, () => 0.999999), 29_999);
  assert.equal(backoffDelay(-3, 500, 30_000, () => 0.999999), 499);
  assert.equal(backoffDelay(3, 500, 30_000, () => 1), 3_999, "random() = 1 is clamped below the ceiling");
  assert.equal(backoffDelay(3, 500, 30_000, () => -1), 0);
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(i % 40);
    assert.ok(Number.isInteger(d) && d >= 0 && d < 30_000, String(d));
  }
});

test("close codes: 1006/1011/4000–4399 reconnect, 4001 refreshes the token, 1009/4400–4999 stop", () => {
  const expect = {
    reconnect: [1001, 1005, 1006, 1011, 1012, 1013, 4000, 4008, 4100, 4399, 3000],
    refresh_token: [4001],
    stop: [1009, 4400, 4403, 4500, 4999],
  };
  for (const [action, codes] of Object.entries(expect)) {
    for (const code of codes) assert.equal(closePolicy(code), action, `close ${code}`);
  }
  assert.equal(closePolicy(1000, true), "stop", "a close we asked for");
  assert.equal(closePolicy(1000, false), "reconnect", "an unsolicited 1000 is not obeyed");
});

test("rejected upgrades: 401 refreshes, 400/403/404/426 stop, 429 and 5xx retry", () => {
  assert.equal(handshakePolicy(401), "refresh_token");
  for (const s of [400, 403, 404, 426]) assert.equal(handshakePolicy(s), "stop", String(s));
  for (const s of [429, 500, 502, 503]) assert.equal(handshakePolicy(s), "reconnect", String(s));
});

test("retryable publish errors are exactly rate_limited, token_expired and internal", () => {
  assert.deepEqual([...RETRYABLE_PUBLISH_ERRORS].sort(), ["internal", "rate_limited", "token_expired"]);
});
