// Issue 14's rows and ratios for bench/table.mjs: 2b capacity search, 8 deploy storm,
// 12 cost on Cloudflare, and the goal ratios of issue 14 side by side (met or not).
// Pure functions over a results document (bench/run.mjs).

/**
 * Workers Paid rates used for the cost rows (marginal prices beyond the included monthly
 * amounts; the $5/month minimum is not spread over messages). Sources and dates are in
 * docs/performance.md ("Cost"); `check` marks rates taken from memory, not from a page.
 */
export const RATES = {
  do_requests_per_million: 0.15, // Durable Objects requests (HTTP, RPC, WebSocket messages in at 20:1)
  do_gb_s_per_million: 12.5, // Durable Objects duration, GB-s
  do_gb_per_object: 0.128, // duration is billed at 128 MB per active object
  rows_read_per_million: 0.001, // SQLite-backed storage, rows read
  rows_written_per_million: 1.0, // SQLite-backed storage, rows written
  worker_requests_per_million: 0.3, // the Worker in front: one request per upgrade and per HTTP publish
};

/** Dollars for one scenario's counts (`cost` in a loadgen result), or null. */
export function priceOf(c) {
  if (!c) return null;
  const dollars =
    (c.do_requests * RATES.do_requests_per_million) / 1e6 +
    (c.awake_object_secs * RATES.do_gb_per_object * RATES.do_gb_s_per_million) / 1e6 +
    ((c.rows_read ?? 0) * RATES.rows_read_per_million) / 1e6 +
    ((c.rows_written ?? 0) * RATES.rows_written_per_million) / 1e6 +
    ((c.upgrades + c.http_requests) * RATES.worker_requests_per_million) / 1e6;
  return {
    dollars,
    per_million_messages: c.messages > 0 ? (dollars / c.messages) * 1e6 : null,
    per_million_deliveries: c.deliveries > 0 ? (dollars / c.deliveries) * 1e6 : null,
    per_million_connects: c.upgrades > 0 ? (dollars / c.upgrades) * 1e6 : null,
  };
}

const COST_PEERS = ["rust", "js-twin"];
const COST_SCENARIOS = ["ramp", "fanout", "capacity", "rooms", "http", "dedup", "storm"];

