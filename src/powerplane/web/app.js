// PowerPlane cockpit: the shell (token, API calls, the update stream, routing, formatting). Pages register
// themselves in PP.pages (pages.js, floor.js). No framework, no CDN: the chart library (charts.js) is served by the app itself.
"use strict";
const PP = (window.PP = {
  token: sessionStorage.getItem("pp_token") || "",
  me: null, topo: null, ov: null, page: null, pages: {}, ws: null, floorMetric: null,
  charts: false, painted: {}, timers: [],
});

// ---------------------------------------------------------------------------------- formatting
PP.fmt = {
  mw: (w, d = 2) => (w == null ? "–" : (w / 1e6).toFixed(d)),
  kw: (w, d = 1) => (w == null ? "–" : (w / 1e3).toFixed(d)),
  num: (x, d = 1) => (x == null || !isFinite(x) ? "–" : Number(x).toFixed(d)),
  int: (x) => (x == null ? "–" : Math.round(x).toLocaleString("en-US")),
  pct: (x, d = 1) => (x == null ? "–" : (x * 100).toFixed(d)),
  // Rounded to whole units; a value that rounds to zero shows as 0, not "-0".
  money: (x, cur) => (x == null ? "–" : `${cur === "USD" ? "$" : ""}${(Math.round(Number(x)) || 0).toLocaleString("en-US")}${cur === "USD" ? "" : " " + cur}`),
  time: (t, withDate) => {
    if (t == null) return "–";
    const o = { timeZone: PP.topo ? PP.topo.timezone : "UTC", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
    if (withDate) Object.assign(o, { month: "short", day: "2-digit" });
    return new Intl.DateTimeFormat("en-GB", o).format(new Date(t * 1000));
  },
  esc: (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c])),
};
PP.$ = (id) => document.getElementById(id);

PP.tile = (k, v, unit, sub, cls) =>
  `<div class="tile ${cls || ""}"><div class="k">${k}</div><div class="v">${v}<small>${unit || ""}</small></div><div class="s">${sub || ""}</div></div>`;

PP.toast = (msg, bad) => {
  const t = PP.$("toast");
  t.textContent = msg;
  t.className = bad ? "bad" : "";
  t.style.display = "block";
  clearTimeout(PP._toastT);
  PP._toastT = setTimeout(() => (t.style.display = "none"), 6000);
};

// ---------------------------------------------------------------------------------- API
// A GET that PP.start sent ahead (the first page's data, fetched alongside the token check) is answered from
// that request once.
PP.early = {};
PP.api = async (path, opts = {}) => {
  if (!opts.method && PP.early[path]) { const r = PP.early[path]; delete PP.early[path]; return r; }
  return PP.fetchJson(path, opts);
};
PP.fetchJson = async (path, opts = {}) => {
  const headers = Object.assign({ Authorization: "Bearer " + PP.token }, opts.body ? { "Content-Type": "application/json" } : {});
  const r = await fetch(path, Object.assign({}, opts, { headers }));
  if (r.status === 401) { PP.logout("token rejected: " + ((await r.json()).detail || r.status)); throw new Error("401"); }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const d = body.detail;
    const msg = typeof d === "string" ? d : Array.isArray(d) ? d.map((e) => `${(e.loc || []).slice(-1)[0]}: ${e.msg}`).join("; ") : r.statusText;
    const err = new Error(msg); err.status = r.status; throw err;
  }
  return body;
};

PP.command = async (command) => {
  try {
    const r = await PP.api("/api/commands?wait_s=5", { method: "POST", body: JSON.stringify({ command }) });
    PP.toast(`${r.kind}: ${r.status}${r.detail ? " - " + r.detail : ""}`, r.status !== "applied" && r.status !== "queued");
    return r;
  } catch (e) {
    PP.toast(`${command.kind} not sent: ${e.message}`, true);
    return null;
  }
};
PP.canOperate = () => PP.me && (PP.me.role === "operator" || PP.me.role === "admin");

// ---------------------------------------------------------------------------------- charts
// Drawing is in charts.js (PP.chart). Plotly's date axes read ISO strings: show the site's local time there by
// shifting epoch seconds by the zone offset (uPlot takes the time zone itself).
PP.siteDate = (t) => {
  if (PP._tzOff == null) {
    const tz = PP.topo ? PP.topo.timezone : "UTC";
    const d = new Date(t * 1000);
    const local = new Date(d.toLocaleString("en-US", { timeZone: tz }));
    const utc = new Date(d.toLocaleString("en-US", { timeZone: "UTC" }));
    PP._tzOff = (local - utc) / 1000;
  }
  return new Date((t + PP._tzOff) * 1000).toISOString().slice(0, 19);
};
window.ppChartsReady = () => {
  performance.mark("pp-charts-loaded");
  PP.charts = true;
  if (PP.page && PP.topo && PP.pages[PP.page].charts) PP.pages[PP.page].charts();
};

// The chart library is requested as soon as this script runs: a script inserted from here is async, so the
// browser parses and compiles it off the main thread while the token is checked and the page's data arrives.
// /vendor/charts.js is uPlot (50 KB) where the install bundled it, else the full plotly.min.js (4.8 MB); the
// page's ?charts=uplot|plotly picks one explicitly (the benchmark compares them, a test draws with the fallback).
PP.loadCharts = () => {
  if (PP._chartsLoading) return;
  PP._chartsLoading = true;
  const lib = new URLSearchParams(location.search).get("charts");
  const s = document.createElement("script");
  s.src = "/vendor/charts.js" + (lib ? "?lib=" + encodeURIComponent(lib) : "");
  s.onload = () => window.ppChartsReady();
  s.onerror = () => PP.toast("the chart library did not load: charts are not drawn", true);
  document.head.appendChild(s);
};
PP.loadCharts();

