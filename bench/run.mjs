// The benchmark orchestrator: starts every peer (server pinned to core 0), runs every
// scenario against it with the native load generator (pinned to core 1), and writes
// bench/results/<timestamp>-<mode>.json, a table (stdout and .txt) and an SVG chart.
// Run it through scripts/bench, which builds what it needs first.
//
//   node bench/run.mjs [--quick] [--peers rust,js-twin,...] [--scenarios ramp,fanout,...]
//
// Environment (set by scripts/bench): BENCH_LOADGEN, BENCH_NATIVE_SERVER (binaries),
// BENCH_WORKER_DIR (snapshot of the product's build/), BENCH_WORKER_SOURCE (what it was
// built from), BENCH_PARTYSERVER_BUNDLE (where to write the partyserver bundle).
import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync, rmSync, existsSync, statSync, readFileSync, mkdtempSync } from "node:fs";
import { cpus, loadavg, release, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import * as esbuild from "esbuild";
import { renderTable } from "./table.mjs";
import { renderSvg } from "./chart.mjs";
import { TRANSPORT_SCENARIOS, transportPlan, transportApplicable, runTransportScenario } from "./transports.mjs";
import { SHARDED_SCENARIOS, shardedPlan, shardedApplicable, runShardedScenarios, shardedDoc } from "./sharded.mjs";
import { RATES } from "./goals.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
process.chdir(root);

// ------------------------------------------------------------------------------------
// Options
// ------------------------------------------------------------------------------------

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1] : fallback;
};
const mode = flag("--quick") ? "quick" : "full";
const ALL_PEERS = ["rust", "js-twin", "partyserver", "node-ws", "native"];
const ALL_SCENARIOS = ["ramp", "ramp-quiet", "fanout", "overload", "capacity", "ephemeral", "rooms", "http", "dedup", "slow", "storm", "storm-quiet", "interleaved", ...TRANSPORT_SCENARIOS, ...SHARDED_SCENARIOS];
/**
 * What runs without --scenarios: everything but `overload`, the fixed-rate phase that
 * `capacity` replaced (a fixed rate is an overload on one machine and not on another),
 * and the sharded-room pair (bench/sharded.mjs: its full size, 20,001 sockets, needs more
 * open files than many machines allow); `--scenarios overload` or `--scenarios
 * sharded,sharded-single` still runs them.
 */
const DEFAULT_SCENARIOS = ALL_SCENARIOS.filter((s) => s !== "overload" && !SHARDED_SCENARIOS.includes(s));
/** The load generator subcommand behind each scenario (the same as its name unless listed). */
const SUBCOMMAND = { overload: "fanout", "ramp-quiet": "ramp", interleaved: "fanout", "storm-quiet": "storm" };
/**
 * Query parameters a scenario adds to the socket URL. `ramp-quiet` is the ramp with every
 * client connecting `presence=off` (no join/leave frames): the Rust room's presence
 * traffic is quadratic in the room's size, and no other peer sends presence at all, so
 * this is the like-for-like memory comparison; `ramp` keeps the contract's default.
 */
const QUERY = { "ramp-quiet": "presence=off", "storm-quiet": "presence=off" };
/**
 * Worker variables a scenario sets for the Rust room (on top of bench/peers/workerd.mjs's).
 * `slow` keeps 4,000 messages of history so the paused reader's resume (v1 §6) is never
 * refused for retention: at the default HISTORY_LIMIT (1,000) a reader that misses more
 * than 12.5 s of 80 msg/s cannot resume whatever the room does about slow sockets.
 */
const BINDINGS = { slow: (p) => ({ HISTORY_LIMIT: String(p.historyLimit) }) };
/**
 * `interleaved` is not run per peer like the others: it repeats the headline phase
 * (fan-out 1→1000, 100 B, at the plan's load) for the Rust room and the JS twin in
 * alternation, a fresh server each time, and reports medians. One 3 s phase per peer
 * swings by ±10% on a shared machine; alternating rounds spread the machine's moods over
 * both peers.
 */
const INTERLEAVED_PEERS = ["rust", "js-twin"];
const peers = option("--peers", ALL_PEERS.join(",")).split(",");
const scenarios = option("--scenarios", DEFAULT_SCENARIOS.join(",")).split(",");

/**
 * What each peer implements; a scenario a peer lacks is n/a for it. `ephemeral`: contract
 * v1.1 §B. `slow` (contract v1.1 §C) runs against the Rust room and the JS twin: the twin
 * has no bound on what it holds for a slow socket, which is what the scenario shows.
 */
