/**
 * The web dashboard: one static page, a script and a stylesheet, served by the admin API (no build step). The
 * script polls `GET /v1/status` every second and renders with textContent only (names, measurements and reasons
 * come from clients and must never become markup).
 */

export const DASHBOARD_CSS = `
:root { font-family: system-ui, sans-serif; font-size: 14px; color: #1b1f24; background: #f6f7f9; }
body { margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem; }
header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
h1 { font-size: 1.4rem; margin: 0.2rem 0; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 0.4rem; }
.muted { color: #5b636d; }
.pill { display: inline-block; padding: 0 0.5rem; border-radius: 0.6rem; background: #dfe6ee; }
.ok { background: #d5f0dc; } .bad { background: #f7d7d4; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 0.3rem 0.5rem; border-bottom: 1px solid #e3e6ea; white-space: nowrap; }
th { background: #eef1f4; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.mono { font-family: ui-monospace, monospace; }
td.wrap { white-space: normal; overflow-wrap: anywhere; min-width: 16rem; }
button { font: inherit; padding: 0.15rem 0.6rem; cursor: pointer; }
form.inline { display: flex; gap: 0.5rem; flex-wrap: wrap; align-items: center; }
input { font: inherit; padding: 0.2rem 0.4rem; }
pre { background: #fff; padding: 0.6rem; overflow: auto; max-height: 24rem; border: 1px solid #e3e6ea; }
.empty { color: #5b636d; font-style: italic; }
`;

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SENG gateway</title>
<link rel="stylesheet" href="/dashboard.css">
<script src="/dashboard.js" defer></script>
</head>
<body>
<header>
  <h1>SENG gateway</h1>
  <span id="summary" class="muted">loading…</span>
  <span id="conn" class="pill">connecting</span>
  <button id="logout" type="button">Log out</button>
</header>

<h2>Apps</h2>
<table id="apps">
  <thead><tr><th>app</th><th>subnet</th><th class="num">tunnels</th><th class="num">packets in</th>
  <th class="num">bytes in</th><th class="num">packets out</th><th class="num">bytes out</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Tunnels</h2>
<table id="tunnels">
  <thead><tr><th>id</th><th>app</th><th>address</th><th>outer</th><th>measurement</th><th class="num">age</th>
  <th class="num">bytes in</th><th class="num">bytes out</th><th></th></tr></thead>
  <tbody></tbody>
</table>
<div id="detail" hidden><h2 id="detail-title"></h2><pre id="detail-body"></pre></div>

<h2>Recent refusals and drops</h2>
<table id="recent">
  <thead><tr><th>time</th><th>event</th><th>app</th><th>peer / source</th><th>measurement</th><th>reason</th>
  <th class="num">suppressed</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Audit log</h2>
<form id="audit-form" class="inline">
  <label>app <input name="app" size="12"></label>
  <label>address <input name="address" size="14"></label>
  <label>event <select name="event"><option value="">any</option><option>grant</option><option>renew</option><option>release</option></select></label>
  <label>since <input name="since" type="datetime-local"></label>
  <button type="submit">Search</button>
  <span id="audit-status" class="muted"></span>
</form>
<table id="audit">
  <thead><tr><th>time</th><th>event</th><th>app</th><th>address</th><th>measurement</th><th>key</th><th>outer</th></tr></thead>
  <tbody></tbody>
</table>
</body>
</html>
`;

export function loginPage(error: string): string {
  const esc = error.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>SENG gateway: log in</title><link rel="stylesheet" href="/dashboard.css"></head>
<body>
<h1>SENG gateway</h1>
<p class="muted">Paste the admin token (the content of the gateway's <code>admin.tokenFile</code>).</p>
<form method="post" action="/login" class="inline">
  <input name="token" type="password" autocomplete="current-password" size="48" autofocus>
  <button type="submit">Log in</button>
</form>
${esc ? `<p class="pill bad" id="login-error">${esc}</p>` : ""}
</body>
</html>
`;
}

