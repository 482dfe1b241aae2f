// Pure policy: backoff bounds and the close-code table.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  backoffDelay,
  closePolicy,
  endPolicy,
  handshakePolicy,
  receiptDue,
  REFUSAL_CLOSE_CODES,
  RECEIPT_EVERY_CHARS,
  RECEIPT_EVERY_MESSAGES,
  RETRYABLE_PUBLISH_ERRORS,
  httpRefusal,
  TRANSPORT_ORDER,
} from "../dist/index.js";

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
    // 4009: a slow consumer the server closed; 4029: too many connections at upgrade.
    reconnect: [1001, 1005, 1006, 1011, 1012, 1013, 4000, 4008, 4009, 4029, 4100, 4399, 3000],
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

test("endPolicy: a token is refreshed once; refused again before welcome, or fixed, it stops", () => {
  // First refusal (or an expiry on an open socket): ask for a fresh token.
  assert.equal(endPolicy({ code: 4001 }), "refresh_token");
  assert.equal(endPolicy({ code: 4001, refreshedToken: false, welcomed: false }), "refresh_token");
  assert.equal(endPolicy({ code: 1006, status: 401 }), "refresh_token");
  // The token asked for with reason "expired" is refused too: stop, do not loop.
  assert.equal(endPolicy({ code: 4001, refreshedToken: true, welcomed: false }), "stop");
  assert.equal(endPolicy({ code: 1006, status: 401, refreshedToken: true }), "stop");
  // A refreshed token that was welcomed and expires later is refreshed again.
  assert.equal(endPolicy({ code: 4001, refreshedToken: true, welcomed: true }), "refresh_token");
  // A fixed-string token cannot be refreshed.
  assert.equal(endPolicy({ code: 4001, fixedToken: true, welcomed: true }), "stop");
  assert.equal(endPolicy({ code: 1006, status: 401, fixedToken: true }), "stop");
  // Everything else is closePolicy / handshakePolicy unchanged, whatever the token state.
  for (const refreshedToken of [false, true]) {
    for (const code of [1006, 1011, 4000, 4008, 4009, 4029]) assert.equal(endPolicy({ code, refreshedToken }), "reconnect", String(code));
    for (const code of [1009, 4400, 4403]) assert.equal(endPolicy({ code, refreshedToken }), "stop", String(code));
    assert.equal(endPolicy({ code: 1006, status: 403, refreshedToken }), "stop");
    assert.equal(endPolicy({ code: 1006, status: 429, refreshedToken }), "reconnect");
  }
  assert.equal(endPolicy({ code: 1000, initiatedByUs: true }), "stop");
  assert.equal(endPolicy({ code: 1000 }), "reconnect");
});

test("refusal close codes are the §10 table, and each maps to its documented action", () => {
  assert.deepEqual(
    { ...REFUSAL_CLOSE_CODES },
    {
      missing_token: 4001,
      invalid_token: 4001,
      token_expired: 4001,
      forbidden: 4403,
      origin_not_allowed: 4403,
      too_many_connections: 4029,
      bad_room: 4400,
      bad_request: 4400,
    },
  );
  const action = (code) => closePolicy(REFUSAL_CLOSE_CODES[code]);
  assert.equal(action("token_expired"), "refresh_token");
  assert.equal(action("forbidden"), "stop");
  assert.equal(action("origin_not_allowed"), "stop");
  assert.equal(action("bad_room"), "stop");
  assert.equal(action("too_many_connections"), "reconnect");
  assert.throws(() => (REFUSAL_CLOSE_CODES.forbidden = 1000), TypeError, "frozen");
});

test("receipts are due at 256 messages or 128 KiB since the last one", () => {
  assert.equal(RECEIPT_EVERY_MESSAGES, 256);
  assert.equal(RECEIPT_EVERY_CHARS, 128 * 1024);
  assert.equal(receiptDue(0, 0), false);
  assert.equal(receiptDue(255, 128 * 1024 - 1), false);
  assert.equal(receiptDue(256, 0), true);
  assert.equal(receiptDue(1, 128 * 1024), true);
});

test("httpRefusal: a §4 code in the server's JSON error body, with its §10 close code; anything else is not ours", () => {
  assert.deepEqual(httpRefusal('{"error":{"code":"forbidden","message":"no read"}}'), { code: "forbidden", message: "no read", closeCode: 4403 });
  assert.deepEqual(httpRefusal('{"error":{"code":"token_expired"}}'), { code: "token_expired", message: "token_expired", closeCode: 4001 });
  assert.equal(httpRefusal('{"error":{"code":"too_many_connections","message":"x"}}').closeCode, 4029);
  for (const body of [undefined, "", "<html>403 Forbidden</html>", '{"error":{"code":"internal"}}', '{"error":{"code":"toString"}}', "null", '{"code":"forbidden"}']) {
    assert.equal(httpRefusal(body), null, String(body));
  }
  assert.deepEqual([...TRANSPORT_ORDER], ["websocket", "sse", "longpoll"]);
});