const FEATURES = {
  rust: { http: true, dedup: true, presence: true, hibernation: true, ephemeral: true, slow: true, storm: true, resume: true, capacity: true, path: "/v1/rooms/{room}/ws" },
  "js-twin": { http: true, dedup: true, presence: false, hibernation: true, ephemeral: false, slow: true, storm: true, resume: false, capacity: true, path: "/v1/rooms/{room}/ws" },
  partyserver: { http: false, dedup: false, presence: false, hibernation: true, ephemeral: false, slow: false, storm: false, resume: false, capacity: false, path: "/parties/chat/{room}" },
  "node-ws": { http: true, dedup: false, presence: false, hibernation: false, ephemeral: false, slow: false, storm: false, resume: false, capacity: false, path: "/v1/rooms/{room}/ws" },
  native: { http: false, dedup: false, presence: false, hibernation: false, ephemeral: false, slow: false, storm: false, resume: false, capacity: false, path: "/v1/rooms/{room}/ws" },
};

/**
 * Scenario sizes. Quick fits in 10 minutes on 2 cores; full is the documented run.
 * Fan-out publishes open-loop at `deliveries_per_sec ÷ N` messages per second, the same
 * for every peer, so every peer is measured at the same offered load. `fanout` offers
 * 20k deliveries/s (about 60% of what a Durable Object sending one message per frame
 * serves on one core of this machine); `overload` offers 60k/s at 1→1000, more than that,
 * which is where a room either coalesces or falls behind.
 */
const PLAN = {
  quick: {
    ramp: { n: 2000, idle: 12, idleNoHibernation: 2 },
    fanout: { sizes: [10, 100, 1000], payloads: [100, 1024], dps: 20000, maxRate: 2000, duration: 3, warmup: 0.5 },
    overload: { sizes: [1000], payloads: [100, 1024], dps: 60000, maxRate: 2000, duration: 3, warmup: 0.5 },
    capacity: { n: 1000, payloads: [100, 1024], start: 10000, max: 2560000, bisect: 3, duration: 2, warmup: 0.5, p99Ms: 100 },
    storm: { n: 2000, rate: 5, payload: 100, before: 3, after: 2 },
    ephemeral: { sizes: [10, 100, 1000], payload: 100, dps: 20000, maxRate: 2000, duration: 3, warmup: 0.5 },
    slow: { publishers: 5, receivers: 3, rate: 80, payload: 16384, duration: 10, warmup: 1, historyLimit: 4000, afterSecs: 3 },
    rooms: { rooms: 100, perRoom: 20, rate: 10, duration: 2, warmup: 0.5, payload: 100 },
    http: { sizes: [0, 100, 1000], concurrency: 8, duration: 2, warmup: 0.5, payload: 100 },
    dedup: { receivers: 10, rate: 500, ratios: [0, 0.5], duration: 2, warmup: 0.5, payload: 100 },
    interleaved: { rounds: 3, n: 1000, payload: 100, dps: 20000, duration: 3, warmup: 0.5 },
  },
  full: {
    ramp: { n: 5000, idle: 15, idleNoHibernation: 5 },
    fanout: { sizes: [10, 100, 1000, 5000], payloads: [100, 1024], dps: 20000, maxRate: 2000, duration: 10, warmup: 2 },
    overload: { sizes: [1000], payloads: [100, 1024], dps: 60000, maxRate: 2000, duration: 10, warmup: 2 },
    capacity: { n: 1000, payloads: [100, 1024], start: 10000, max: 2560000, bisect: 4, duration: 5, warmup: 1, p99Ms: 100 },
    storm: { n: 10000, rate: 2, payload: 100, before: 5, after: 5 },
    ephemeral: { sizes: [10, 100, 1000, 5000], payload: 100, dps: 20000, maxRate: 2000, duration: 10, warmup: 2 },
    slow: { publishers: 5, receivers: 3, rate: 80, payload: 16384, duration: 20, warmup: 2, historyLimit: 4000, afterSecs: 3 },
    rooms: { rooms: 100, perRoom: 20, rate: 10, duration: 10, warmup: 2, payload: 100 },
    http: { sizes: [0, 100, 1000], concurrency: 8, duration: 10, warmup: 2, payload: 100 },
    dedup: { receivers: 10, rate: 500, ratios: [0, 0.5], duration: 10, warmup: 2, payload: 100 },
    interleaved: { rounds: 5, n: 1000, payload: 100, dps: 20000, duration: 10, warmup: 2 },
  },
}[mode];
// Issue 12 and 13 scenarios (SSE, long-poll, webhooks): bench/transports.mjs.
Object.assign(PLAN, transportPlan(mode, PLAN));
// Issue 15 scenarios (one room over many objects, and the same room in one): bench/sharded.mjs.
Object.assign(PLAN, shardedPlan(mode));

