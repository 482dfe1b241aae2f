// Hand-written SVG of a results document: deliveries per server CPU-second and latency
// percentiles for the fan-out and many-rooms scenarios. No plotting dependencies.
//   node bench/chart.mjs results/<file>.json > chart.svg
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { PEER_LABELS } from "./table.mjs";

const COLORS = {
  rust: "#e8590c",
  "js-twin": "#1c7ed6",
  partyserver: "#7048e8",
  "node-ws": "#2f9e44",
  native: "#495057",
};

const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const short = (v) => (v >= 1e6 ? (v / 1e6).toFixed(1) + "M" : v >= 1e3 ? (v / 1e3).toFixed(v >= 1e4 ? 0 : 1) + "k" : v.toFixed(0));
const shortMs = (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));

/** Groups on the x axis: each fan-out (N, payload), the overload runs, then the many-rooms run. */
function groups(doc) {
  const out = [];
  const fo = doc.plan.fanout;
  if (fo) {
    for (const payload of fo.payloads) {
      for (const n of fo.sizes) {
        out.push({
          label: `1→${n}`,
          sub: payload >= 1024 ? `${payload / 1024} KiB` : `${payload} B`,
          get: (peer) => doc.results[peer]?.fanout?.results?.find((r) => r.n === n && r.payload === payload),
        });
      }
    }
  }
  const ov = doc.plan.overload;
  if (ov) {
    for (const payload of ov.payloads) {
      for (const n of ov.sizes) {
        out.push({
          label: `1→${n} ×3`,
          sub: `overload ${payload >= 1024 ? `${payload / 1024} KiB` : `${payload} B`}`,
          get: (peer) => doc.results[peer]?.overload?.results?.find((r) => r.n === n && r.payload === payload),
        });
      }
    }
  }
  if (doc.plan.rooms) {
    out.push({
      label: `${doc.plan.rooms.rooms}×${doc.plan.rooms.perRoom}`,
      sub: "rooms",
      get: (peer) => doc.results[peer]?.rooms?.results?.[0],
    });
  }
  return out;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function renderSvg(doc) {
  const peers = Object.keys(doc.results);
  const gs = groups(doc);
  const W = 1100;
  const left = 80;
  const right = 20;
  const plotW = W - left - right;
  const groupW = plotW / Math.max(gs.length, 1);
  const barW = Math.min(26, (groupW - 16) / Math.max(peers.length, 1));
  const parts = [];
  const text = (x, y, s, attrs = "") => parts.push(`<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${attrs}>${esc(s)}</text>`);
  const barX = (gi, pi) => left + gi * groupW + (groupW - barW * peers.length) / 2 + pi * barW;

  // Title and legend.
  text(W / 2, 24, `Roomcast benchmark (${doc.mode}, ${doc.started_at.slice(0, 16).replace("T", " ")} UTC) — server pinned to one core`, 'text-anchor="middle" font-size="15" font-weight="bold"');
  peers.forEach((p, i) => {
    const x = left + i * 150;
    parts.push(`<rect x="${x}" y="36" width="12" height="12" fill="${COLORS[p] ?? "#999"}"/>`);
    text(x + 16, 46, PEER_LABELS[p] ?? p, 'font-size="12"');
  });

  // Panel 1: deliveries per server CPU-second (linear).
  const p1Top = 80;
  const p1H = 280;
  const vals = gs.flatMap((g) => peers.map((p) => g.get(p)?.deliveries_per_cpu_sec ?? 0));
  const max1 = niceMax(Math.max(...vals, 1));
  text(left, p1Top - 8, "Deliveries per server CPU-second (higher is better)", 'font-size="13" font-weight="bold"');
  for (let i = 0; i <= 5; i++) {
    const v = (max1 * i) / 5;
    const y = p1Top + p1H - (p1H * i) / 5;
    parts.push(`<line x1="${left}" y1="${y}" x2="${W - right}" y2="${y}" stroke="#e9ecef"/>`);
    text(left - 6, y + 4, short(v), 'text-anchor="end" font-size="11" fill="#495057"');
  }
  gs.forEach((g, gi) => {
    peers.forEach((p, pi) => {
      const r = g.get(p);
      const x = barX(gi, pi);
      if (!r) {
        text(x + barW / 2, p1Top + p1H - 4, "n/a", `text-anchor="middle" font-size="9" fill="#868e96"`);
        return;
      }
      const v = r.deliveries_per_cpu_sec ?? 0;
      const h = (p1H * v) / max1;
      const y = p1Top + p1H - h;
      parts.push(`<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${COLORS[p]}"${r.ok ? "" : ' fill-opacity="0.35" stroke="#c92a2a" stroke-dasharray="3,2"'}><title>${esc(`${PEER_LABELS[p]} ${g.label} ${g.sub}: ${Math.round(v)} deliveries/CPU-s${r.ok ? "" : " (FAILED checks)"}`)}</title></rect>`);
      text(x + (barW - 2) / 2, y - 3, short(v) + (r.ok ? "" : "✗"), `text-anchor="middle" font-size="9" fill="#212529"`);
    });
    text(left + gi * groupW + groupW / 2, p1Top + p1H + 16, g.label, 'text-anchor="middle" font-size="12"');
    text(left + gi * groupW + groupW / 2, p1Top + p1H + 30, g.sub, 'text-anchor="middle" font-size="11" fill="#495057"');
  });
  parts.push(`<line x1="${left}" y1="${p1Top + p1H}" x2="${W - right}" y2="${p1Top + p1H}" stroke="#212529"/>`);

  // Panel 2: latency p50 (solid) and p99 (pale) per peer, log scale.
  const p2Top = p1Top + p1H + 80;
  const p2H = 280;
  const lat = gs.flatMap((g) => peers.flatMap((p) => [g.get(p)?.latency?.p50_ms, g.get(p)?.latency?.p99_ms, g.get(p)?.latency?.max_ms])).filter((v) => v > 0);
  const lo = Math.min(0.1, ...lat);
  const loExp = Math.floor(Math.log10(lo));
  const hiExp = Math.ceil(Math.log10(Math.max(...lat, 1)));
  const ly = (v) => p2Top + p2H - (p2H * (Math.log10(Math.max(v, 10 ** loExp)) - loExp)) / Math.max(hiExp - loExp, 1);
  text(left, p2Top - 8, "Publish → receive latency: p50 (solid), p99 (pale), max (tick), ms, log scale (lower is better)", 'font-size="13" font-weight="bold"');
  for (let e = loExp; e <= hiExp; e++) {
    const y = ly(10 ** e);
    parts.push(`<line x1="${left}" y1="${y}" x2="${W - right}" y2="${y}" stroke="#e9ecef"/>`);
    text(left - 6, y + 4, shortMs(10 ** e), 'text-anchor="end" font-size="11" fill="#495057"');
  }
  gs.forEach((g, gi) => {
    peers.forEach((p, pi) => {
      const r = g.get(p);
      const x = barX(gi, pi);
      if (!r?.latency) {
        text(x + barW / 2, p2Top + p2H - 4, "n/a", `text-anchor="middle" font-size="9" fill="#868e96"`);
        return;
      }
      const base = p2Top + p2H;
      const y99 = ly(r.latency.p99_ms);
      const y50 = ly(r.latency.p50_ms);
      const yMax = ly(r.latency.max_ms);
      parts.push(`<rect x="${x.toFixed(1)}" y="${y99.toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${(base - y99).toFixed(1)}" fill="${COLORS[p]}" fill-opacity="0.3"/>`);
      parts.push(`<rect x="${(x + 3).toFixed(1)}" y="${y50.toFixed(1)}" width="${(barW - 8).toFixed(1)}" height="${(base - y50).toFixed(1)}" fill="${COLORS[p]}"><title>${esc(`${PEER_LABELS[p]} ${g.label} ${g.sub}: p50 ${r.latency.p50_ms} ms, p99 ${r.latency.p99_ms} ms, max ${r.latency.max_ms} ms`)}</title></rect>`);
      parts.push(`<line x1="${x.toFixed(1)}" y1="${yMax.toFixed(1)}" x2="${(x + barW - 2).toFixed(1)}" y2="${yMax.toFixed(1)}" stroke="${COLORS[p]}" stroke-width="2"/>`);
      text(x + (barW - 2) / 2, y99 - 3, shortMs(r.latency.p99_ms), `text-anchor="middle" font-size="8" fill="#212529"`);
    });
    text(left + gi * groupW + groupW / 2, p2Top + p2H + 16, g.label, 'text-anchor="middle" font-size="12"');
    text(left + gi * groupW + groupW / 2, p2Top + p2H + 30, g.sub, 'text-anchor="middle" font-size="11" fill="#495057"');
  });
  parts.push(`<line x1="${left}" y1="${p2Top + p2H}" x2="${W - right}" y2="${p2Top + p2H}" stroke="#212529"/>`);

  const H = p2Top + p2H + 60;
  const r = doc.ratios ?? {};
  text(left, H - 14, `Rust room ÷ JS twin (1→1000, 100 B): ${r.fanout_rust_over_js_twin ?? "–"}, overloaded ${r.overload_fanout_rust_over_js_twin ?? "–"}   ·   Rust room ÷ native limit: ${r.fanout_rust_over_native ?? "–"}   ·   dashed/✗ = a delivery check failed`, 'font-size="12" fill="#495057"');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="system-ui, -apple-system, Segoe UI, sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join("\n")}\n</svg>\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const doc = JSON.parse(readFileSync(process.argv[2], "utf8"));
  process.stdout.write(renderSvg(doc));
}
