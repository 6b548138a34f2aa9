// Live pages: the server says which rooms changed (server-sent events); the page fetches its
// live part again. Filters apply as you type. No framework, no build step.
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  if (live && window.EventSource) {
    var room = live.getAttribute("data-room") || "";
    var busy = false, again = false;
    var refresh = function () {
      if (busy) { again = true; return; }
      busy = true;
      var url = new URL(live.getAttribute("data-live"), location.href);
      new URL(location.href).searchParams.forEach(function (v, k) { url.searchParams.set(k, v); });
      fetch(url, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { live.innerHTML = html; filterTiles(); } })
        .finally(function () { busy = false; if (again) { again = false; refresh(); } });
    };
    var events = new EventSource("/events");
    events.addEventListener("rooms", function (e) {
      if (!room || e.data.split(" ").indexOf(room) >= 0) refresh();
    });
    events.addEventListener("tick", function () { if (room) refresh(); });
  }
  var search = document.querySelector("[data-filter-tiles]");
  function filterTiles() {
    if (!search) return;
    var q = search.value.trim().toLowerCase();
    document.querySelectorAll(".tile[data-search]").forEach(function (t) {
      t.hidden = q !== "" && t.getAttribute("data-search").indexOf(q) < 0;
    });
  }
  if (search) search.addEventListener("input", filterTiles);
  document.querySelectorAll("form[data-autosubmit] select").forEach(function (s) {
    s.addEventListener("change", function () { s.form.submit(); });
  });
})();
