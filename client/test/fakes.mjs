// Test doubles: a clock whose timers run only when a test advances it, and a WebSocket
// class whose "server side" the test drives frame by frame.

/** Lets pending promise callbacks (token providers, publish continuations) run. */
export const settle = () => new Promise((resolve) => setImmediate(resolve));

export class FakeClock {
  now = 0;
  #timers = new Map();
  #next = 1;

  setTimeout = (fn, ms) => {
    const id = this.#next++;
    this.#timers.set(id, { at: this.now + Math.max(0, ms), fn, ms });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /** Timers still scheduled, earliest first, as `{ in, ms }`. */
  pending() {
    return [...this.#timers.values()].sort((a, b) => a.at - b.at).map((t) => ({ in: t.at - this.now, ms: t.ms }));
  }

  /** Runs every timer due within `ms`, in order, letting promises settle in between. */
  async advance(ms) {
    const end = this.now + ms;
    await settle();
    for (;;) {
      let due = null;
      for (const [id, t] of this.#timers) if (t.at <= end && (!due || t.at < due[1].at)) due = [id, t];
      if (!due) break;
      this.#timers.delete(due[0]);
      this.now = due[1].at;
      due[1].fn();
      await settle();
    }
    this.now = end;
  }
}

/** A fresh FakeSocket class per test, so instances never leak between tests. */
export function socketClass() {
  const instances = [];
  class FakeSocket {
    static instances = instances;
    static get last() {
      return instances[instances.length - 1];
    }

    constructor(url, protocols) {
      this.url = new URL(url);
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closeCalls = [];
      this.terminated = false;
      this.listeners = {};
      instances.push(this);
    }

    addEventListener(type, fn) {
      (this.listeners[type] ??= []).push(fn);
    }

    #dispatch(type, event) {
      for (const fn of this.listeners[type] ?? []) fn(event);
    }

    send(data) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(data);
    }

    close(code, reason) {
      this.closeCalls.push([code, reason]);
      this.readyState = 3;
    }

    terminate() {
      this.terminated = true;
      this.readyState = 3;
    }

    // ---- the server's side ----

    /** Opens the socket and sends `welcome` (fields overridable). */
    accept(welcome = {}) {
      this.readyState = 1;
      this.#dispatch("open", {});
      this.receive({
        type: "welcome",
        room: "lobby",
        conn: `c_${instances.indexOf(this)}`,
        user: "alice",
        epoch: "e_1",
        seq: 0,
        resume: { requested: false, recovered: false, replayed: 0 },
        presence: { count: 1, users: [{ user: "alice", info: {} }] },
        ...welcome,
      });
      return this;
    }

    /** Delivers a frame, an array of frames, or raw text. */
    receive(frame) {
      this.#dispatch("message", { data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    message(seq, extra = {}) {
      this.receive(msg(seq, extra));
    }

    /** The server closes the connection with `code`. */
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.#dispatch("close", { code, reason, wasClean: code !== 1006 });
    }

    /**
     * The server refuses the socket the way docs/protocol.md §10 describes: accepts it,
     * sends one `error` frame, then (unless `close` is false) closes with `closeCode`.
     */
    refuse(code, closeCode, { message = `refused: ${code}`, close = true } = {}) {
      this.readyState = 1;
      this.#dispatch("open", {});
      this.receive({ type: "error", code, message });
      if (close) this.serverClose(closeCode, code);
      return this;
    }

    /** A transport failure, the way `ws` reports one: `error`, then close 1006. */
    fail(message = "socket hang up") {
      this.readyState = 3;
      this.#dispatch("error", { message });
      this.#dispatch("close", { code: 1006, reason: "" });
    }

    /** Publish frames (durable and ephemeral) sent so far. */
    publishes() {
      return this.frames().filter((f) => f.type === "publish");
    }

    /** Every JSON frame sent so far (pings excluded), arrays flattened. */
    frames() {
      return this.sent.filter((d) => d !== "ping").flatMap((d) => [].concat(JSON.parse(d)));
    }

    /** `received` receipts sent so far. */
    receipts() {
      return this.frames().filter((f) => f.type === "received");
    }

    pings() {
      return this.sent.filter((d) => d === "ping").length;
    }
  }
  return FakeSocket;
}

export function msg(seq, extra = {}) {
  return { type: "message", seq, id: `m${seq}`, event: "chat", data: { seq }, from: { user: "bob", conn: "c_bob" }, ts: 0, ...extra };
}