const LOADGEN = resolve(root, process.env.BENCH_LOADGEN ?? "target/bench/release/loadgen");
const NATIVE_SERVER = resolve(root, process.env.BENCH_NATIVE_SERVER ?? "target/bench/release/native-server");
const WORKER_DIR = resolve(root, process.env.BENCH_WORKER_DIR ?? "target/bench/worker");
const PARTYSERVER_BUNDLE = resolve(root, process.env.BENCH_PARTYSERVER_BUNDLE ?? "target/bench/partyserver.mjs");
const JWT_SECRET = "bench-jwt-" + randomBytes(16).toString("hex");
const API_SECRET = "bench-api-" + randomBytes(16).toString("hex");

// Server on core 0, load generator on core 1 (when there are two cores and taskset).
const haveTaskset = (() => {
  try {
    execFileSync("taskset", ["-c", "0", "true"]);
    return cpus().length >= 2;
  } catch {
    return false;
  }
})();
const pin = (core, cmd) => (haveTaskset ? ["taskset", "-c", String(core), ...cmd] : cmd);

// Miniflare keeps Durable Object SQLite files under the temp dir. On disk, every storage
// commit pays an fsync and the output gate holds sends until it lands, so the numbers
// would measure this VM's disk; tmpfs keeps them about CPU. (See docs/performance.md.)
const storageRoot = existsSync("/dev/shm") ? mkdtempSync("/dev/shm/roomcast-bench-") : mkdtempSync(join(tmpdir(), "roomcast-bench-"));

const log = (...a) => console.error(`[bench ${((Date.now() - t0) / 1000).toFixed(0).padStart(4)}s]`, ...a);
const t0 = Date.now();

// ------------------------------------------------------------------------------------
// Peers
// ------------------------------------------------------------------------------------

/** The first line a peer prints (its address), failing fast if it exits first. */
function firstLine(child, ms, what) {
  return new Promise((done, reject) => {
    const rl = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`${what}: no ready line within ${ms} ms`)), ms);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${what}: exited with ${code} before it was ready`));
    });
    rl.once("line", (line) => {
      clearTimeout(timer);
      done(line);
    });
  });
}

let persistDirs = 0;

async function startPeer(name, bindings, { persist = false } = {}) {
  const env = {
    ...process.env,
    // Deploy storms restart workerd over persisted storage (bench/peers/workerd.mjs).
    ...(persist ? { BENCH_PERSIST: join(storageRoot, `persist-${persistDirs++}`) } : {}),
    ...(bindings ? { BENCH_BINDINGS: JSON.stringify(bindings) } : {}),
    BENCH_JWT_SECRET: JWT_SECRET,
    BENCH_API_SECRET: API_SECRET,
    BENCH_WORKER_DIR: WORKER_DIR,
    BENCH_PARTYSERVER_BUNDLE: PARTYSERVER_BUNDLE,
    TMPDIR: storageRoot,
  };
  const cmd =
    name === "native"
      ? [NATIVE_SERVER, "--listen", "127.0.0.1:0"]
      : name === "node-ws"
        ? [process.execPath, "bench/peers/node-ws/server.mjs"]
        : [process.execPath, "bench/peers/workerd.mjs", name];
  const [bin, ...rest] = pin(0, cmd);
  const child = spawn(bin, rest, { env, stdio: ["pipe", "pipe", "inherit"] });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  let line;
  try {
    line = JSON.parse(await firstLine(child, 60_000, name));
  } catch (e) {
    child.kill("SIGKILL");
    e.startup = true;
    throw e;
  }
  child.stdout.resume();
  let port, pid;
  if (line.url) {
    port = new URL(line.url).port;
    pid = line.pid;
  } else {
    port = String(line.listening).split(":").pop();
    pid = child.pid; // taskset execs the server, so this is the server itself
  }
  if (!pid) throw new Error(`${name}: could not find the server process`);
  return {
    name,
    child,
    exited,
    pid,
    launcherPid: child.pid,
    wsUrl: `ws://127.0.0.1:${port}`,
    httpUrl: `http://127.0.0.1:${port}`,
    path: FEATURES[name].path,
  };
}

