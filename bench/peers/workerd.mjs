// Runs one Worker peer in workerd through Miniflare 4 (the same package and workerd the
// product's end-to-end tests use) and reports where it listens and the workerd PID, so
// the load generator can read the server's CPU time and RSS from /proc.
//
//   node bench/peers/workerd.mjs rust|js-twin|partyserver
//
// Needs BENCH_JWT_SECRET and BENCH_API_SECRET; BENCH_WORKER_DIR points at the snapshot of
// the product's build/ (bench/run.mjs copies it so a concurrent `scripts/build` cannot
// swap files under a running benchmark), BENCH_PARTYSERVER_BUNDLE at the esbuild bundle.
// Prints one JSON line {"url": ..., "pid": ...} when ready; exits on SIGTERM or when
// stdin closes.
//
// Deploy storms (bench/run.mjs `storm`): with BENCH_PERSIST=<dir> the Durable Objects'
// SQLite lives in <dir> (on /dev/shm, see docs/performance.md), and SIGUSR2 restarts
// workerd over it on the same port — what a deploy does to a room: every socket drops,
// storage survives. A new JSON line with the new PID follows each restart.
import { readdirSync, readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const here = dirname(fileURLToPath(import.meta.url));
const peer = process.argv[2];
// Kept equal to wrangler.toml's (see miniflare/helpers.mjs).
const compatibilityDate = "2026-04-01";
const secrets = { JWT_SECRET: process.env.BENCH_JWT_SECRET, API_SECRET: process.env.BENCH_API_SECRET };

const modulesRules = [
  { type: "ESModule", include: ["**/*.js", "**/*.mjs"] },
  { type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true },
];

const configs = {
  rust: () => {
    const dir = process.env.BENCH_WORKER_DIR;
    return {
      modules: true,
      scriptPath: join(dir, "index.js"),
      modulesRoot: dir,
      modulesRules,
      durableObjects: { ROOMS: { className: "Room", useSQLite: true } },
      bindings: {
        ...secrets,
        // The benchmark publishes far faster than a person: lift the per-connection
        // limits so they never interfere (they are measured by the product's tests).
        RATE_LIMIT_PER_SEC: "1000000",
        RATE_LIMIT_BURST: "1000000",
        MAX_CONNECTIONS_PER_USER: "100000",
        // Variables one scenario sets for itself (bench/run.mjs BINDINGS).
        ...(process.env.BENCH_BINDINGS ? JSON.parse(process.env.BENCH_BINDINGS) : {}),
      },
    };
  },
  "js-twin": () => ({
    modules: true,
    scriptPath: join(here, "js-twin", "worker.mjs"),
    modulesRules,
    durableObjects: { ROOMS: { className: "Room", useSQLite: true } },
    bindings: secrets,
  }),
  partyserver: () => ({
    modules: true,
    scriptPath: process.env.BENCH_PARTYSERVER_BUNDLE,
    modulesRules,
    durableObjects: { Chat: { className: "Chat", useSQLite: true } },
    bindings: secrets,
  }),
};

if (!configs[peer]) {
  console.error(`unknown peer ${peer}; one of ${Object.keys(configs).join(", ")}`);
  process.exit(2);
}

const persist = process.env.BENCH_PERSIST;
const options = (port) => ({
  ...configs[peer](),
  ...(persist ? { durableObjectsPersist: persist } : {}),
  ...(port ? { host: "127.0.0.1", port } : {}),
  // bench/profile.mjs attaches V8's CPU profiler through the inspector.
  ...(process.env.BENCH_INSPECTOR_PORT ? { inspectorPort: Number(process.env.BENCH_INSPECTOR_PORT) } : {}),
  compatibilityDate,
  // Drain the runtime's output without formatting it: the Rust room logs a line per
  // socket, and this process shares core 0 with workerd.
  handleRuntimeStdio(stdout, stderr) {
    stdout.resume();
    stderr.on("data", (chunk) => {
      if (process.env.BENCH_DEBUG) process.stderr.write(chunk);
    });
  },
});
let mf = new Miniflare(options());
let url = await mf.ready;

/** The workerd process Miniflare started: our child whose command is workerd. */
function workerdPid() {
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === process.pid && comm.startsWith("workerd")) return Number(entry);
    } catch {
      // raced with a process exit
    }
  }
  return null;
}

process.stdout.write(JSON.stringify({ url: url.href.replace(/\/$/, ""), pid: workerdPid() }) + "\n");

let closing = false;
let restarting = false;
process.on("SIGUSR2", async () => {
  if (restarting || closing) return;
  restarting = true;
  const port = Number(url.port);
  const t0 = Date.now();
  await mf.dispose().catch(() => {});
  mf = new Miniflare(options(port));
  url = await mf.ready;
  process.stdout.write(JSON.stringify({ url: url.href.replace(/\/$/, ""), pid: workerdPid(), restarted_ms: Date.now() - t0 }) + "\n");
  restarting = false;
});
async function shutdown() {
  if (closing) return;
  closing = true;
  await mf.dispose().catch(() => {});
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
process.stdin.on("end", shutdown);
process.stdin.resume();
