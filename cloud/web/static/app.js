/* fieldlink dashboard: what every page shares.
 *
 * - fl.api(path) / fl.post(path, body): same-origin fetch of the JSON API; the CSRF token of
 *   the session (a <meta> tag) goes in X-CSRF-Token on POSTs.  A 401 (session expired) sends
 *   the browser to the login page and back; a 503 (a store is down) shows the banner.
 * - fl.el(tag, attrs, children): builds DOM nodes; text always goes in as text, never as HTML,
 *   so a device id or alert message cannot inject markup.
 * - the live alert stream (server-sent events, /api/alerts/stream) is opened once per page;
 *   pages listen to the "fl:alerts" event ({type: "snapshot"|"update", data}); it opens at
 *   DOMContentLoaded, after every page script registered its listener.  EventSource
 *   reconnects by itself; each reconnect starts with a fresh snapshot.
 */
"use strict";

const fl = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const banner = document.getElementById("banner");

  function showBanner(text) {
    if (!banner) return;
    banner.textContent = text;
    banner.hidden = !text;
  }

  function toLogin() {
    const next = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(next));
  }

  async function handle(resp) {
    if (resp.status === 401) {
      toLogin();
      throw new Error("login required");
    }
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (resp.status === 503) {
      showBanner("Data store unavailable (" + ((body && body.store) || "?") + "): " +
                 ((body && body.error) || "") + " — retrying.");
      const err = new Error((body && body.error) || "unavailable");
      err.status = 503;
      throw err;
    }
    if (!resp.ok) {
      const err = new Error((body && body.error) || ("HTTP " + resp.status));
      err.status = resp.status;
      err.body = body;
      throw err;
    }
    showBanner("");
    return body;
  }

  async function api(path) {
    const resp = await fetch(path, {credentials: "same-origin",
                                    headers: {"Accept": "application/json"}});
    return handle(resp);
  }

  async function post(path, body) {
    const resp = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body)});
    return handle(resp);
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of [].concat(children || [])) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmtTime(ms) {
    if (ms === null || ms === undefined) return "—";
    const d = new Date(ms);
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function ago(ms, now) {
    if (ms === null || ms === undefined) return "never";
    const s = Math.max(0, Math.round(((now || Date.now()) - ms) / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "—";
    const s = Math.round(ms / 1000);
    if (s < 120) return s + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }

  function num(v, digits) {
    if (v === null || v === undefined) return "—";
    return Number(v).toFixed(digits === undefined ? 2 : digits);
  }

  /* An inline SVG sparkline of [[t, v], ...]. */
  function sparkline(points, width, height) {
    const NS = "http://www.w3.org/2000/svg";
    const w = width || 120, h = height || 24;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", w);
    svg.setAttribute("height", h);
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.setAttribute("class", "spark");
    svg.setAttribute("data-count", String(points.length));
    if (points.length < 2) return svg;
    const ts = points.map(p => p[0]), vs = points.map(p => p[1]);
    const t0 = Math.min(...ts), t1 = Math.max(...ts);
    const v0 = Math.min(...vs), v1 = Math.max(...vs);
    const x = t => 1 + (w - 2) * (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0));
    const y = v => h - 2 - (h - 4) * (v1 === v0 ? 0.5 : (v - v0) / (v1 - v0));
    const path = document.createElementNS(NS, "polyline");
    path.setAttribute("points", points.map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", "currentColor");
    path.setAttribute("stroke-width", "1.5");
    svg.append(path);
    return svg;
  }

  /* The live alert stream, shared by every page. */
  let lastActive = [];
  function updateBadge(active) {
    const badge = document.getElementById("alert-count");
    if (!badge) return;
    const open = active.filter(a => !a.acknowledged).length;
    badge.textContent = String(open);
    badge.hidden = open === 0;
  }

  function openStream() {
    if (!window.EventSource) return;
    const source = new EventSource("/api/alerts/stream");
    source.addEventListener("snapshot", ev => {
      const data = JSON.parse(ev.data);
      lastActive = data.active;
      updateBadge(lastActive);
      document.dispatchEvent(new CustomEvent("fl:alerts", {detail: {type: "snapshot", data}}));
    });
    source.addEventListener("update", ev => {
      const data = JSON.parse(ev.data);
      lastActive = lastActive.filter(a => a.id !== data.id);
      if (data.alert) lastActive.push(data.alert);
      updateBadge(lastActive);
      document.dispatchEvent(new CustomEvent("fl:alerts", {detail: {type: "update", data}}));
    });
    source.addEventListener("expired", () => { source.close(); toLogin(); });
    source.onerror = () => {
      // EventSource retries by itself; a 401 (session gone) closes it for good
      if (source.readyState === EventSource.CLOSED) {
        fetch("/api/session", {credentials: "same-origin"}).then(r => {
          if (r.status === 401) toLogin();
          else setTimeout(openStream, 3000);
        }).catch(() => setTimeout(openStream, 5000));
      }
    };
    return source;
  }

  function markNav() {
    const page = document.getElementById("main")?.dataset.page;
    for (const a of document.querySelectorAll("nav a[data-nav]")) {
      if (a.dataset.nav === page) a.classList.add("current");
    }
  }

  // The stream opens once every script of the page has run: a snapshot arriving earlier
  // would be dispatched before the page script (loaded after this one) listens for it.
  document.addEventListener("DOMContentLoaded", () => { markNav(); openStream(); });

  return {api, post, el, fmtTime, ago, duration, num, sparkline, showBanner,
          get activeAlerts() { return lastActive; }};
})();