export const DASHBOARD_JS = `"use strict";
const $ = (id) => document.getElementById(id);
const fmtBytes = (n) => {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
};
const fmtAge = (ms) => {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return Math.round(s / 3600) + " h";
};
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function fill(table, rows, cols, emptyText) {
  const body = $(table).tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = body.insertRow();
    const td = cell(tr, emptyText, "empty");
    td.colSpan = cols;
  }
  return body;
}
async function api(path, init) {
  const res = await fetch(path, { ...init, headers: { "X-SENG-Request": "1", ...(init && init.headers) } });
  if (res.status === 401) { location.reload(); throw new Error("logged out"); }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.detail || res.statusText);
  return body;
}
async function closeTunnel(id) {
  try {
    await api("/v1/tunnels/" + id + "/close", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ reason: "revoked", message: "closed from the dashboard" }) });
  } catch (e) { alert("close failed: " + e.message); }
  refresh();
}
async function showTunnel(id) {
  try {
    const t = await api("/v1/tunnels/" + id);
    $("detail-title").textContent = "Tunnel " + id + " (" + t.app + ", " + t.address + ")";
    $("detail-body").textContent = JSON.stringify({ measurement: t.measurement, key: t.key,
      tcbStatus: t.tcbStatus, claims: t.claims }, null, 2);
    $("detail").hidden = false;
  } catch (e) { $("detail").hidden = true; }
}
function render(s) {
  const now = Date.now();
  const g = s.gateway;
  $("summary").textContent = g.listen + " (UDP " + g.port + "), TUN " + g.tun + ", up " + fmtAge(g.uptimeSeconds * 1000)
    + " · " + s.tunnels.length + " tunnels, " + s.halfOpen + " handshakes in progress";
  let body = fill("apps", s.apps, 7, "no apps");
  for (const a of s.apps) {
    const tr = body.insertRow();
    tr.dataset.app = a.name;
    cell(tr, a.name); cell(tr, [a.subnet, a.subnet6].filter(Boolean).join(" "), "mono"); cell(tr, String(a.tunnels), "num");
    cell(tr, String(a.rxPackets), "num"); cell(tr, fmtBytes(a.rxBytes), "num");
    cell(tr, String(a.txPackets), "num"); cell(tr, fmtBytes(a.txBytes), "num");
  }
  body = fill("tunnels", s.tunnels, 9, "no tunnels");
  for (const t of s.tunnels) {
    const tr = body.insertRow();
    tr.dataset.tunnelId = String(t.id);
    tr.dataset.address = t.address;
    const idCell = cell(tr, "");
    const link = document.createElement("a");
    link.href = "#"; link.textContent = String(t.id);
    link.addEventListener("click", (e) => { e.preventDefault(); showTunnel(t.id); });
    idCell.appendChild(link);
    cell(tr, t.app); cell(tr, [t.address, t.address6].filter(Boolean).join(" "), "mono"); cell(tr, t.peer, "mono");
    cell(tr, t.measurement.slice(0, 16) + (t.measurement.length > 16 ? "…" : ""), "mono").title = t.measurement;
    cell(tr, fmtAge(now - t.leasedAt), "num");
    cell(tr, fmtBytes(t.counters.rxBytes), "num"); cell(tr, fmtBytes(t.counters.txBytes), "num");
    const b = document.createElement("button");
    b.type = "button"; b.textContent = "Close"; b.className = "close";
    b.addEventListener("click", () => closeTunnel(t.id));
    cell(tr, "").appendChild(b);
  }
  body = fill("recent", s.recent, 7, "nothing refused or dropped lately");
  for (const e of s.recent) {
    const f = e.fields || {};
    const tr = body.insertRow();
    tr.dataset.event = e.event;
    cell(tr, new Date(e.t).toLocaleTimeString()); cell(tr, e.event); cell(tr, f.app || "");
    cell(tr, f.peer || f.source || "", "mono");
    cell(tr, String(f.measurement || "").slice(0, 16), "mono");
    cell(tr, f.reason || f.error || f.note || "", "wrap"); cell(tr, f.suppressed ? String(f.suppressed) : "", "num");
  }
}
async function refresh() {
  try {
    render(await api("/v1/status"));
    $("conn").textContent = "live"; $("conn").className = "pill ok";
  } catch (e) {
    $("conn").textContent = "error: " + e.message; $("conn").className = "pill bad";
  }
}
async function searchAudit(ev) {
  if (ev) ev.preventDefault();
  const f = new FormData($("audit-form"));
  const q = new URLSearchParams();
  if (f.get("app")) q.set("app", f.get("app"));
  if (f.get("address")) q.set("address", f.get("address"));
  if (f.get("event")) q.set("event", f.get("event"));
  if (f.get("since")) q.set("since", String(new Date(f.get("since")).getTime()));
  q.set("limit", "200");
  $("audit-status").textContent = "searching…";
  try {
    const r = await api("/v1/audit?" + q);
    const body = fill("audit", r.entries, 7, "no entries");
    for (const e of r.entries) {
      const tr = body.insertRow();
      tr.dataset.address = e.address || "";
      cell(tr, e.t === undefined ? "" : new Date(e.t).toLocaleString()); cell(tr, e.event || ""); cell(tr, e.app || "");
      cell(tr, e.address || "", "mono");
      cell(tr, (e.measurement || "").slice(0, 16) + "…", "mono"); cell(tr, (e.keyFp || "").slice(0, 16) + "…", "mono");
      cell(tr, e.outer || "", "mono");
    }
    $("audit-status").textContent = r.entries.length + " entries";
  } catch (e) {
    fill("audit", [], 7, "");
    $("audit-status").textContent = "audit log: " + e.message;
  }
}
$("audit-form").addEventListener("submit", searchAudit);
$("logout").addEventListener("click", async () => {
  await fetch("/logout", { method: "POST", headers: { "X-SENG-Request": "1" } });
  location.reload();
});
refresh();
setInterval(refresh, 1000);
`;