/** Records every event a client emits, in order. */
export function record(client) {
  const log = { states: [], details: [], messages: [], resyncs: [], errors: [], presence: [], welcomes: [] };
  client.on("state", (s, d) => {
    log.states.push(s);
    log.details.push(d);
  });
  client.on("message", (m) => log.messages.push(m));
  client.on("resync", (r) => log.resyncs.push(r));
  client.on("error", (e) => log.errors.push(e));
  client.on("presence", (p) => log.presence.push(p));
  client.on("welcome", (w) => log.welcomes.push(w));
  return log;
}

/**
 * A fresh FakeEventSource class per test: the client's side is the WHATWG EventSource
 * (addEventListener, close, readyState); the test plays the server, one SSE event at a
 * time, each named by its frame's type (contract v1.1 §D).
 */
export function eventSourceClass() {
  const instances = [];
  class FakeEventSource {
    static instances = instances;
    static get last() {
      return instances[instances.length - 1];
    }

    constructor(url, init) {
      this.url = new URL(url);
      this.init = init;
      this.readyState = 0;
      this.closed = false;
      this.listeners = {};
      instances.push(this);
    }

    addEventListener(type, fn) {
      (this.listeners[type] ??= []).push(fn);
    }

    close() {
      this.closed = true;
      this.readyState = 2;
    }

    #dispatch(type, event) {
      for (const fn of this.listeners[type] ?? []) fn(event);
    }

    // ---- the server's side ----

    /** One SSE event: `event: <type>`, `data: <frame JSON>` (a string is sent as it is). */
    event(type, data, id = "") {
      if (this.closed) return this;
      this.readyState = 1;
      this.#dispatch(type, { type, data: typeof data === "string" ? data : JSON.stringify(data), lastEventId: id });
      return this;
    }

    /** Opens the stream and sends `welcome` (fields overridable). */
    accept(welcome = {}) {
      this.readyState = 1;
      this.#dispatch("open", { type: "open" });
      return this.event("welcome", {
        type: "welcome",
        room: "lobby",
        conn: `c_sse${instances.indexOf(this)}`,
        user: "alice",
        epoch: "e_1",
        seq: 0,
        resume: { requested: false, recovered: false, replayed: 0 },
        presence: { count: 1, users: [{ user: "alice", info: {} }] },
        ...welcome,
      });
    }

    message(seq, extra = {}) {
      const m = msg(seq, extra);
      return this.event("message", m, m.ephemeral ? "" : `${"e_1"}:${seq}`);
    }

    /** `event: close` with `{"code","reason"}`, as the server sends before ending a stream. */
    serverClose(code, reason = "") {
      this.event("close", { code, reason });
      return this;
    }

    /** A network failure: the EventSource would retry (readyState 0) and fires `error`. */
    fail() {
      this.readyState = 0;
      this.#dispatch("error", { type: "error" });
    }

    /** An HTTP error status or wrong content type: the EventSource gives up (readyState 2). */
    refuse(extra = {}) {
      this.readyState = 2;
      this.#dispatch("error", { type: "error", ...extra });
    }
  }
  return FakeEventSource;
}

/**
 * A fake `fetch` whose requests wait until the test answers them: `f.calls` lists every
 * request as `{ url, method, headers, body, json(), respond(status, body, headers), fail() }`.
 */
export function fakeFetch() {
  const calls = [];
  const f = (url, init = {}) =>
    new Promise((resolve, reject) => {
      const call = {
        url: new URL(url),
        method: init.method ?? "GET",
        headers: init.headers ?? {},
        body: init.body,
        done: false,
        aborted: false,
        json: () => JSON.parse(init.body),
        respond(status, body = {}, headers = {}) {
          if (call.done) return;
          call.done = true;
          const text = typeof body === "string" ? body : JSON.stringify(body);
          const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
          resolve({ status, ok: status >= 200 && status < 300, text: async () => text, headers: { get: (n) => lower[n.toLowerCase()] ?? null } });
        },
        fail(message = "fetch failed") {
          if (call.done) return;
          call.done = true;
          reject(new TypeError(message));
        },
      };
      init.signal?.addEventListener("abort", () => {
        call.aborted = true;
        call.fail("The operation was aborted");
      });
      calls.push(call);
    });
  f.calls = calls;
  /** Requests not answered yet whose path ends with `suffix` (e.g. "/publish", "/poll"). */
  f.open = (suffix = "") => calls.filter((c) => !c.done && c.url.pathname.endsWith(suffix));
  /** Every request (answered or not) whose path ends with `suffix`. */
  f.to = (suffix) => calls.filter((c) => c.url.pathname.endsWith(suffix));
  return f;
}
