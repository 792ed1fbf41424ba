// Cockpit charts: one chart description, drawn by uPlot (npm `uplot`, ~50 KB, bundled into the package by
// `make`) or, where the install had no npm, by the full plotly.min.js that the plotly Python package ships.
// The server picks the library behind /vendor/charts.js (?lib=uplot|plotly names one; the page passes its own
// ?charts=... on). Neither is loaded from the network.
//
// PP.chart(id, spec): spec = {
//   series: [{t: [epoch s], y: [...], label, color, width, dash: [on, off], step: bool, axis: "y" | "y2"}],
//   bands: [{hi: i, lo: j, fill}]   (series indices; j must follow i directly, for plotly's fill "tonexty"),
//   y: {label, zero: bool}, y2: {label, range: [lo, hi]}, xRange: [t0, t1], legend: bool }
"use strict";
(() => {
  const AXIS = "#c9d2dc", GRID = "#1f2732", FONT = "11px ui-sans-serif, system-ui, 'DejaVu Sans', sans-serif";
  const charts = (PP._charts = {});

  // The first draw of each chart is on the Performance timeline (bench_cockpit.py reads it): the measure
  // pp-chart-call-<id> (the library call) and the mark pp-chart-painted-<id> in the frame that paints it (as the
  // pages mark their data, app.js markPainted).
  const markDrawn = (id, el, lib, t0) => {
    if (!el.dataset.drawn) {
      performance.measure("pp-chart-call-" + id, { start: t0 });
      requestAnimationFrame(() => performance.mark("pp-chart-painted-" + id));
    }
    el.dataset.drawn = lib;
  };

  // ------------------------------------------------------------------------------------ uPlot
  const zeroRange = (u, lo, hi) => {
    const [a, b] = uPlot.rangeNum(Math.min(0, lo), Math.max(0, hi), 0.1, true);
    return [Math.min(0, a), b];
  };
  // The options read the chart's current spec (entry.spec), so an update that moves the x range takes effect.
  const uplotOpts = (entry) => {
    const { el, spec } = entry;
    const tz = PP.topo ? PP.topo.timezone : "UTC";
    const series = [{ label: "site time" }];
    for (const s of spec.series) {
      series.push({
        label: s.label, scale: s.axis || "y", stroke: s.color || "transparent", width: s.width == null ? 1.2 : s.width,
        dash: s.dash, spanGaps: false, points: { show: false },
        paths: s.step ? uPlot.paths.stepped({ align: 1 }) : undefined,
      });
    }
    const axis = (extra) => Object.assign({ stroke: AXIS, font: FONT, labelFont: FONT, size: 46, labelSize: 16,
      grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 } }, extra);
    // Site-time ticks as HH:MM, with the day under the first tick of each day.
    const hm = new Intl.DateTimeFormat("en-GB", { timeZone: tz, hour: "2-digit", minute: "2-digit", hour12: false });
    const dm = new Intl.DateTimeFormat("en-GB", { timeZone: tz, day: "2-digit", month: "short" });
    const ticks = (u, splits) => splits.map((v, i) => {
      const day = dm.format(new Date(v * 1e3));
      return hm.format(new Date(v * 1e3)) + (i === 0 || day !== dm.format(new Date(splits[i - 1] * 1e3)) ? "\n" + day : "");
    });
    const axes = [axis({ size: 44, values: ticks }), axis({ scale: "y", label: (spec.y || {}).label })];
    const scales = { x: { time: true }, y: (spec.y || {}).zero ? { range: zeroRange } : { auto: true } };
    if (spec.y2) {
      axes.push(axis({ scale: "y2", side: 1, label: spec.y2.label, grid: { show: false } }));
      scales.y2 = spec.y2.range ? { range: () => spec.y2.range } : { auto: true };
    }
    if (spec.xRange) scales.x.range = (u, lo, hi) => entry.spec.xRange || [lo, hi];
    const legend = spec.legend !== false;
    return {
      width: Math.max(200, el.clientWidth), height: Math.max(120, el.clientHeight - (legend ? 34 : 0)),
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), tz),
      series, axes, scales, legend: { show: legend, live: true }, // the legend reads the values under the cursor
      bands: (spec.bands || []).map((b) => ({ series: [b.hi + 1, b.lo + 1], fill: b.fill })),
      cursor: { points: { show: false } },
    };
  };
  // All series on one time axis (uPlot wants aligned columns): uPlot.join merges the series' own time stamps.
  const uplotData = (spec) => uPlot.join(spec.series.map((s) => [s.t, s.y.map((v) => (v == null ? null : v))]));
  const drawUplot = (id, el, spec, t0) => {
    const sig = JSON.stringify([spec.series.map((s) => [s.label, s.axis, s.step]), spec.bands, spec.y, spec.y2, !!spec.xRange]);
    const data = uplotData(spec);
    const c = charts[id];
    if (c && c.sig === sig && c.el === el) {
      c.spec = spec;
      if (c.u.width !== el.clientWidth) c.u.setSize({ width: el.clientWidth, height: c.u.height }); // resized while hidden
      c.u.setData(data, true);
    } else {
      if (c) c.u.destroy();
      el.textContent = "";
      const entry = (charts[id] = { sig, el, spec });
      entry.u = new uPlot(uplotOpts(entry), data, el);
    }
    markDrawn(id, el, "uplot", t0);
  };

  // ------------------------------------------------------------------------------------ plotly (fallback)
  const drawPlotly = (id, el, spec, t0) => {
    const dash = (d) => (!d || !d.length ? "solid" : d[0] <= 2 ? "dot" : "dash");
    const traces = spec.series.map((s) => ({
      x: s.t.map(PP.siteDate), y: s.y, name: s.label, yaxis: s.axis === "y2" ? "y2" : "y",
      line: { color: s.color, width: s.width == null ? 1.2 : s.width, dash: dash(s.dash), shape: s.step ? "hv" : "linear" },
    }));
    for (const b of spec.bands || []) Object.assign(traces[b.lo], { fill: "tonexty", fillcolor: b.fill });
    const y = spec.y || {};
    const layout = {
      paper_bgcolor: "#11161d", plot_bgcolor: "#11161d", font: { color: AXIS, size: 11 },
      margin: { l: 48, r: spec.y2 ? 48 : 12, t: 8, b: 30 }, showlegend: spec.legend !== false,
      legend: { orientation: "h", y: 1.12, font: { size: 10 } },
      xaxis: { gridcolor: GRID, type: "date" },
      yaxis: { title: { text: y.label || "" }, gridcolor: GRID, zerolinecolor: "#2a3442", rangemode: y.zero ? "tozero" : "normal" },
    };
    if (spec.y2) layout.yaxis2 = { title: { text: spec.y2.label || "" }, overlaying: "y", side: "right", showgrid: false, range: spec.y2.range };
    if (spec.xRange) layout.xaxis.range = spec.xRange.map(PP.siteDate);
    Plotly.react(el, traces, layout, { displayModeBar: false, responsive: true });
    markDrawn(id, el, "plotly", t0);
  };

  // Draws (or updates) chart ``id``; false while no chart library is loaded or the chart is not on screen.
  PP.chart = (id, spec) => {
    const el = PP.$(id);
    if (!el || !el.clientWidth) return false;
    const t0 = performance.now();
    if (window.uPlot) drawUplot(id, el, spec, t0);
    else if (window.Plotly) drawPlotly(id, el, spec, t0);
    else return false;
    return true;
  };
  PP.chartsLoaded = () => !!(window.uPlot || window.Plotly);
  PP.chartLib = () => (window.uPlot ? "uplot" : window.Plotly ? "plotly" : null);

  window.addEventListener("resize", () => {
    for (const id in charts) {
      const c = charts[id];
      if (c.el.isConnected && c.el.clientWidth) c.u.setSize({ width: c.el.clientWidth, height: c.u.height });
    }
  });
})();
