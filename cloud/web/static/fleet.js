/* Fleet page: gateways (online/offline, last seen, backlog, drops, versions) and the device
 * table (last value, sparkline of the last hour, battery, quality), filterable by
 * facility/line/zone.  Filters live in the URL (?facility=&line=&zone=) so a view can be
 * bookmarked.  Refreshed every 10 s. */
"use strict";

(() => {
  const {api, el, fmtTime, ago, duration, num, sparkline} = fl;
  const form = document.getElementById("filters");
  const REFRESH_MS = 10000;

  function filters() {
    const p = new URLSearchParams(location.search);
    const out = {};
    for (const k of ["facility", "line", "zone"]) if (p.get(k)) out[k] = p.get(k);
    return out;
  }

  function drops(d) {
    if (!d) return el("span", {class: "muted", text: "not reported"});
    const items = Object.entries(d).filter(([, n]) => n > 0);
    if (!items.length) return "none";
    return items.map(([k, n]) => `${k}: ${n}`).join(", ");
  }

  function renderGateways(body) {
    const tbody = document.querySelector("#gateways tbody");
    const now = Date.now();
    tbody.replaceChildren(...body.gateways.map(g => el("tr", {
      "data-gateway": g.gateway, "data-online": g.online ? "true" : "false"}, [
      el("td", {text: g.gateway}),
      el("td", {}, el("span", {class: g.online ? "state ok" : "state bad",
                               text: g.online ? "online" : "offline"})),
      el("td", {title: fmtTime(g.last_seen_ms),
                text: g.last_seen_ms ? ago(g.last_seen_ms, now)
                  : `not within ${duration(body.lookback_ms)}`}),
      el("td", {class: "num", text: g.devices}),
      el("td", {class: "num", text: g.backlog_rows === null ? "—" : g.backlog_rows}),
      el("td", {class: "num", text: duration(g.backlog_age_ms)}),
      el("td", {}, drops(g.drops)),
      el("td", {text: g.firmware_version || "—"}),
      el("td", {text: g.config_version || "—"}),
      el("td", {class: "num"}, g.alerts_firing
        ? el("a", {href: "/alerts", class: "state bad", text: g.alerts_firing}) : "0"),
    ])));
  }

  function fillSelect(name, values, chosen) {
    const select = form.elements[name];
    const keep = chosen || "";
    select.replaceChildren(el("option", {value: "", text: "all"}),
      ...values.map(v => el("option", {value: v, text: v, selected: v === keep})));
    if (keep && !values.includes(keep)) select.append(el("option", {value: keep, text: keep, selected: true}));
  }

  function renderDevices(body) {
    const chosen = filters();
    for (const k of ["facility", "line", "zone"]) fillSelect(k, body.options[k] || [], chosen[k]);
    const tbody = document.querySelector("#devices tbody");
    const now = Date.now();
    tbody.replaceChildren(...body.devices.map(d => el("tr", {
      "data-device": d.device_id, "data-measurement": d.measurement,
      "data-value": d.value === null ? "" : d.value}, [
      el("td", {}, el("a", {href: "/devices/" + encodeURIComponent(d.device_id) +
                                 "?measurement=" + encodeURIComponent(d.measurement),
                            text: d.device_id})),
      el("td", {text: d.measurement}),
      el("td", {text: d.facility || "—"}),
      el("td", {text: d.line || "—"}),
      el("td", {text: d.zone || "—"}),
      el("td", {class: "num", text: `${num(d.value)} ${d.unit || ""}`.trim()}),
      el("td", {}, sparkline(d.sparkline)),
      el("td", {class: "num", text: d.battery === null ? "—" : num(d.battery) + " V"}),
      el("td", {}, el("span", {class: "quality " + (d.quality || "unknown"),
                               text: d.quality || "—"})),
      el("td", {title: fmtTime(d.ts_ms), text: ago(d.ts_ms, now)}),
    ])));
    document.getElementById("device-count").textContent =
      `${body.devices.length} device series`;
  }

  async function refresh() {
    try {
      const q = new URLSearchParams(filters()).toString();
      const [fleetBody, devicesBody] = await Promise.all([
        api("/api/fleet"), api("/api/devices" + (q ? "?" + q : ""))]);
      renderGateways(fleetBody);
      renderDevices(devicesBody);
      document.getElementById("main").dataset.loaded = String(Date.now());
    } catch (e) {
      if (e.status !== 503) console.warn(e);
    }
  }

  form.addEventListener("change", () => {
    const p = new URLSearchParams();
    for (const k of ["facility", "line", "zone"]) {
      const v = form.elements[k].value;
      if (v) p.set(k, v);
    }
    history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
    refresh();
  });

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
