// Kiln dashboard: the little JavaScript it has. Pages work without it; this adds copy
// buttons, relative times that keep counting, and the live log tail (Server-Sent Events).
(function () {
  "use strict";

  // ---- copy buttons -------------------------------------------------------------------
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Plain-http dashboards have no Clipboard API: a temporary textarea does it.
    return new Promise(function (resolve, reject) {
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      if (ok) { resolve(); } else { reject(new Error("copy failed")); }
    });
  }

  function initCopy() {
    document.querySelectorAll("button.copy[data-copy]").forEach(function (btn) {
      btn.hidden = false;
      btn.addEventListener("click", function () {
        copyText(btn.getAttribute("data-copy")).then(function () {
          btn.textContent = "Copied";
          btn.classList.add("done");
        }, function () {
          btn.textContent = "Select & copy";
        });
        setTimeout(function () { btn.textContent = "Copy"; btn.classList.remove("done"); }, 1600);
      });
    });
  }

  // ---- relative times -----------------------------------------------------------------
  function relative(iso) {
    var t = Date.parse(iso);
    if (isNaN(t)) { return null; }
    var ago = Math.round((Date.now() - t) / 1000);
    if (ago < -59) { return iso.slice(0, 10); }
    if (ago < 5) { return "just now"; }
    if (ago < 60) { return ago + " s ago"; }
    if (ago < 3600) { return Math.floor(ago / 60) + " min ago"; }
    if (ago < 86400) { return Math.floor(ago / 3600) + " h ago"; }
    if (ago < 2592000) { var d = Math.floor(ago / 86400); return d + (d === 1 ? " day ago" : " days ago"); }
    return iso.slice(0, 10);
  }

  function refreshTimes() {
    document.querySelectorAll("time[data-rel][datetime]").forEach(function (el) {
      var text = relative(el.getAttribute("datetime"));
      if (text && el.textContent !== text) { el.textContent = text; }
    });
  }

  // ---- growing durations ("Running for 2 min 3 s") ------------------------------------
  function duration(secs) {
    secs = Math.max(0, Math.floor(secs));
    if (secs < 60) { return secs + " s"; }
    if (secs < 3600) { return Math.floor(secs / 60) + " min " + (secs % 60) + " s"; }
    return Math.floor(secs / 3600) + " h " + Math.floor((secs % 3600) / 60) + " min";
  }
  function refreshElapsed() {
    document.querySelectorAll("[data-elapsed]").forEach(function (el) {
      var t = Date.parse(el.getAttribute("data-elapsed"));
      if (!isNaN(t)) { el.textContent = duration((Date.now() - t) / 1000); }
    });
  }
  function stopElapsed() {
    document.querySelectorAll("[data-elapsed]").forEach(function (el) { el.removeAttribute("data-elapsed"); });
  }

  // ---- live log tail --------------------------------------------------------------------
  var MAX_LINES = 5000; // keep the page light on very long builds; the raw log has everything

  function initLog() {
    var log = document.getElementById("log-lines");
    if (!log) { return; }
    var nearBottom = function () { return log.scrollHeight - log.scrollTop - log.clientHeight < 24; };
    // Start at the end of the log, unless the address points at a line.
    if (!location.hash || location.hash === "#log") {
      log.scrollTop = log.scrollHeight;
    }
    var url = log.getAttribute("data-live");
    if (!url || !window.EventSource) { return; }

    var next = parseInt(log.getAttribute("data-next"), 10) || 0;
    var follow = nearBottom();
    var unseen = 0;
    var state = document.getElementById("live-state");
    var followBtn = document.getElementById("follow");
    var count = document.getElementById("log-count");
    var badge = document.getElementById("job-status");
    var empty = document.getElementById("log-empty");

    function setState(text, live) {
      if (!state) { return; }
      state.hidden = false;
      state.textContent = text;
      state.classList.toggle("off", !live);
    }
    function showFollow() {
      if (!followBtn) { return; }
      followBtn.hidden = follow;
      followBtn.textContent = unseen > 0 ? "↓ " + unseen + " new line" + (unseen === 1 ? "" : "s") : "↓ Follow new lines";
    }
    log.addEventListener("scroll", function () {
      follow = nearBottom();
      if (follow) { unseen = 0; }
      showFollow();
    });
    if (followBtn) {
      followBtn.addEventListener("click", function () {
        follow = true; unseen = 0;
        log.scrollTop = log.scrollHeight;
        showFollow();
      });
    }
    function setStatus(status) {
      if (!badge || !status) { return; }
      badge.className = "badge s-" + status;
      badge.textContent = status;
      badge.setAttribute("data-status", status);
    }

    var pending = [];
    var scheduled = false;
    function flush() {
      scheduled = false;
      if (pending.length === 0) { return; }
      var wasFollowing = follow;
      var frag = document.createDocumentFragment();
      pending.forEach(function (item) {
        var row = document.createElement("div");
        row.className = "l fresh";
        row.id = "L" + (item.n + 1);
        var num = document.createElement("a");
        num.className = "n";
        num.href = "#L" + (item.n + 1);
        num.textContent = String(item.n + 1);
        var text = document.createElement("span");
        text.className = "t";
        // Server-rendered: HTML-escaped text with ANSI colours as fixed classes.
        text.innerHTML = item.html;
        row.appendChild(num);
        row.appendChild(text);
        frag.appendChild(row);
      });
      if (empty) { empty.remove(); empty = null; }
      log.appendChild(frag);
      if (!wasFollowing) { unseen += pending.length; }
      pending = [];
      while (log.childElementCount > MAX_LINES) { log.removeChild(log.firstElementChild); }
      if (count) { count.textContent = next + (next === 1 ? " line" : " lines"); }
      if (wasFollowing) { log.scrollTop = log.scrollHeight; }
      showFollow();
    }

    var source = new EventSource(url + "?from=" + next);
    setState("● live", true);
    source.onopen = function () { setState("● live", true); };
    source.onmessage = function (event) {
      var n = parseInt(event.lastEventId, 10);
      if (isNaN(n) || n < next) { return; } // already shown (a reconnect replays nothing twice)
      next = n + 1;
      pending.push({ n: n, html: event.data });
      if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
    };
    source.addEventListener("status", function (event) { setStatus(event.data); });
    source.addEventListener("end", function (event) {
      source.close();
      flush();
      setStatus(event.data);
      stopElapsed();
      setState("finished: " + event.data + " — reload for the image and timings", false);
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) { setState("disconnected — reload to resume", false); }
      else { setState("reconnecting…", false); }
    };
    // Background tabs may not run animation frames: flush on a timer too.
    setInterval(function () { if (pending.length) { flush(); } }, 500);
  }

  function init() {
    initCopy();
    refreshTimes();
    setInterval(refreshTimes, 30000);
    if (document.querySelector("[data-elapsed]")) { setInterval(refreshElapsed, 1000); }
    initLog();
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
