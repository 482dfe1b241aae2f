// Test harness: the real built Worker (build/) in workerd through Miniflare, real
// WebSocket clients (ws), real JWT signatures (jose) and real HMAC signatures.
import { createHmac, randomUUID } from "node:crypto";
import { Miniflare } from "miniflare";
import { SignJWT, generateKeyPair, exportJWK } from "jose";
import WebSocket from "ws";

export const JWT_SECRET = "test-jwt-secret-" + randomUUID();
export const API_SECRET = "test-api-secret-" + randomUUID();

/** Key pairs for the asymmetric algorithms, with their public halves as a JWK Set. */
export async function makeKeys() {
  const keys = {};
  const jwks = { keys: [] };
  for (const [alg, kid] of [["RS256", "rsa-1"], ["ES256", "ec-1"], ["EdDSA", "ed-1"]]) {
    const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
    keys[alg] = { kid, privateKey, publicKey };
    jwks.keys.push({ ...(await exportJWK(publicKey)), kid, alg, use: "sig" });
  }
  return { keys, jwks };
}

/**
 * `ROOMCAST_SHARDED=1` runs every room as a sharded room (docs/sharding.md): the parity
 * pass of `scripts/test` runs the suites that state v1's guarantees again this way, so
 * the same tests hold one logical room over a sequencer and `ROOM_SHARDS` shards. A test
 * that sets `SHARDED_ROOMS` itself wins.
 */
export const SHARDED = process.env.ROOMCAST_SHARDED === "1";
export const SHARDED_BINDINGS = SHARDED ? { SHARDED_ROOMS: "*", ROOM_SHARDS: process.env.ROOMCAST_ROOM_SHARDS ?? "4" } : {};

/**
 * The shard (0..shards) holding `user`'s sockets in the room keyed `roomKey`
 * (`tenant/room`): FNV-1a 64 over the key, a 0 byte and the user, as
 * `room::shard::placement` computes it (its unit test pins the same values).
 */
export function placement(roomKey, user, shards) {
  let h = 0xcbf29ce484222325n;
  for (const b of [...Buffer.from(roomKey), 0, ...Buffer.from(user)]) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return Number(h % BigInt(shards));
}

/**
 * The Durable Object key (the `room_key` of its `room.start` line) that holds `user`'s
 * sockets in `room`: the room's own object, or in the sharded pass the user's shard.
 */
export function holder(room, user, tenant = "") {
  const key = `${tenant}/${room}`;
  if (!SHARDED) return key;
  return `${key}#${placement(key, user, Number(SHARDED_BINDINGS.ROOM_SHARDS))}`;
}

/**
 * Starts the built Worker in workerd (Miniflare). `bindings` override or add vars, `worker`
 * adds options of the Worker itself (e.g. `wrappedBindings`), `workers` more Workers
 * beside it (the Worker stays the entry).
 */
