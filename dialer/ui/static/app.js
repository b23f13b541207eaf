// dialer console: live regions, local times, drag-and-drop upload. Plain JS, no build step.
(function () {
  "use strict";

  var timeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });

  // <time datetime="...Z" data-local>: the browser's zone as text, the UTC instant on hover
  function localizeTimes(root) {
    root.querySelectorAll("time[data-local]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      t.textContent = timeFormat.format(d);
      t.title = "UTC: " + d.toISOString().replace(".000Z", "Z");
    });
  }

  var lastAnnounced = {};
  function announce(key, text) {
    if (!text || lastAnnounced[key] === text) return;
    var first = !(key in lastAnnounced);
    lastAnnounced[key] = text;
    if (first) return; // the page already says it
    var status = document.getElementById("live-status");
    if (status) status.textContent = text;
  }

  function sessionEnded() {
    var b = document.getElementById("session-banner");
    if (b) b.hidden = false;
  }

  // [data-live=URL]: re-fetch the fragment while data-active="true" (or slowly when
  // data-idle-poll="true"); stop when the server says the work is over.
  function live(el) {
    var url = el.getAttribute("data-live");
    var key = el.id || url;
    var marker = el.querySelector("[data-live-state]");
    if (marker) announce(key, marker.getAttribute("data-announce"));

    function delay() {
      var m = el.querySelector("[data-live-state]");
      var every = m && parseInt(m.getAttribute("data-interval") || "", 10);
      if (el.getAttribute("data-active") === "true") return every || 1500;
      if (el.getAttribute("data-idle-poll") === "true") return 8000;
      return 0;
    }
    function schedule() {
      var ms = delay();
      if (ms) window.setTimeout(tick, ms);
    }
    function tick() {
      var focused = document.activeElement;
      if (document.hidden || (focused && focused !== document.body && el.contains(focused))) {
        schedule(); // don't swap the region under the user's keyboard focus
        return;
      }
      fetch(url, { headers: { "X-Dialer-Live": "1" }, credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (r.status === 401) { sessionEnded(); return null; }
          if (!r.ok) { schedule(); return null; }
          return r.text();
        })
        .then(function (html) {
          if (html === null || html === undefined) return;
          el.innerHTML = html;
          localizeTimes(el);
          bindConfirms(el);
          var m = el.querySelector("[data-live-state]");
          var active = m && m.getAttribute("data-live-state") === "active";
          el.setAttribute("data-active", active ? "true" : "false");
          if (m) announce(key, m.getAttribute("data-announce"));
          el.dispatchEvent(new CustomEvent("dialer:updated", { bubbles: true, detail: { active: active } }));
          schedule();
        })
        .catch(function () { schedule(); });
    }
    schedule();
  }

  // forms with data-confirm ask first
  function bindConfirms(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (f) {
      if (f.dataset.bound) return;
      f.dataset.bound = "1";
      f.addEventListener("submit", function (e) {
        if (!window.confirm(f.getAttribute("data-confirm"))) e.preventDefault();
      });
    });
  }

  function sizeText(n) {
    if (n < 1024) return n + " bytes";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KB";
    return (n / 1048576).toFixed(1) + " MB";
  }

  function dropzone(zone) {
    var input = zone.querySelector("input[type=file]");
    var shown = zone.querySelector("[data-file-name]");
    if (!input) return;
    function show() {
      var f = input.files && input.files[0];
      if (shown) shown.textContent = f ? "Chosen: " + f.name + " (" + sizeText(f.size) + ")" : "";
    }
    function take(files) {
      if (!files || !files.length) return;
      try {
        var dt = new DataTransfer();
        dt.items.add(files[0]);
        input.files = dt.files;
      } catch (err) {
        input.files = files;
      }
      show();
    }
    input.addEventListener("change", show);
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.add("over"); });
    });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      zone.classList.remove("over");
      take(e.dataTransfer && e.dataTransfer.files);
    });
    // a file dropped anywhere on the page goes to the upload, not into a new tab
    window.addEventListener("dragover", function (e) { e.preventDefault(); });
    window.addEventListener("drop", function (e) {
      e.preventDefault();
      take(e.dataTransfer && e.dataTransfer.files);
    });
  }

  function busyOnSubmit(form) {
    form.addEventListener("submit", function () {
      var b = form.querySelector("button[type=submit]");
      if (!b) return;
      window.setTimeout(function () {
        b.disabled = true;
        if (b.getAttribute("data-busy-text")) b.textContent = b.getAttribute("data-busy-text");
        form.setAttribute("aria-busy", "true");
      }, 0);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localizeTimes(document);
    bindConfirms(document);
    document.querySelectorAll("[data-live]").forEach(live);
    document.querySelectorAll("[data-dropzone]").forEach(dropzone);
    document.querySelectorAll("form[data-upload]").forEach(busyOnSubmit);
  });
})();
