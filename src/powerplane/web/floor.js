// The floor: every GPU of every hall, row, rack and node as one heatmap cell, drawn in one ImageData pass on a
// canvas; values arrive as one byte per GPU (base64) with every stream update. Click a cell to drill down.
"use strict";
(() => {
  const F = PP.fmt, $ = PP.$;
  const GAP_RACK = 3, GAP_ROW = 4, GAP_HALL = 18, LABEL_H = 16, ROW_LABEL_W = 26, MAX_W = 1180;

  // Inferno-like palette: dark (low) to bright yellow (high); index 255 = no valid reading (grey).
  const STOPS = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]];
  const PALETTE = new Uint32Array(256);
  for (let i = 0; i < 255; i++) {
    const x = (i / 254) * (STOPS.length - 1), k = Math.min(Math.floor(x), STOPS.length - 2), f = x - k;
    const c = STOPS[k].map((a, j) => Math.round(a + (STOPS[k + 1][j] - a) * f));
    PALETTE[i] = (255 << 24) | (c[2] << 16) | (c[1] << 8) | c[0]; // little-endian RGBA
  }
  PALETTE[255] = (255 << 24) | (90 << 16) | (80 << 8) | 75;

  const HORIZONS = ["10 s", "1 min", "15 min", "1 h", "24 h"];
  const kW = (w) => (w == null || !isFinite(w) ? "–" : (w / 1e3).toFixed(1));
  const fl = {
    layout: null, values: null, doc: null, sel: null, drillT: 0, fc: null, PALETTE,
    build() {
      const t = PP.topo, nG = t.gpu_node.length;
      const nodeGpus = new Int32Array(t.nodes.length), gpuLocal = new Int32Array(nG);
      for (let g = 0; g < nG; g++) gpuLocal[g] = nodeGpus[t.gpu_node[g]]++;
      const rackNodes = new Int32Array(t.racks.length), nodeLocal = new Int32Array(t.nodes.length);
      for (let n = 0; n < t.nodes.length; n++) nodeLocal[n] = rackNodes[t.node_rack[n]]++;
      const maxG = Math.max(...nodeGpus), maxN = Math.max(...rackNodes);
      const rowRacks = {}, hallRows = {};
      t.rack_row.forEach((r, k) => (rowRacks[r] = rowRacks[r] || []).push(k));
      t.row_hall.forEach((h, r) => (hallRows[h] = hallRows[h] || []).push(r));
      const racksPerRow = Math.max(...Object.values(rowRacks).map((a) => a.length));
      const halls = t.halls.length;
      const maxRows = Math.max(...Object.values(hallRows).map((a) => a.length));
      const maxW = Math.max(600, Math.min(MAX_W, $("floorwrap").parentElement.clientWidth - 24));
      // The arrangement (halls per line) that allows the largest cells within the width, and not too tall.
      const hallW = (cc) => ROW_LABEL_W + racksPerRow * (maxG * cc + GAP_RACK);
      const hallHt = (cc) => LABEL_H + maxRows * (maxN * cc + GAP_ROW);
      let c = 3, perLine = halls;
      for (let per = halls; per >= 1; per--) {
        let cc = 16;
        while (cc > 3 && (per * (hallW(cc) + GAP_HALL) > maxW || Math.ceil(halls / per) * (hallHt(cc) + GAP_HALL) > 760)) cc--;
        if (cc > c) { c = cc; perLine = per; }
      }
      const hallH = LABEL_H + maxRows * (maxN * c + GAP_ROW);
      const W = Math.min(halls, perLine) * (hallW(c) + GAP_HALL);
      const H = Math.ceil(halls / perLine) * (hallH + GAP_HALL);
      const rackXY = new Int32Array(t.racks.length * 2), labels = [];
      for (let h = 0; h < halls; h++) {
        const hx = (h % perLine) * (hallW(c) + GAP_HALL), hy = Math.floor(h / perLine) * (hallH + GAP_HALL);
        labels.push([t.halls[h], hx, hy + 11, "11px sans-serif", "#c9d2dc"]);
        (hallRows[h] || []).forEach((r, ri) => {
          // Row label (the part of its name after the hall), level with the middle of the row.
          const ry = hy + LABEL_H + ri * (maxN * c + GAP_ROW) + (maxN * c) / 2 + 3;
          labels.push([t.rows[r].split("/").pop(), hx, ry, "9px sans-serif", "#7f8b99"]);
          (rowRacks[r] || []).forEach((k, ki) => {
            rackXY[2 * k] = hx + ROW_LABEL_W + ki * (maxG * c + GAP_RACK);
            rackXY[2 * k + 1] = hy + LABEL_H + ri * (maxN * c + GAP_ROW);
          });
        });
      }
      const off = new Int32Array(nG), pick = new Int32Array(W * H).fill(-1);
      const inner = c >= 5 ? c - 1 : c; // a 1 px seam between cells when they are big enough
      for (let g = 0; g < nG; g++) {
        const n = t.gpu_node[g], k = t.node_rack[n];
        const x = rackXY[2 * k] + gpuLocal[g] * c, y = rackXY[2 * k + 1] + nodeLocal[n] * c;
        off[g] = y * W + x;
        for (let dy = 0; dy < c; dy++) pick.fill(g, (y + dy) * W + x, (y + dy) * W + x + c);
      }
      const gpuRack = new Int32Array(nG);
      for (let g = 0; g < nG; g++) gpuRack[g] = t.node_rack[t.gpu_node[g]];
      this.layout = { W, H, c, inner, off, pick, labels, nG, gpuRack };
      for (const id of ["floor-labels", "floor-cells"]) { const cv = $(id); cv.width = W; cv.height = H; }
      $("floorwrap").style.height = H + "px";
      $("floorwrap").style.width = W + "px";
      const lc = $("floor-labels").getContext("2d");
      for (const [name, x, y, font, color] of labels) { lc.font = font; lc.fillStyle = color; lc.fillText(`${name}`, x, y); }
      this.ctx = $("floor-cells").getContext("2d");
      this.img = this.ctx.createImageData(W, H);
      this.buf = new Uint32Array(this.img.data.buffer);
      const lg = $("legend").getContext("2d"), li = lg.createImageData(180, 10), lb = new Uint32Array(li.data.buffer);
      for (let x = 0; x < 180; x++) for (let y = 0; y < 10; y++) lb[y * 180 + x] = PALETTE[Math.round((x / 179) * 254)];
      lg.putImageData(li, 0, 0);
    },
    // One update: decode the bytes and paint every GPU cell; returns the scripting time [ms].
    draw(doc) {
      const t0 = performance.now();
      const L = this.layout, bin = atob(doc.b64), n = bin.length, q = this.values && this.values.length === n ? this.values : new Uint8Array(n);
      for (let i = 0; i < n; i++) q[i] = bin.charCodeAt(i);
      this.values = q;
      const buf = this.buf, W = L.W, c = L.inner, off = L.off;
      for (let g = 0; g < n; g++) {
        const color = PALETTE[q[g]], o = off[g];
        for (let dy = 0; dy < c; dy++) { const r = o + dy * W; for (let dx = 0; dx < c; dx++) buf[r + dx] = color; }
      }
      this.ctx.putImageData(this.img, 0, 0);
      // Hot spots stand out: a ring around the hottest GPUs of this update.
      const ctx = this.ctx;
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 1;
      for (const h of doc.hot) {
        const o = off[h.gpu];
        ctx.strokeRect((o % W) - 1.5, Math.floor(o / W) - 1.5, L.c + 2, L.c + 2);
      }
      const ms = performance.now() - t0;
      (window.ppFloorMs = window.ppFloorMs || []).push(ms);
      this.doc = doc;
      $("legend-lo").textContent = `${doc.lo} ${doc.unit}`;
      $("legend-hi").textContent = `${Math.round(doc.hi)} ${doc.unit}`;
      $("floor-info").textContent = `${F.int(n)} GPU cells · ${F.time(doc.t_s)} · draw ${ms.toFixed(1)} ms`;
      $("floor-cells").dataset.cells = String(n);
      $("hot").innerHTML = doc.hot.map((h) => `<tr class="linkish" data-gpu="${h.gpu}"><td>${h.gpu}</td><td>${F.esc(h.node)}</td><td class="num">${F.num(h.value, 1)} ${doc.unit}</td></tr>`).join("");
      PP.markPainted("floor");
      return ms;
    },
    // The forecast view: every rack's cells coloured by the rack's P50 at the chosen horizon (GET
    // /api/forecast/racks, made once a simulated minute); the P10-P90 band is in the tooltip and the drill-down.
    drawForecast(doc, h) {
      const L = this.layout, f = doc && doc.forecast, cells = $("floor-cells");
      if (!f) {
        $("floor-info").textContent = `rack forecast: ${doc ? doc.status : "unavailable"}`;
        cells.dataset.view = "forecast-none";
        return;
      }
      const p50 = f.p50_w.map((r) => r[h]), fin = p50.filter((v) => v != null && isFinite(v));
      let lo = Math.min(...fin), hi = Math.max(...fin);
      if (!(hi > lo)) hi = lo + 1;
      const qr = p50.map((v) => (v == null || !isFinite(v) ? 255 : Math.round(((v - lo) / (hi - lo)) * 254)));
      const q = this.values && this.values.length === L.nG ? this.values : new Uint8Array(L.nG);
      for (let g = 0; g < L.nG; g++) q[g] = qr[L.gpuRack[g]];
      this.values = q;
      const buf = this.buf, W = L.W, c = L.inner, off = L.off;
      for (let g = 0; g < L.nG; g++) {
        const color = PALETTE[q[g]], o = off[g];
        for (let dy = 0; dy < c; dy++) { const r = o + dy * W; for (let dx = 0; dx < c; dx++) buf[r + dx] = color; }
      }
      this.ctx.putImageData(this.img, 0, 0);
      this.fc = { doc, h, lo, hi };
      $("legend-lo").textContent = `${kW(lo)} kW`;
      $("legend-hi").textContent = `${kW(hi)} kW`;
      $("floor-info").textContent = `${F.int(p50.length)} racks · P50 ${HORIZONS[h]} ahead of ${F.time(f.t_s)}`;
      cells.dataset.view = "forecast";
      cells.dataset.fcT = String(f.t_s);
      cells.dataset.fcH = String(h);
      // The racks whose power moves most by then (P50 against the 10-s forecast, i.e. about now).
      const moves = p50.map((v, k) => [k, v - f.p50_w[k][0]]).filter((m) => isFinite(m[1]));
      moves.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
      $("hot-title").textContent = `Racks moving most by ${HORIZONS[h]}`;
      $("hot-head").innerHTML = "<tr><th>rack</th><th class=\"num\">change kW</th><th class=\"num\">P50 kW (P10-P90)</th></tr>";
      $("hot").innerHTML = moves.slice(0, 12).map(([k, d]) => `<tr data-rack="${k}"><td>${F.esc(doc.racks[k])}</td><td class="num">${d >= 0 ? "+" : ""}${kW(d)}</td>
        <td class="num">${kW(p50[k])} (${kW(f.p10_w[k][h])}-${kW(f.p90_w[k][h])})</td></tr>`).join("");
      PP.markPainted("floor");
    },
    rackForecast(k) {
      const d = this.fc && this.fc.doc, f = d && d.forecast;
      if (!f) return "";
      return HORIZONS.map((name, i) => `${name}: <b>${kW(f.p50_w[k][i])}</b> kW (${kW(f.p10_w[k][i])}-${kW(f.p90_w[k][i])})`).join(" · ");
    },
    value(g) {
      if (this.fc && $("floor-metric").value === "forecast") {
        const { doc, h } = this.fc, f = doc.forecast, k = this.layout.gpuRack[g];
        const band = f.p90_w[k][h] - f.p10_w[k][h];
        return `P50 ${kW(f.p50_w[k][h])} kW in ${HORIZONS[h]} (P10-P90 ${kW(f.p10_w[k][h])}-${kW(f.p90_w[k][h])} kW, band ${kW(band)} kW)`;
      }
      const d = this.doc, q = this.values[g];
      return q === 255 ? "no valid reading" : `${((q / 254) * (d.hi - d.lo) + d.lo).toFixed(0)} ${d.unit}`;
    },
    async refreshForecast() {
      this.drawForecast(await PP.api("/api/forecast/racks"), Number($("floor-horizon").value));
    },
    async enter() {
      if (!this.layout) this.build();
      const metric = $("floor-metric").value, forecast = metric === "forecast";
      $("floor-horizon-wrap").style.display = forecast ? "" : "none";
      if (forecast) {
        PP.subscribeFloor(null);
        await this.refreshForecast();
        PP.every(10000, () => this.refreshForecast());
      } else {
        this.fc = null;
        $("hot-title").textContent = "Hot spots";
        $("hot-head").innerHTML = "<tr><th>GPU</th><th>node</th><th class=\"num\">value</th></tr>";
        PP.subscribeFloor(metric);
        this.draw(await PP.api(`/api/floor?metric=${metric}`));
        $("floor-cells").dataset.view = "metric";
      }
      if (this.sel != null) PP.every(3000, () => this.drill(this.sel));
    },
    leave() { PP.subscribeFloor(null); },
    charts() { if (this.sel != null) this.drill(this.sel); },
    onUpdate(msg, visible) {
      if (visible && msg.floor && this.layout && $("floor-metric").value !== "forecast") this.draw(msg.floor);
    },
    async drill(g) {
      this.sel = g;
      const d = await PP.api(`/api/entity/gpu/${g}`);
      $("drill-empty").style.display = "none";
      $("drill-body").style.display = "block";
      const p = d.path;
      $("drill-crumbs").innerHTML = `${F.esc(p.hall)} &gt; ${F.esc(p.row)} &gt; <b>rack ${F.esc(p.rack)}</b> &gt; <b>node ${F.esc(p.node)}</b> &gt; <b>GPU ${g}</b> <span class="muted">(${F.esc(d.gpu.uuid)}, ${F.esc(d.gpu.model)})</span>`;
      $("drill-rack-name").textContent = `${p.rack}: ${F.kw(d.rack.power_w)} kW, inlet ${F.num(d.rack.inlet_temp_c, 1)} °C`;
      const fcText = this.rackForecast(d.indices.rack);
      $("drill-rack-fc").innerHTML = fcText ? `forecast P50 (P10-P90): ${fcText}` : "";
      $("drill-nodes").innerHTML = d.nodes.map((n) => `<tr class="linkish ${n.index === d.indices.node ? "sel" : ""}" data-node="${n.index}"><td>${F.esc(n.name)}</td><td class="num">${F.num(n.power_w, 0)}</td>
        <td class="num">${F.num(n.gpu_power_w_sum, 0)}</td><td class="num">${F.num(n.gpu_temp_c_max, 1)}</td><td class="num">${F.num(n.gpu_util_pct_mean, 0)}</td></tr>`).join("");
      $("drill-node-name").textContent = `${p.node}: ${F.kw(d.node.power_w, 2)} kW`;
      $("drill-gpus").innerHTML = d.gpus.map((x) => `<tr class="linkish ${x.gpu === g ? "sel" : ""}" data-gpu="${x.gpu}"><td>${x.gpu}</td><td>${F.esc(x.model)}</td><td class="num">${F.num(x.power_w, 0)}</td>
        <td class="num">${F.num(x.power_cap_w, 0)}</td><td class="num">${F.num(x.temp_c, 1)}</td><td class="num">${F.num(x.util_pct, 0)}</td><td>${x.job == null ? "idle" : x.job}</td></tr>`).join("");
      $("drill-gpu-name").textContent = `${g}`;
      const s = d.series;
      PP.chart("drill-chart", {
        series: [
          { t: s.t_s, y: s.power_w, label: "power W", color: "#ff8a5b", width: 1.3 },
          { t: s.t_s, y: s.temp_c, label: "temperature °C", axis: "y2", color: "#38d9c9", width: 1.2 },
          { t: s.t_s, y: s.util_pct, label: "utilization %", axis: "y2", color: "#a78bfa", width: 1, dash: [2, 3] },
        ],
        y: { label: "W", zero: true }, y2: { label: "°C, %" },
      });
      $("drill").dataset.gpu = String(g);
    },
    async drillNode(n) {
      const d = await PP.api(`/api/entity/node/${n}`);
      if (d.gpus && d.gpus.length) this.drill(d.gpus[0].gpu);
    },
  };

  document.addEventListener("DOMContentLoaded", () => {
    $("floor-metric").addEventListener("change", () => PP.show("floor"));
    $("floor-horizon").addEventListener("change", () => { if (fl.fc) fl.drawForecast(fl.fc.doc, Number($("floor-horizon").value)); });
    const cells = $("floor-cells"), tip = $("tooltip");
    const at = (ev) => {
      const L = fl.layout, r = cells.getBoundingClientRect();
      const x = Math.floor(ev.clientX - r.left), y = Math.floor(ev.clientY - r.top);
      return x >= 0 && y >= 0 && x < L.W && y < L.H ? L.pick[y * L.W + x] : -1;
    };
    cells.addEventListener("mousemove", (ev) => {
      const g = fl.layout ? at(ev) : -1;
      if (g < 0 || !fl.values) { tip.style.display = "none"; return; }
      const t = PP.topo, n = t.gpu_node[g];
      tip.innerHTML = `GPU ${g} · ${F.esc(t.nodes[n])}<br>${F.esc(t.racks[t.node_rack[n]])} · ${fl.value(g)}`;
      tip.style.left = ev.clientX + 14 + "px"; tip.style.top = ev.clientY + 10 + "px"; tip.style.display = "block";
    });
    cells.addEventListener("mouseleave", () => (tip.style.display = "none"));
    cells.addEventListener("click", (ev) => { const g = at(ev); if (g >= 0) fl.drill(g); });
    $("hot").addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr");
      if (!tr) return;
      // a rack row (the forecast view) drills into the rack's first GPU
      if (tr.dataset.rack != null) fl.drill(fl.layout.gpuRack.indexOf(Number(tr.dataset.rack)));
      else fl.drill(Number(tr.dataset.gpu));
    });
    $("drill-gpus").addEventListener("click", (ev) => { const tr = ev.target.closest("tr"); if (tr) fl.drill(Number(tr.dataset.gpu)); });
    $("drill-nodes").addEventListener("click", (ev) => { const tr = ev.target.closest("tr"); if (tr) fl.drillNode(Number(tr.dataset.node)); });
  });
  PP.pages.floor = fl;
  window.ppFloor = fl;
})();
