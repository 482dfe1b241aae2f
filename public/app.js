// The demo board: chat, live cursors and presence avatars on one Roomcast room, built on
// the SDK (served from /sdk/, compiled from client/ by scripts/build). Tokens come from
// the dev-only endpoint POST /v1/dev/token, which exists only when DEV_TOKENS=1.
// The SDK picks the transport (`auto`: WebSocket, else Server-Sent Events, else
// long-polling); `?transport=sse` (or `websocket`, `longpoll`) forces one.
import { Roomcast } from "/sdk/index.js";

const params = new URLSearchParams(location.search);
const roomName = params.get("room") ?? "demo-board";
const name = params.get("name") ?? `guest-${Math.random().toString(36).slice(2, 6)}`;
const hue = [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7);
const color = `hsl(${hue} 65% 45%)`;

const $ = (id) => document.getElementById(id);
$("room").textContent = `#${roomName} as ${name}`;

const transport = params.get("transport") ?? "auto";

const room = new Roomcast({
  url: location.origin,
  room: roomName,
  transport,
  token: async () => {
    const res = await fetch("/v1/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sub: name, info: { name, color } }),
    });
    if (!res.ok) throw new Error(`dev token endpoint answered ${res.status}: is DEV_TOKENS=1 set in .dev.vars?`);
    return (await res.json()).token;
  },
});
window.roomcast = room; // for the browser test and for poking around in devtools

// Presence avatars, one per user.
const people = new Map();
function renderPeople() {
  $("people").replaceChildren(
    ...[...people].map(([user, info]) => {
      const li = document.createElement("li");
      li.textContent = (info?.name ?? user).slice(0, 2).toUpperCase();
      li.title = info?.name ?? user;
      li.dataset.user = user;
      li.style.background = info?.color ?? "#888";
      return li;
    }),
  );
}
room.on("presence", (e) => {
  if (e.op === "sync") {
    people.clear();
    for (const u of e.users) people.set(u.user, u.info);
  } else if (e.op === "join") people.set(e.user, e.info);
  else {
    people.delete(e.user);
    cursors.get(e.user)?.remove();
    cursors.delete(e.user);
  }
  renderPeople();
});

room.on("state", (s, detail) => {
  // A stop the server explained (an expired or refused token, no permission) says why.
  $("state").textContent = s === "closed" && detail.error ? `${s}: ${detail.error.code}` : s;
  $("state").title = detail.error?.message ?? "";
  $("state").dataset.state = s;
  // Which transport carries the board: the one in use, or the one being tried.
  $("transport").textContent = detail.transport;
  $("transport").dataset.transport = detail.transport;
  $("transport").title = detail.transport === "websocket" ? "WebSocket" : detail.transport === "sse" ? "Server-Sent Events, publishing over HTTP" : "long-polling, publishing over HTTP";
});

// Chat arrives as durable messages, once each and in order; cursors as ephemeral ones
// (`m.ephemeral`), which the room never stores or replays.
const cursors = new Map();
function addChat(user, text, mine) {
  const li = document.createElement("li");
  const who = document.createElement("b");
  who.textContent = user;
  who.style.color = mine ? color : "#334";
  li.append(who, document.createTextNode(text));
  $("chat").append(li);
  li.scrollIntoView({ block: "end" });
}
room.on("message", (m) => {
  const user = m.from?.user ?? "server";
  if (m.event === "chat") addChat(user, String(m.data?.text ?? ""), false);
  if (m.event === "cursor" && m.from && m.from.user !== name) {
    let el = cursors.get(user);
    if (!el) {
      el = document.createElement("div");
      el.className = "cursor";
      el.dataset.user = user;
      el.textContent = user;
      el.style.color = people.get(user)?.color ?? "#555";
      $("board").append(el);
      cursors.set(user, el);
    }
    el.style.transform = `translate(${m.data.x * $("board").clientWidth}px, ${m.data.y * $("board").clientHeight}px)`;
  }
});

$("send").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  addChat(name, text, true);
  await room.publish("chat", { text });
});

// Cursor positions, relative to the board, at most ~10 per second: well inside the
// default rate limit (20/s, which signals count against too), and smooth enough with the
// CSS transition. They are signals (ephemeral): a position is worthless a second later, so
// one made while offline is dropped rather than queued, and a room that is behind sends
// only the latest one. One cursor per connection, so no conflation key is needed.
let pending = null;
let last = 0;
$("board").addEventListener("pointermove", (e) => {
  const r = $("board").getBoundingClientRect();
  pending = { x: (e.clientX - r.left) / r.width, y: (e.clientY - r.top) / r.height };
  const now = performance.now();
  if (now - last >= 100) flush();
  else setTimeout(flush, 100 - (now - last));
});
function flush() {
  if (!pending) return;
  last = performance.now();
  const p = pending;
  pending = null;
  room.signal("cursor", p);
}
