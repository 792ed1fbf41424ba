// Cockpit pages: Overview, Energy, Jobs, Alerts, Audit (the Floor is in floor.js).
"use strict";
(() => {
  const F = PP.fmt, $ = PP.$;

  // ------------------------------------------------------------------------------------ Overview
  const ov = {
    doc: null, series: null, first: "/api/overview",
    async enter() {
      await this.refresh();
      PP.every(30000, () => this.refresh());
    },
    async refresh() {
      this.doc = await PP.api("/api/overview");
      this.series = this.doc.series;
      this.render(this.doc);
      this.charts();
    },
    onUpdate(msg, visible) {
      const o = msg.overview;
      if (this.series && this.series.t_s.length && o.t_s > this.series.t_s[this.series.t_s.length - 1]) {
        for (const k in this.series) if (k !== "t_s") this.series[k].push(o.site[k] == null ? null : o.site[k]);
        this.series.t_s.push(o.t_s);
      }
      if (visible && this.doc) { this.render(o); if (!this._t || o.version % 5 === 0) this.charts(); }
    },
    render(o) {
      const s = o.site, m = o.money, cur = m.currency;
      const demandCls = s.demand_15min_w > s.contract_w ? "crit" : s.demand_15min_w > 0.95 * s.contract_w ? "warn" : "";
      const bessSub = s.bess_power_w > 0 ? "discharging" : s.bess_power_w < 0 ? "charging" : "idle";
      $("ov-tiles").innerHTML = [
        PP.tile("Grid import", F.mw(s.grid_power_w), "MW", `contract ${F.mw(s.contract_w, 1)} MW`, s.grid_power_w > s.contract_w ? "crit" : ""),
        PP.tile("Demand (15 min)", F.mw(s.demand_15min_w), "MW", `month peak ${F.mw(s.month_peak_w)} MW`, demandCls),
        PP.tile("Facility", F.mw(s.facility_power_w), "MW", `PUE ${F.num(s.pue, 3)}`),
        PP.tile("IT load", F.mw(s.it_power_w), "MW", `GPUs ${F.mw(s.gpu_power_w)} MW · ${F.num(s.gpu_util_mean_pct, 0)} % util`),
        PP.tile("Cooling", F.mw(s.cooling_power_w), "MW", `outdoor ${F.num(s.outdoor_temp_c, 1)} °C`),
        PP.tile("PUE", F.num(s.pue, 3), "", "facility / IT"),
        PP.tile("Wind + solar", F.mw(s.renewable_power_w), "MW", `solar ${F.mw(s.solar_power_w)} · wind ${F.mw(s.wind_power_w)}`),
        PP.tile("Batteries", F.mw(s.bess_power_w), "MW", `${bessSub} · SOC ${F.pct(s.bess_soc_mean, 0)} %`),
        PP.tile("Price now", F.num(s.price_per_kwh * 1000, 1), `${cur}/MWh`, "energy tariff"),
        PP.tile("Spent today", F.money(m.spent_today, cur), "", `${F.num(m.grid_import_today_mwh, 1)} MWh imported`),
        PP.tile("Saved today", F.money(m.saved_today, cur), "", "by batteries, energy only", m.saved_today > 0 ? "good" : ""),
        PP.tile("Frequency", F.num(s.frequency_hz, 3), "Hz", `nominal ${s.nominal_frequency_hz} Hz${s.islanded ? " · ISLANDED" : ""}`, s.islanded ? "crit" : ""),
      ].join("");
      this.flow(s);
      PP.markPainted("overview");
    },
    flow(s) {
      const w = (x) => Math.max(1.5, Math.min(26, Math.abs(x || 0) / 1e6 * 1.4));
      const line = (x1, y1, x2, y2, v, color) => `<path d="M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}" stroke="${color}" stroke-width="${w(v)}" fill="none" opacity="${Math.abs(v || 0) > 1e3 ? 0.85 : 0.2}"/>`;
      const box = (x, y, label, v, color, sub) => `<rect x="${x}" y="${y}" width="120" height="58" rx="5" fill="#161c25" stroke="${color}"/>
        <text class="lbl" x="${x + 8}" y="${y + 15}">${label}</text><text x="${x + 8}" y="${y + 34}" style="font-size:15px;font-weight:600">${F.mw(v)} MW</text>${sub ? `<text class="lbl" x="${x + 8}" y="${y + 50}" style="text-transform:none">${sub}</text>` : ""}`;
      const bus = [300, 135];
      const batt = s.bess_power_w || 0;
      const grid = s.grid_power_w || 0;
      $("ov-flow").innerHTML = [
        line(130, 40, bus[0], bus[1], grid, "var(--grid)"),
        line(130, 135, bus[0], bus[1], s.renewable_power_w, "var(--ren)"),
        line(130, 230, bus[0], bus[1], batt, "var(--bess)"),
        line(bus[0] + 40, bus[1], 510, 40, s.it_power_w, "var(--it)"),
        line(bus[0] + 40, bus[1], 510, 135, s.cooling_power_w, "var(--cool)"),
        line(bus[0] + 40, bus[1], 510, 230, s.other_power_w, "#8c96a3"),
        `<rect x="${bus[0]}" y="${bus[1] - 50}" width="40" height="100" rx="4" fill="#0f141b" stroke="var(--fac)"/>
         <text class="lbl" x="${bus[0] + 20}" y="${bus[1] - 58}" text-anchor="middle">site ${F.mw(s.facility_power_w)} MW</text>`,
        box(10, 11, grid >= 0 ? "Grid import" : "Grid export", Math.abs(grid), "var(--grid)", `${F.num(s.frequency_hz, 2)} Hz`),
        box(10, 106, "Wind + solar", s.renewable_power_w, "var(--ren)"),
        box(10, 201, batt >= 0 ? "Batteries out" : "Batteries in", Math.abs(batt), "var(--bess)", `SOC ${F.pct(s.bess_soc_mean, 0)}%`),
        box(510, 11, "IT load", s.it_power_w, "var(--it)"),
        box(510, 106, "Cooling", s.cooling_power_w, "var(--cool)", `PUE ${F.num(s.pue, 2)}`),
        box(510, 201, "Other, losses", s.other_power_w, "#8c96a3"),
      ].join("");
    },
    charts() {
      const d = this.doc;
      if (!d || !PP.chartsLoaded()) return;
      const sr = this.series, MW = (v) => (v == null ? null : v / 1e6), t = sr.t_s;
      const line = (label, y, color, width, extra) => Object.assign({ t, y: y.map(MW), label, color, width }, extra);
      const series = [
        line("grid MW", sr.grid_power_w, "#4fb3ff", 1.5),
        line("facility MW", sr.facility_power_w, "#ff8a5b", 1.2),
        line("IT MW", sr.it_power_w, "#a78bfa", 1.2),
        line("15-min demand MW", sr.demand_15min_w, "#4fb3ff", 1, { dash: [2, 3] }),
      ];
      const tEnd = (d.forecast && d.forecast.t_s && d.forecast.t_s.length) ? d.forecast.t_s[d.forecast.t_s.length - 1] : (t[t.length - 1] || 0) + 3600;
      const t0 = t.length ? t[0] : tEnd - 7200;
      series.push({ t: [t0, tEnd], y: [MW(d.site.contract_w), MW(d.site.contract_w)], label: "contract", color: "#ff5d5d", width: 1, dash: [6, 4] });
      if (d.plan) {
        const keep = d.plan.t_s.map((x, i) => i).filter((i) => d.plan.t_s[i] <= tEnd);
        series.push({ t: keep.map((i) => d.plan.t_s[i]), y: keep.map((i) => MW(d.plan.grid_w[i])), label: "plan: grid", color: "#3ecf8e", width: 1.2, step: true });
      }
      const bands = [];
      const f = d.forecast;
      if (f && f.t_s) {
        const fy = (k) => ({ t: f.t_s, y: f[k].map(MW) });
        bands.push({ hi: series.length, lo: series.length + 1, fill: "rgba(255,138,91,0.18)" });
        series.push(Object.assign(fy("p90_w"), { label: "forecast p90", width: 0 }));
        series.push(Object.assign(fy("p10_w"), { label: "forecast p10", width: 0 }));
        series.push(Object.assign(fy("p50_w"), { label: `forecast p50 (${f.model || "model"})`, color: "#ff8a5b", width: 1.2, dash: [2, 3] }));
        const problem = f.champion_problem ? ` Warning: ${f.champion_problem}.` : "";
        $("ov-forecast-note").textContent = `Forecast of facility power: ${f.model || ""}, next hour at 1-min steps; shaded: P10-P90.${problem}`;
      } else {
        $("ov-forecast-note").textContent = `Forecast band: ${d.forecast_status}.`;
      }
      this._t = PP.chart("ov-power", { series, bands, y: { label: "MW", zero: true } });
      const p = d.prices;
      PP.chart("ov-price", {
        series: [{ t: p.t_s, y: p.price_per_kwh.map((v) => v * 1000), label: `${d.money.currency}/MWh`, color: "#f5b942", step: true }],
        y: { label: `${d.money.currency}/MWh`, zero: true }, legend: false,
      });
      $("ov-price-note").textContent = `Next 24 h from the site's tariff (site time, ${PP.topo.timezone}).`;
    },
  };

  // ------------------------------------------------------------------------------------ Energy
  const en = {
    doc: null, first: "/api/energy",
    async enter() {
      await this.refresh();
      PP.every(10000, () => this.refresh());
    },
    async refresh() {
      this.doc = await PP.api("/api/energy");
      this.render(this.doc);
      this.charts();
      // the halls' forecast after the page's own data (it never holds up the first paint)
      this.fc = await PP.api("/api/forecast/racks?racks=false").catch((e) => ({ status: e.message, forecast: null }));
      this.hallForecast();
    },
    onUpdate(msg, visible) { if (visible && this.doc) this.render(msg.overview); },
    render(o) {
      const s = o.site, dr = o.dr;
      $("en-tiles").innerHTML = [
        PP.tile("Batteries", F.mw(s.bess_power_w), "MW", s.bess_power_w >= 0 ? "discharging (+)" : "charging (-)"),
        PP.tile("Mean SOC", F.pct(s.bess_soc_mean, 1), "%", `${o.bess.length} units`),
        PP.tile("Grid", F.mw(s.grid_power_w), "MW", `contract ${F.mw(s.contract_w, 1)} MW`),
        PP.tile("Demand (15 min)", F.mw(s.demand_15min_w), "MW", `month peak ${F.mw(s.month_peak_w)} MW`),
        PP.tile("Policy", F.esc(o.policy), "", dr.supported ? "planner + fast loop" : "no demand response"),
        PP.tile("Demand response", dr.active ? `-${F.pct(dr.reduction, 0)}` : "none", dr.active ? "%" : "",
          dr.active ? `limit ${F.mw(dr.limit_w)} MW · delivered ${F.pct(dr.delivered, 1)} %` : "no event active", dr.active ? "warn" : ""),
      ].join("");
      $("en-bess").innerHTML = o.bess.map((b) => `<tr><td>${F.esc(b.unit)}</td><td>${F.esc(b.hall)}</td><td class="num">${F.mw(b.power_w, 3)}</td><td class="num">${F.mw(b.setpoint_w, 3)}</td>
        <td><div class="socbar"><div style="width:${(b.soc || 0) * 100}%"></div></div></td><td class="num">${F.pct(b.soc)}</td>
        <td class="num">${F.pct(b.soc_min, 0)}-${F.pct(b.soc_max, 0)}</td><td class="num">${F.num(b.energy_kwh / 1000, 1)}</td></tr>`).join("");
      $("en-dr").innerHTML = dr.active
        ? `<div>Event active: <b>-${F.pct(dr.reduction, 0)} %</b> from baseline <b>${F.mw(dr.baseline_w)} MW</b> until ${F.time(dr.end_s, true)}; limit ${F.mw(dr.limit_w)} MW, grid now ${F.mw(s.grid_power_w)} MW (${F.pct(dr.delivered, 1)} % delivered).</div>`
        : `<div class="muted">No demand-response event active.${dr.events && dr.events.length ? ` Next: ${F.time(dr.events[0].start_s, true)}.` : ""}</div>`;
      $("en-policy").value = o.policy;
      PP.markPainted("energy");
    },
    charts() {
      const d = this.doc;
      if (!d || !PP.chartsLoaded()) return;
      const sr = d.series, t = sr.t_s, MW = (v) => (v == null ? null : v / 1e6), pct = (v) => (v == null ? null : v * 100);
      const series = [
        { t, y: sr.grid_power_w.map(MW), label: "grid actual MW", color: "#4fb3ff", width: 1.3 },
        { t, y: sr.bess_power_w.map(MW), label: "batteries actual MW", color: "#f5b942", width: 1.3 },
        { t, y: sr.bess_soc_mean.map(pct), label: "mean SOC % (actual)", axis: "y2", color: "#3ecf8e", width: 1 },
      ];
      if (d.plan) {
        const pt = d.plan.t_s;
        series.push({ t: pt, y: d.plan.grid_w.map(MW), label: "grid plan MW", color: "#4fb3ff", width: 1, step: true, dash: [6, 4] });
        series.push({ t: pt, y: d.plan.bess_w.map(MW), label: "batteries plan MW", color: "#f5b942", width: 1, step: true, dash: [6, 4] });
        // The plan's SOC is at the end of each step.
        series.push({ t: pt.map((x) => x + d.plan.dt_s), y: d.plan.soc_mean.map(pct), label: "mean SOC % (plan)", axis: "y2", color: "#3ecf8e", width: 1, dash: [2, 3] });
      }
      const now = d.t_s, start = t.length ? t[0] : now - 3600;
      PP.chart("en-plan", { series, y: { label: "MW" }, y2: { label: "SOC %", range: [0, 100] },
        xRange: [start, now + Math.max(3 * 3600, now - start)] });
      this.hallForecast();
    },
    // Every hall's IT power P50 at 10 s, 1 min, 15 min, 1 h and 24 h ahead (GET /api/forecast/racks?racks=false).
    hallForecast() {
      const d = this.fc, f = d && d.forecast;
      if (!f) {
        $("en-hallfc-note").textContent = `Hall forecast: ${d ? d.status : "not loaded yet"}.`;
        return;
      }
      const MW = (v) => (v == null ? null : v / 1e6), t = f.horizons_s.map((h) => f.t_s + h);
      const colors = ["#4fb3ff", "#ff8a5b", "#a78bfa", "#3ecf8e", "#f5b942", "#38d9c9", "#ff5d5d", "#c9d2dc"];
      $("en-hallfc-body").innerHTML = d.halls.map((name, k) => `<tr data-hall="${k}"><td>${F.esc(name)}</td>${f.hall_p50_w[k].map((v) => `<td class="num">${F.mw(v, 2)}</td>`).join("")}</tr>`).join("")
        + `<tr class="muted"><td>site facility P50 (P10-P90)</td>${f.site_p50_w.map((v, i) => `<td class="num">${F.mw(v, 1)} (${F.mw(f.site_p10_w[i], 1)}-${F.mw(f.site_p90_w[i], 1)})</td>`).join("")}</tr>`;
      $("en-hallfc-note").textContent = `MW, made ${F.time(f.t_s, true)} from each hall's power now and its racks' forecast changes (the jobs placed on them).`;
      $("en-hallfc-body").dataset.fcT = String(f.t_s);
      if (!PP.chartsLoaded()) return;
      PP.chart("en-hallfc", {
        series: d.halls.map((name, k) => ({ t, y: f.hall_p50_w[k].map(MW), label: `${name} P50 MW`, color: colors[k % colors.length], width: 1.3 })),
        y: { label: "MW", zero: true },
      });
    },
  };
  const drStart = () => PP.command({ kind: "dr_start", reduction: Number($("dr-red").value) / 100, duration_s: Number($("dr-min").value) * 60 }).then(() => en.refresh());
  document.addEventListener("DOMContentLoaded", () => {
    $("dr-start").addEventListener("click", drStart);
    $("dr-end").addEventListener("click", () => PP.command({ kind: "dr_end" }).then(() => en.refresh()));
    $("en-policy-set").addEventListener("click", () => PP.command({ kind: "set_policy", policy: $("en-policy").value }).then(() => en.refresh()));
  });

  // ------------------------------------------------------------------------------------ Jobs
  const jobs = {
    async enter() { await this.refresh(); PP.every(3000, () => this.refresh()); },
    async refresh() {
      const typing = document.activeElement && document.activeElement.classList.contains("capw");
      if (typing && this.loaded) return; // do not wipe a cap being typed
      this.loaded = true;
      const d = await PP.api(`/api/jobs?status=${$("jobs-status").value}&sort=${$("jobs-sort").value}&limit=300`);
      const c = d.counts, cur = d.currency;
      $("jobs-tiles").innerHTML = [
        PP.tile("Running", F.int(c.running), "jobs"), PP.tile("Queued", F.int(c.queued), "jobs"),
        PP.tile("Capped", F.int(c.capped), "jobs", "by operators"),
        PP.tile("Job power", F.mw(d.power_w_total), "MW", "GPU power of running jobs"),
      ].join("");
      $("jobs-info").textContent = d.note ? d.note : `${F.int(d.total)} jobs; showing ${d.jobs.length}`;
      const op = PP.canOperate();
      $("jobs-body").innerHTML = d.jobs.map((j) => `<tr data-job="${j.job}"><td class="num">${j.job}</td><td>${F.esc(j.name)}</td><td>${j.kind}</td><td>${j.priority}</td><td>${j.state}</td>
        <td class="num">${F.int(j.gpus)}</td><td class="num">${F.kw(j.power_w)}</td><td class="num">${F.num(j.energy_kwh / 1000, 2)}</td><td class="num">${j.cost == null ? "–" : F.num(j.cost, 2) + " " + cur}</td>
        <td class="num">${j.cap_w == null ? "–" : F.int(j.cap_w)}</td>
        <td>${j.state === "queued" ? "" : `<input class="capw" type="number" min="100" max="2000" step="10" placeholder="W/GPU" ${op ? "" : "disabled"}> <button class="cap op" ${op ? "" : "disabled title='needs an operator token'"}>Cap</button>${j.cap_w != null ? ` <button class="uncap op" ${op ? "" : "disabled"}>Remove</button>` : ""}`}</td></tr>`).join("");
      PP.markPainted("jobs");
    },
  };
  document.addEventListener("DOMContentLoaded", () => {
    $("jobs-status").addEventListener("change", () => jobs.refresh());
    $("jobs-sort").addEventListener("change", () => jobs.refresh());
    $("jobs-body").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr");
      if (!tr) return;
      const job = Number(tr.dataset.job);
      if (ev.target.classList.contains("cap")) {
        const w = Number(tr.querySelector(".capw").value);
        if (!(w > 0)) { PP.toast("enter a cap in W per GPU", true); return; }
        PP.command({ kind: "cap_job", job, cap_w: w }).then(() => jobs.refresh());
      } else if (ev.target.classList.contains("uncap")) {
        PP.command({ kind: "cap_job", job, cap_w: null }).then(() => jobs.refresh());
      }
    });
  });

  // ------------------------------------------------------------------------------------ Alerts
  const alerts = {
    first: "/api/alerts",
    async enter() { await this.refresh(); PP.every(2000, () => this.refresh()); },
    async refresh() {
      const d = await PP.api("/api/alerts");
      const st = $("alerts-status");
      st.style.display = d.available ? "none" : "block";
      st.textContent = d.available ? "" : `Alerts unavailable: ${d.status}.`;
      const op = PP.canOperate();
      const sevRank = { emergency: 0, critical: 1, warning: 2 };
      const rows = (d.alerts || []).slice().sort((a, b) => (sevRank[a.severity] ?? 3) - (sevRank[b.severity] ?? 3));
      $("alerts-body").innerHTML = rows.length ? rows.map((a) => `<tr data-id="${F.esc(a.id)}" data-rule="${F.esc(a.rule)}"><td><span class="sev ${F.esc(a.severity)}">${F.esc(a.severity)}</span></td>
        <td class="state-${F.esc(a.state)}">${F.esc(a.state)}${a.silenced ? " (silenced)" : ""}</td><td>${F.esc(a.rule)}</td>
        <td class="muted" style="white-space:normal;max-width:380px;font-size:11px">${F.esc(Object.entries(a.labels || {}).filter(([k]) => k !== "alertname" && k !== "severity").map(([k, v]) => `${k}=${v}`).join(" "))}</td>
        <td style="white-space:normal;max-width:520px">${F.esc((a.annotations || {}).summary || "")}</td><td class="num">${a.value == null ? "–" : F.num(a.value, 2)}</td>
        <td>${F.time(a.since_s, true)}</td><td>${a.acknowledged_by ? F.esc(a.acknowledged_by) : "–"}</td>
        <td><button class="ack op" ${op && !a.acknowledged_by ? "" : "disabled"}>Ack</button> <button class="sil op" ${op ? "" : "disabled"}>Silence 1 h</button></td></tr>`).join("")
        : `<tr><td colspan="9" class="muted">${d.available ? "No active alerts." : "—"}</td></tr>`;
      $("alerts-note").textContent = `Updated ${F.time(d.t_s, true)} (site time). Silence mutes this alert's rule and labels for an hour.`;
      this.rows = rows;
      const sil = d.silences || [];
      $("silences-count").textContent = `(${sil.length})`;
      $("silences-body").innerHTML = sil.length ? sil.map((x) => `<tr data-silence="${F.esc(x.id)}">
        <td style="white-space:normal;max-width:520px">${Object.entries(x.matchers).map(([k, v]) => `<code>${F.esc(k)}=${F.esc(v)}</code>`).join(" ")}</td>
        <td>${F.esc(x.by)}</td><td>${F.time(x.starts_s, true)}</td><td>${F.time(x.ends_s, true)}</td>
        <td style="white-space:normal">${F.esc(x.comment || "")}</td>
        <td><button class="unsil op" ${op ? "" : "disabled title='needs an operator token'"}>Unsilence</button></td></tr>`).join("")
        : `<tr><td colspan="6" class="muted">${d.available ? "No active silences." : "—"}</td></tr>`;
      PP.markPainted("alerts");
    },
  };
  document.addEventListener("DOMContentLoaded", () => {
    $("alerts-body").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr");
      if (!tr || !tr.dataset.id) return;
      const a = (alerts.rows || []).find((r) => r.id === tr.dataset.id);
      if (ev.target.classList.contains("ack")) PP.command({ kind: "ack_alert", alert_id: tr.dataset.id }).then(() => alerts.refresh());
      if (ev.target.classList.contains("sil")) {
        const matchers = Object.assign({ alertname: tr.dataset.rule }, (a && a.labels) || {});
        PP.command({ kind: "silence", matchers, duration_s: 3600, comment: "from the cockpit" }).then(() => alerts.refresh());
      }
    });
    $("silences-body").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr");
      if (!tr || !tr.dataset.silence || !ev.target.classList.contains("unsil")) return;
      PP.command({ kind: "unsilence", silence_id: tr.dataset.silence }).then(() => alerts.refresh());
    });
  });

  // ------------------------------------------------------------------------------------ Audit
  const audit = {
    async enter() { await this.refresh(); PP.every(3000, () => this.refresh()); },
    async refresh() {
      const actor = $("audit-actor").value;
      const d = await PP.api(`/api/audit?limit=300${actor ? "&actor=" + encodeURIComponent(actor) : ""}`);
      $("audit-total").textContent = `(${F.int(d.total)} records since start; newest first)`;
      $("audit-body").innerHTML = d.records.map((r) => `<tr><td>${F.time(r.t_s, true)}</td><td>${F.esc(r.actor)}</td><td>${F.esc(r.mode)}</td>
        <td>${F.esc(r.command || "")}${r.args ? ` <span class="muted">${F.esc(JSON.stringify(r.args))}</span>` : ""}</td><td>${F.esc(r.status || "")}</td>
        <td style="white-space:normal">${F.esc(r.why || [r.rule, r.transition, r.severity, r.labels ? Object.values(r.labels).join(" ") : ""].filter(Boolean).join(" · "))}</td></tr>`).join("");
      PP.markPainted("audit");
    },
  };
  document.addEventListener("DOMContentLoaded", () => $("audit-actor").addEventListener("change", () => audit.refresh()));

  Object.assign(PP.pages, { overview: ov, energy: en, jobs, alerts, audit });
  ov.charts = ov.charts.bind(ov);
  en.charts = en.charts.bind(en);
})();