export async function start({ bindings = {}, jwks, shared = {}, persist, worker = {}, workers = [] } = {}) {
  // Structured log lines from the Worker and rooms, for tests that observe lifecycle.
  // They arrive in the order the runtime wrote them, on one stream.
  const logs = [];
  const logWaiters = new Set();
  const main = {
    modules: true,
    scriptPath: "build/worker/shim.mjs",
    modulesRules: [
      { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
      { type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true },
    ],
    compatibilityDate: COMPATIBILITY_DATE,
    durableObjects: { ROOMS: { className: "Room", useSQLite: true } },
    bindings: {
      JWT_SECRET,
      API_SECRET,
      ...(jwks ? { JWT_PUBLIC_KEYS: JSON.stringify(jwks) } : {}),
      ...SHARDED_BINDINGS,
      ...bindings,
    },
    ...worker,
  };
  const mf = new Miniflare({
    ...shared,
    ...(persist ? { durableObjectsPersist: persist } : {}),
    ...(workers.length ? { workers: [main, ...workers] } : main),
    handleRuntimeStdio(stdout, stderr) {
      for (const stream of [stdout, stderr]) {
        let buf = "";
        stream.on("data", (chunk) => {
          buf += chunk;
          const lines = buf.split("\n");
          buf = lines.pop();
          for (const line of lines) {
            const at = line.indexOf("{");
            if (at < 0) continue;
            let entry;
            try {
              entry = JSON.parse(line.slice(at));
            } catch {
              continue; // not one of ours
            }
            logs.push(entry);
            for (const waiter of logWaiters) waiter(logs.length - 1);
          }
        });
      }
    },
  });
  const url = await mf.ready;
  /**
   * Resolves with the first log line at index `from` or later that matches `pred` (already
   * logged or still to come). Lines arrive in order, so once it resolves every line the
   * runtime wrote before it is in `logs` too.
   */
  function nextLog(pred, { from = 0, what = "log line", timeoutMs = 10_000 } = {}) {
    const found = logs.slice(from).find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const waiter = (i) => {
        if (i < from || !pred(logs[i])) return;
        logWaiters.delete(waiter);
        clearTimeout(timer);
        resolve(logs[i]);
      };
      const timer = setTimeout(() => {
        logWaiters.delete(waiter);
        reject(new Error(`timed out waiting for ${what}; last lines: ${JSON.stringify(logs.slice(-5))}`));
      }, timeoutMs);
      logWaiters.add(waiter);
    });
  }
  return { mf, logs, nextLog, base: url.href.replace(/\/$/, ""), wsBase: url.href.replace(/^http/, "ws").replace(/\/$/, "") };
}

/**
 * Resolves once `pred()` holds, checking every 20 ms, and fails with `what` after
 * `timeoutMs`. Only for conditions the runtime gives no event for (the clock passing a
 * token's expiry, a room staying idle long enough to be evicted); wait for a frame or a
 * log line with `Client.next`/`nextN` or `nextLog` instead.
 */
export async function until(pred, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// Kept equal to wrangler.toml's; not newer than the workerd that Miniflare 4 ships.
export const COMPATIBILITY_DATE = "2026-04-01";

export const now = () => Math.floor(Date.now() / 1000);

/** Signs a token. `alg` HS256 uses JWT_SECRET; others use `keys[alg]`. */
export async function token(claims, { alg = "HS256", keys, kid, secret = JWT_SECRET, header = {} } = {}) {
  const body = { exp: now() + 600, iat: now(), ...claims };
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  const jwt = new SignJWT(body);
  if (alg === "HS256") {
    return jwt.setProtectedHeader({ alg, ...header }).sign(new TextEncoder().encode(secret));
  }
  const k = keys[alg];
  return jwt.setProtectedHeader({ alg, kid: kid ?? k.kid, ...header }).sign(k.privateKey);
}

/** A user token with read+write on every room. */
export const userToken = (sub, extra = {}, opts = {}) =>
  token({ sub, rooms: { "*": ["read", "write"] }, ...extra }, opts);

/** A service token for the server API. */
export const serviceToken = (extra = {}, opts = {}) => token({ sub: "backend", scope: "server", ...extra }, opts);

/** `Roomcast-Signature` for a request. */
export function signature(method, pathAndQuery, body, { secret = API_SECRET, t = now() } = {}) {
  const mac = createHmac("sha256", secret).update(`${t}\n${method}\n${pathAndQuery}\n${body}`).digest("hex");
  return `t=${t},v1=${mac}`;
}

/** A signed server-API request. */
export async function signedFetch(base, method, pathAndQuery, body = "", opts = {}) {
  const headers = { "Roomcast-Signature": signature(method, pathAndQuery, body, opts), ...(opts.headers ?? {}) };
  if (body) headers["Content-Type"] = "application/json";
  return fetch(base + pathAndQuery, { method, headers, body: method === "GET" ? undefined : body });
}

/**
 * A WebSocket client that records every frame (arrays are flattened) and lets a test
 * wait for a specific one — never for a fixed time.
 */
export class Client {
  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    /** How many WebSocket messages carried each recorded frame (1 = sent alone). */
    this.carriers = [];
    this.waiters = [];
    this.closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on("message", (data, isBinary) => {
      const text = data.toString();
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = { raw: text };
      }
      const batch = Array.isArray(parsed) ? parsed : [parsed];
      for (const f of batch) {
        this.frames.push(f);
        this.carriers.push(batch.length);
        this.waiters = this.waiters.filter((w) => !w(f));
      }
    });
  }

  /** Resolves with the first recorded or future frame matching `pred`. */
  next(pred, what = "frame", timeoutMs = 10000) {
    const found = this.frames.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.frames.slice(-5))}`)), timeoutMs);
      this.waiters.push((f) => {
        if (!pred(f)) return false;
        clearTimeout(timer);
        resolve(f);
        return true;
      });
    });
  }

  /** Resolves once `n` recorded or future frames match `pred`, with all of them. */
  nextN(pred, n, what = "frames", timeoutMs = 20000) {
    let count = this.frames.filter(pred).length;
    if (count >= n) return Promise.resolve(this.frames.filter(pred));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${n} ${what}; have ${count}`)), timeoutMs);
      this.waiters.push((f) => {
        if (!pred(f) || ++count < n) return false;
        clearTimeout(timer);
        resolve(this.frames.filter(pred));
        return true;
      });
    });
  }

  messages() {
    return this.frames.filter((f) => f.type === "message");
  }

  send(frame) {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  publish(id, data = {}, extra = {}) {
    this.send({ type: "publish", id, event: "chat", data, ...extra });
    return this.next((f) => (f.type === "ack" || f.type === "error") && f.id === id, `ack for ${id}`);
  }

  close() {
    this.ws.close();
    return this.closed;
  }
}

