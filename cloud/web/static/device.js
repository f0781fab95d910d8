/* Device page: one device's history as a uPlot chart — the mean per bucket, the min..max band
 * and the p95 line — from /api/devices/{id}/series.  Range buttons go from 15 minutes to a
 * year; dragging across the chart zooms into the selection (the server picks the bucket
 * width: seconds when zoomed in, days when zoomed out; beyond InfluxDB's retention the
 * archive answers).  The chart element keeps what it was fed in data-* attributes
 * (data-points: the JSON points, data-sources, data-bucket-ms), for people and tests. */
"use strict";

(() => {
  const {api, el, fmtTime, duration, num} = fl;
  const main = document.getElementById("main");
  const deviceId = main.dataset.deviceId;
  const chartEl = document.getElementById("chart");
  const info = document.getElementById("chart-info");
  const select = document.getElementById("measurement");
  let plot = null;
  let range = {start: Date.now() - 3600000, end: Date.now(), span: 3600000, follow: true};
  let unit = "";

  document.getElementById("device-title").textContent = deviceId;

  function makePlot(data) {
    const opts = {
      width: Math.max(320, chartEl.clientWidth || 900), height: 360,
      scales: {x: {time: true}},
      cursor: {drag: {x: true, y: false, setScale: false}},
      series: [
        {},
        {label: "min", stroke: "rgba(60,120,200,0.35)", width: 1},
        {label: "max", stroke: "rgba(60,120,200,0.35)", width: 1},
        {label: "mean", stroke: "rgb(20,80,160)", width: 2},
        {label: "p95", stroke: "rgb(200,110,20)", width: 1, dash: [4, 3]},
      ],
      bands: [{series: [2, 1], fill: "rgba(60,120,200,0.15)"}],
      axes: [{}, {label: unit}],
      hooks: {setSelect: [u => {
        if (u.select.width < 4) return;
        const lo = u.posToVal(u.select.left, "x");
        const hi = u.posToVal(u.select.left + u.select.width, "x");
        u.setSelect({left: 0, top: 0, width: 0, height: 0}, false);
        range = {start: Math.floor(lo * 1000), end: Math.ceil(hi * 1000),
                 span: Math.ceil((hi - lo) * 1000), follow: false};
        load();
      }]},
    };
    return new uPlot(opts, data, chartEl);
  }

  /* uPlot's columns; an empty bucket between two points becomes a null, so the lines break
   * where there was no data (a gateway offline, a sensor silent) instead of bridging it. */
  function columns(points, bucketMs) {
    const cols = [[], [], [], [], []];
    let last = null;
    for (const p of points) {
      if (last !== null && p[0] - last > bucketMs) {
        cols[0].push((last + bucketMs) / 1000);
        for (let i = 1; i < 5; i++) cols[i].push(null);
      }
      cols[0].push(p[0] / 1000);
      cols[1].push(p[1]); cols[2].push(p[2]); cols[3].push(p[3]); cols[4].push(p[4]);
      last = p[0];
    }
    return cols;
  }

  async function load() {
    if (range.follow) {
      range.end = Date.now();
      range.start = range.end - range.span;
    }
    const m = select.value;
    const q = new URLSearchParams({start_ms: range.start, end_ms: range.end});
    if (m) q.set("measurement", m);
    chartEl.dataset.state = "loading";
    let body;
    try {
      body = await api(`/api/devices/${encodeURIComponent(deviceId)}/series?${q}`);
    } catch (e) {
      chartEl.dataset.state = "error";
      info.textContent = e.message;
      return;
    }
    chartEl.dataset.points = JSON.stringify(body.points);
    chartEl.dataset.sources = body.sources.join(",");
    chartEl.dataset.bucketMs = String(body.bucket_ms);
    chartEl.dataset.startMs = String(body.start_ms);
    chartEl.dataset.endMs = String(body.end_ms);
    const data = columns(body.points, body.bucket_ms);
    if (!plot) plot = makePlot(data);
    else plot.setData(data);
    plot.setScale("x", {min: body.start_ms / 1000, max: body.end_ms / 1000});
    const n = body.points.reduce((s, p) => s + p[5], 0);
    info.textContent = `${fmtTime(body.start_ms)} – ${fmtTime(body.end_ms)} · ` +
      `${n} readings in ${body.points.length} buckets of ${duration(body.bucket_ms)} · ` +
      `from ${body.sources.join(" + ") || "nothing"}` +
      (body.boundary_ms ? ` · hot store from ${fmtTime(body.boundary_ms)}` : "");
    chartEl.dataset.state = "loaded";
  }

  function renderAlerts() {
    const list = document.getElementById("device-alerts");
    const mine = fl.activeAlerts.filter(a => a.device_id === deviceId);
    list.replaceChildren(...(mine.length ? mine.map(a => el("li", {class: "sev " + a.severity},
      `${a.severity}: ${a.message} (${a.acknowledged ? "acknowledged" : "firing"}, ` +
      `since ${fmtTime(a.fired_at_ms)})`)) : [el("li", {class: "muted", text: "none"})]));
  }

  async function init() {
    const wanted = new URLSearchParams(location.search).get("measurement");
    try {
      const body = await api(`/api/devices/${encodeURIComponent(deviceId)}`);
      const names = body.series.map(s => s.measurement);
      if (wanted && !names.includes(wanted)) names.unshift(wanted);
      select.replaceChildren(...names.map(n => el("option", {value: n, text: n,
                                                             selected: n === wanted})));
      const row = body.series.find(s => s.measurement === select.value) || body.series[0];
      if (row) {
        unit = row.unit || "";
        document.getElementById("device-meta").textContent =
          [row.gateway && `gateway ${row.gateway}`, row.facility && `facility ${row.facility}`,
           row.line && `line ${row.line}`, row.zone && `zone ${row.zone}`,
           `last ${num(row.value)} ${unit} at ${fmtTime(row.ts_ms)}`,
           row.battery !== null && `battery ${num(row.battery)} V`,
           row.quality && `quality ${row.quality}`].filter(Boolean).join(" · ");
      } else {
        document.getElementById("device-meta").textContent =
          "no readings within the fleet table's window; older data is still charted";
      }
    } catch (e) {
      if (e.status !== 503) info.textContent = e.message;
    }
    await load();
    renderAlerts();
  }

  document.getElementById("ranges").addEventListener("click", ev => {
    const span = ev.target.dataset && ev.target.dataset.range;
    if (span) {
      range = {span: Number(span), follow: true};
      load();
    }
  });
  document.getElementById("reset-zoom").addEventListener("click", () => {
    range = {span: 3600000, follow: true};
    load();
  });
  select.addEventListener("change", load);
  document.addEventListener("fl:alerts", renderAlerts);
  window.addEventListener("resize", () => {
    if (plot) plot.setSize({width: Math.max(320, chartEl.clientWidth), height: 360});
  });
  setInterval(() => { if (range.follow && range.span <= 86400000) load(); }, 15000);
  init();
})();