async function stopPeer(peer) {
  peer.child.stdin.end();
  peer.child.kill("SIGTERM");
  const timer = setTimeout(() => peer.child.kill("SIGKILL"), 10_000);
  await peer.exited;
  clearTimeout(timer);
}

// ------------------------------------------------------------------------------------
// Load generator
// ------------------------------------------------------------------------------------

let roomPrefix = 0;

function loadgen(peer, sub, subArgs, query) {
  const prefix = `r${Date.now().toString(36)}${roomPrefix++}`;
  const cmd = pin(1, [
    LOADGEN,
    "--ws-url", peer.wsUrl,
    "--ws-path", query ? `${peer.path}?${query}` : peer.path,
    "--http-url", peer.httpUrl,
    "--server-pid", String(peer.pid),
    "--prefix", prefix,
    sub,
    ...subArgs.map(String),
  ]);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd[0], cmd.slice(1), {
      env: { ...process.env, BENCH_JWT_SECRET: JWT_SECRET, BENCH_API_SECRET: API_SECRET },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (c) => (out += c));
    // Phase markers are for bench/profile.mjs; pass anything else through.
    createInterface({ input: child.stderr }).on("line", (line) => {
      if (!line.startsWith("@phase")) process.stderr.write(line + "\n");
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 600_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      try {
        // The room names derive from the prefix (bench/sharded.mjs recomputes placement).
        resolve({ ...JSON.parse(out), prefix });
      } catch {
        reject(new Error(`loadgen ${sub} exited ${code} without a result`));
      }
    });
  });
}

function scenarioArgs(name, peer) {
  const p = PLAN[name] ?? PLAN[SUBCOMMAND[name]]; // ramp-quiet runs the ramp's plan
  switch (name) {
    case "ramp":
    case "ramp-quiet":
      return ["--n", p.n, "--idle-secs", FEATURES[peer].hibernation ? p.idle : p.idleNoHibernation];
    case "fanout":
    case "overload":
      return ["--sizes", p.sizes.join(","), "--payloads", p.payloads.join(","), "--deliveries-per-sec", p.dps, "--max-rate", p.maxRate, "--duration", p.duration, "--warmup", p.warmup];
    case "rooms":
      return ["--rooms", p.rooms, "--per-room", p.perRoom, "--rate-per-room", p.rate, "--duration", p.duration, "--warmup", p.warmup, "--payload", p.payload];
    case "http":
      return ["--sizes", p.sizes.join(","), "--concurrency", p.concurrency, "--duration", p.duration, "--warmup", p.warmup, "--payload", p.payload];
    case "interleaved":
      return ["--sizes", p.n, "--payloads", p.payload, "--deliveries-per-sec", p.dps, "--duration", p.duration, "--warmup", p.warmup];
    case "dedup":
      return ["--receivers", p.receivers, "--rate", p.rate, "--ratios", p.ratios.join(","), "--duration", p.duration, "--warmup", p.warmup, "--payload", p.payload];
    case "ephemeral":
      return ["--sizes", p.sizes.join(","), "--payload", p.payload, "--deliveries-per-sec", p.dps, "--max-rate", p.maxRate, "--duration", p.duration, "--warmup", p.warmup];
    case "capacity":
      return ["--n", p.n, "--payloads", p.payloads.join(","), "--start", p.start, "--max", p.max, "--bisect", p.bisect, "--duration", p.duration, "--warmup", p.warmup, "--p99-ms", p.p99Ms];
    case "storm":
    case "storm-quiet":
      return ["--n", p.n, "--rate", p.rate, "--payload", p.payload, "--before-secs", p.before, "--after-secs", p.after, ...(FEATURES[peer].resume ? ["--resume"] : [])];
    case "slow":
      return ["--publishers", p.publishers, "--receivers", p.receivers, "--rate", p.rate, "--payload", p.payload, "--duration", p.duration, "--warmup", p.warmup, "--after-secs", p.afterSecs];
  }
  throw new Error(name);
}

/** One line about a slow-consumer run for the progress log. */
function slowSummary(r) {
  if (r.error) return `slow: ${typeof r.error === "string" ? r.error : JSON.stringify(r.error)}`;
  const mib = (k) => (k == null ? "?" : (k / 1024).toFixed(0));
  const c = r.paused?.first_close;
  return (
    `slow: RSS ${mib(r.rss?.at_pause_kib)} → ${mib(r.rss?.peak_paused_kib)} MiB while paused; ` +
    `readers p99 ${r.readers?.latency?.p99_ms ?? "?"} ms; paused socket ${c ? `closed (${c.code ?? c.how})` : "not closed"}; ` +
    `recovered ${r.paused?.recovered} (gaps ${r.paused?.gaps}, duplicates ${r.paused?.duplicates})`
  );
}