/**
 * Opens a socket. `transport` is "protocol" (browser subprotocol), "header" or "query".
 * Resolves with a Client after `welcome`, or rejects with the HTTP status and body.
 */
export function connect(wsBase, room, tok, { transport = "header", query = "", headers = {}, protocols } = {}) {
  let url = `${wsBase}/v1/rooms/${room}/ws`;
  const params = new URLSearchParams(query);
  const opts = { headers: { ...headers } };
  let protos = protocols;
  if (tok && transport === "header") opts.headers.Authorization = `Bearer ${tok}`;
  if (tok && transport === "query") params.set("access_token", tok);
  if (tok && transport === "protocol") protos = ["roomcast.v1", `roomcast.bearer.${tok}`];
  const qs = params.toString();
  if (qs) url += `?${qs}`;
  return new Promise((resolve, reject) => {
    const ws = protos ? new WebSocket(url, protos, opts) : new WebSocket(url, opts);
    const client = new Client(ws);
    ws.on("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => {
        const err = new Error(`HTTP ${res.statusCode}: ${body}`);
        err.status = res.statusCode;
        err.headers = res.headers;
        try {
          err.body = JSON.parse(body);
        } catch {
          err.body = body;
        }
        reject(err);
      });
    });
    ws.on("error", (e) => reject(e));
    client.next((f) => f.type === "welcome", "welcome").then((welcome) => {
      client.welcome = welcome;
      client.protocol = ws.protocol;
      resolve(client);
    }, reject);
  });
}

/** Expects `connect` to fail with `status` and error `code`. */
export async function rejected(promise) {
  try {
    const c = await promise;
    c.close();
  } catch (e) {
    if (e.status) return e;
    throw e;
  }
  throw new Error("expected the upgrade to be rejected, but it was accepted");
}

export const uid = (p = "r") => `${p}-${randomUUID().slice(0, 8)}`;

/**
 * An SSE stream read with `fetch` (docs/protocol.md §13): records every event as
 * `{event, id, data, frame}` (`frame` is the parsed `data`), counts comment lines, and
 * lets a test wait for a specific event like `Client.next`. `abort()` cuts the stream
 * from the client side.
 */
export class SseStream {
  constructor(res, controller) {
    this.res = res;
    this.controller = controller;
    this.events = [];
    this.comments = 0;
    this.waiters = [];
    this.ended = this.#read();
  }