// Marks "this page shows live data" once per page (the benchmark and the browser tests read it).
PP.markPainted = (page) => {
  if (PP.painted[page]) return;
  PP.painted[page] = true;
  // Marked in the frame that paints the data (requestAnimationFrame runs right before that paint).
  requestAnimationFrame(() => {
    PP.painted[page] = performance.now();
    performance.mark("pp-painted-" + page);
    document.body.dataset["painted" + page[0].toUpperCase() + page.slice(1)] = "1";
  });
};

// ---------------------------------------------------------------------------------- stream
PP.connect = () => {
  if (PP.ws) PP.ws.close();
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/api/stream?token=${encodeURIComponent(PP.token)}`);
  PP.ws = ws;
  ws.onopen = () => ws.send(JSON.stringify({ floor: PP.floorMetric }));
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type !== "update") return;
    PP.ov = msg.overview;
    PP.lastMsgBytes = ev.data.length;
    PP.header();
    for (const name in PP.pages) if (PP.pages[name].onUpdate) PP.pages[name].onUpdate(msg, name === PP.page);
  };
  ws.onclose = (ev) => {
    if (PP.ws !== ws) return;
    if (ev.code === 4401) { PP.logout("the stream refused the token"); return; }
    setTimeout(() => PP.token && PP.connect(), 1500);
  };
};
PP.subscribeFloor = (metric) => {
  PP.floorMetric = metric;
  if (PP.ws && PP.ws.readyState === 1) PP.ws.send(JSON.stringify({ floor: metric }));
};

PP.header = () => {
  const o = PP.ov;
  if (!o) return;
  PP.$("hdr-site").innerHTML = `<b>${PP.fmt.esc(o.scenario)}</b> · ${PP.topo ? PP.fmt.int(PP.topo.counts.gpu) : "–"} GPUs · policy <b>${PP.fmt.esc(o.policy)}</b>`;
  PP.$("hdr-time").innerHTML = `site time <b>${PP.fmt.time(o.t_s, true)}</b>`;
  const c = o.cycle;
  PP.$("hdr-cycle").innerHTML = `cycle <b>${PP.fmt.num(c.cycle_ms, 1)} ms</b> · lag ${PP.fmt.num(c.lag_s, 2)} s · ${c.speed}x${c.errors ? ` · <span style="color:var(--crit)">${c.errors} errors</span>` : ""}`;
  const firing = Object.values(o.alerts.firing || {}).reduce((a, b) => a + b, 0);
  const b = PP.$("alert-badge");
  b.textContent = firing;
  b.className = firing ? "badge" : "badge none";
};

// ---------------------------------------------------------------------------------- routing and login
PP.show = (page) => {
  if (!PP.pages[page]) page = "overview";
  for (const t of PP.timers) clearInterval(t);
  PP.timers = [];
  if (PP.page && PP.pages[PP.page].leave) PP.pages[PP.page].leave();
  PP.page = page;
  document.querySelectorAll(".page").forEach((s) => s.classList.toggle("active", s.id === "page-" + page));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  PP.pages[page].enter();
};
PP.every = (ms, fn) => { PP.timers.push(setInterval(fn, ms)); };

PP.logout = (why) => {
  sessionStorage.removeItem("pp_token");
  PP.token = "";
  if (PP.ws) { const w = PP.ws; PP.ws = null; w.close(); }
  PP.$("login").style.display = "flex";
  PP.$("login-err").textContent = why || "";
};

PP.start = async () => {
  // The token check, the topology and the first page's data go out together (one round trip, not three).
  const first = PP.pages[(location.hash || "#overview").slice(1)] || PP.pages.overview;
  const ahead = [...(PP.topo ? [] : ["/api/topology"]), ...(first.first ? [first.first] : [])];
  for (const path of ahead) {
    PP.early[path] = PP.fetchJson(path);
    PP.early[path].catch(() => null); // a refused token is reported once, by the whoami below
  }
  try {
    PP.me = await PP.api("/api/whoami");
  } catch (e) {
    PP.early = {};
    if (e.message !== "401") PP.logout("cannot reach the API: " + e.message);
    return;
  }
  sessionStorage.setItem("pp_token", PP.token);
  PP.$("login").style.display = "none";
  PP.$("hdr-user").innerHTML = `<b>${PP.fmt.esc(PP.me.name)}</b> (${PP.me.role})`;
  document.querySelectorAll(".op").forEach((el) => {
    el.disabled = !PP.canOperate();
    if (!PP.canOperate()) el.title = "needs an operator or admin token";
  });
  if (!PP.topo) PP.topo = await PP.api("/api/topology");
  PP.connect();
  PP.show((location.hash || "#overview").slice(1));
};

window.addEventListener("hashchange", () => PP.token && PP.show(location.hash.slice(1)));
// `powerplane run` prints a one-click link with the token in the fragment (never sent to the server): take it
// into this tab's sessionStorage and drop it from the address bar.
if (location.hash.startsWith("#token=")) {
  PP.token = decodeURIComponent(location.hash.slice(7));
  sessionStorage.setItem("pp_token", PP.token);
  history.replaceState(null, "", location.pathname + "#overview");
}
document.addEventListener("DOMContentLoaded", () => {
  PP.$("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    PP.token = PP.$("login-token").value.trim();
    PP.$("login-err").textContent = "";
    PP.start();
  });
  PP.$("logout").addEventListener("click", () => PP.logout("signed out"));
  if (PP.token) PP.start(); else PP.logout("");
});
