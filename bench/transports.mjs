// The bench rows of issue 12 (SSE and long-poll, docs/protocol.md §13) and issue 13
// (webhooks, §15): scenarios `sse`, `poll` and `webhooks`, Rust room only (no other peer
// has these routes). bench/run.mjs registers them and calls runTransportScenario; the
// load generator's subcommands are bench/loadgen/src/transports.rs and webhooks.rs;
// bench/table.mjs prints them through transportRows and transportRatios.
//
// * sse: fan-out 1→N (N = 1,000) at the fan-out scenario's offered load (PLAN.fanout.dps),
//   once with WebSocket receivers and once with SSE receivers, each on a freshly started
//   server, alternating for `rounds` rounds. The publisher is a WebSocket both times.
//   Also the cost of the N connects (server CPU and RSS per client).
// * poll: P clients long-polling in a loop (`timeout` short) while one WebSocket
//   publishes `rate` msg/s: polls/s, server CPU per poll, publish → answer latency.
// * webhooks: one WebSocket publishes at each rate with webhooks off (a server without
//   WEBHOOK_URL), then the same with WEBHOOK_URL pointing at the load generator, which
//   counts events and batches and answers 200 at once; then a phase with the receiver's
//   port closed. Server CPU per forwarded event = (CPU per publish on − off).
import { createServer } from "node:net";
import { randomBytes } from "node:crypto";

export const TRANSPORT_SCENARIOS = ["sse", "poll", "webhooks"];

const SIZES = {
  quick: {
    sse: { n: 1000, payload: 100, duration: 3, warmup: 0.5, rounds: 2 },
    poll: { pollers: [10, 100], rate: 20, timeout: 2, duration: 3, warmup: 0.5, payload: 100 },
    webhooks: { rates: [200, 1000], duration: 3, warmup: 0.5, payload: 100, downSecs: 3, rounds: 1 },
  },
  full: {
    sse: { n: 1000, payload: 100, duration: 10, warmup: 2, rounds: 3 },
    poll: { pollers: [10, 100, 500], rate: 20, timeout: 2, duration: 10, warmup: 2, payload: 100 },
    webhooks: { rates: [200, 1000], duration: 10, warmup: 2, payload: 100, downSecs: 10, rounds: 2 },
  },
};

/** The plan entries for `mode`; `sse` offers the fan-out scenario's load. */
export function transportPlan(mode, plan) {
  const s = structuredClone(SIZES[mode]);
  s.sse.dps = plan.fanout?.dps ?? 20000;
  return s;
}

export const transportApplicable = (name, peer) => peer === "rust";

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const failed = (r) => (r.results ?? []).filter((x) => x && x.ok === false).length + (r.error ? 1 : 0);

/** Runs one of the scenarios on fresh servers; never throws (errors go in the result). */
export async function runTransportScenario(name, { peer, startPeer, stopPeer, loadgen, plan, log }) {
  const p = plan[name];
  const once = async (label, sub, args, bindings) => {
    let server;
    try {
      server = await startPeer(peer, bindings);
      const r = await loadgen(server, sub, args.map(String));
      const f = failed(r);
      log(`${peer}: ${name} (${label}) done in ${r.loadgen_secs?.toFixed(1)} s${f ? `, ${f} FAILED phase(s)` : ""}`);
      return r;
    } catch (e) {
      log(`${peer}: ${name} failed: ${e.message}`);
      return { error: e.message };
    } finally {
      if (server) await stopPeer(server);
    }
  };
  if (name === "sse") {
    const base = ["--n", p.n, "--payload", p.payload, "--deliveries-per-sec", p.dps, "--duration", p.duration, "--warmup", p.warmup];
    const out = { ws: [], sse: [] };
    for (let round = 0; round < p.rounds; round++) {
      for (const t of ["ws", "sse"]) out[t].push(await once(`${t}, round ${round + 1}`, "sse", [...base, "--transport", t]));
    }
    return out;
  }
  if (name === "poll") {
    return once("pollers " + p.pollers.join(","), "poll", ["--pollers", p.pollers.join(","), "--rate", p.rate, "--timeout", p.timeout, "--duration", p.duration, "--warmup", p.warmup, "--payload", p.payload]);
  }
  if (name === "webhooks") {
    const base = ["--rates", p.rates.join(","), "--duration", p.duration, "--warmup", p.warmup, "--payload", p.payload, "--down-secs", p.downSecs];
    const out = { off: [], on: [] };
    for (let round = 0; round < p.rounds; round++) {
      out.off.push(await once(`off, round ${round + 1}`, "webhooks", base));
      const port = await freePort();
      const bindings = { WEBHOOK_URL: `http://127.0.0.1:${port}/hook`, WEBHOOK_SECRET: "bench-hook-" + randomBytes(8).toString("hex") };
      out.on.push(await once(`on, round ${round + 1}`, "webhooks", [...base, "--listen", `127.0.0.1:${port}`], bindings));
    }
    return out;
  }
  return { error: `unknown scenario ${name}` };
}

