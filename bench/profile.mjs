// Where does a Worker peer's CPU time go? Runs one scenario against one workerd peer with
// V8's sampling CPU profiler attached through the inspector, profiles exactly the
// measured phase, and prints self time by function (Wasm functions keep their Rust names).
//
//   node bench/profile.mjs rust fanout --sizes 1000 --payloads 100 --deliveries-per-sec 20000 --duration 3 --warmup 1
//   node bench/profile.mjs --phase 1 js-twin http --sizes 0 --duration 3 --warmup 1
//
// Everything after the scenario name is passed to the load generator's subcommand. Uses
// the binaries and Worker snapshot that scripts/bench built (target/bench/). Writes the
// raw profile to target/bench/<peer>-<scenario>.cpuprofile (open it in Chrome DevTools).
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
process.chdir(root);
const argv = process.argv.slice(2);
// --phase K: profile the K-th phase the load generator runs (0 = the first; with a
// warm-up, 1 is the first measured one). Default 1. --query Q: append `?Q` to the socket
// path (e.g. `presence=off`, what scripts/bench's ramp-quiet does).
let profilePhase = 1;
let query = "";
while (argv[0] === "--phase" || argv[0] === "--query") {
  if (argv[0] === "--phase") profilePhase = Number(argv[1]);
  else query = argv[1];
  argv.splice(0, 2);
}
const [peer, scenario, ...rest] = argv;
if (!["rust", "js-twin", "partyserver"].includes(peer) || !scenario) {
  console.error("usage: node bench/profile.mjs rust|js-twin|partyserver <scenario> [loadgen args]");
  process.exit(2);
}
const secrets = { BENCH_JWT_SECRET: "p-" + randomBytes(8).toString("hex"), BENCH_API_SECRET: "a-" + randomBytes(8).toString("hex") };
const inspectorPort = 9300 + Math.floor(Math.random() * 500);
const storage = mkdtempSync("/dev/shm/roomcast-profile-");
const pin = (core, cmd) => ["taskset", "-c", String(core), ...cmd];

const launcher = spawn(pin(0, [process.execPath, "bench/peers/workerd.mjs", peer])[0], pin(0, [process.execPath, "bench/peers/workerd.mjs", peer]).slice(1), {
  env: {
    ...process.env,
    ...secrets,
    BENCH_INSPECTOR_PORT: String(inspectorPort),
    BENCH_WORKER_DIR: join(root, "target/bench/worker"),
    BENCH_PARTYSERVER_BUNDLE: join(root, "target/bench/partyserver.mjs"),
    TMPDIR: storage,
  },
  stdio: ["pipe", "pipe", "inherit"],
});
const ready = JSON.parse(await new Promise((resolve) => createInterface({ input: launcher.stdout }).once("line", resolve)));
const port = new URL(ready.url).port;

// The inspector lists one target per Worker script; the Durable Objects run in it too.
const targets = await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json();
const target = targets.find((t) => t.webSocketDebuggerUrl) ?? targets[0];
const cdp = new WebSocket(target.webSocketDebuggerUrl ?? `ws://127.0.0.1:${inspectorPort}/${target.id}`);
await new Promise((resolve, reject) => {
  cdp.once("open", resolve);
  cdp.once("error", reject);
});
let nextId = 1;
const pending = new Map();
cdp.on("message", (m) => {
  const msg = JSON.parse(m);
  if (msg.id && pending.has(msg.id)) {
    pending.get(msg.id)(msg);
    pending.delete(msg.id);
  }
});
const call = (method, params = {}) =>
  new Promise((resolve) => {
    const id = nextId++;
    pending.set(id, resolve);
    cdp.send(JSON.stringify({ id, method, params }));
  });
await call("Profiler.enable");
await call("Profiler.setSamplingInterval", { interval: 100 });

const path = (peer === "partyserver" ? "/parties/chat/{room}" : "/v1/rooms/{room}/ws") + (query ? `?${query}` : "");
const gen = spawn(
  "taskset",
  ["-c", "1", "target/bench/release/loadgen", "--ws-url", `ws://127.0.0.1:${port}`, "--ws-path", path, "--http-url", `http://127.0.0.1:${port}`, "--server-pid", String(ready.pid), "--prefix", "prof" + Date.now(), scenario, ...rest],
  { env: { ...process.env, ...secrets }, stdio: ["ignore", "pipe", "pipe"] },
);
let out = "";
gen.stdout.on("data", (c) => (out += c));
let profile = null;
let profiling = false;
let phasesSeen = 0;
const done = new Promise((resolve) => gen.on("exit", resolve));
for await (const line of createInterface({ input: gen.stderr })) {
  if (line.startsWith("@phase") && line.endsWith("start") && phasesSeen++ === profilePhase) {
    profiling = true;
    await call("Profiler.start");
  } else if (line.startsWith("@phase") && line.endsWith("end") && profiling && !profile) {
    profile = (await call("Profiler.stop")).result.profile;
    profiling = false;
  } else if (!line.startsWith("@phase")) {
    process.stderr.write(line + "\n");
  }
}
await done;
cdp.close();
launcher.stdin.end();
launcher.kill("SIGTERM");
rmSync(storage, { recursive: true, force: true });

const result = JSON.parse(out);
const phase = result.results?.[result.results.length - 1] ?? result;
if (!profile) {
  console.error("no phase was profiled");
  process.exit(1);
}
const file = join(root, `target/bench/${peer}-${scenario}.cpuprofile`);
writeFileSync(file, JSON.stringify(profile));

// Self time per function from samples × time deltas.
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map();
let total = 0;
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0;
  const f = byId.get(id).callFrame;
  const name = f.functionName || (f.url ? `(anonymous ${f.url.split("/").pop()}:${f.lineNumber})` : "(anonymous)");
  const key = name.length > 110 ? name.slice(0, 107) + "..." : name;
  self.set(key, (self.get(key) ?? 0) + dt);
  total += dt;
});
const rows = [...self.entries()].sort((a, b) => b[1] - a[1]);
const busy = total - (self.get("(idle)") ?? 0);
console.log(`${peer} ${scenario}: profiled ${(total / 1000).toFixed(0)} ms of the isolate thread, ${(busy / 1000).toFixed(0)} ms not idle`);
console.log(`phase: ${phase.deliveries ?? phase.requests_ok ?? "?"} deliveries/requests, server CPU ${phase.server_cpu_secs} s (all threads), ok=${phase.ok}`);
console.log("self time, share of non-idle:");
for (const [name, us] of rows.slice(0, 30)) {
  if (name === "(idle)") continue;
  console.log(`  ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(1).padStart(7)} ms  ${name}`);
}
// Inclusive time: every function on a sample's stack is charged once for that sample.
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const inclusive = new Map();
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0;
  const seen = new Set();
  for (let at = id; at !== undefined; at = parent.get(at)) {
    const f = byId.get(at).callFrame;
    const name = f.functionName || "(anonymous)";
    if (name === "(idle)" || name === "(root)" || seen.has(name)) continue;
    seen.add(name);
    inclusive.set(name, (inclusive.get(name) ?? 0) + dt);
  }
});
const top = Number(process.env.PROFILE_TOP ?? 45);
console.log("inclusive time, share of non-idle:");
for (const [name, us] of [...inclusive.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  const key = name.length > 110 ? name.slice(0, 107) + "..." : name;
  console.log(`  ${((100 * us) / busy).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(1).padStart(7)} ms  ${key}`);
}
console.log(`raw profile: ${file}`);
process.exit(0);