export function goalRows(doc, { row, withScen, ran, cell, fmt, ms, pct }) {
  const plan = doc.plan;
  const money = (v) => (v == null ? "–" : v >= 100 ? `$${v.toFixed(0)}` : v >= 1 ? `$${v.toFixed(2)}` : v >= 0.01 ? `$${v.toFixed(3)}` : `$${v.toPrecision(2)}`);

  // 2b: capacity search
  if (plan.capacity && ran("capacity")) {
    const p = plan.capacity;
    for (const payload of p.payloads) {
      const sec = `2b. capacity: fan-out 1→${p.n}, ${payload} B — highest offered rate with every message delivered and p99 ≤ ${p.p99Ms} ms (doubling from ${fmt(p.start)}/s, then ${p.bisect} bisections, ${p.duration} s steps)`;
      const find = (s) => s.results.find((x) => x.payload === payload);
      const mark = (x) => (x.search_capped_at_max ? " ≥" : "") + (x.loadgen_bound ? " ²" : "");
      row(sec, "offered deliveries/s sustained", withScen("capacity", (s) => {
        const x = find(s);
        if (!x) return cell("–", null, false);
        return cell(x.capacity_offered_deliveries_per_sec == null ? "none ✗" : fmt(x.capacity_offered_deliveries_per_sec) + mark(x), x.capacity_offered_deliveries_per_sec, !x.broken);
      }));
      row(sec, "  delivered/s · p99 ms at that rate", withScen("capacity", (s) => {
        const x = find(s);
        const a = x?.at_capacity;
        return a ? cell(`${fmt(a.deliveries_per_sec)} · ${ms(a.latency?.p99_ms)}`, a.deliveries_per_sec) : cell("–", null);
      }));
      row(sec, "  server CPU at that rate", withScen("capacity", (s) => {
        const a = find(s)?.at_capacity;
        return a ? cell(`${(a.server_cpu_util * 100).toFixed(0)}%`, a.server_cpu_util) : cell("–", null);
      }));
      row(sec, "  lowest failing offered rate (p99 ms)", withScen("capacity", (s) => {
        const x = find(s);
        if (!x || x.lowest_failing_offered == null) return cell("–", null);
        const st = x.steps.find((y) => y.offered_deliveries_per_sec === x.lowest_failing_offered);
        return cell(`${fmt(x.lowest_failing_offered)} (${ms(st?.latency?.p99_ms)})`, x.lowest_failing_offered);
      }));
    }
  }

  // 8: deploy storm
  for (const key of ["storm", "storm-quiet"]) {
    const p = plan.storm;
    if (!p || !ran(key)) continue;
    if (key === "storm-quiet" && !doc.results.rust?.["storm-quiet"]) continue;
    const sec =
      key === "storm"
        ? `8. deploy storm: ${p.n} sockets in one room, ${p.rate} msg/s, workerd restarted over its storage; SDK backoff (full jitter), resume where the peer has it`
        : `8b. the same, clients connect with presence=off`;
    row(sec, "recovered after restart p50 / p99 / max ms", withScen(key, (s) =>
      cell(`${ms(s.recovery?.p50_ms)} / ${ms(s.recovery?.p99_ms)} / ${ms(s.recovery?.max_ms)}` + (s.restart.all_recovered ? "" : " ✗"), s.recovery?.p99_ms, s.restart.all_recovered)));
    row(sec, "  first welcome after restart, ms", withScen(key, (s) => cell(ms(s.restart.first_welcome_after_s * 1000), s.restart.first_welcome_after_s)));
    row(sec, "  reconnect handshake p50 / p99 ms", withScen(key, (s) => cell(`${ms(s.reconnect_handshake?.p50_ms)} / ${ms(s.reconnect_handshake?.p99_ms)}`, s.reconnect_handshake?.p99_ms)));
    row(sec, "server CPU ms / reconnect", withScen(key, (s) => cell(ms(s.server_cpu.ms_per_reconnect), s.server_cpu.ms_per_reconnect)));
    row(sec, "failed handshakes: refused while down / after up", withScen(key, (s) =>
      cell(`${s.failed_handshakes.refused_while_down} / ${s.failed_handshakes.failed_after_up}`, s.failed_handshakes.failed_after_up)));
    row(sec, "every message once, in order", withScen(key, (s) => {
      const d = s.delivery;
      if (d.exactly_once_in_order) return cell("100%", 1);
      const why = [];
      if (d.missed_at_reconnect) why.push(`missed ${d.missed_at_reconnect}` + (s.resume ? "" : " (no resume)"));
      if (d.repeats) why.push(`${d.repeats} repeats`);
      if (d.gaps_within_a_connection) why.push(`${d.gaps_within_a_connection} lost`);
      if (!d.drained) why.push("not drained");
      return cell(`${pct(d.delivery_ratio)}${why.length ? ", " + why.join(", ") : ""}` + (s.ok ? "" : " ✗"), d.delivery_ratio, s.ok);
    }));
    row(sec, "  publishes resent · duplicate acks", withScen(key, (s) => cell(`${s.messages.resent_after_drop} · ${s.messages.duplicate_acks}`, s.messages.resent_after_drop)));
  }

  // 12: cost on Cloudflare
  const costRan = COST_SCENARIOS.filter((k) => ran(k) && COST_PEERS.some((p) => doc.results[p]?.[k]?.cost));
  if (costRan.length) {
    const sec = `12. cost on Cloudflare, Workers Paid rates (docs/performance.md "Cost"): per scenario, DO requests (upgrades + HTTP + WebSocket messages in ÷ 20) · SQLite rows read / written · object-seconds awake; then $ per 1M messages / per 1M deliveries`;
    const only = (f) => (r, p) => (COST_PEERS.includes(p) ? f(r, p) : { text: "n/a", value: null, ok: true, na: true });
    for (const k of costRan) {
      row(sec, `${k}: requests · rows r/w · awake s`, only(withScen(k, (s) => {
        const c = s.cost;
        if (!c) return cell("–", null);
        const rows = c.rows_read == null ? "– / –" : `${fmt(c.rows_read)} / ${fmt(c.rows_written)}`;
        return cell(`${fmt(c.do_requests)} · ${rows} · ${fmt(c.awake_object_secs)}`, c.do_requests);
      })));
      row(sec, k === "ramp" || k === "storm" ? `${k}: $ / 1M msgs · deliveries · connects` : `${k}: $ / 1M msgs · / 1M deliveries`, only(withScen(k, (s) => {
        const q = priceOf(s.cost);
        if (!q) return cell("–", null);
        const t = `${money(q.per_million_messages)} · ${money(q.per_million_deliveries)}` + (k === "ramp" || k === "storm" ? ` · ${money(q.per_million_connects)}` : "");
        return cell(t, q.per_million_deliveries);
      })));
    }
  }
}

