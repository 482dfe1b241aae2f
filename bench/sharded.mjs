// The bench rows of issue 15 item 4 (sharded rooms, docs/sharding.md): scenarios
// `sharded` and `sharded-single`, Rust room only (no other peer has sharded rooms).
// bench/run.mjs registers them and calls runShardedScenarios, which runs the requested
// ones in alternating rounds; bench/table.mjs prints them through shardedRows and
// shardedRatios. No load-generator changes: each round is the existing `ramp` and
// `fanout` subcommands against a freshly started server.
//
// * sharded: one logical room of N sockets served by a sequencer object plus S shard
//   objects (`SHARDED_ROOMS="*"`, `ROOM_SHARDS=S`): a ramp to N sockets (handshakes/s,
//   server CPU per handshake, then idle past eviction and one publish to all: the wake),
//   then fan-out 1 → N at `dps` offered deliveries/s (`dps ÷ N` msg/s, open loop).
// * sharded-single: the same two runs with the room in one object (no SHARDED_ROOMS),
//   at the same offered load, for the comparison.
//
// Locally every object of the room shares one workerd process on one core, so the
// measured figure is CPU per delivery with the extra hop included; "on separate
// machines" is arithmetic from it (shardedProjection), never a measurement.

export const SHARDED_SCENARIOS = ["sharded", "sharded-single"];

const SIZES = {
  quick: { n: 4000, shards: 4, payload: 100, dps: 20000, maxRate: 2000, duration: 3, warmup: 0.5, idle: 12, rounds: 2 },
  // 20,001 sockets need more than 20,000 open files in the load generator and in workerd
  // (`ulimit -n`); see docs/performance.md "Sharded rooms".
  full: { n: 20000, shards: 8, payload: 100, dps: 20000, maxRate: 2000, duration: 10, warmup: 2, idle: 15, rounds: 3 },
};

/** Cloudflare's limit of hibernatable WebSockets per Durable Object. */
export const SOCKETS_PER_OBJECT = 32768;
/** The logical room sizes the projection is computed for (docs/performance.md). */
const PROJECTED_SIZES = [100000, 250000];
/** The largest ROOM_SHARDS (src/config.rs MAX_ROOM_SHARDS). */
const MAX_SHARDS = 64;

/** The plan entry (`sharded-single` runs the same sizes with the room in one object). */
export function shardedPlan(mode) {
  return { sharded: structuredClone(SIZES[mode]) };
}

export const shardedApplicable = (name, peer) => peer === "rust";

/** The Worker variables of each configuration (bench/peers/workerd.mjs BENCH_BINDINGS). */
const bindingsFor = (name, p) => (name === "sharded" ? { SHARDED_ROOMS: "*", ROOM_SHARDS: String(p.shards) } : {});

/** The shard a user's sockets go to: FNV-1a of `tenant/room`, 0, user (src/room/shard.rs). */
export function placement(roomKey, user, shards) {
  let h = 0xcbf29ce484222325n;
  for (const b of [...Buffer.from(roomKey), 0, ...Buffer.from(user)]) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return Number(h % BigInt(shards));
}

/** Sockets per shard for the load generator's fan-out room (users u0…uN, room `<prefix>-fo-<N>`). */
function spread(prefix, n, shards) {
  const counts = new Array(shards).fill(0);
  for (let i = 0; i <= n; i++) counts[placement(`/${prefix}-fo-${n}`, `u${i}`, shards)]++;
  return counts;
}

const failedPhases = (r) => (r.results ?? [r.wake ?? r]).filter((x) => x && x.ok === false).length + (r.error ? 1 : 0);

/**
 * Runs the requested scenarios of SHARDED_SCENARIOS for `peer`, alternating them round by
 * round (one 3 s phase swings by ±10% on a shared machine; alternating spreads the
 * machine's moods over both). Never throws: errors go in the result.
 */
