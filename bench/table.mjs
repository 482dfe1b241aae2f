// Turns a results document (bench/run.mjs) into table rows, a plain-text table and the
// headline ratios. Pure functions: `node bench/table.mjs results/<file>.json` reprints a
// stored run.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { goalRows, goalRatios, goalLines, RATES } from "./goals.mjs";
import { transportRows, transportRatios } from "./transports.mjs";
import { shardedRows, shardedRatios } from "./sharded.mjs";

export const PEER_LABELS = {
  rust: "Rust room",
  "js-twin": "JS twin",
  partyserver: "partyserver",
  "node-ws": "Node ws",
  native: "native",
};

const fmt = (v, digits = 0) => {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100) return v.toFixed(0);
  return v.toFixed(digits);
};
const ms = (v) => (v === null || v === undefined ? "–" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const pct = (r) => (r === null || r === undefined ? "–" : r === 1 ? "100%" : (r * 100).toFixed(2) + "%");

/** One table cell: what is printed, the number behind it (for charts/ratios), and ok. */
const cell = (text, value, ok = true) => ({ text, value, ok });
const NA = { text: "n/a", value: null, ok: true, na: true };
const ERR = (e) => ({ text: "error", value: null, ok: false, error: e });

export function renderTable(doc) {
  const peers = Object.keys(doc.results);
  const plan = doc.plan;
  const rows = [];
  const row = (section, label, get) => {
    const cells = {};
    for (const p of peers) {
      const r = doc.results[p];
      try {
        cells[p] = get(r, p);
      } catch (e) {
        cells[p] = ERR(String(e.message ?? e));
      }
    }
    rows.push({ section, label, cells });
  };
  /** The scenario's result, or a sentinel cell to print instead. */
  const scen = (r, name) => {
    const s = r?.[name];
    if (!s) return { skip: cell("–", null) };
    if (s.na) return { skip: NA };
    if (typeof s.error === "string" && s.error.startsWith("skipped")) return { skip: { text: "skipped", value: null, ok: true, na: true } };
    if (s.error) return { skip: ERR(typeof s.error === "string" ? s.error : "setup failed") };
    return { s };
  };
  const withScen = (name, f) => (r, p) => {
    const { s, skip } = scen(r, name);
    return skip ?? f(s, p);
  };
  /** Whether the run included a scenario (documents before `scenarios` was recorded: all). */
  const ran = (name) => !doc.scenarios || doc.scenarios.includes(name);

  // 1 + 6: ramp and idle
  if (plan.ramp && (ran("ramp") || ran("ramp-quiet"))) {
    const n = plan.ramp.n;
    const sec = `1. ramp to ${n} sockets, one room, HS256 JWT`;
    if (ran("ramp")) {
      row(sec, "handshakes/s", withScen("ramp", (s) => cell(fmt(s.ramp.handshakes_per_sec), s.ramp.handshakes_per_sec, s.ramp.failures === 0)));
      row(sec, "handshake p50 / p99 ms", withScen("ramp", (s) => cell(`${ms(s.ramp.handshake?.p50_ms)} / ${ms(s.ramp.handshake?.p99_ms)}`, s.ramp.handshake?.p99_ms)));
      row(sec, "failures", withScen("ramp", (s) => cell(String(s.ramp.failures), s.ramp.failures, s.ramp.failures === 0)));
      row(sec, "server CPU ms / handshake", withScen("ramp", (s) => cell(ms(s.server_cpu_ms_per_handshake), s.server_cpu_ms_per_handshake)));
      row(sec, "server RSS with all open, MiB", withScen("ramp", (s) => cell(fmt(s.rss_connected_kib / 1024), s.rss_connected_kib / 1024)));
      const sec6 = `6. idle ${plan.ramp.idle} s (evicted) + wake-up, ${n} sockets`;
      row(sec6, "RSS Δ per idle socket, KiB", withScen("ramp", (s, p) => cell(fmt(s.rss_per_socket_idle_kib, 1) + (doc.features[p].hibernation ? "" : " ¹"), s.rss_per_socket_idle_kib)));
      row(sec6, "wake: first delivery / all, ms", withScen("ramp", (s, p) => cell(`${ms(s.wake?.first_delivery_ms)} / ${ms(s.wake?.all_delivered_ms)}` + (doc.features[p].hibernation ? "" : " ¹"), s.wake?.all_delivered_ms, s.wake?.ok !== false)));
    }
    if (doc.results.rust?.["ramp-quiet"]) {
      // The same ramp with clients that opted out of presence frames: what the peers
      // without presence are measured doing in the rows above.
      const q = `1b + 6b. the same, clients connect with presence=off (no join/leave frames)`;
      row(q, "handshakes/s", withScen("ramp-quiet", (s) => cell(fmt(s.ramp.handshakes_per_sec), s.ramp.handshakes_per_sec, s.ramp.failures === 0)));
      row(q, "server CPU ms / handshake", withScen("ramp-quiet", (s) => cell(ms(s.server_cpu_ms_per_handshake), s.server_cpu_ms_per_handshake)));
      row(q, "RSS Δ per idle socket, KiB", withScen("ramp-quiet", (s) => cell(fmt(s.rss_per_socket_idle_kib, 1), s.rss_per_socket_idle_kib)));
      row(q, "wake: first delivery / all, ms", withScen("ramp-quiet", (s) => cell(`${ms(s.wake?.first_delivery_ms)} / ${ms(s.wake?.all_delivered_ms)}`, s.wake?.all_delivered_ms, s.wake?.ok !== false)));
    }
  }

  // 2: fan-out, at the plan's offered load and (2b) above what one core can serve one
  // message at a time
  const fanoutRows = (key, title) => {
    const p = plan[key];
    if (!p || !ran(key)) return;
    for (const payload of p.payloads) {
      for (const n of p.sizes) {
        const find = (s) => s.results.find((x) => x.n === n && x.payload === payload);
        const rate = Math.min(p.dps / n, p.maxRate);
        const sec = `${title} 1→${n}, ${payload} B, ${fmt(rate)} msg/s`;
        row(sec, "deliveries / server CPU-s", withScen(key, (s) => {
          const x = find(s);
          return cell(fmt(x.deliveries_per_cpu_sec), x.deliveries_per_cpu_sec, x.ok);
        }));
        row(sec, "latency p50 / p99 / max ms", withScen(key, (s) => {
          const x = find(s);
          return cell(`${ms(x.latency?.p50_ms)} / ${ms(x.latency?.p99_ms)} / ${ms(x.latency?.max_ms)}`, x.latency?.p99_ms, x.ok);
        }));
        row(sec, "delivered (exact, in order)", withScen(key, (s) => {
          const x = find(s);
          return cell(pct(x.delivery_ratio) + (x.ok ? "" : " ✗"), x.delivery_ratio, x.ok);
        }));
      }
    }
  };
  fanoutRows("fanout", "2. fan-out");
  fanoutRows("overload", "2b. overload: fan-out");

  // 2d: the same fan-out with ephemeral publishes (contract v1.1 §B), durable first, in
  // one room per N on one server
  if (plan.ephemeral && ran("ephemeral")) {
    const p = plan.ephemeral;
    for (const n of p.sizes) {
      const rate = Math.min(p.dps / n, p.maxRate);
      const sec = `2d. fan-out 1→${n}, ${p.payload} B, ${fmt(rate)} msg/s: durable, then ephemeral publishes (v1.1 §B)`;
      const find = (s, kind) => s.results.find((x) => x.n === n && x.kind === kind);
      const rows_ = (x) =>
        x.rows_read_per_message == null ? "–" : `${x.rows_read_per_message.toFixed(2)} / ${x.rows_written_per_message.toFixed(2)}`;
      for (const kind of ["durable", "ephemeral"]) {
        row(sec, `${kind}: deliveries / server CPU-s`, withScen("ephemeral", (s) => {
          const x = find(s, kind);
          return cell(fmt(x.deliveries_per_cpu_sec), x.deliveries_per_cpu_sec, x.ok);
        }));
      }
      for (const kind of ["durable", "ephemeral"]) {
        row(sec, `${kind}: server CPU µs / publish`, withScen("ephemeral", (s) => {
          const x = find(s, kind);
          return cell(fmt(x.cpu_us_per_publish), x.cpu_us_per_publish, x.ok);
        }));
      }
      for (const kind of ["durable", "ephemeral"]) {
        row(sec, `${kind}: latency p50 / p99 / max ms`, withScen("ephemeral", (s) => {
          const x = find(s, kind);
          return cell(`${ms(x.latency?.p50_ms)} / ${ms(x.latency?.p99_ms)} / ${ms(x.latency?.max_ms)}`, x.latency?.p99_ms, x.ok);
        }));
      }
      row(sec, "ephemeral: delivered (conflated)", withScen("ephemeral", (s) => {
        const x = find(s, "ephemeral");
        const text = x.ephemeral_honoured === false ? "stored ✗" : pct(x.delivery_ratio) + (x.conflated ? ` (${x.conflated})` : "") + (x.ok ? "" : " ✗");
        return cell(text, x.delivery_ratio, x.ok);
      }));
      for (const kind of ["durable", "ephemeral"]) {
        row(sec, `${kind}: storage rows read / written / msg`, withScen("ephemeral", (s) => {
          const x = find(s, kind);
          return cell(rows_(x), x.rows_written_per_message ?? null);
        }));
      }
    }
  }

  // 2c: the headline phase again, peers alternating (bench/run.mjs `interleaved`)
  if (plan.interleaved && Object.values(doc.results).some((r) => r.interleaved)) {
    const p = plan.interleaved;
    const sec = `2c. fan-out 1→${p.n}, ${p.payload} B, ${fmt(p.dps / p.n)} msg/s, ${p.rounds} rounds alternating between peers: median (min–max)`;
    const spread = (s, f, show) => {
      const v = s.rounds.map(f).filter((x) => typeof x === "number");
      return v.length ? `${show(median(v))} (${show(Math.min(...v))}–${show(Math.max(...v))})` : "–";
    };
    const interleaved = (r) => (r.interleaved ? { s: r.interleaved } : { skip: cell("–", null) }); // only the headline pair runs it
    const allOk = (s) => s.rounds.length > 0 && s.rounds.every((x) => x.ok);
    row(sec, "deliveries / server CPU-s", (r) => {
      const { s, skip } = interleaved(r);
      return skip ?? cell(spread(s, (x) => x.deliveries_per_cpu_sec, fmt), median(s.rounds.map((x) => x.deliveries_per_cpu_sec)), allOk(s));
    });
    row(sec, "latency p99 ms", (r) => {
      const { s, skip } = interleaved(r);
      return skip ?? cell(spread(s, (x) => x.latency?.p99_ms, ms), median(s.rounds.map((x) => x.latency?.p99_ms)), allOk(s));
    });
    row(sec, "delivered (exact, in order)", (r) => {
      const { s, skip } = interleaved(r);
      return skip ?? cell(allOk(s) ? "100%" : "✗", allOk(s) ? 1 : 0, allOk(s));
    });
  }

  // 3: many rooms
  if (plan.rooms && ran("rooms")) {
    const p = plan.rooms;
    const sec = `3. ${p.rooms} rooms × ${p.perRoom} sockets, ${p.rate} msg/s each`;
    const first = (s) => s.results[0];
    row(sec, "deliveries / server CPU-s", withScen("rooms", (s) => cell(fmt(first(s).deliveries_per_cpu_sec), first(s).deliveries_per_cpu_sec, first(s).ok)));
    row(sec, "latency p50 / p99 / max ms", withScen("rooms", (s) => {
      const x = first(s);
      return cell(`${ms(x.latency?.p50_ms)} / ${ms(x.latency?.p99_ms)} / ${ms(x.latency?.max_ms)}`, x.latency?.p99_ms, x.ok);
    }));
    row(sec, "delivered (exact, in order)", withScen("rooms", (s) => cell(pct(first(s).delivery_ratio) + (first(s).ok ? "" : " ✗"), first(s).delivery_ratio, first(s).ok)));
  }

  // 4: HTTP broadcast
  if (plan.http && ran("http")) {
    for (const n of plan.http.sizes) {
      const sec = `4. signed HTTP publish, room with ${n} sockets, ${plan.http.concurrency} in flight`;
      const find = (s) => s.results.find((x) => x.n === n);
      row(sec, "requests/s", withScen("http", (s) => cell(fmt(find(s).requests_per_sec), find(s).requests_per_sec, find(s).ok)));
      row(sec, "server CPU µs / request", withScen("http", (s) => cell(fmt(find(s).cpu_us_per_request), find(s).cpu_us_per_request, find(s).ok)));
      row(sec, "request p50 / p99 ms", withScen("http", (s) => cell(`${ms(find(s).request_latency?.p50_ms)} / ${ms(find(s).request_latency?.p99_ms)}`, find(s).request_latency?.p99_ms, find(s).ok)));
      if (n > 0) {
        row(sec, "delivered (exact, in order)", withScen("http", (s) => cell(pct(find(s).delivery_ratio) + (find(s).ok ? "" : " ✗"), find(s).delivery_ratio, find(s).ok)));
      }
    }
  }

  // 5: dedup
  if (plan.dedup && ran("dedup")) {
    for (const ratio of plan.dedup.ratios) {
      const sec = `5. dedup, ${Math.round(ratio * 100)}% repeated ids, ${plan.dedup.rate} frames/s → ${plan.dedup.receivers}`;
      const find = (s) => s.results.find((x) => x.dup_ratio === ratio);
      row(sec, "server CPU µs / publish frame", withScen("dedup", (s) => cell(fmt(find(s).cpu_us_per_publish), find(s).cpu_us_per_publish, find(s).ok)));
      row(sec, "ack p50 / p99 ms", withScen("dedup", (s) => cell(`${ms(find(s).ack_latency?.p50_ms)} / ${ms(find(s).ack_latency?.p99_ms)}`, find(s).ack_latency?.p99_ms, find(s).ok)));
      row(sec, "delivered once each, in order", withScen("dedup", (s) => cell(pct(find(s).delivery_ratio) + (find(s).ok ? "" : " ✗"), find(s).delivery_ratio, find(s).ok)));
    }
  }

  // 7: slow consumer (contract v1.1 §C)
  if (plan.slow && ran("slow")) {
    const p = plan.slow;
    const sec = `7. slow consumer: ${p.publishers} publishers, ${p.payload / 1024} KiB at ${p.rate} msg/s in all for ${p.duration} s; ${p.receivers} readers + 1 that stops reading`;
    const mib = (k) => (k == null ? "–" : fmt(k / 1024));
    const secs = (t) => (t == null ? "?" : `${t.toFixed(1)} s`);
    row(sec, "server RSS at pause → peak, MiB", withScen("slow", (s) => cell(`${mib(s.rss.at_pause_kib)} → ${mib(s.rss.peak_paused_kib)}`, s.rss.peak_paused_kib / 1024)));
    const plus = (k) => (k == null ? "–" : `${k >= 0 ? "+" : ""}${(k / 1024).toFixed(1)}`);
    row(sec, "RSS growth, MiB: nobody paused / one paused", withScen("slow", (s) => cell(`${plus(s.control?.growth_kib)} / ${plus(s.rss.growth_in_pause_kib)}`, s.rss.growth_in_pause_kib / 1024)));
    row(sec, "data sent while paused, MiB", withScen("slow", (s) => cell(s.data_published_during_pause_mib.toFixed(1), s.data_published_during_pause_mib)));
    // The signal: RSS slope once the kernel's buffers for the paused socket are full
    // (from then on the server holds what it is sent), against the control phase.
    const rate = (v) => (v == null ? "–" : v.toFixed(2));
    row(sec, "RSS MiB/s once kernel buffers full: nobody / one paused", withScen("slow", (s) => cell(`${rate(s.rss.slope_control_mib_per_s)} / ${rate(s.rss.slope_paused_mib_per_s)}`, s.rss.slope_paused_mib_per_s)));
    row(sec, "  data rate to the paused reader, MiB/s", withScen("slow", (s) => cell(rate(s.rss.paused_data_rate_mib_per_s), s.rss.paused_data_rate_mib_per_s)));
    row(sec, `server RSS at resume → ${p.afterSecs ?? 3} s after recovery, MiB`, withScen("slow", (s) => cell(`${mib(s.rss.at_resume_kib)} → ${mib(s.rss.after_kib)}`, s.rss.after_kib / 1024)));
    row(sec, "other readers' latency p50 / p99 / max ms", withScen("slow", (s) => {
      const l = s.readers.latency;
      return cell(`${ms(l?.p50_ms)} / ${ms(l?.p99_ms)} / ${ms(l?.max_ms)}`, l?.p99_ms, s.readers.ok);
    }));
    row(sec, "  the same with nobody paused", withScen("slow", (s) => {
      const l = s.control?.readers_latency;
      return cell(`${ms(l?.p50_ms)} / ${ms(l?.p99_ms)} / ${ms(l?.max_ms)}`, l?.p99_ms);
    }));
    row(sec, "other readers delivered (exact, in order)", withScen("slow", (s) => cell(s.readers.ok ? "100%" : "✗", s.readers.ok ? 1 : 0, s.readers.ok)));
    row(sec, "paused socket closed by the server", withScen("slow", (s) => {
      const c = s.paused.first_close;
      if (!c) return cell("no", 0);
      // The room's own count says when it let go; the TCP connection ends only once the
      // client has read up to the close frame (after the pause).
      const dropped = s.paused.room_dropped_after_pause_s;
      const tcp = s.paused.server_tcp_closed_after_pause_s;
      const how = c.code ?? (c.how.includes("reset") ? "reset, no close frame" : c.how);
      if (s.paused.closed_before_pause) return cell(`${how}, before the pause (at ${secs(c.at_s)} of the run)`, c.code ?? null, false);
      const when = dropped != null ? `room let go by ${secs(dropped)}` : tcp != null ? `TCP closed at ${secs(tcp)}` : "when ?";
      return cell(`${how}, ${when}`, c.code ?? null);
    }));
    row(sec, "other sockets closed by the server", withScen("slow", (s) => {
      const o = s.readers.others_closed ?? [];
      if (!o.length) return cell("none", 0);
      const codes = [...new Set(o.map((x) => x.closes[0]?.code ?? x.closes[0]?.how))].join(", ");
      const at = Math.min(...o.map((x) => x.closes[0]?.at_s ?? Infinity));
      return cell(`${o.length} (${codes}) from ${secs(at)} ✗`, o.length, false);
    }));
    row(sec, "paused reader: gaps / duplicates", withScen("slow", (s) => {
      const q = s.paused;
      const how = q.caught_up_in_place ? "in place" : q.reconnects.length ? `resume ×${q.reconnects.length}` : "not";
      return cell(`${q.gaps} / ${q.duplicates}, ${how}` + (s.ok ? "" : " ✗"), q.gaps + q.duplicates, s.ok);
    }));
  }

  transportRows(doc, { row, withScen, ran, cell, fmt, ms, pct }); // 9-11: bench/transports.mjs

  goalRows(doc, { row, withScen, ran, cell, fmt, ms, pct }); // 2b, 8, 12: bench/goals.mjs

  shardedRows(doc, { row, withScen, ran, cell, fmt, ms, pct }, RATES); // 13: bench/sharded.mjs

  const ratios = computeRatios(doc);
  return { rows, ratios, text: formatText(doc, rows, ratios) };
}

/** The median of the numbers in `values` (null when there are none). */
export function median(values) {
  const v = values.filter((x) => typeof x === "number").sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

function fanoutValue(doc, peer, n, payload, scenario = "fanout") {
  const x = doc.results[peer]?.[scenario]?.results?.find((r) => r.n === n && r.payload === payload);
  return x && x.ok ? x.deliveries_per_cpu_sec : null;
}

export function computeRatios(doc) {
  const div = (a, b) => (a && b ? Math.round((a / b) * 1000) / 1000 : null);
  const big = Math.max(...(doc.plan.fanout?.sizes ?? [1000]).filter((n) => n <= 1000));
  const f = (peer, payload = 100) => fanoutValue(doc, peer, big, payload);
  const o = (peer, payload = 100) => fanoutValue(doc, peer, big, payload, "overload");
  const ramp = (peer) => doc.results[peer]?.ramp?.ramp?.handshakes_per_sec ?? null;
  const idle = (peer, scenario = "ramp") => doc.results[peer]?.[scenario]?.rss_per_socket_idle_kib ?? null;
  const http0 = (peer) => doc.results[peer]?.http?.results?.find((r) => r.n === 0)?.requests_per_sec ?? null;
  const interleaved = (peer) => {
    const rounds = doc.results[peer]?.interleaved?.rounds ?? [];
    return rounds.length && rounds.every((x) => x.ok) ? median(rounds.map((x) => x.deliveries_per_cpu_sec)) : null;
  };
  const dedup = (peer, ratio) => doc.results[peer]?.dedup?.results?.find((r) => r.dup_ratio === ratio)?.cpu_us_per_publish ?? null;
  const bigEph = Math.max(...(doc.plan.ephemeral?.sizes ?? [1000]).filter((n) => n <= 1000));
  const eph = (peer, kind) => {
    const x = doc.results[peer]?.ephemeral?.results?.find((r) => r.n === bigEph && r.kind === kind);
    return x && x.ok ? x.deliveries_per_cpu_sec : null;
  };
  // RSS growth per second while one reader is paused beyond what the same traffic grows
  // it with nobody paused (scenario 7): what the server holds for the paused socket.
  const slowExcess = (peer) => {
    const r = doc.results[peer]?.slow?.rss;
    return doc.results[peer]?.slow?.readers?.ok && r?.slope_paused_mib_per_s != null && r?.slope_control_mib_per_s != null
      ? r.slope_paused_mib_per_s - r.slope_control_mib_per_s
      : null;
  };
  return {
    definition: `deliveries per server CPU-second at fan-out 1→${big} (100 B unless noted), at the plan's offered load (fanout_*) and above one core's per-message capacity (overload_*), first ÷ second; >1 means the first is cheaper per delivery; *_interleaved: medians of the alternating rounds (2c). idle_rss_*: server RSS per idle (hibernated) socket, first ÷ second; <1 means the first uses less memory. ephemeral_over_durable_rust: deliveries per CPU-second at 1→${bigEph}, ephemeral ÷ durable publishes (2d). slow_rss_excess_slope_*: server RSS growth per second with one reader paused minus the same with nobody paused, once the paused socket's kernel buffers are full (7), first ÷ second; <1 means the first holds less for a slow socket. sharded_*_over_single (13, Rust room): server CPU per delivery (per handshake; p99 latency) of the sharded room ÷ the same room in one object, >1 means the sharded room costs more; sharded_deliveries_per_shard_core_per_sec: 1 ÷ the sharded room's CPU per delivery; sharded_s_cores_over_single_core: S × that ÷ the one object's deliveries per CPU-second (arithmetic: each shard on a core of its own). A peer whose run failed its checks gives null.`,
    fanout_rust_over_js_twin: div(f("rust"), f("js-twin")),
    fanout_rust_over_js_twin_1kib: div(f("rust", 1024), f("js-twin", 1024)),
    fanout_rust_over_js_twin_interleaved: div(interleaved("rust"), interleaved("js-twin")),
    overload_fanout_rust_over_js_twin: div(o("rust"), o("js-twin")),
    overload_fanout_rust_over_js_twin_1kib: div(o("rust", 1024), o("js-twin", 1024)),
    overload_fanout_rust_over_partyserver: div(o("rust"), o("partyserver")),
    overload_fanout_rust_over_native: div(o("rust"), o("native")),
    fanout_rust_over_partyserver: div(f("rust"), f("partyserver")),
    fanout_rust_over_node_ws: div(f("rust"), f("node-ws")),
    fanout_rust_over_native: div(f("rust"), f("native")),
    fanout_js_twin_over_native: div(f("js-twin"), f("native")),
    fanout_native_over_rust: div(f("native"), f("rust")),
    ramp_handshakes_rust_over_js_twin: div(ramp("rust"), ramp("js-twin")),
    idle_rss_rust_over_js_twin: div(idle("rust"), idle("js-twin")),
    idle_rss_rust_presence_off_over_js_twin: div(idle("rust", "ramp-quiet"), idle("js-twin")),
    http_requests_rust_over_js_twin_0_sockets: div(http0("rust"), http0("js-twin")),
    dedup_cpu_50pct_over_0pct_rust: div(dedup("rust", 0.5), dedup("rust", 0)),
    dedup_cpu_50pct_over_0pct_js_twin: div(dedup("js-twin", 0.5), dedup("js-twin", 0)),
    ephemeral_over_durable_rust: div(eph("rust", "ephemeral"), eph("rust", "durable")),
    slow_rss_excess_slope_rust_over_js_twin: div(slowExcess("rust"), slowExcess("js-twin")),
    ...goalRatios(doc, div),
    ...transportRatios(doc, div),
    ...shardedRatios(doc, div),
  };
}

function formatText(doc, rows, ratios) {
  const peers = Object.keys(doc.results);
  const labelW = Math.max(34, ...rows.map((r) => r.label.length + 4));
  const colW = Math.max(13, ...rows.flatMap((r) => Object.values(r.cells).map((c) => c.text.length + 2)));
  const pad = (s, w) => (s.length >= w ? s : s + " ".repeat(w - s.length));
  const lpad = (s, w) => (s.length >= w ? s : " ".repeat(w - s.length) + s);
  const out = [];
  const header = pad("", labelW) + peers.map((p) => lpad(PEER_LABELS[p] ?? p, colW)).join("");
  out.push(`Roomcast benchmark, ${doc.mode} mode, ${doc.started_at} (${doc.duration_secs.toFixed(0)} s)`);
  out.push(`server pinned: ${typeof doc.machine.pinned === "string" ? doc.machine.pinned : `${doc.machine.pinned.server}, loadgen ${doc.machine.pinned.loadgen}`}; workerd ${doc.machine.workerd}; Worker from ${doc.worker.source}`);
  out.push("");
  out.push(header);
  let section = null;
  for (const r of rows) {
    if (r.section !== section) {
      section = r.section;
      out.push(r.section);
    }
    out.push(pad("  " + r.label, labelW) + peers.map((p) => lpad(r.cells[p]?.text ?? "–", colW)).join(""));
  }
  out.push("");
  out.push("¹ no hibernation: the socket stays in process memory; the wake-up is an ordinary message.");
  out.push("² the load generator's core was busy above 90% on a failing step: the capacity found may be the load generator's. ≥: the search reached its highest rate without a failure.");
  out.push("✗ a check failed (a lost, duplicated or reordered delivery, or a failed request): the numbers of that run are not comparable.");
  out.push("n/a: the peer does not implement the feature (dedup, HTTP publish, presence, ephemeral messages) or the scenario is not run against it (slow consumer).");
  for (const [peer, why] of Object.entries(doc.skipped ?? {})) out.push(`skipped ${peer}: ${why}`);
  const errors = [];
  for (const [peer, byScenario] of Object.entries(doc.results)) {
    for (const [name, r] of Object.entries(byScenario)) {
      if (r?.error && !(typeof r.error === "string" && r.error.startsWith("skipped"))) errors.push(`error ${peer} ${name}: ${typeof r.error === "string" ? r.error : JSON.stringify(r.error).slice(0, 200)}`);
    }
  }
  out.push(...errors);
  out.push("");
  out.push("ratios (" + ratios.definition + ")");
  for (const [k, v] of Object.entries(ratios)) if (k !== "definition") out.push(`  ${pad(k, 44)} ${v ?? "–"}`);
  out.push("");
  out.push(...goalLines(ratios));
  return out.join("\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const doc = JSON.parse(readFileSync(process.argv[2], "utf8"));
  console.log(renderTable(doc).text);
}