/** Issue 14's ratios; ≥ 1 means the Rust room is better on every one of them. */
export function goalRatios(doc, div) {
  const r = doc.results;
  const cpuPerHandshake = (peer, scen = "ramp") => r[peer]?.[scen]?.server_cpu_ms_per_handshake ?? null;
  const dedupCpu = (peer, ratio) => {
    const x = r[peer]?.dedup?.results?.find((y) => y.dup_ratio === ratio);
    return x?.ok ? x.cpu_us_per_publish : null;
  };
  const httpCpu = (peer) => {
    const x = r[peer]?.http?.results?.find((y) => y.n === 0);
    return x?.ok ? x.cpu_us_per_request : null;
  };
  const cap = (peer, payload) => r[peer]?.capacity?.results?.find((y) => y.payload === payload)?.capacity_offered_deliveries_per_sec ?? null;
  const storm = (peer, key = "storm") => (r[peer]?.[key]?.ok ? r[peer][key].server_cpu?.ms_per_reconnect : null);
  return {
    ramp_handshakes_per_cpu_rust_over_js_twin: div(cpuPerHandshake("js-twin"), cpuPerHandshake("rust")),
    ramp_handshakes_per_cpu_rust_presence_off_over_js_twin: div(cpuPerHandshake("js-twin"), cpuPerHandshake("rust", "ramp-quiet")),
    dedup_0pct_frames_per_cpu_rust_over_js_twin: div(dedupCpu("js-twin", 0), dedupCpu("rust", 0)),
    dedup_50pct_frames_per_cpu_rust_over_js_twin: div(dedupCpu("js-twin", 0.5), dedupCpu("rust", 0.5)),
    http_requests_per_cpu_rust_over_js_twin_0_sockets: div(httpCpu("js-twin"), httpCpu("rust")),
    capacity_rust_over_js_twin: div(cap("rust", 100), cap("js-twin", 100)),
    // true when the Rust room's search stopped at its highest rate or at the load
    // generator's limit: the capacity ratios are then lower bounds.
    capacity_rust_is_lower_bound: (r.rust?.capacity?.results ?? []).some((y) => y.search_capped_at_max || y.loadgen_bound) || null,
    capacity_rust_over_js_twin_1kib: div(cap("rust", 1024), cap("js-twin", 1024)),
    storm_reconnects_per_cpu_rust_over_js_twin: div(storm("js-twin"), storm("rust")),
    storm_reconnects_per_cpu_rust_presence_off_over_js_twin: div(storm("js-twin"), storm("rust", "storm-quiet")),
  };
}

/** Issue 14 item 2: each goal, its target and whether this run met it. */
export function goalLines(ratios) {
  const goals = [
    ["ramp_handshakes_per_cpu_rust_presence_off_over_js_twin", 1.0, "handshakes per server CPU-second at the ramp, presence=off"],
    ["ramp_handshakes_per_cpu_rust_over_js_twin", 0.8, "handshakes per server CPU-second at the ramp, presence on"],
    ["dedup_0pct_frames_per_cpu_rust_over_js_twin", 1.0, "publish frames per server CPU-second, dedup 0% repeats"],
    ["dedup_50pct_frames_per_cpu_rust_over_js_twin", 1.0, "publish frames per server CPU-second, dedup 50% repeats"],
    ["http_requests_per_cpu_rust_over_js_twin_0_sockets", 1.0, "signed HTTP publishes per server CPU-second, empty room"],
    ["fanout_rust_over_js_twin_interleaved", 1.0, "fan-out 1→1000 at the plan's load, interleaved rounds"],
    ["capacity_rust_over_js_twin", 1.25, "capacity, fan-out 1→1000, 100 B"],
    ["capacity_rust_over_js_twin_1kib", 1.25, "capacity, fan-out 1→1000, 1 KiB"],
  ];
  const out = ["goals (issue 14; each a ratio of the Rust room to the JS twin in this run, ≥ target is met):"];
  for (const [k, target, what] of goals) {
    const v = ratios[k];
    const bound = k.startsWith("capacity_") && ratios.capacity_rust_is_lower_bound ? " (lower bound)" : "";
    const verdict = (v == null ? "not measured" : v >= target ? "met" : "NOT met") + bound;
    out.push(`  ${k.padEnd(56)} ${String(v ?? "–").padStart(6)}  ≥ ${target.toFixed(2)}  ${verdict}  (${what})`);
  }
  return out;
}