/** One line about a deploy storm for the progress log. */
function stormSummary(r) {
  if (r.error) return `storm: ${typeof r.error === "string" ? r.error : JSON.stringify(r.error)}`;
  const q = r.recovery;
  return (
    `storm: ${r.sockets} sockets recovered p50 ${q?.p50_ms?.toFixed(0)} / p99 ${q?.p99_ms?.toFixed(0)} / max ${q?.max_ms?.toFixed(0)} ms after the restart; ` +
    `${r.reconnects} reconnects, ${r.server_cpu?.ms_per_reconnect?.toFixed(2)} ms server CPU each; refused ${r.failed_handshakes?.refused_while_down}, failed ${r.failed_handshakes?.failed_after_up}; ` +
    `exactly once: ${r.delivery?.exactly_once_in_order} (missed ${r.delivery?.missed_at_reconnect}, repeats ${r.delivery?.repeats})`
  );
}

function applicable(name, peer) {
  if (TRANSPORT_SCENARIOS.includes(name)) return transportApplicable(name, peer);
  if (SHARDED_SCENARIOS.includes(name)) return shardedApplicable(name, peer);
  if (name === "http") return FEATURES[peer].http;
  if (name === "dedup") return FEATURES[peer].dedup;
  if (name === "ephemeral") return FEATURES[peer].ephemeral;
  if (name === "slow") return FEATURES[peer].slow;
  if (name === "ramp-quiet" || name === "storm-quiet") return FEATURES[peer].presence;
  if (name === "storm") return FEATURES[peer].storm;
  if (name === "capacity") return FEATURES[peer].capacity;
  return true;
}

// ------------------------------------------------------------------------------------
// Main
// ------------------------------------------------------------------------------------

function describeMachine() {
  const read = (cmd, a) => {
    try {
      return execFileSync(cmd, a, { encoding: "utf8" }).trim();
    } catch {
      return null;
    }
  };
  return {
    cores: cpus().length,
    cpu_model: cpus()[0]?.model,
    kernel: release(),
    node: process.version,
    workerd: read(join(root, "node_modules/.bin/workerd"), ["--version"]),
    miniflare: JSON.parse(readFileSync(join(root, "node_modules/miniflare/package.json"), "utf8")).version,
    partyserver: existsSync(join(root, "bench/node_modules/partyserver/package.json"))
      ? JSON.parse(readFileSync(join(root, "bench/node_modules/partyserver/package.json"), "utf8")).version
      : null,
    ws: JSON.parse(readFileSync(join(root, "node_modules/ws/package.json"), "utf8")).version,
    pinned: haveTaskset ? { server: "core 0", loadgen: "core 1" } : "no (taskset or a second core missing)",
    load_average_at_start: loadavg(),
    storage: storageRoot.startsWith("/dev/shm") ? "tmpfs (/dev/shm)" : storageRoot,
  };
}

async function bundlePartyserver() {
  mkdirSync(dirname(PARTYSERVER_BUNDLE), { recursive: true });
  await esbuild.build({
    entryPoints: [join(root, "bench/peers/partyserver/worker.mjs")],
    bundle: true,
    format: "esm",
    platform: "neutral",
    mainFields: ["module", "main"],
    conditions: ["workerd", "worker", "browser"],
    external: ["cloudflare:*"],
    outfile: PARTYSERVER_BUNDLE,
    logLevel: "warning",
  });
}