  async #read() {
    const decoder = new TextDecoder();
    let buf = "";
    let current = { data: [] };
    try {
      for await (const chunk of this.res.body) {
        buf += decoder.decode(chunk, { stream: true });
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
          if (line === "") {
            if (current.data.length || current.event) this.#dispatch(current);
            current = { data: [] };
          } else if (line.startsWith(":")) {
            this.comments++;
            this.waiters = this.waiters.filter((w) => !w(null));
          } else {
            const at = line.indexOf(":");
            const field = at < 0 ? line : line.slice(0, at);
            const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
            if (field === "data") current.data.push(value);
            else if (field === "event") current.event = value;
            else if (field === "id") current.id = value;
          }
        }
      }
    } catch (e) {
      if (e.name !== "AbortError") this.error = e;
    }
    this.waiters = this.waiters.filter((w) => !w(null));
  }

  #dispatch({ event, id, data }) {
    const text = data.join("\n");
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      frame = { raw: text };
    }
    const e = { event: event ?? "message", id, data: text, frame };
    this.events.push(e);
    this.waiters = this.waiters.filter((w) => !w(e));
  }

  /** Resolves with the first recorded or future event matching `pred`. */
  next(pred, what = "event", timeoutMs = 15000) {
    const found = this.events.find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.events.slice(-3))}`)), timeoutMs);
      this.waiters.push((e) => {
        if (!e || !pred(e)) return false;
        clearTimeout(timer);
        resolve(e);
        return true;
      });
    });
  }

  /** Resolves once `n` recorded or future events match `pred`, with all of them. */
  nextN(pred, n, what = "events", timeoutMs = 30000) {
    const have = () => this.events.filter(pred);
    if (have().length >= n) return Promise.resolve(have());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${n} ${what}; have ${have().length}`)), timeoutMs);
      this.waiters.push((e) => {
        if (!e || !pred(e) || have().length < n) return false;
        clearTimeout(timer);
        resolve(have());
        return true;
      });
    });
  }

  /** Resolves once at least `n` comment lines arrived. */
  nextComments(n, timeoutMs = 30000) {
    if (this.comments >= n) return Promise.resolve(this.comments);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${n} comments; have ${this.comments}`)), timeoutMs);
      this.waiters.push(() => {
        if (this.comments < n) return false;
        clearTimeout(timer);
        resolve(this.comments);
        return true;
      });
    });
  }

  /** Durable `message` events (those with an SSE id). */
  messages() {
    return this.events.filter((e) => e.event === "message" && e.frame.seq !== undefined);
  }

  abort() {
    this.controller.abort();
    return this.ended;
  }
}

/**
 * Opens `GET /v1/rooms/{room}/events`. `transport` is "header" (Authorization) or "query"
 * (access_token). Resolves with an SseStream after its `welcome` event, or rejects with
 * the HTTP status, headers and body like `connect`.
 */
export async function sse(base, room, tok, { transport = "header", query = "", headers = {} } = {}) {
  const params = new URLSearchParams(query);
  const h = { Accept: "text/event-stream", ...headers };
  if (tok && transport === "header") h.Authorization = `Bearer ${tok}`;
  if (tok && transport === "query") params.set("access_token", tok);
  const qs = params.toString();
  const controller = new AbortController();
  const res = await fetch(`${base}/v1/rooms/${room}/events${qs ? `?${qs}` : ""}`, { headers: h, signal: controller.signal });
  if (res.status !== 200) {
    const text = await res.text();
    const err = new Error(`HTTP ${res.status}: ${text}`);
    err.status = res.status;
    err.headers = res.headers;
    try {
      err.body = JSON.parse(text);
    } catch {
      err.body = text;
    }
    throw err;
  }
  const stream = new SseStream(res, controller);
  const welcome = await stream.next((e) => e.event === "welcome", "welcome");
  stream.welcome = welcome.frame;
  stream.welcomeId = welcome.id;
  return stream;
}

/**
 * Resolves with the arguments of the first `event` an SDK client emits that satisfy
 * `pred` (the SDK tests await its events, never a fixed time).
 */
export function when(client, event, pred = () => true, ms = 30_000, what = event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${what} (state ${client.state}, transport ${client.transport})`));
    }, ms);
    const off = client.on(event, (...args) => {
      if (!pred(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}