export async function runShardedScenarios(names, { peer, startPeer, stopPeer, loadgen, plan, log }) {
  const p = plan.sharded;
  const out = Object.fromEntries(names.map((name) => [name, { rounds: [] }]));
  const once = async (name, label, sub, args) => {
    let server;
    try {
      server = await startPeer(peer, bindingsFor(name, p));
      const r = await loadgen(server, sub, args.map(String));
      const f = failedPhases(r);
      log(`${peer}: ${name} (${label}) done in ${r.loadgen_secs?.toFixed(1)} s${f ? `, ${f} FAILED phase(s)` : ""}`);
      return r;
    } catch (e) {
      log(`${peer}: ${name} (${label}) failed: ${e.message}`);
      return { error: e.message };
    } finally {
      if (server) await stopPeer(server);
    }
  };
  for (let round = 0; round < p.rounds; round++) {
    for (const name of names) {
      const tag = `round ${round + 1}/${p.rounds}`;
      const ramp = await once(name, `ramp, ${tag}`, "ramp", ["--n", p.n, "--idle-secs", p.idle]);
      const fanout = await once(name, `fan-out, ${tag}`, "fanout", [
        "--sizes", p.n, "--payloads", p.payload, "--deliveries-per-sec", p.dps, "--max-rate", p.maxRate, "--duration", p.duration, "--warmup", p.warmup,
      ]);
      if (name === "sharded" && fanout.prefix) fanout.sockets_per_shard = spread(fanout.prefix, p.n, p.shards);
      out[name].rounds.push({ ramp, fanout });
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------
// Summaries, projection, table rows and ratios (bench/table.mjs)
// ------------------------------------------------------------------------------------

const med = (v) => {
  const s = v.filter((x) => typeof x === "number").sort((a, b) => a - b);
  if (!s.length) return null;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Medians over the rounds of one configuration, or null when it did not run. */
export function shardedSummary(s) {
  if (!s?.rounds?.length) return null;
  const ramps = s.rounds.map((r) => r.ramp).filter((r) => r && !r.error);
  const fans = s.rounds.map((r) => r.fanout?.results?.[0]).filter(Boolean);
  const rampOk = ramps.length === s.rounds.length && ramps.every((r) => r.ramp?.failures === 0 && r.wake?.ok !== false);
  const fanOk = fans.length === s.rounds.length && fans.every((x) => x.ok);
  const m = (xs, f) => med(xs.map(f));
  const dpc = (xs) => xs.map((x) => x.deliveries_per_cpu_sec);
  return {
    rounds: s.rounds.length,
    ramp_ok: rampOk,
    handshakes_per_sec: m(ramps, (r) => r.ramp?.handshakes_per_sec),
    handshake_p50_ms: m(ramps, (r) => r.ramp?.handshake?.p50_ms),
    handshake_p99_ms: m(ramps, (r) => r.ramp?.handshake?.p99_ms),
    failures: ramps.reduce((a, r) => a + (r.ramp?.failures ?? 0), 0),
    cpu_ms_per_handshake: m(ramps, (r) => r.server_cpu_ms_per_handshake),
    wake_first_ms: m(ramps, (r) => r.wake?.first_delivery_ms),
    wake_all_ms: m(ramps, (r) => r.wake?.all_delivered_ms),
    // From the fan-out run (its room is never idle long enough to be evicted, and a room's
    // storage counters start again when its object does): joins, the phases' messages and
    // the leaves counted before the load generator asked. For a sharded room these are the
    // sequencer's rows only (GET /v1/rooms/{room} reports the sequencer's storage).
    rows_written_per_socket: m(s.rounds.map((r) => r.fanout?.cost).filter(Boolean), (c) => (c.rows_written != null && c.upgrades ? c.rows_written / c.upgrades : null)),
    fanout_ok: fanOk,
    deliveries_per_cpu_sec: med(dpc(fans)),
    deliveries_per_cpu_sec_range: fans.length ? [Math.min(...dpc(fans)), Math.max(...dpc(fans))] : null,
    cpu_us_per_delivery: (() => {
      const d = med(dpc(fans));
      return d ? 1e6 / d : null;
    })(),
    server_cpu_util: m(fans, (x) => x.server_cpu_util),
    latency_p50_ms: m(fans, (x) => x.latency?.p50_ms),
    latency_p99_ms: m(fans, (x) => x.latency?.p99_ms),
    latency_max_ms: m(fans, (x) => x.latency?.max_ms),
    ack_p50_ms: m(fans, (x) => x.ack_latency?.p50_ms),
    deliveries: fans.reduce((a, x) => a + (x.deliveries ?? 0), 0),
    deliveries_expected: fans.reduce((a, x) => a + (x.deliveries_expected ?? 0), 0),
    sockets_per_shard: s.rounds.map((r) => r.fanout?.sockets_per_shard).find(Boolean) ?? null,
  };
}

/**
 * Arithmetic, not measurement: what the logical room would carry with each shard on a
 * core of its own, from the CPU per delivery measured with every object on one core (the
 * sequencer's and the hop's share included, so per shard it is conservative). Cost per
 * message from docs/sharding.md "Cost per message" at light load (one message per burst):
 * DO requests = 1/20 (the WebSocket message in) + 1 (shard → sequencer append) + S
 * (sequencer → shard deliver); SQLite rows written = 2 (the log, as an unsharded room) +
 * 1 (`fanout_seq`) + S (each shard's `delivered_seq`), 1 row read (the dedup lookup);
 * duration = the objects' active time, billed at 128 MB each (idle objects that can
 * hibernate are not billed): at least the CPU of the fan-out, sockets × CPU per delivery.
 */
export function shardedProjection(dpcSharded, rates) {
  if (!dpcSharded) return null;
  const perObjectSecond = rates.do_gb_per_object * rates.do_gb_s_per_million * 1e-6;
  const at = (sockets, shards) => {
    const perShard = Math.ceil(sockets / shards);
    const msgsPerSec = dpcSharded / perShard;
    const requests = 1 / 20 + 1 + shards;
    const rowsWritten = 3 + shards;
    const perMessage = {
      requests: (requests * rates.do_requests_per_million) / 1e6,
      rows: (rowsWritten * rates.rows_written_per_million + rates.rows_read_per_million) / 1e6,
      duration: (sockets / dpcSharded) * perObjectSecond,
    };
    const dollars = perMessage.requests + perMessage.rows + perMessage.duration;
    return {
      sockets,
      shards,
      sockets_per_shard: perShard,
      messages_per_sec: msgsPerSec,
      deliveries_per_sec: msgsPerSec * sockets,
      do_requests_per_message: requests,
      rows_written_per_message: rowsWritten,
      active_object_secs_per_message: sockets / dpcSharded,
      dollars_per_million_messages: dollars * 1e6,
      dollars_per_million_messages_parts: { requests: perMessage.requests * 1e6, rows: perMessage.rows * 1e6, duration: perMessage.duration * 1e6 },
    };
  };
  return {
    basis: "arithmetic from the measured CPU per delivery of the sharded run (all objects on one core); one shard per core",
    deliveries_per_shard_core_per_sec: dpcSharded,
    sizes: PROJECTED_SIZES.flatMap((n) => {
      const min = Math.ceil(n / SOCKETS_PER_OBJECT);
      return [...new Set([min, 8, 16, 32, MAX_SHARDS].filter((s) => s >= min))].map((s) => at(n, s));
    }),
  };
}

/** What the results document keeps of the pair (bench/run.mjs `doc.sharded`). */
export function shardedDoc(doc, rates) {
  const rust = doc.results.rust ?? {};
  const summary = Object.fromEntries(SHARDED_SCENARIOS.filter((k) => rust[k]?.rounds).map((k) => [k, shardedSummary(rust[k])]));
  if (!Object.keys(summary).length) return undefined;
  const a = summary.sharded;
  return { summary, projection: a?.fanout_ok ? shardedProjection(a.deliveries_per_cpu_sec, rates) : null };
}

export function shardedRows(doc, { row, withScen, ran, cell, fmt, ms, pct }, rates) {
  const p = doc.plan.sharded;
  if (!p || !SHARDED_SCENARIOS.some(ran)) return;
  const rust = doc.results.rust ?? {};
  const names = SHARDED_SCENARIOS.filter((k) => rust[k] && !rust[k].na);
  if (!names.length) return;
  const label = { sharded: `${p.shards} shards`, "sharded-single": "one object" };
  const sum = Object.fromEntries(names.map((k) => [k, shardedSummary(rust[k])]));
  const rounds = p.rounds > 1 ? `, ${p.rounds} rounds alternating, medians` : "";
  const only = (name, f) => withScen(name, () => {
    const s = sum[name];
    return s ? f(s) : cell("–", null);
  });
  const sec1 = `13. sharded room (issue 15): ramp to ${fmt(p.n)} sockets in one logical room, presence on, then ${p.idle} s idle and one publish to all${rounds}`;
  for (const k of names) {
    row(sec1, `${label[k]}: handshakes/s (failures)`, only(k, (s) => cell(`${fmt(s.handshakes_per_sec)} (${s.failures})`, s.handshakes_per_sec, s.ramp_ok)));
    row(sec1, `${label[k]}: handshake p50 / p99 ms`, only(k, (s) => cell(`${ms(s.handshake_p50_ms)} / ${ms(s.handshake_p99_ms)}`, s.handshake_p99_ms)));
    row(sec1, `${label[k]}: server CPU ms / handshake`, only(k, (s) => cell(ms(s.cpu_ms_per_handshake), s.cpu_ms_per_handshake)));
    row(sec1, `${label[k]}: wake: first delivery / all, ms`, only(k, (s) => cell(`${ms(s.wake_first_ms)} / ${ms(s.wake_all_ms)}`, s.wake_all_ms, s.ramp_ok)));
  }
  const sec2 = `13b. sharded room: fan-out 1→${fmt(p.n)}, ${p.payload} B, ${fmt(p.dps / p.n)} msg/s (${fmt(p.dps)} deliveries/s offered)${rounds}`;
  for (const k of names) {
    row(sec2, `${label[k]}: deliveries / server CPU-s (min–max)`, only(k, (s) => {
      const r = s.deliveries_per_cpu_sec_range;
      return cell(`${fmt(s.deliveries_per_cpu_sec)}` + (r && s.rounds > 1 ? ` (${fmt(r[0])}–${fmt(r[1])})` : ""), s.deliveries_per_cpu_sec, s.fanout_ok);
    }));
    row(sec2, `${label[k]}: server CPU µs / delivery`, only(k, (s) => cell(fmt(s.cpu_us_per_delivery, 1), s.cpu_us_per_delivery, s.fanout_ok)));
    row(sec2, `${label[k]}: server CPU, share of one core`, only(k, (s) => cell(s.server_cpu_util == null ? "–" : `${(s.server_cpu_util * 100).toFixed(0)}%`, s.server_cpu_util)));
    row(sec2, `${label[k]}: latency p50 / p99 / max ms`, only(k, (s) => cell(`${ms(s.latency_p50_ms)} / ${ms(s.latency_p99_ms)} / ${ms(s.latency_max_ms)}`, s.latency_p99_ms, s.fanout_ok)));
    row(sec2, `${label[k]}: delivered (exact, in order)`, only(k, (s) => {
      const r = s.deliveries_expected ? s.deliveries / s.deliveries_expected : null;
      return cell(pct(r) + (s.fanout_ok ? "" : " ✗"), r, s.fanout_ok);
    }));
    row(sec2, `${label[k]}: SQLite rows written / socket (room's storage count)`, only(k, (s) => cell(fmt(s.rows_written_per_socket, 2), s.rows_written_per_socket)));
  }
  if (sum.sharded?.sockets_per_shard) {
    const c = sum.sharded.sockets_per_shard;
    row(sec2, `${label.sharded}: sockets per shard (placement)`, only("sharded", () => cell(c.join(" / "), Math.max(...c))));
  }
  const a = sum.sharded, b = sum["sharded-single"];
  const ok = (x) => x?.fanout_ok && x.deliveries_per_cpu_sec;
  if (a && b) {
    row(sec2, "extra hop: CPU per delivery, sharded ÷ one object", only("sharded", () => {
      const v = ok(a) && ok(b) ? b.deliveries_per_cpu_sec / a.deliveries_per_cpu_sec : null;
      return cell(v == null ? "–" : v.toFixed(3), v);
    }));
    row(sec2, "  CPU per handshake, sharded ÷ one object", only("sharded", () => {
      const v = a.cpu_ms_per_handshake && b.cpu_ms_per_handshake ? a.cpu_ms_per_handshake / b.cpu_ms_per_handshake : null;
      return cell(v == null ? "–" : v.toFixed(3), v);
    }));
  }
  if (ok(a)) {
    const proj = shardedProjection(a.deliveries_per_cpu_sec, rates);
    const sec3 = `13c. arithmetic, not measured: each shard on a core of its own at the measured CPU per delivery (${fmt(a.cpu_us_per_delivery, 1)} µs); light load, one message per burst`;
    row(sec3, "deliveries/s per shard-core (1 ÷ CPU per delivery)", only("sharded", () => cell(fmt(proj.deliveries_per_shard_core_per_sec), proj.deliveries_per_shard_core_per_sec)));
    row(sec3, `${p.shards} shards on ${p.shards} cores: deliveries/s · msg/s at ${fmt(p.n)}`, only("sharded", () => {
      const d = p.shards * proj.deliveries_per_shard_core_per_sec;
      return cell(`${fmt(d)} · ${fmt(d / p.n, 1)}`, d);
    }));
    if (ok(b)) {
      row(sec3, `  against one object on one core: deliveries/s · msg/s`, only("sharded", () => cell(`${fmt(b.deliveries_per_cpu_sec)} · ${fmt(b.deliveries_per_cpu_sec / p.n, 1)}`, b.deliveries_per_cpu_sec)));
    }
    const money = (v) => (v >= 100 ? `$${v.toFixed(0)}` : v >= 1 ? `$${v.toFixed(2)}` : `$${v.toFixed(3)}`);
    for (const x of proj.sizes) {
      row(sec3, `${fmt(x.sockets)} sockets, ${x.shards} shards (${fmt(x.sockets_per_shard)} each): msg/s · $ / 1M msgs`, only("sharded", () => cell(`${fmt(x.messages_per_sec, 2)} · ${money(x.dollars_per_million_messages)}`, x.messages_per_sec)));
    }
  }
}

export function shardedRatios(doc, div) {
  const rust = doc.results.rust ?? {};
  const a = shardedSummary(rust.sharded);
  const b = shardedSummary(rust["sharded-single"]);
  const dpc = (x) => (x?.fanout_ok ? x.deliveries_per_cpu_sec : null);
  const shards = doc.plan.sharded?.shards;
  return {
    sharded_cpu_per_delivery_over_single: div(dpc(b), dpc(a)),
    sharded_cpu_per_handshake_over_single: div(a?.ramp_ok ? a.cpu_ms_per_handshake : null, b?.ramp_ok ? b.cpu_ms_per_handshake : null),
    sharded_p99_latency_over_single: div(a?.fanout_ok ? a.latency_p99_ms : null, b?.fanout_ok ? b.latency_p99_ms : null),
    sharded_deliveries_per_shard_core_per_sec: dpc(a) == null ? null : Math.round(dpc(a)),
    sharded_s_cores_over_single_core: div(dpc(a) == null || !shards ? null : dpc(a) * shards, dpc(b)),
  };
}
