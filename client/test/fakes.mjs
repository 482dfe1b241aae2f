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