// ------------------------------------------------------------------------------------
// Table rows and ratios (bench/table.mjs)
// ------------------------------------------------------------------------------------

const med = (v) => {
  const s = v.filter((x) => typeof x === "number").sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** The measured phase of each round of an `sse` run for one transport. */
const sseRounds = (s, t) => (s[t] ?? []).map((r) => ({ r, x: r.results?.[0] ?? null }));

export function transportRows(doc, { row, withScen, ran, cell, fmt, ms, pct }) {
  const plan = doc.plan;
  const spread = (vals, show) => {
    const v = vals.filter((x) => typeof x === "number");
    if (!v.length) return "–";
    return v.length === 1 ? show(v[0]) : `${show(med(v))} (${show(Math.min(...v))}–${show(Math.max(...v))})`;
  };
  if (plan.sse && ran("sse")) {
    const p = plan.sse;
    const rounds = p.rounds > 1 ? `, ${p.rounds} rounds each alternating, median (min–max)` : "";
    const sec = `9. SSE fan-out 1→${p.n}, ${p.payload} B, ${fmt(p.dps / p.n)} msg/s: WebSocket receivers, then SSE receivers (?access_token=)${rounds}`;
    const label = { ws: "WebSocket", sse: "SSE" };
    const allOk = (s, t) => sseRounds(s, t).length > 0 && sseRounds(s, t).every(({ r, x }) => !r.error && x?.ok);
    for (const t of ["ws", "sse"]) {
      row(sec, `${label[t]}: deliveries / server CPU-s`, withScen("sse", (s) => {
        const v = sseRounds(s, t).map(({ x }) => x?.deliveries_per_cpu_sec);
        return cell(spread(v, fmt), med(v), allOk(s, t));
      }));
    }
    for (const t of ["ws", "sse"]) {
      row(sec, `${label[t]}: latency p50 / p99 / max ms`, withScen("sse", (s) => {
        const r = sseRounds(s, t).map(({ x }) => x?.latency ?? {});
        return cell(`${ms(med(r.map((l) => l.p50_ms)))} / ${ms(med(r.map((l) => l.p99_ms)))} / ${ms(med(r.map((l) => l.max_ms)))}`, med(r.map((l) => l.p99_ms)), allOk(s, t));
      }));
    }
    row(sec, "delivered (exact, in order): WebSocket / SSE", withScen("sse", (s) => {
      const show = (t) => (allOk(s, t) ? "100%" : "✗");
      return cell(`${show("ws")} / ${show("sse")}`, allOk(s, "ws") && allOk(s, "sse") ? 1 : 0, allOk(s, "ws") && allOk(s, "sse"));
    }));
    const conn = (s, t, f) => sseRounds(s, t).map(({ r }) => (r.connect ?? r.error?.connect ? f(r.connect ?? r.error.connect) : null));
    row(sec, `server CPU ms per connect: WebSocket / SSE`, withScen("sse", (s) => {
      const a = med(conn(s, "ws", (c) => c.server_cpu_ms_per_connect));
      const b = med(conn(s, "sse", (c) => c.server_cpu_ms_per_connect));
      return cell(`${ms(a)} / ${ms(b)}`, b);
    }));
    row(sec, `connect p50 / p99 ms: WebSocket / SSE`, withScen("sse", (s) => {
      const a = conn(s, "ws", (c) => c.handshake);
      const b = conn(s, "sse", (c) => c.handshake);
      const q = (h, k) => ms(med(h.map((x) => x?.[k])));
      return cell(`${q(a, "p50_ms")} / ${q(a, "p99_ms")}; ${q(b, "p50_ms")} / ${q(b, "p99_ms")}`, med(b.map((x) => x?.p99_ms)));
    }));
    row(sec, `server RSS per connected client, KiB: WebSocket / SSE`, withScen("sse", (s) => {
      const a = med(conn(s, "ws", (c) => c.rss_per_client_kib));
      const b = med(conn(s, "sse", (c) => c.rss_per_client_kib));
      return cell(`${fmt(a, 1)} / ${fmt(b, 1)}`, b);
    }));
  }
  if (plan.poll && ran("poll")) {
    const p = plan.poll;
    for (const n of p.pollers) {
      const sec = `10. long-poll: ${n} clients polling in a loop (timeout ${p.timeout} s), ${p.rate} msg/s published by a WebSocket`;
      const find = (s) => s.results.find((x) => x.pollers === n);
      row(sec, "polls answered / s", withScen("poll", (s) => cell(fmt(find(s).polls_per_sec), find(s).polls_per_sec, find(s).ok)));
      row(sec, "server CPU µs / poll", withScen("poll", (s) => cell(fmt(find(s).cpu_us_per_poll), find(s).cpu_us_per_poll, find(s).ok)));
      row(sec, "messages per answer; empty answers", withScen("poll", (s) => cell(`${find(s).messages_per_poll.toFixed(2)}; ${find(s).empty_polls}`, find(s).messages_per_poll)));
      row(sec, "delivery latency p50 / p99 / max ms", withScen("poll", (s) => {
        const x = find(s);
        return cell(`${ms(x.latency?.p50_ms)} / ${ms(x.latency?.p99_ms)} / ${ms(x.latency?.max_ms)}`, x.latency?.p99_ms, x.ok);
      }));
      row(sec, "deliveries / server CPU-s", withScen("poll", (s) => cell(fmt(find(s).deliveries_per_cpu_sec), find(s).deliveries_per_cpu_sec, find(s).ok)));
      row(sec, "delivered (exact, in order)", withScen("poll", (s) => cell(pct(find(s).delivery_ratio) + (find(s).ok ? "" : " ✗"), find(s).delivery_ratio, find(s).ok)));
    }
  }
  if (plan.webhooks && ran("webhooks")) {
    const p = plan.webhooks;
    const rounds = p.rounds > 1 ? ` (${p.rounds} rounds, medians)` : "";
    const phases = (s, side, pred) => (s[side] ?? []).map((r) => r.results?.find(pred)).filter(Boolean);
    const allOk = (xs) => xs.length > 0 && xs.every((x) => x.ok);
    for (const rate of p.rates) {
      const sec = `11. webhooks: ${rate} msg/s published for ${p.duration} s, receiver answers 200 at once${rounds}`;
      const on = (s) => phases(s, "on", (x) => x.rate === rate && x.phase === "up");
      const off = (s) => phases(s, "off", (x) => x.rate === rate && x.phase === "up");
      const m = (xs, f) => med(xs.map(f));
      row(sec, "events delivered / s", withScen("webhooks", (s) => cell(fmt(m(on(s), (x) => x.events_per_sec)), m(on(s), (x) => x.events_per_sec), allOk(on(s)))));
      row(sec, "batches / s (events per batch)", withScen("webhooks", (s) => cell(`${fmt(m(on(s), (x) => x.batches_per_sec))} (${fmt(m(on(s), (x) => x.events_per_batch), 1)})`, m(on(s), (x) => x.batches_per_sec))));
      row(sec, "publish → receipt p50 / p99 / max ms", withScen("webhooks", (s) => {
        const l = on(s).map((x) => x.webhook_latency ?? {});
        return cell(`${ms(med(l.map((v) => v.p50_ms)))} / ${ms(med(l.map((v) => v.p99_ms)))} / ${ms(med(l.map((v) => v.max_ms)))}`, med(l.map((v) => v.p99_ms)), allOk(on(s)));
      }));
      row(sec, "server CPU µs / publish: webhooks off / on", withScen("webhooks", (s) => cell(`${fmt(m(off(s), (x) => x.cpu_us_per_publish))} / ${fmt(m(on(s), (x) => x.cpu_us_per_publish))}`, m(on(s), (x) => x.cpu_us_per_publish))));
      row(sec, "server CPU µs per forwarded event (on − off)", withScen("webhooks", (s) => {
        const a = m(on(s), (x) => x.cpu_us_per_publish);
        const b = m(off(s), (x) => x.cpu_us_per_publish);
        return cell(a != null && b != null ? fmt(a - b) : "–", a != null && b != null ? a - b : null);
      }));
      row(sec, "ack p50 / p99 ms: webhooks off / on", withScen("webhooks", (s) => {
        const q = (xs, k) => ms(med(xs.map((x) => x.ack_latency?.[k])));
        return cell(`${q(off(s), "p50_ms")} / ${q(off(s), "p99_ms")}; ${q(on(s), "p50_ms")} / ${q(on(s), "p99_ms")}`, null);
      }));
      row(sec, "every event received, none twice", withScen("webhooks", (s) => {
        const dup = (s.on ?? []).reduce((a, r) => a + (r.duplicate_events ?? 0), 0);
        const ok = allOk(on(s)) && allOk(off(s)) && dup === 0;
        return cell((ok ? "yes" : "✗") + (dup ? ` (${dup} twice)` : ""), ok ? 1 : 0, ok);
      }));
    }
    if (p.downSecs > 0) {
      const rate = p.rates[0];
      const sec = `11b. webhooks: ${rate} msg/s for ${p.downSecs} s with the receiver's port closed${rounds}`;
      const down = (s, side) => phases(s, side, (x) => x.phase === "receiver_down");
      const m = (xs, f) => med(xs.map(f));
      row(sec, "server CPU µs / publish: webhooks off / on (receiver down)", withScen("webhooks", (s) => cell(`${fmt(m(down(s, "off"), (x) => x.cpu_us_per_publish))} / ${fmt(m(down(s, "on"), (x) => x.cpu_us_per_publish))}`, m(down(s, "on"), (x) => x.cpu_us_per_publish), allOk(down(s, "on")))));
      row(sec, "ack p50 / p99 ms: off / on (receiver down)", withScen("webhooks", (s) => {
        const q = (xs, k) => ms(med(xs.map((x) => x.ack_latency?.[k])));
        return cell(`${q(down(s, "off"), "p50_ms")} / ${q(down(s, "off"), "p99_ms")}; ${q(down(s, "on"), "p50_ms")} / ${q(down(s, "on"), "p99_ms")}`, null, allOk(down(s, "on")));
      }));
      row(sec, "outbox afterwards: pending / dead", withScen("webhooks", (s) => {
        const st = (s.on ?? []).map((r) => r.webhook_status).filter(Boolean);
        return cell(st.length ? st.map((x) => `${x.pending ?? "?"} / ${x.dead ?? "?"}`).join(", ") : "–", st[0]?.pending ?? null);
      }));
    }
  }
}

export function transportRatios(doc, div) {
  const s = doc.results.rust?.sse;
  const sseMed = (t) => {
    const r = s?.[t] ?? [];
    return r.length && r.every((x) => !x.error && x.results?.[0]?.ok) ? med(r.map((x) => x.results[0].deliveries_per_cpu_sec)) : null;
  };
  const w = doc.results.rust?.webhooks;
  const hook = (side) => {
    const xs = (w?.[side] ?? []).map((r) => r.results?.find((x) => x.phase === "up" && x.rate === doc.plan.webhooks?.rates?.[0])).filter(Boolean);
    return xs.length && xs.every((x) => x.ok) ? med(xs.map((x) => x.cpu_us_per_publish)) : null;
  };
  return {
    sse_over_ws_fanout_rust: div(sseMed("sse"), sseMed("ws")),
    webhooks_on_over_off_cpu_per_publish_rust: div(hook("on"), hook("off")),
  };
}
