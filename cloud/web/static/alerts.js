/* Alerts page: active alerts (acknowledge button) and recent transitions, kept current by the
 * live stream (app.js): a new alert appears without reloading.  Rows carry data-alert-id and
 * data-state for people and tests. */
"use strict";

(() => {
  const {post, el, fmtTime, ago} = fl;
  const liveState = document.getElementById("live-state");
  let active = new Map();
  let recent = [];

  function stateText(a) {
    if (a.cloud_ack) return `acknowledged by ${a.cloud_ack.by} (dashboard)`;
    if (a.state === "acknowledged") return `acknowledged by ${a.acked_by || "?"} (gateway)`;
    return "firing";
  }

  async function acknowledge(id, button) {
    button.disabled = true;
    try {
      const body = await post("/api/alerts/ack", {id});
      if (body.acknowledged) active.set(id, body.acknowledged);
    } catch (e) {
      if (e.status === 409 && e.body && e.body.alert) active.set(id, e.body.alert);
      else { button.disabled = false; fl.showBanner("Acknowledge failed: " + e.message); }
    }
    render();
  }

  function activeRow(a) {
    const button = a.acknowledged ? null : el("button", {type: "button", class: "ack",
                                                         text: "Acknowledge"});
    if (button) button.addEventListener("click", () => acknowledge(a.id, button));
    return el("tr", {"data-alert-id": a.id, "data-state": a.acknowledged ? "acknowledged" : "firing",
                     class: "sev " + (a.severity || "")}, [
      el("td", {text: a.severity || "—"}),
      el("td", {text: a.rule_id || a.dedup_key}),
      el("td", {text: a.gateway}),
      el("td", {}, el("a", {href: "/devices/" + encodeURIComponent(a.device_id), text: a.device_id})),
      el("td", {text: a.message || ""}),
      el("td", {title: fmtTime(a.fired_at_ms), text: ago(a.fired_at_ms)}),
      el("td", {class: "ack-state", text: stateText(a)}),
      el("td", {}, button),
    ]);
  }

  function recentRow(t) {
    return el("tr", {"data-alert-id": t.id, "data-transition": t.transition}, [
      el("td", {text: fmtTime(t.at_ms)}),
      el("td", {text: t.transition}),
      el("td", {text: t.severity || "—"}),
      el("td", {text: t.dedup_key}),
      el("td", {text: t.gateway}),
      el("td", {text: t.message || ""}),
    ]);
  }

  function render() {
    const order = {critical: 0, major: 1, warning: 2, minor: 3, info: 4};
    const rows = [...active.values()].sort((a, b) =>
      (a.acknowledged - b.acknowledged) || ((order[a.severity] ?? 5) - (order[b.severity] ?? 5)) ||
      ((b.fired_at_ms || 0) - (a.fired_at_ms || 0)));
    const tbody = document.querySelector("#active-alerts tbody");
    tbody.replaceChildren(...(rows.length ? rows.map(activeRow)
      : [el("tr", {class: "empty"}, el("td", {colspan: 8, class: "muted", text: "no active alerts"}))]));
    document.querySelector("#recent-alerts tbody").replaceChildren(...recent.slice(0, 200).map(recentRow));
  }

  document.addEventListener("fl:alerts", ev => {
    const {type, data} = ev.detail;
    if (type === "snapshot") {
      active = new Map(data.active.map(a => [a.id, a]));
      recent = data.recent;
      liveState.textContent = data.live ? "· live" : "· catching up";
      liveState.dataset.live = data.live ? "true" : "false";
    } else {
      if (data.alert) active.set(data.id, data.alert);
      else active.delete(data.id);
      if (data.transition) recent.unshift(data.transition);
      liveState.textContent = "· live";
      liveState.dataset.live = "true";
    }
    render();
  });
})();
