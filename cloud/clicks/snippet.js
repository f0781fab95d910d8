/*
 * fieldlink click tracking snippet, served by the collector at /snippet.js.
 *
 *   <script src="https://collector.example/snippet.js" data-write-key="KEY" async></script>
 *   <script>
 *     fieldlink.identify("12345");                       // optional; else an anonymous id
 *     fieldlink.track("click", {button_text: "Add to Cart", product_id: "prod_999"});
 *   </script>
 *
 * Elements with a data-track attribute are tracked on click without code:
 *   <button data-track="click" data-track-product_id="prod_999">Add to Cart</button>
 *
 * Delivery, in order of preference:
 * - Events are queued and sent as one batch when 100 are waiting or 5 s after the first,
 *   gzip-compressed with CompressionStream when the browser has it (Content-Encoding: gzip).
 * - A failed batch (network error, 429 or 5xx) is kept and retried with capped, jittered
 *   exponential backoff (full jitter, 0.5 s doubling to 30 s).  A 4xx other than 429 means
 *   the batch can never be accepted and is dropped (the collector has dead-lettered it).
 * - When the page is hidden (visibilitychange -> hidden, or pagehide) everything queued or
 *   in flight is sent with fetch(..., {keepalive: true}) as text/plain JSON with the write key
 *   in the body — a CORS "simple" request, so no preflight has to survive the unload — in
 *   chunks under the 64 KiB keepalive budget, falling back to navigator.sendBeacon.  Events
 *   that were in flight may thus arrive twice; the collector de-duplicates by event_id.
 *
 * window.fieldlink.options (set before the script loads) may override: endpoint, writeKey,
 * maxBatch, flushMs, baseDelayMs, maxDelayMs.
 */