async function main() {
  const machine = describeMachine();
  const skipped = {};
  if (peers.includes("partyserver")) {
    try {
      await bundlePartyserver();
    } catch (e) {
      skipped.partyserver = `could not bundle partyserver: ${e.message}`;
    }
  }
  const results = {};
  for (const peer of peers) {
    results[peer] = {};
    for (const name of scenarios) {
      if (name === "interleaved") continue; // below, across peers
      if (skipped[peer]) {
        results[peer][name] = { error: `skipped: ${skipped[peer]}` };
        continue;
      }
      if (!applicable(name, peer)) {
        results[peer][name] = { na: true };
        continue;
      }
      if (SHARDED_SCENARIOS.includes(name) && results[peer][name]) continue; // ran with its pair
      log(`${peer}: ${name}`);
      if (TRANSPORT_SCENARIOS.includes(name)) {
        results[peer][name] = await runTransportScenario(name, { peer, startPeer, stopPeer, loadgen, plan: PLAN, log });
        continue;
      }
      if (SHARDED_SCENARIOS.includes(name)) {
        // The requested ones run together, in alternating rounds.
        const pair = scenarios.filter((s) => SHARDED_SCENARIOS.includes(s));
        Object.assign(results[peer], await runShardedScenarios(pair, { peer, startPeer, stopPeer, loadgen, plan: PLAN, log }));
        continue;
      }
      let server;
      try {
        const storm = (SUBCOMMAND[name] ?? name) === "storm";
        server = await startPeer(peer, BINDINGS[name]?.(PLAN[name]), { persist: storm });
        const extra = storm ? ["--launcher-pid", server.launcherPid] : [];
        const r = await loadgen(server, SUBCOMMAND[name] ?? name, [...scenarioArgs(name, peer), ...extra], QUERY[name]);
        results[peer][name] = r;
        const failed = (r.results ?? [r.wake ?? r]).filter((x) => x && x.ok === false).length + (r.error ? 1 : 0);
        if (name === "slow") log(slowSummary(r));
        if (storm) log(stormSummary(r));
        log(`${peer}: ${name} done in ${r.loadgen_secs?.toFixed(1)} s${failed ? `, ${failed} FAILED phase(s)` : ""}`);
      } catch (e) {
        log(`${peer}: ${name} failed: ${e.message}`);
        results[peer][name] = { error: e.message };
        // A peer that cannot start is skipped for the rest of the run, with the reason.
        if (e.startup) skipped[peer] = e.message;
      } finally {
        if (server) await stopPeer(server);
      }
    }
  }
  if (scenarios.includes("interleaved")) {
    const pair = INTERLEAVED_PEERS.filter((p) => peers.includes(p) && !skipped[p]);
    for (const peer of pair) results[peer].interleaved = { rounds: [] };
    for (let round = 0; round < PLAN.interleaved.rounds; round++) {
      for (const peer of pair) {
        log(`${peer}: interleaved round ${round + 1}/${PLAN.interleaved.rounds}`);
        let server;
        try {
          server = await startPeer(peer);
          const r = await loadgen(server, "fanout", scenarioArgs("interleaved", peer));
          results[peer].interleaved.rounds.push(r.results?.[0] ?? { ok: false, error: r.error ?? "no result" });
        } catch (e) {
          log(`${peer}: interleaved failed: ${e.message}`);
          results[peer].interleaved.rounds.push({ ok: false, error: e.message });
        } finally {
          if (server) await stopPeer(server);
        }
      }
    }
  }
  rmSync(storageRoot, { recursive: true, force: true });

  const finished = Date.now();
  const started = new Date(t0);
  const stamp = started.toISOString().replace(/[:]/g, "").replace(/\..*/, "Z");
  const worker = {
    source: process.env.BENCH_WORKER_SOURCE ?? "unknown",
    wasm_bytes: existsSync(join(WORKER_DIR, "index_bg.wasm")) ? statSync(join(WORKER_DIR, "index_bg.wasm")).size : null,
  };
  const doc = {
    schema: 1,
    mode,
    started_at: started.toISOString(),
    finished_at: new Date(finished).toISOString(),
    duration_secs: (finished - t0) / 1000,
    machine: { ...machine, load_average_at_end: loadavg() },
    worker,
    plan: PLAN,
    scenarios,
    features: FEATURES,
    skipped,
    results,
  };
  const { text, rows, ratios } = renderTable(doc);
  doc.table = rows;
  doc.ratios = ratios;
  doc.sharded = shardedDoc(doc, RATES); // issue 15: medians of the rounds and the arithmetic
  const dir = join(root, "bench/results");
  mkdirSync(dir, { recursive: true });
  const base = join(dir, `${stamp}-${mode}`);
  writeFileSync(`${base}.json`, JSON.stringify(doc, null, 2) + "\n");
  writeFileSync(`${base}.txt`, text + "\n");
  writeFileSync(`${base}.svg`, renderSvg(doc));
  console.log(text);
  console.log(`\nwrote ${base}.json, .txt and .svg (${((finished - t0) / 1000).toFixed(0)} s)`);
}

main().catch((e) => {
  console.error(e);
  rmSync(storageRoot, { recursive: true, force: true });
  process.exit(1);
});
