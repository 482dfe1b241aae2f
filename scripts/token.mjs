// Mints HS256 tokens for local development and scripts. See `scripts/token --help`.
import { readFileSync, existsSync } from "node:fs";
import { parseArgs } from "node:util";
import { SignJWT } from "jose";

const HELP = `usage: scripts/token [options]

  --sub ID           user id (default: "dev")
  --room PATTERN     room pattern with read+write; repeatable ("doc-*", "*"; default: "*")
  --read ROOM        room pattern with read only; repeatable
  --tenant NAME      tenant claim
  --info JSON        info claim shown in presence, e.g. '{"name":"Alice"}'
  --ttl SECONDS      lifetime (default: 3600)
  --service          a service token (scope "server") for the HTTP API instead
  --secret SECRET    HS256 secret (default: JWT_SECRET from the environment or .dev.vars)
  -h, --help         this help`;

const { values } = parseArgs({
  options: {
    sub: { type: "string", default: "dev" },
    room: { type: "string", multiple: true },
    read: { type: "string", multiple: true },
    tenant: { type: "string" },
    info: { type: "string" },
    ttl: { type: "string", default: "3600" },
    service: { type: "boolean", default: false },
    secret: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});

if (values.help) {
  console.log(HELP);
  process.exit(0);
}

function devVar(name) {
  if (process.env[name]) return process.env[name];
  if (!existsSync(".dev.vars")) return undefined;
  for (const line of readFileSync(".dev.vars", "utf8").split("\n")) {
    const m = line.match(/^\s*([A-Z_]+)\s*=\s*"?([^"]*)"?\s*$/);
    if (m && m[1] === name) return m[2];
  }
  return undefined;
}

const secret = values.secret ?? devVar("JWT_SECRET");
if (!secret) {
  console.error("no JWT_SECRET: run scripts/dev once (it creates .dev.vars), or pass --secret");
  process.exit(2);
}
const ttl = Number(values.ttl);
if (!Number.isInteger(ttl) || ttl <= 0) {
  console.error("--ttl must be a positive number of seconds");
  process.exit(2);
}

const claims = { sub: values.sub };
if (values.tenant) claims.tenant = values.tenant;
if (values.info) {
  try {
    claims.info = JSON.parse(values.info);
  } catch (e) {
    console.error(`--info is not valid JSON: ${e.message}`);
    process.exit(2);
  }
}
if (values.service) {
  claims.scope = "server";
} else {
  claims.rooms = {};
  for (const p of values.read ?? []) claims.rooms[p] = ["read"];
  for (const p of values.room ?? (values.read ? [] : ["*"])) claims.rooms[p] = ["read", "write"];
}

const now = Math.floor(Date.now() / 1000);
const jwt = await new SignJWT(claims)
  .setProtectedHeader({ alg: "HS256", typ: "JWT" })
  .setIssuedAt(now)
  .setExpirationTime(now + ttl)
  .sign(new TextEncoder().encode(secret));
console.log(jwt);