(function (global) {
  "use strict";
  if (global.fieldlink && global.fieldlink._loaded) return;

  var script = document.currentScript;
  var preset = (global.fieldlink && global.fieldlink.options) || {};
  var origin = script && script.src ? new URL(script.src).origin : global.location.origin;
  var options = {
    endpoint: preset.endpoint || origin + "/v1/batch",
    writeKey: preset.writeKey || (script && script.getAttribute("data-write-key")) || "",
    maxBatch: preset.maxBatch || 100,
    flushMs: preset.flushMs || 5000,
    baseDelayMs: preset.baseDelayMs || 500,
    maxDelayMs: preset.maxDelayMs || 30000
  };
  var KEEPALIVE_BUDGET = 60000; // bytes per keepalive request; browsers cap the sum at 64 KiB

  var queue = [];        // events not yet handed to a request
  var inflight = [];     // events of the request in progress
  var timer = null;
  var attempt = 0;
  var sending = false;
  var stats = {batches: 0, gzip: 0, retries: 0, failures: 0, hidden_flushes: 0};

  function randomId() {
    if (global.crypto && global.crypto.randomUUID) return global.crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0;
      return (c === "x" ? r : (r & 0x3 | 0x8)).toString(16);
    });
  }

  function stored(storage, key, make) {
    try {
      var value = storage.getItem(key);
      if (!value) { value = make(); storage.setItem(key, value); }
      return value;
    } catch (e) {
      return make(); // storage disabled: an id per page load
    }
  }

  var userId = stored(global.localStorage, "fieldlink_anonymous_id", function () {
    return "anon_" + randomId();
  });
  var sessionId = stored(global.sessionStorage, "fieldlink_session_id", function () {
    return "sess_" + randomId().replace(/-/g, "").slice(0, 16);
  });

  function context() {
    return {
      user_agent: global.navigator.userAgent,
      locale: (global.navigator.language || "").replace("-", "_"),
      page: {path: global.location.pathname, title: document.title,
             referrer: document.referrer || null}
    };
  }

  function track(eventType, properties) {
    queue.push({
      event_id: randomId(), user_id: userId, session_id: sessionId, event_type: eventType,
      timestamp: new Date().toISOString(), properties: properties || {}, context: context()
    });
    if (queue.length >= options.maxBatch) {
      flush();
    } else if (timer === null && !sending) {
      timer = setTimeout(flush, options.flushMs);
    }
  }

  function gzip(text) {
    if (typeof CompressionStream === "undefined") return Promise.resolve(null);
    var stream = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
    return new Response(stream).arrayBuffer();
  }

  function backoffDelay() {
    var ceiling = Math.min(options.maxDelayMs, options.baseDelayMs * Math.pow(2, attempt));
    attempt += 1;
    return Math.max(50, Math.random() * ceiling);
  }

  function schedule(ms) {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(flush, ms);
  }

  function flush() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    if (sending || queue.length === 0) return Promise.resolve();
    sending = true;
    inflight = queue.splice(0, options.maxBatch);
    var text = JSON.stringify({batch: inflight, sentAt: new Date().toISOString()});
    var headers = {"Content-Type": "application/json",
                   "Authorization": "Basic " + btoa(options.writeKey + ":")};
    return gzip(text).then(function (compressed) {
      if (compressed !== null) { headers["Content-Encoding"] = "gzip"; stats.gzip += 1; }
      return fetch(options.endpoint, {method: "POST", headers: headers,
                                      body: compressed !== null ? compressed : text,
                                      credentials: "omit"});
    }).then(function (response) {
      if (response.ok) return "sent";
      if (response.status === 429 || response.status >= 500) return "retry";
      return "drop";
    }, function () {
      return "retry"; // network error, collector down
    }).then(function (outcome) {
      sending = false;
      if (outcome === "retry") {
        stats.retries += 1;
        queue = inflight.concat(queue);
        inflight = [];
        schedule(backoffDelay());
        return;
      }
      if (outcome === "drop") stats.failures += 1; else stats.batches += 1;
      inflight = [];
      attempt = 0;
      if (queue.length >= options.maxBatch) flush();
      else if (queue.length > 0) schedule(options.flushMs);
    });
  }

  function sendKeepalive(events) {
    var body = JSON.stringify({batch: events, writeKey: options.writeKey,
                               sentAt: new Date().toISOString()});
    try {
      fetch(options.endpoint, {method: "POST", body: body, keepalive: true, credentials: "omit",
                               headers: {"Content-Type": "text/plain;charset=UTF-8"}});
      return true;
    } catch (e) {
      return global.navigator.sendBeacon &&
        global.navigator.sendBeacon(options.endpoint, new Blob([body], {type: "text/plain"}));
    }
  }

  function flushOnHide() {
    var events = inflight.concat(queue);
    if (events.length === 0) return;
    stats.hidden_flushes += 1;
    queue = [];
    var chunk = [];
    var size = 0;
    for (var i = 0; i < events.length; i++) {
      var n = JSON.stringify(events[i]).length + 1;
      if (chunk.length && (size + n > KEEPALIVE_BUDGET || chunk.length >= options.maxBatch)) {
        if (!sendKeepalive(chunk)) queue = queue.concat(chunk);
        chunk = [];
        size = 0;
      }
      chunk.push(events[i]);
      size += n;
    }
    if (chunk.length && !sendKeepalive(chunk)) queue = queue.concat(chunk);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") flushOnHide();
  });
  global.addEventListener("pagehide", flushOnHide);

  document.addEventListener("click", function (ev) {
    var el = ev.target && ev.target.closest ? ev.target.closest("[data-track]") : null;
    if (!el) return;
    var properties = {};
    for (var i = 0; i < el.attributes.length; i++) {
      var attr = el.attributes[i];
      if (attr.name.indexOf("data-track-") === 0) {
        var value = attr.value;
        var number = Number(value);
        properties[attr.name.slice(11)] = value !== "" && !isNaN(number) ? number : value;
      }
    }
    if (!("button_text" in properties) && el.textContent) {
      properties.button_text = el.textContent.trim().slice(0, 200);
    }
    track(el.getAttribute("data-track") || "click", properties);
  }, true);

  global.fieldlink = {
    _loaded: true,
    options: options,
    stats: stats,
    track: track,
    flush: flush,
    identify: function (id) { userId = String(id); },
    pending: function () { return queue.length + inflight.length; }
  };
})(window);
